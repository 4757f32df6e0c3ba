"""The naive peer of `bench e2e`: the consumer a team writes first, with the usual libraries.

An aiokafka consume loop, one event at a time (or `--batch` events at a time): JSON → base64
(or an HTTP fetch for `image_url`) → PIL → HF `CLIPProcessor` → `CLIPModel` vision tower and
projection in PyTorch (fp16 on CUDA, fp32 on CPU) → cosine against the policy's prompt
embeddings, computed once with the HF text tower → a JSON verdict produced with acks=all →
offset commit. It decides with the same `CompiledPolicy` as the service, so both do the same
scoring work and give comparable decisions; what differs is everything around the model.

Runs as its own process (`python -m moderator.bench.naive ...`), like `moderator serve`, so
neither shares a GIL with the load generator. It writes `--ready-file` once its consumer has
partitions, and stops cleanly on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import io
import json
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.structs import ConsumerRecord
from numpy.typing import NDArray
from PIL import Image

from moderator.policy.load import load_policies
from moderator.policy.score import CompiledPolicy

__all__ = ["NaiveConfig", "NaivePeer", "config_fields", "main", "peer_arguments", "run_peer"]

_FETCH_TIMEOUT_S = 10.0
_MAX_REQUEST_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class NaiveConfig:
    bootstrap: str
    input_topic: str
    verdict_topic: str
    group: str
    checkpoint: Path
    policy: Path
    device: str = "auto"  # "auto": cuda when torch sees one, else cpu
    batch: int = 1
    threads: int = 0  # torch CPU threads; 0 leaves torch's default (one per core)
    ready_file: Path | None = None


class _Ready(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, path: Path | None) -> None:
        self._path = path

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        pass

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        if self._path is not None and assigned:
            self._path.write_text(str(time.time()))


class NaivePeer:
    """Model, processor and policy, loaded once; `run()` consumes until `stop()`."""

    def __init__(self, config: NaiveConfig) -> None:
        import torch
        from transformers import CLIPModel, CLIPProcessor
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]

        self.config = config
        self._torch = torch
        if config.threads:
            torch.set_num_threads(config.threads)
        device = config.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = device
        self.dtype = torch.float16 if device == "cuda" else torch.float32
        self.processor = CLIPProcessor.from_pretrained(str(config.checkpoint))
        model: Any = CLIPModel.from_pretrained(str(config.checkpoint))
        self.model = model.eval().to(device, self.dtype)
        self.policy = self._compile(config.policy)
        self._stopping = asyncio.Event()
        self.answered = 0

    def stop(self) -> None:
        self._stopping.set()

    # --- model ----------------------------------------------------------------------------

    def _texts(self, texts: list[str]) -> NDArray[np.float32]:
        torch = self._torch
        tokens = self.processor(text=texts, padding=True, return_tensors="pt")
        with torch.inference_mode():
            out = self.model.text_model(
                input_ids=tokens["input_ids"].to(self.device),
                attention_mask=tokens["attention_mask"].to(self.device),
            )
            embeds = self.model.text_projection(out.pooler_output)
            embeds = embeds / embeds.norm(dim=-1, keepdim=True)
        result: NDArray[np.float32] = embeds.float().cpu().numpy()
        return result

    def images(self, images: list[Image.Image]) -> NDArray[np.float32]:
        torch = self._torch
        inputs = self.processor(images=images, return_tensors="pt")
        with torch.inference_mode():
            pixels = inputs["pixel_values"].to(self.device, self.dtype)
            pooled = self.model.vision_model(pixel_values=pixels).pooler_output
            embeds = self.model.visual_projection(pooled)
            embeds = embeds / embeds.norm(dim=-1, keepdim=True)
        result: NDArray[np.float32] = embeds.float().cpu().numpy()
        return result

    def _compile(self, path: Path) -> CompiledPolicy:
        """The policy's texts (and example images) embedded once with the HF towers."""
        policies = load_policies(path)
        concepts = policies.concepts
        texts = list(
            dict.fromkeys(t for c in concepts for t in (*c.prompts, *c.counter_prompts, *c.benign))
        )
        rows: list[list[int]] = []
        example_images: list[Image.Image] = []
        for concept in concepts:
            start = len(example_images)
            for file in concept.examples:
                with Image.open(file) as im:
                    example_images.append(im.convert("RGB"))
            rows.append(list(range(start, len(example_images))))
        text_embeddings = self._texts(texts)
        examples = (
            self.images(example_images)
            if example_images
            else np.zeros((0, text_embeddings.shape[1]), np.float32)
        )
        return CompiledPolicy.assemble(
            version="naive",
            name=policies.name,
            model_sha256="naive",
            logit_scale=float(self.model.logit_scale.exp().item()),
            concepts=concepts,
            texts=texts,
            text_embeddings=text_embeddings,
            example_embeddings=examples,
            example_rows=rows,
        )

    # --- the loop -------------------------------------------------------------------------

    async def run(self) -> int:
        config = self.config
        consumer = AIOKafkaConsumer(
            bootstrap_servers=config.bootstrap,
            group_id=config.group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=_MAX_REQUEST_BYTES,
        )
        producer = AIOKafkaProducer(
            bootstrap_servers=config.bootstrap, acks="all", max_request_size=_MAX_REQUEST_BYTES
        )
        consumer.subscribe([config.input_topic], listener=_Ready(config.ready_file))
        await consumer.start()
        await producer.start()
        try:
            async with httpx.AsyncClient(timeout=_FETCH_TIMEOUT_S) as http:
                while not self._stopping.is_set():
                    batches = await consumer.getmany(timeout_ms=200, max_records=config.batch)
                    records = [r for rs in batches.values() for r in rs]
                    if records:
                        await self._handle(records, producer, consumer, http)
        finally:
            await consumer.stop()
            await producer.stop()
        return self.answered

    async def _handle(
        self,
        records: Sequence[ConsumerRecord[bytes, bytes]],
        producer: AIOKafkaProducer,
        consumer: AIOKafkaConsumer,
        http: httpx.AsyncClient,
    ) -> None:
        events = [json.loads(r.value or b"{}") for r in records]
        images = []
        for event in events:
            if "image_b64" in event:
                data = base64.b64decode(event["image_b64"])
            else:
                response = await http.get(event["image_url"])
                response.raise_for_status()
                data = response.content
            images.append(Image.open(io.BytesIO(data)).convert("RGB"))
        embeddings = self.images(images)
        outcomes = self.policy.score(embeddings, [e.get("surface") for e in events])
        sends = []
        for event, outcome in zip(events, outcomes, strict=True):
            verdict = {
                "id": event["id"],
                "decision": outcome.decision.value,
                "matches": [m.wire() for m in outcome.matches],
                "processed_at": datetime.now(UTC).isoformat(),
            }
            sends.append(
                await producer.send(
                    self.config.verdict_topic,
                    json.dumps(verdict).encode(),
                    key=str(event["id"]).encode(),
                )
            )
        await asyncio.gather(*sends)
        offsets: dict[TopicPartition, int] = {}
        for r in records:
            tp = TopicPartition(r.topic, r.partition)
            offsets[tp] = max(offsets.get(tp, 0), r.offset + 1)
        await consumer.commit(offsets)
        self.answered += len(records)


