"""The shared datasets and canonical event files, and a synthetic clickstream."""
