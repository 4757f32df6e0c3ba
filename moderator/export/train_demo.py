"""Train the demo CLIP from scratch on procedural shapes, so tests and the offline demo run a
model with real (if tiny) semantics while the Hugging Face hub is out of reach.

    python -m moderator.export.train_demo --out DIR [--steps N] [--device cpu|cuda] [--seed 0]

DIR is a `save_pretrained` directory (CLIPModel, fast tokenizer, CLIPImageProcessor config) that
`moderator.export.clip.export_clip` turns into ONNX, plus `training.json` with the run's figures.

Loss: CLIP's symmetric cross-entropy, but with *label-aware* targets. There are only 24 classes,
so a batch of 256 holds ~10 pictures of each; the standard loss would push a red circle away from
another red circle's caption in the same batch. Here every caption of the image's class is a
correct match (targets spread evenly over them), which is the same objective without that noise.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from PIL import Image
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import (
    CLIPConfig,
    CLIPModel,
    CLIPTextConfig,
    CLIPVisionConfig,
    PreTrainedTokenizerFast,
)

try:  # transformers ≥ 5.x names the Pillow backend explicitly; older releases have one class
    from transformers.models.clip.image_processing_pil_clip import (
        CLIPImageProcessorPil as _ImageProcessor,
    )
except ImportError:  # pragma: no cover - depends on the installed transformers
    from transformers import CLIPImageProcessor as _ImageProcessor  # type: ignore[assignment]

from moderator.demo import shapes
from moderator.demo.evaluate import EVAL_SEED, ZeroShotResult, accuracy_from_embeddings

# Model geometry. 64 px with 8 px patches gives 64 patch tokens: enough to see a 14 px shape,
# cheap enough to train on a CPU. Both towers together are ~1.6 M parameters (~6.5 MB fp32).
IMAGE_SIZE = 64
PATCH_SIZE = 8
VISION_WIDTH = 128
VISION_LAYERS = 4
TEXT_WIDTH = 128
TEXT_LAYERS = 3
HEADS = 4
PROJECTION_DIM = 128
# Context length: captions need ≤ 11 tokens; 32 leaves room for hand-written policy prompts.
CONTEXT_LENGTH = 32
# CLIP's own normalization constants, so the processor config looks like any CLIP's.
IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)
# Training renders at a random side in this range, then resizes to IMAGE_SIZE like the processor,
# so the model sees the same resampling artefacts at every source resolution it will meet.
RENDER_SIZES = (96, 224)
# How often a caption gets an out-of-vocabulary word spliced in, so `<unk>` has a trained,
# harmless embedding when a hand-written prompt uses a word the demo vocabulary lacks.
UNK_WORD_PROB = 0.1

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<|startoftext|>", "<|endoftext|>"


@dataclass(frozen=True)
class TrainConfig:
    # On an H200 this reached 100% held-out top-1 by step 2250 (batch 128 at lr 1e-3: 99.2%).
    steps: int = 3000
    batch_size: int = 256  # ~10 images per class per batch
    lr: float = 2e-3
    warmup_steps: int = 150
    weight_decay: float = 0.05
    seed: int = 0
    device: str = "cpu"
    threads: int = 1  # torch intra-op threads; the machine is shared
    workers: int = 1  # DataLoader processes rendering batches; 0 renders in the main process
    eval_every: int = 250
    eval_images: int = 480  # 20 per class
    eval_seed: int = EVAL_SEED


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer over exactly the caption vocabulary.

    The vocabulary is the closed set of words the caption templates can produce, so it is built
    from that list rather than by counting a sampled corpus (same result, no sampling luck).
    `<|endoftext|>` takes the highest id, so eos pooling works under both conventions HF CLIP
    knows: argmax of input ids, and first position of `eos_token_id` (used here, since the id
    is not 2).
    """
    words = shapes.caption_words()
    vocab = {PAD: 0, UNK: 1, BOS: 2}
    for word in words:
        vocab[word] = len(vocab)
    vocab[EOS] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}",
        special_tokens=[(BOS, vocab[BOS]), (EOS, vocab[EOS])],
    )
    return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        model_max_length=CONTEXT_LENGTH,
    )


