"""The stages one event passes through, in order: `events` (parse a record) → `acquire` (inline
bytes or a guarded URL fetch) → `decode` (bytes to pixels, in worker processes or on the GPU) →
`batch` (group pixels for one inference call). `budget` bounds the bytes all of them hold.

A stage imports only stages before it; embedding, scoring and publishing live in
`moderator.embed`, `moderator.policy` and `moderator.kafka`.
"""
