"""Everything that touches the outside world: Kafka, files, the embedded broker, executors."""