def peer_arguments(description: str, batch: int) -> argparse.ArgumentParser:
    """The command line both peers take (`bench e2e` starts them alike)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--input", required=True)
    parser.add_argument("--verdicts", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--policy", type=Path, required=True)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch", type=int, default=batch)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--ready-file", type=Path)
    return parser


def config_fields(args: argparse.Namespace) -> dict[str, Any]:
    """`NaiveConfig`'s fields from `peer_arguments`' parse."""
    return {
        "bootstrap": args.bootstrap,
        "input_topic": args.input,
        "verdict_topic": args.verdicts,
        "group": args.group,
        "checkpoint": args.checkpoint,
        "policy": args.policy,
        "device": args.device,
        "batch": args.batch,
        "threads": args.threads,
        "ready_file": args.ready_file,
    }


def run_peer(peer: NaivePeer) -> int:
    """Run `peer` until SIGTERM or SIGINT; print how many events it answered."""

    async def serve() -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, peer.stop)
        return await peer.run()

    answered = asyncio.run(serve())
    with contextlib.suppress(OSError):
        print(json.dumps({"answered": answered}), flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = peer_arguments("The naive CLIP moderation consumer.", batch=1).parse_args(argv)
    return run_peer(NaivePeer(NaiveConfig(**config_fields(args))))


if __name__ == "__main__":
    raise SystemExit(main())
