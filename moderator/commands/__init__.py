"""One-shot commands beside the service: `score` (files, no Kafka), `submit`, `tail` and
`schemas`."""
