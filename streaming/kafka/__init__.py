"""Kafka clients outside Faust: topic administration and broadcast consumers."""
