"""The Faust worker: clickstream in, user state in RocksDB, recommendations out."""
