"""Probe: consumer CPU per 400 KB record against the asyncio StreamReader limit aiokafka uses.

aiokafka reads each fetch response (MBs) with `readexactly` from a StreamReader whose limit is
64 KiB (`aiokafka.conn.READER_LIMIT`). Past twice the limit the reader pauses the socket and
resumes it when the waiting coroutine runs again, so a response of several MB costs tens of
pause/resume round trips through the event loop. This times one bare consumer draining N
records with the module's limit as shipped and raised, interleaved, each twice:
process CPU ms per record (the loop's own cost, as `serve`'s main thread pays it) and rec/s.
`python reader_limit_probe.py` against a broker on BROKER (default 127.0.0.1:9092).
"""

import asyncio
import os
import time
import uuid

import aiokafka.conn
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

N, SIZE = int(os.environ.get("N", "2000")), 400_000
BROKER = os.environ.get("BROKER", "127.0.0.1:9092")
LIMITS = [int(x) for x in os.environ.get("LIMITS", "65536,1048576,8388608").split(",")]


async def drain(topic: str) -> tuple[float, float]:
    c = AIOKafkaConsumer(topic, bootstrap_servers=BROKER, group_id=None,
                         auto_offset_reset="earliest", enable_auto_commit=False)
    await c.start()
    got, t, cpu0 = 0, None, time.process_time()
    while got < N:
        batches = await c.getmany(timeout_ms=1000)
        if t is None:
            t = time.perf_counter()
        got += sum(len(v) for v in batches.values())
    seconds, cpu = time.perf_counter() - t, time.process_time() - cpu0
    await c.stop()
    return N / seconds, 1000 * cpu / N


async def main() -> None:
    topic = f"readerprobe-{uuid.uuid4().hex[:6]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=BROKER)
    await admin.start()
    await admin.create_topics([NewTopic(topic, 6, 1)])
    p = AIOKafkaProducer(bootstrap_servers=BROKER, max_request_size=16 << 20, linger_ms=5)
    await p.start()
    payload = os.urandom(SIZE)
    await asyncio.gather(*[await p.send(topic, payload) for _ in range(N)])
    await p.stop()
    try:
        await drain(topic)  # page cache and JIT-free warm-up
        for _ in range(2):
            for limit in LIMITS:
                aiokafka.conn.READER_LIMIT = limit
                rate, cpu_ms = await drain(topic)
                print(f"limit {limit >> 10} KiB: {rate:.0f} rec/s, cpu {cpu_ms:.3f} ms/rec", flush=True)
    finally:
        await admin.delete_topics([topic])
        await admin.close()


asyncio.run(main())
