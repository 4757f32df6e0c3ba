"""One-shot commands beside the service: `score` (files, no Kafka), `submit`, `tail` and
`schemas`; `exits` says how every command ends on an error (its exit codes)."""
