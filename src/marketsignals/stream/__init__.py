"""The streaming signals job: Kafka -> validated ticks -> stateful per-symbol kernel -> sinks."""
