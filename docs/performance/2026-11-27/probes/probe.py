"""Device probe: which model-path and decode variants pay (throwaway, not committed)."""
import json, os, sys, time, threading, subprocess
import numpy as np

RES = {}
def rec(k, v):
    RES[k] = v
    print(k, v, flush=True)

def timeit(fn, seconds=3.0, warm=3, sync=None):
    for _ in range(warm):
        fn()
    if sync: sync()
    n = 0; t = time.perf_counter()
    while time.perf_counter() - t < seconds or n < 3:
        fn(); n += 1
    if sync: sync()
    return n / (time.perf_counter() - t)

def model_probe(batches=(32, 256)):
    import onnxruntime as ort
    ort.preload_dlls()
    import torch
    from moderator.bench.model import resolve_bench_model, torch_encoder
    bm = resolve_bench_model("b32", precision="fp16")
    path = str(bm.onnx_dir / "vision.onnx")
    rec("providers", ort.get_available_providers())
    try:
        import tensorrt  # noqa
        rec("tensorrt", tensorrt.__version__)
    except Exception as e:
        rec("tensorrt", repr(e))
    # where do nodes land?
    so = ort.SessionOptions(); so.log_severity_level = 1
    so.optimized_model_filepath = "/tmp/opt.onnx"
    s = ort.InferenceSession(path, so, providers=["CUDAExecutionProvider"])
    import onnx
    m = onnx.load("/tmp/opt.onnx", load_external_data=False)
    from collections import Counter
    rec("optimized_ops", dict(Counter(n.op_type for n in m.graph.node)))
    def mk(batch, static=False, graph=False, extra=None):
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if static:
            so.add_free_dimension_override_by_name("batch", batch)
        opts = {"device_id": "0"}
        if graph:
            opts["enable_cuda_graph"] = "1"
        if extra: opts.update(extra)
        return ort.InferenceSession(path, so, providers=[("CUDAExecutionProvider", opts)])
    for batch in batches:
        host = np.random.default_rng(0).integers(0, 256, (batch, 224, 224, 3), dtype=np.uint8)
        dev = torch.from_numpy(host).cuda()
        out = torch.empty((batch, 512), dtype=torch.float32, device="cuda")
        def bound(sess):
            b = sess.io_binding()
            b.bind_input("pixels", "cuda", 0, np.uint8, list(dev.shape), dev.data_ptr())
            b.bind_output("embeddings", "cuda", 0, np.float32, list(out.shape), out.data_ptr())
            return b
        variants = {}
        s = mk(batch)
        def host_run():
            b = s.io_binding(); b.bind_cpu_input("pixels", host); b.bind_output("embeddings", "cuda", 0)
            s.run_with_iobinding(b); b.copy_outputs_to_cpu()
        variants["host_in"] = host_run
        b1 = bound(s)
        def dev_run(sess=s, b=b1):
            sess.run_with_iobinding(b); out.cpu()
        variants["dev_in"] = dev_run
        try:
            s2 = mk(batch, static=True); b2 = bound(s2)
            variants["dev_in_static"] = lambda: (s2.run_with_iobinding(b2), out.cpu())
        except Exception as e:
            rec(f"static_err_{batch}", repr(e))
        try:
            s3 = mk(batch, static=True, graph=True); b3 = bound(s3)
            s3.run_with_iobinding(b3)
            variants["dev_in_static_graph"] = lambda: (s3.run_with_iobinding(b3), out.cpu())
        except Exception as e:
            rec(f"graph_err_{batch}", repr(e)[:500])
        try:
            s4 = mk(batch, static=True, extra={"cudnn_conv_algo_search": "EXHAUSTIVE", "do_copy_in_default_stream": "0", "prefer_nhwc": "1"}); b4 = bound(s4)
            variants["dev_in_static_nhwc"] = lambda: (s4.run_with_iobinding(b4), out.cpu())
        except Exception as e:
            rec(f"nhwc_err_{batch}", repr(e)[:300])
        for name, fn in variants.items():
            try:
                rec(f"ort_{name}_{batch}", round(timeit(fn) * batch))
            except Exception as e:
                rec(f"ort_{name}_{batch}_err", repr(e)[:300])
        # torch peers on device input
        if True:
            # reach into closure: rebuild forward on device tensors
            import torch.nn.functional as F
            from transformers import CLIPModel
            if True:
                clip = CLIPModel.from_pretrained(str(bm.hf_dir)).eval().half().cuda()
                off = torch.tensor([0.48145466*255, 0.4578275*255, 0.40821073*255], device="cuda", dtype=torch.half).view(1,3,1,1)
                sc = torch.tensor([0.26862954*255, 0.26130258*255, 0.27577711*255], device="cuda", dtype=torch.half).view(1,3,1,1)
                def fwd(p):
                    x = (p.permute(0,3,1,2).half() - off) / sc
                    e = clip.visual_projection(clip.vision_model(pixel_values=x).pooler_output)
                    return e / e.norm(dim=-1, keepdim=True)
                fwds = {"eager": fwd, "compile": torch.compile(fwd, dynamic=False)}
                if batch == 256: fwds["compile_max"] = torch.compile(fwd, dynamic=False, mode="max-autotune-no-cudagraphs")
        for name, f in fwds.items():
            def run(f=f):
                with torch.inference_mode():
                    f(dev).float().cpu()
            try:
                t = time.perf_counter(); run(); rec(f"torch_{name}_{batch}_first_s", round(time.perf_counter() - t, 1))
                rec(f"torch_{name}_{batch}", round(timeit(run) * batch))
            except Exception as e:
                rec(f"torch_{name}_{batch}_err", repr(e)[:300])

