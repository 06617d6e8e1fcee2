"""Operations: configuration, Prometheus metrics, health, logs, worker processes."""
