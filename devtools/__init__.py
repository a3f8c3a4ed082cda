"""Developer tools, not in the runtime image: the project's own Kafka broker and the demo."""
