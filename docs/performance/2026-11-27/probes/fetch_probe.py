"""Consumer rate for 400 KB records: aiokafka's default 1 MiB per-partition fetch vs larger."""
import asyncio, os, sys, time, uuid
from aiokafka import AIOKafkaProducer, AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

N, SIZE = 3000, 400_000
BROKER = os.environ.get("BROKER", "127.0.0.1:9092")
async def main():
    topic = f"fetchprobe-{uuid.uuid4().hex[:6]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=BROKER); await admin.start()
    await admin.create_topics([NewTopic(topic, 6, 1)]); await admin.close()
    p = AIOKafkaProducer(bootstrap_servers=BROKER, max_request_size=16<<20, linger_ms=5); await p.start()
    payload = os.urandom(SIZE)
    futs = [await p.send(topic, payload) for _ in range(N)]
    await asyncio.gather(*futs); await p.stop()
    for part in [1<<20, 4<<20, 8<<20, 1<<20, 4<<20, 8<<20]:
        for wait in [500, 50]:
            c = AIOKafkaConsumer(topic, bootstrap_servers=BROKER, group_id=None, auto_offset_reset="earliest",
                                 max_partition_fetch_bytes=part, fetch_max_wait_ms=wait, max_poll_records=500, enable_auto_commit=False)
            await c.start()
            got = 0; t = None; cpu0 = time.process_time()
            while got < N:
                batches = await c.getmany(timeout_ms=1000)
                if t is None: t = time.perf_counter()
                got += sum(len(v) for v in batches.values())
            dt = time.perf_counter() - t; cpu = time.process_time() - cpu0
            print(f"partition_fetch={part>>20}MiB wait={wait}: {N/dt:.0f} rec/s, {N*SIZE/dt/1e6:.0f} MB/s, cpu {cpu/N*1e3:.2f} ms/rec", flush=True)
            await c.stop()
asyncio.run(main())
