"""What drives the service from outside, shared by the fault suite (`moderator.chaos`), the
end-to-end benchmark (`moderator bench e2e`) and the integration tests.

- `ports`: free ports for replicas, image servers and private stacks.
- `stack`: a private Kafka broker + Redis pair (scripts/services.sh) that faults may stop.
- `fleet`: replicas of `moderator serve` as subprocesses: started, watched, ready, stopped.
- `topics`: fresh topics for one run, through `moderator.kafka` (so TLS and SASL apply).
- `imageserver`: a local image host, well-behaved or hostile, in-process or in a process of
  its own.

`serve` never imports this package.
"""
