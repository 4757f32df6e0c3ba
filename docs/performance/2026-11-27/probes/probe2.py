"""Probe 2: ORT attention kernels, kernel profile, pipelined nvimgcodec decode (throwaway)."""
import json, os, sys, time, threading, subprocess, queue
import numpy as np

OUT = os.environ.get("OUT", "/tmp/out")
RES = {}
def rec(k, v):
    RES[k] = v
    print(k, v, flush=True)

def timeit(fn, seconds=3.0, warm=3):
    for _ in range(warm):
        fn()
    n = 0; t = time.perf_counter()
    while time.perf_counter() - t < seconds or n < 3:
        fn(); n += 1
    return n / (time.perf_counter() - t)

def ort_variant(batch=256, graph=False, profile=False):
    import onnxruntime as ort
    ort.preload_dlls()
    import torch
    from moderator.bench.model import resolve_bench_model
    bm = resolve_bench_model("b32", precision="fp16")
    path = str(bm.onnx_dir / "vision.onnx")
    so = ort.SessionOptions()
    so.add_free_dimension_override_by_name("batch", batch)
    opts = {"device_id": "0", "prefer_nhwc": "1"}
    if graph: opts["enable_cuda_graph"] = "1"
    s = ort.InferenceSession(path, so, providers=[("CUDAExecutionProvider", opts)])
    host = np.random.default_rng(0).integers(0, 256, (batch, 224, 224, 3), dtype=np.uint8)
    dev = torch.from_numpy(host).cuda()
    out = torch.empty((batch, 512), dtype=torch.float32, device="cuda")
    b = s.io_binding()
    b.bind_input("pixels", "cuda", 0, np.uint8, list(dev.shape), dev.data_ptr())
    b.bind_output("embeddings", "cuda", 0, np.float32, list(out.shape), out.data_ptr())
    def run():
        s.run_with_iobinding(b); out.cpu()
    rate = timeit(run) * batch
    if profile:
        from torch.profiler import profile as tp, ProfilerActivity
        with tp(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(5): run()
        rows = []
        for e in prof.key_averages():
            rows.append((e.device_time_total / 5, e.count // 5, e.key[:90]))
        rows.sort(reverse=True)
        rec("ort_kernels", [f"{t/1000:.3f}ms x{c} {k}" for t, c, k in rows[:25]])
        rec("ort_total_ms", sum(r[0] for r in rows) / 1000)
    return rate

def torch_profile(batch=256):
    import torch
    from transformers import CLIPModel
    from moderator.bench.model import resolve_bench_model
    bm = resolve_bench_model("b32", precision="fp16")
    clip = CLIPModel.from_pretrained(str(bm.hf_dir)).eval().half().cuda()
    off = torch.tensor([0.48145466*255, 0.4578275*255, 0.40821073*255], device="cuda", dtype=torch.half).view(1,3,1,1)
    sc = torch.tensor([0.26862954*255, 0.26130258*255, 0.27577711*255], device="cuda", dtype=torch.half).view(1,3,1,1)
    def fwd(p):
        x = (p.permute(0,3,1,2).half() - off) / sc
        e = clip.visual_projection(clip.vision_model(pixel_values=x).pooler_output)
        return e / e.norm(dim=-1, keepdim=True)
    f = torch.compile(fwd, dynamic=False)
    dev = torch.randint(0, 256, (batch, 224, 224, 3), dtype=torch.uint8, device="cuda")
    def run():
        with torch.inference_mode():
            f(dev).float().cpu()
    rec("compile_rate", round(timeit(run) * batch))
    from torch.profiler import profile as tp, ProfilerActivity
    with tp(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(5): run()
    rows = sorted(((e.device_time_total / 5, e.count // 5, e.key[:90]) for e in prof.key_averages()), reverse=True)
    rec("compile_kernels", [f"{t/1000:.3f}ms x{c} {k}" for t, c, k in rows[:25]])
    rec("compile_total_ms", sum(r[0] for r in rows) / 1000)

def decode_pipeline(n=512, batch=128, seconds=4.0):
    import torch, torch.nn.functional as F
    from nvidia import nvimgcodec
    from moderator.bench.images import bench_images
    imgs = [i.data for i in bench_images(n, png_fraction=0.0)]
    chunks = [imgs[i:i+batch] for i in range(0, n, batch)]
    def crop_first(ts):
        x = torch.stack(ts)  # n,3,h,w
        h, w = x.shape[2], x.shape[3]
        nw = int(224 * w / h); left = (nw - 224) // 2; s = w / nw
        x0 = max(0, int(left * s) - 8); x1 = min(w, int((left + 224) * s) + 8)
        out_w = round((x1 - x0) / s)
        r = F.interpolate(x[:, :, :, x0:x1].half(), size=(224, out_w), mode="bicubic", antialias=True, align_corners=False)
        st = (out_w - 224) // 2
        return r[:, :, :, st:st+224].round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()
    for kind in ("hw", "default"):
        for decoders in (1, 2, 3):
            try:
                if kind == "hw":
                    mk = lambda: nvimgcodec.Decoder(backends=[nvimgcodec.Backend(nvimgcodec.BackendKind.HW_GPU_ONLY)])
                else:
                    mk = lambda: nvimgcodec.Decoder()
                q = queue.Queue(maxsize=4); stop = threading.Event(); count = [0]
                def dec_worker(d):
                    st = torch.cuda.Stream()
                    while not stop.is_set():
                        for c in chunks:
                            out = d.decode(c, cuda_stream=st.cuda_stream)
                            ev = torch.cuda.Event(); ev.record(st)
                            q.put((out, ev))
                def pre_worker():
                    st = torch.cuda.Stream()
                    with torch.cuda.stream(st):
                        while not stop.is_set() or not q.empty():
                            try: out, ev = q.get(timeout=0.5)
                            except queue.Empty: continue
                            st.wait_event(ev)
                            ts = [torch.as_tensor(o, device="cuda").permute(2, 0, 1) for o in out]
                            crop_first(ts); count[0] += len(ts)
                        st.synchronize()
                ths = [threading.Thread(target=dec_worker, args=(mk(),), daemon=True) for _ in range(decoders)] + [threading.Thread(target=pre_worker, daemon=True)]
                t = time.perf_counter(); [x.start() for x in ths]
                time.sleep(1.0); c0 = count[0]; t0 = time.perf_counter()
                time.sleep(seconds); c1 = count[0]; t1 = time.perf_counter()
                stop.set()
                while not q.empty():
                    try: q.get_nowait()
                    except queue.Empty: break
                [x.join(timeout=5) for x in ths]
                rec(f"nvimg_{kind}_pipe_dec{decoders}", round((c1 - c0) / (t1 - t0)))
            except Exception as e:
                rec(f"nvimg_{kind}_pipe_dec{decoders}_err", repr(e)[:300])

if __name__ == "__main__":
    what = sys.argv[1]
    try:
        if what == "attn":
            base = dict(os.environ)
            envs = {
                "default": {},
                "flash_packed": {"ORT_MIN_SEQ_LEN_FLASH_ATTENTION_PACKED_QKV": "0"},
                "cudnn": {"ORT_ENABLE_CUDNN_FLASH_ATTENTION": "1"},
                "no_trt_fused": {"ORT_DISABLE_FUSED_ATTENTION": "1", "ORT_DISABLE_TRT_FLASH_ATTENTION": "1"},
                "mem_eff": {"ORT_DISABLE_FLASH_ATTENTION": "1", "ORT_DISABLE_FUSED_ATTENTION": "1", "ORT_DISABLE_TRT_FLASH_ATTENTION": "1"},
            }
            for name, env in envs.items():
                e = base | env | {"ORT_ENABLE_ATTENTION_KERNEL_DEBUG_INFO": "1"}
                r = subprocess.run([sys.executable, __file__, "one"], env=e, capture_output=True, text=True, timeout=200)
                lines = [l for l in (r.stdout + r.stderr).splitlines() if "RATE" in l or "kernel" in l.lower()][:6]
                rec(f"attn_{name}", lines)
        elif what == "one":
            print("RATE", round(ort_variant()), flush=True)
        elif what == "profile":
            rec("ort_graph_rate", round(ort_variant(graph=True)))
            rec("ort_rate", round(ort_variant(profile=True)))
            torch_profile()
        elif what == "decode":
            decode_pipeline()
    finally:
        os.makedirs(OUT, exist_ok=True)
        json.dump(RES, open(os.path.join(OUT, f"probe2-{what}.json"), "w"), indent=1)