def build_model(tokenizer: PreTrainedTokenizerFast) -> CLIPModel:
    text = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=TEXT_WIDTH,
        intermediate_size=4 * TEXT_WIDTH,
        num_hidden_layers=TEXT_LAYERS,
        num_attention_heads=HEADS,
        max_position_embeddings=CONTEXT_LENGTH,
        projection_dim=PROJECTION_DIM,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    vision = CLIPVisionConfig(
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        hidden_size=VISION_WIDTH,
        intermediate_size=4 * VISION_WIDTH,
        num_hidden_layers=VISION_LAYERS,
        num_attention_heads=HEADS,
        projection_dim=PROJECTION_DIM,
    )
    config = CLIPConfig(
        text_config=text.to_dict(),
        vision_config=vision.to_dict(),
        projection_dim=PROJECTION_DIM,
    )
    return CLIPModel(config)


def build_processor() -> Any:
    """Saved as `CLIPImageProcessor`; the Pil class avoids the torchvision-missing warning."""
    return _ImageProcessor(
        size={"shortest_edge": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_mean=list(IMAGE_MEAN),
        image_std=list(IMAGE_STD),
    )


def to_model_pixels(image: Image.Image) -> NDArray[np.uint8]:
    """HWC uint8 at IMAGE_SIZE, resampled exactly as CLIPImageProcessor does it.

    Shortest edge to IMAGE_SIZE with bicubic (PIL, no reducing gap; the long edge truncated,
    not rounded, as HF computes it), then a centre crop with floor offsets.
    """
    image = image.convert("RGB")
    w, h = image.size
    short, long = min(w, h), max(w, h)
    new_long = int(IMAGE_SIZE * long / short)
    new_w, new_h = (IMAGE_SIZE, new_long) if w <= h else (new_long, IMAGE_SIZE)
    image = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
    left, top = (new_w - IMAGE_SIZE) // 2, (new_h - IMAGE_SIZE) // 2
    return np.asarray(image.crop((left, top, left + IMAGE_SIZE, top + IMAGE_SIZE)), np.uint8)


def _splice_unknown(caption: str, rng: np.random.Generator) -> str:
    words = caption.split()
    words.insert(int(rng.integers(len(words) + 1)), "zzunk")  # any word outside the vocabulary
    return " ".join(words)


class ShapeBatches(torch.utils.data.Dataset[tuple[torch.Tensor, torch.Tensor, list[str]]]):
    """Batch `i` is a pure function of (seed, i): identical with any number of workers."""

    def __init__(self, seed: int, batch_size: int, steps: int) -> None:
        self.seed, self.batch_size, self.steps = seed, batch_size, steps

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, step: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        rng = np.random.default_rng([self.seed, step])
        all_combos = shapes.combos()
        labels = rng.integers(len(all_combos), size=self.batch_size)
        pixels = np.empty((self.batch_size, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
        texts: list[str] = []
        for row, label in enumerate(labels):
            shape, color = all_combos[int(label)]
            side = int(rng.integers(RENDER_SIZES[0], RENDER_SIZES[1] + 1))
            pixels[row] = to_model_pixels(shapes.render(shape, color, rng, size=side))
            text = shapes.captions(shape, color, rng)
            if rng.random() < UNK_WORD_PROB:
                text = _splice_unknown(text, rng)
            texts.append(text)
        return torch.from_numpy(pixels), torch.from_numpy(labels), texts


class _Normalize:
    """uint8 NHWC → normalized float NCHW on the training device."""

    def __init__(self, device: torch.device) -> None:
        self.mean = torch.tensor(IMAGE_MEAN, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGE_STD, device=device).view(1, 3, 1, 1)
        self.device = device

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.to(self.device).permute(0, 3, 1, 2).float().div_(255.0)
        return (x - self.mean) / self.std


def _image_embeds(model: CLIPModel, pixel_values: torch.Tensor) -> torch.Tensor:
    # transformers 5's get_image_features may return an output object; go through the parts.
    pooled = model.vision_model(pixel_values=pixel_values).pooler_output
    return F.normalize(model.visual_projection(pooled), dim=-1)


def _text_embeds(
    model: CLIPModel, tokenizer: PreTrainedTokenizerFast, texts: Sequence[str], device: torch.device
) -> torch.Tensor:
    batch = tokenizer(list(texts), padding=True, return_tensors="pt").to(device)
    pooled = model.text_model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
    ).pooler_output
    return F.normalize(model.text_projection(pooled), dim=-1)


def label_aware_clip_loss(
    image: torch.Tensor, text: torch.Tensor, labels: torch.Tensor, logit_scale: torch.Tensor
) -> torch.Tensor:
    """Symmetric InfoNCE whose targets are every same-class pair, not just the diagonal."""
    logits = logit_scale.exp().clamp(max=100.0) * image @ text.T
    same = (labels[:, None] == labels[None, :]).float()
    targets = same / same.sum(dim=1, keepdim=True)
    loss_i = torch.sum(-targets * F.log_softmax(logits, dim=1), dim=1).mean()
    loss_t = torch.sum(-targets * F.log_softmax(logits.T, dim=1), dim=1).mean()
    return (loss_i + loss_t) / 2


@torch.no_grad()
def evaluate(
    model: CLIPModel,
    tokenizer: PreTrainedTokenizerFast,
    eval_pixels: torch.Tensor,
    eval_labels: list[int],
    normalize: _Normalize,
) -> ZeroShotResult:
    """Held-out zero-shot top-1: cosine against the 24 canonical class prompts."""
    model.eval()  # type: ignore[no-untyped-call]
    text = _text_embeds(model, tokenizer, shapes.class_prompts(), normalize.device)
    chunks = [
        _image_embeds(model, normalize(eval_pixels[i : i + 256]))
        for i in range(0, len(eval_pixels), 256)
    ]
    model.train()
    image = torch.cat(chunks)
    return accuracy_from_embeddings(
        image.cpu().numpy().astype(np.float32), text.cpu().numpy().astype(np.float32), eval_labels
    )


def _eval_set(n: int, seed: int) -> tuple[torch.Tensor, list[int]]:
    """Rendered at shapes.generate's default 224 px, the size `make demo` and tests use."""
    index = {combo: i for i, combo in enumerate(shapes.combos())}
    pixels, labels = [], []
    for sample in shapes.generate(n, seed):
        pixels.append(to_model_pixels(sample.image))
        labels.append(index[(sample.shape, sample.color)])
    return torch.from_numpy(np.stack(pixels)), labels


def _seed_everything(seed: int, device: torch.device) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if device.type == "cuda":
        # cuBLAS needs a fixed workspace for deterministic matmuls; must be set before init.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)


def _lr_at(step: int, config: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to zero."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.lr * 0.5 * (1 + math.cos(math.pi * progress))


def train(
    out: Path,
    config: TrainConfig,
    progress: Callable[[str], None] = print,
    *,
    command: str | None = None,
) -> dict[str, Any]:
    """Train, evaluate, save to `out`; returns what `training.json` holds.

    Torch's global switches (determinism, thread count) are restored afterwards, so callers
    such as tests see the process as they left it.
    """
    deterministic, threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    try:
        return _train(out, config, progress, command)
    finally:
        torch.use_deterministic_algorithms(deterministic)
        torch.set_num_threads(threads)


def _train(
    out: Path, config: TrainConfig, progress: Callable[[str], None], command: str | None
) -> dict[str, Any]:
    device = torch.device(config.device)
    _seed_everything(config.seed, device)
    torch.set_num_threads(config.threads)
    tokenizer = build_tokenizer()
    model = build_model(tokenizer).to(device)  # type: ignore[arg-type]
    model.train()
    params = sum(p.numel() for p in model.parameters())
    progress(f"model params={params} device={device} threads={config.threads}")

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    keep = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": config.weight_decay},
            {"params": keep, "weight_decay": 0},
        ],
        lr=config.lr,
    )
    normalize = _Normalize(device)
    eval_pixels, eval_labels = _eval_set(config.eval_images, config.eval_seed)
    loader = torch.utils.data.DataLoader(
        ShapeBatches(config.seed, config.batch_size, config.steps),
        batch_size=None,
        shuffle=False,
        num_workers=config.workers,
        prefetch_factor=4 if config.workers else None,
    )

    history: list[dict[str, Any]] = []
    result: ZeroShotResult | None = None
    started = time.perf_counter()
    for step, (pixels, labels, texts) in enumerate(loader):
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, config)
        image = _image_embeds(model, normalize(pixels))
        text = _text_embeds(model, tokenizer, texts, device)
        loss = label_aware_clip_loss(image, text, labels.to(device), model.logit_scale)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        done = step + 1
        if done % 50 == 0 or done == 1:
            progress(
                f"step={done} loss={loss.item():.4f} lr={_lr_at(step, config):.2e} "
                f"scale={model.logit_scale.exp().item():.1f} "
                f"elapsed={time.perf_counter() - started:.1f}s"
            )
        if done % config.eval_every == 0 or done == config.steps:
            result = evaluate(model, tokenizer, eval_pixels, eval_labels, normalize)
            elapsed = time.perf_counter() - started
            history.append({"step": done, "top1": result.overall, "elapsed_s": round(elapsed, 1)})
            progress(f"eval step={done} top1={result.overall:.4f} elapsed={elapsed:.1f}s")
    elapsed = time.perf_counter() - started
    if result is None:
        raise RuntimeError("training ran no steps")

    out.mkdir(parents=True, exist_ok=True)
    model.to("cpu").save_pretrained(out)
    tokenizer.save_pretrained(out)
    build_processor().save_pretrained(out)
    report: dict[str, Any] = {
        "command": command,
        "config": asdict(config),
        "parameters": params,
        "train_seconds": round(elapsed, 1),
        "device": _device_name(device),
        "held_out": {
            "seed": config.eval_seed,
            "images": config.eval_images,
            "top1": result.overall,
            "top1_per_class": result.per_class,
        },
        "history": history,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": _version("transformers"),
            "tokenizers": _version("tokenizers"),
            "numpy": np.__version__,
            "pillow": _version("pillow"),
        },
    }
    (out / "training.json").write_text(json.dumps(report, indent=2) + "\n")
    progress(f"saved {out} top1={result.overall:.4f} train_seconds={elapsed:.1f}")
    return report


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return f"cpu:{platform.processor() or platform.machine()}"


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def main(argv: Sequence[str] | None = None) -> None:
    defaults = TrainConfig()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, required=True, help="save_pretrained directory")
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--device", choices=["cpu", "cuda"], default=defaults.device)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--threads", type=int, default=defaults.threads)
    parser.add_argument("--workers", type=int, default=defaults.workers)
    parser.add_argument("--eval-every", type=int, default=defaults.eval_every)
    parser.add_argument("--eval-images", type=int, default=defaults.eval_images)
    args = parser.parse_args(argv)
    config = TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup_steps=min(defaults.warmup_steps, max(1, args.steps // 10)),
        seed=args.seed,
        device=args.device,
        threads=args.threads,
        workers=args.workers,
        eval_every=args.eval_every,
        eval_images=args.eval_images,
    )
    train(
        args.out,
        config,
        command=shlex.join(["python", "-m", "moderator.export.train_demo", *sys.argv[1:]]),
    )


if __name__ == "__main__":
    main()
