"""Probe 3 (throwaway): the broker's ceiling with K parallel consumers, and nvJPEG + the
hardware JPEG engines decoding side by side.

    python probe3.py broker   # Tansu (or any broker) on $BROKER, default 127.0.0.1:9092
    python probe3.py decode   # torchvision nvJPEG and nvImageCodec HW, alone and together
"""
import asyncio, json, multiprocessing as mp, os, sys, threading, time, uuid

RES = {}
BROKER = os.environ.get("BROKER", "127.0.0.1:9092")


def rec(k, v):
    RES[k] = v
    print(k, v, flush=True)


# --- broker ceiling --------------------------------------------------------------------------

def _drain(topic, parts, expect, out):
    from aiokafka import AIOKafkaConsumer, TopicPartition

    async def run():
        c = AIOKafkaConsumer(bootstrap_servers=BROKER, enable_auto_commit=False,
                             auto_offset_reset="earliest", max_partition_fetch_bytes=8 << 20)
        await c.start()
        c.assign([TopicPartition(topic, p) for p in parts])
        await c.seek_to_beginning()
        got = 0
        while got < expect:
            batches = await c.getmany(timeout_ms=500)
            got += sum(len(v) for v in batches.values())
        await c.stop()
        out.put((os.getpid(), got, time.time()))

    asyncio.run(run())


def broker(n=8000, size=400_000, partitions=16):
    from aiokafka import AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    topic = f"probe3-{uuid.uuid4().hex[:6]}"

    async def fill():
        admin = AIOKafkaAdminClient(bootstrap_servers=BROKER)
        await admin.start()
        await admin.create_topics([NewTopic(topic, partitions, 1)])
        await admin.close()
        p = AIOKafkaProducer(bootstrap_servers=BROKER, max_request_size=16 << 20, linger_ms=5)
        await p.start()
        payload = os.urandom(size)
        t = time.perf_counter()
        futs = [await p.send(topic, payload, partition=i % partitions) for i in range(n)]
        await asyncio.gather(*futs)
        rec("produce_rec_s", round(n / (time.perf_counter() - t)))
        counts = {}
        for i in range(n):
            counts[i % partitions] = counts.get(i % partitions, 0) + 1
        await p.stop()
        return counts

    counts = asyncio.run(fill())
    for k in (1, 2, 4, 8, 16):
        out = mp.Queue()
        groups = [list(range(partitions))[i::k] for i in range(k)]
        procs = [mp.Process(target=_drain, args=(topic, g, sum(counts[p] for p in g), out))
                 for g in groups]
        t = time.time()
        for pr in procs:
            pr.start()
        done = [out.get(timeout=300) for _ in procs]
        for pr in procs:
            pr.join()
        wall = max(d[2] for d in done) - t
        rec(f"consumers_{k}_rec_s", round(sum(d[1] for d in done) / wall))


# --- decoders side by side --------------------------------------------------------------------

def decode(n=512, batch=128, seconds=4.0):
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg
    from moderator.bench.images import bench_images

    imgs = [i.data for i in bench_images(n, png_fraction=0.0)]
    chunks = [imgs[i:i + batch] for i in range(0, n, batch)]
    tchunks = [[torch.frombuffer(b, dtype=torch.uint8) for b in c] for c in chunks]
    from nvidia import nvimgcodec
    hw = nvimgcodec.Decoder(backends=[nvimgcodec.Backend(nvimgcodec.BackendKind.HW_GPU_ONLY)])

    def tv_worker(stop, count):
        st = torch.cuda.Stream()
        with torch.cuda.stream(st):
            while not stop.is_set():
                for c in tchunks:
                    decode_jpeg(c, mode=ImageReadMode.RGB, device="cuda")
                    count[0] += len(c)
            st.synchronize()

    def hw_worker(stop, count):
        st = torch.cuda.Stream()
        while not stop.is_set():
            for c in chunks:
                hw.decode(c, cuda_stream=st.cuda_stream)
                count[0] += len(c)
        st.synchronize()

    def measure(workers):
        stop = threading.Event()
        counts = [[0] for _ in workers]
        ths = [threading.Thread(target=w, args=(stop, c), daemon=True)
               for w, c in zip(workers, counts)]
        [t.start() for t in ths]
        time.sleep(1.0)
        c0, t0 = [c[0] for c in counts], time.perf_counter()
        time.sleep(seconds)
        c1, t1 = [c[0] for c in counts], time.perf_counter()
        stop.set()
        [t.join(timeout=10) for t in ths]
        torch.cuda.synchronize()
        return [round((b - a) / (t1 - t0)) for a, b in zip(c0, c1)]

    rec("tv_alone", measure([tv_worker]))
    rec("hw_alone", measure([hw_worker]))
    rec("tv_and_hw", measure([tv_worker, hw_worker]))
    rec("tv_tv", measure([tv_worker, tv_worker]))


if __name__ == "__main__":
    try:
        {"broker": broker, "decode": decode}[sys.argv[1]]()
    finally:
        folder = os.environ.get("OUT", "/tmp/out")
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, f"probe3-{sys.argv[1]}.json"), "w") as f:
            json.dump(RES, f, indent=1)
