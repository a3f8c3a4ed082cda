"""The recommender library: events, confidence, models, serving, evaluation, data, configuration. No Kafka."""
