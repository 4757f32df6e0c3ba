"""Probe 4 (throwaway): what a batch size costs the first time ORT's CUDA EP sees it.

    python probe4.py VISION_ONNX   # an fp16 vision graph (here ViT-B/32 geometry, 2 layers)

For batch sizes 1..64: the first call, the second call, then 1..64 again; per attention
kernel choice (`sdpa_kernel` provider option; 0 = ORT's default).
"""
import json, os, sys, time

import numpy as np
import onnxruntime as ort

RES = {}


def rec(k, v):
    RES[k] = v
    print(k, json.dumps(v) if not isinstance(v, str) else v, flush=True)


def sweep(path, sdpa):
    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    provider = {"device_id": "0"} | ({"sdpa_kernel": str(sdpa)} if sdpa else {})
    session = ort.InferenceSession(path, options, providers=[("CUDAExecutionProvider", provider)])
    rng = np.random.default_rng(0)

    def call(n):
        x = rng.integers(0, 256, (n, 224, 224, 3), dtype=np.uint8)
        b = session.io_binding()
        b.bind_cpu_input("pixels", x)
        b.bind_output("embeddings", "cuda", 0)
        t = time.perf_counter()
        session.run_with_iobinding(b)
        b.copy_outputs_to_cpu()
        return round((time.perf_counter() - t) * 1e3, 2)

    call(1), call(1)
    sizes = list(range(2, 65))
    first = [call(n) for n in sizes]
    second = [call(n) for n in sizes]
    rec(f"sdpa{sdpa}_first_ms", dict(zip(sizes, first)))
    rec(f"sdpa{sdpa}_second_ms", dict(zip(sizes, second)))
    rec(f"sdpa{sdpa}_summary", {
        "first_median": float(np.median(first)), "first_max": max(first),
        "second_median": float(np.median(second)), "second_max": max(second),
    })


if __name__ == "__main__":
    ort.preload_dlls()
    try:
        for sdpa in (0, 1, 2):
            try:
                sweep(sys.argv[1], sdpa)
            except Exception as e:  # an unsupported kernel choice
                rec(f"sdpa{sdpa}_error", repr(e)[:300])
    finally:
        folder = os.environ.get("OUT", "/tmp/out")
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "probe4.json"), "w") as f:
            json.dump(RES, f, indent=1)