def decode_probe(n=256, batch=128):
    import torch, torch.nn.functional as F
    from moderator.bench.images import bench_images
    from moderator.bench.decode import gpu_preprocess, gpu_decoder
    from moderator.pipeline.decode.cpu import PreprocessSpec
    spec = PreprocessSpec.for_model(224, 224)
    imgs = [i.data for i in bench_images(n, png_fraction=0.0)]
    rec("mean_jpeg_bytes", int(np.mean([len(b) for b in imgs])))
    chunks = [imgs[i:i+batch] for i in range(0, n, batch)]
    sync = torch.cuda.synchronize
    name, dec = gpu_decoder()
    def dec_only():
        for c in chunks: dec(c, "cuda")
    rec("tv_decode_only", round(timeit(dec_only, sync=sync) * n))
    def cur():
        for c in chunks: gpu_preprocess(c, spec, decode=dec)
    rec("tv_current", round(timeit(cur, sync=sync) * n))
    from torchvision.io import decode_jpeg, ImageReadMode
    tens = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in imgs]
    tchunks = [tens[i:i+batch] for i in range(0, n, batch)]
    def dec_pre():
        for c in tchunks: decode_jpeg(c, mode=ImageReadMode.RGB, device="cuda")
    rec("tv_decode_only_pretensor", round(timeit(dec_pre, sync=sync) * n))
    def crop_first(decoded, half=False):
        x = torch.stack(decoded)  # n,3,768,1024
        # resize to 298x224 then crop 224: equivalently crop source columns first
        h, w = x.shape[2], x.shape[3]
        nw = int(224 * w / h)
        left = (nw - 224) // 2
        # source span for output cols [left, left+224): scale = w/nw
        s = w / nw
        x0 = int(left * s) - 8; x1 = int((left + 224) * s) + 8
        x0 = max(0, x0); x1 = min(w, x1)
        xx = x[:, :, :, x0:x1].to(torch.half if half else torch.float)
        out_w = round((x1 - x0) / s)
        r = F.interpolate(xx, size=(224, out_w), mode="bicubic", antialias=True, align_corners=False)
        st = (out_w - 224) // 2
        return r[:, :, :, st:st+224].round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()
    def cf(half=False):
        for c in tchunks: crop_first(decode_jpeg(c, mode=ImageReadMode.RGB, device="cuda"), half)
    rec("tv_cropfirst", round(timeit(cf, sync=sync) * n))
    rec("tv_cropfirst_half", round(timeit(lambda: cf(True), sync=sync) * n))
    # threads
    def threaded(k, fn_chunk):
        def worker(cs, stop, counts, i):
            st = torch.cuda.Stream()
            with torch.cuda.stream(st):
                while not stop.is_set():
                    for c in cs:
                        fn_chunk(c); counts[i] += len(c)
                st.synchronize()
        stop = threading.Event(); counts = [0]*k
        ths = [threading.Thread(target=worker, args=(tchunks, stop, counts, i)) for i in range(k)]
        t = time.perf_counter(); [x.start() for x in ths]
        time.sleep(4); stop.set(); [x.join() for x in ths]
        return round(sum(counts) / (time.perf_counter() - t))
    for k in (2, 4):
        rec(f"tv_threads{k}_cropfirst", threaded(k, lambda c: crop_first(decode_jpeg(c, mode=ImageReadMode.RGB, device="cuda"), True)))
    try:
        from nvidia import nvimgcodec
        for backend in ("hw", "gpu", "default"):
            try:
                if backend == "hw":
                    d = nvimgcodec.Decoder(backends=[nvimgcodec.Backend(nvimgcodec.BackendKind.HW_GPU_ONLY)])
                elif backend == "gpu":
                    d = nvimgcodec.Decoder(backends=[nvimgcodec.Backend(nvimgcodec.BackendKind.GPU_ONLY)])
                else:
                    d = nvimgcodec.Decoder()
                def nv():
                    for c in chunks:
                        out = d.decode(c)
                    torch.as_tensor(out[0], device="cuda")
                rec(f"nvimg_{backend}_decode", round(timeit(nv, sync=sync) * n))
                def nvpre():
                    for c in chunks:
                        out = d.decode(c)
                        ts = [torch.as_tensor(o, device="cuda").permute(2, 0, 1) for o in out]
                        crop_first(ts, True)
                rec(f"nvimg_{backend}_cropfirst_half", round(timeit(nvpre, sync=sync) * n))
            except Exception as e:
                rec(f"nvimg_{backend}_err", repr(e)[:300])
    except Exception as e:
        rec("nvimg_err", repr(e)[:300])

if __name__ == "__main__":
    what = sys.argv[1:]
    try:
        if "decode" in what: decode_probe()
        if "model" in what: model_probe()
    finally:
        os.makedirs(os.environ.get("OUT", "/tmp/out"), exist_ok=True)
        json.dump(RES, open(os.path.join(os.environ.get("OUT", "/tmp/out"), "probe.json"), "w"), indent=1)
