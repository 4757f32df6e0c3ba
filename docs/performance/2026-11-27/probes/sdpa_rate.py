"""Probe (throwaway): img/s of an fp16 vision graph per CUDA attention kernel (`sdpa_kernel`).

    python sdpa_rate.py VISION_ONNX 0 2 0 2   # kernels in order; 0 = ORT's choice

Input pixels already on the device (OrtValue), output bound on the device; 2 s per batch size.
"""
import sys
import time

import numpy as np
import onnxruntime as ort

ort.preload_dlls()
for sdpa in (int(a) for a in sys.argv[2:]):
    o = ort.SessionOptions()
    o.add_session_config_entry("session.intra_op.allow_spinning", "0")
    p = {"device_id": "0"} | ({"sdpa_kernel": str(sdpa)} if sdpa else {})
    s = ort.InferenceSession(sys.argv[1], o, providers=[("CUDAExecutionProvider", p)])
    out = {}
    for n in (32, 256):
        x = np.random.default_rng(0).integers(0, 256, (n, 224, 224, 3), dtype=np.uint8)
        b = s.io_binding()
        b.bind_ortvalue_input("pixels", ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0))
        b.bind_output("embeddings", "cuda", 0)
        for _ in range(5):
            s.run_with_iobinding(b)
        b.synchronize_outputs()
        t, k = time.perf_counter(), 0
        while time.perf_counter() - t < 2.0:
            s.run_with_iobinding(b)
            k += 1
        b.copy_outputs_to_cpu()
        out[n] = round(k * n / (time.perf_counter() - t))
    print("sdpa", sdpa, out, flush=True)
