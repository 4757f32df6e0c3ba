"""Embedding caches, keyed by content: `keys` (namespaces and entry checks), `redis` (the shared
cache `serve` uses), `memory` (an in-process one for tests and one-shot commands)."""
