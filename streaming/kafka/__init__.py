"""Kafka clients outside Faust: topic administration, broadcast consumers, and how every client
(Faust's included) connects (clients.py: TLS, SASL, mutual TLS)."""
