"""Candidate sources on the stream and the learned ranker over them (no Kafka)."""
