"""The demo trainer: serve-time preprocessing parity, the tokenizer's contract, a smoke run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from moderator.demo import shapes  # noqa: E402
from moderator.export import train_demo  # noqa: E402

pytestmark = pytest.mark.export


@pytest.mark.parametrize(("height", "width"), [(224, 224), (96, 96), (120, 200), (333, 97)])
def test_training_pixels_match_the_saved_image_processor(height: int, width: int) -> None:
    rng = np.random.default_rng(height * width)
    image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    ours = train_demo.to_model_pixels(image).astype(np.float64) / 255.0
    ours = (ours - train_demo.IMAGE_MEAN) / train_demo.IMAGE_STD
    processor = train_demo.build_processor()
    theirs = processor(images=image, return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)
    assert ours.shape == (train_demo.IMAGE_SIZE, train_demo.IMAGE_SIZE, 3)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_tokenizer_round_trips_and_ends_every_text_with_the_highest_id(tmp_path: Path) -> None:
    train_demo.build_tokenizer().save_pretrained(tmp_path)
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path)
    batch = tokenizer(["a photo of a RED circle", "a frobnicated star"], padding=True)
    first, second = batch["input_ids"]
    assert first[0] == tokenizer.bos_token_id
    assert first[-1] == tokenizer.eos_token_id == len(tokenizer) - 1
    words = ["a", "photo", "of", "a", "red", "circle"]
    assert tokenizer.convert_ids_to_tokens(first[1:-1]) == words
    assert tokenizer.unk_token_id in second
    assert second[-1] == tokenizer.pad_token_id  # shorter text padded after its eos
    assert tokenizer.model_max_length == train_demo.CONTEXT_LENGTH


def test_every_caption_fits_the_context() -> None:
    tokenizer = train_demo.build_tokenizer()
    rng = np.random.default_rng(0)
    longest = max(
        len(tokenizer(shapes.captions(s, c, rng))["input_ids"])
        for s, c in shapes.combos()
        for _ in range(20)
    )
    assert longest + 1 <= train_demo.CONTEXT_LENGTH  # +1 for a spliced unknown word


def test_batches_are_a_function_of_seed_and_step_only() -> None:
    a = train_demo.ShapeBatches(seed=0, batch_size=4, steps=3)
    b = train_demo.ShapeBatches(seed=0, batch_size=4, steps=3)
    pixels_a, labels_a, texts_a = a[2]
    pixels_b, labels_b, texts_b = b[2]
    assert torch.equal(pixels_a, pixels_b)
    assert torch.equal(labels_a, labels_b)
    assert texts_a == texts_b
    assert not torch.equal(a[1][0], pixels_a)
    assert pixels_a.shape == (4, train_demo.IMAGE_SIZE, train_demo.IMAGE_SIZE, 3)


def test_label_aware_loss_is_lowest_when_same_class_pairs_align() -> None:
    labels = torch.tensor([0, 0, 1])
    aligned = torch.nn.functional.normalize(torch.tensor([[1.0, 0], [1, 0], [0, 1]]), dim=-1)
    crossed = torch.nn.functional.normalize(torch.tensor([[0.0, 1], [0, 1], [1, 0]]), dim=-1)
    scale = torch.tensor(np.log(10.0))
    good = train_demo.label_aware_clip_loss(aligned, aligned, labels, scale)
    bad = train_demo.label_aware_clip_loss(aligned, crossed, labels, scale)
    assert good < bad


def test_five_step_run_writes_a_loadable_checkpoint(tmp_path: Path) -> None:
    config = train_demo.TrainConfig(
        steps=5, batch_size=16, warmup_steps=2, workers=0, eval_every=5, eval_images=24
    )
    report = train_demo.train(tmp_path, config, progress=lambda _: None)

    written = {p.name for p in tmp_path.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "preprocessor_config.json",
        "training.json",
    } <= written
    saved = json.loads((tmp_path / "training.json").read_text())
    assert saved == report
    assert saved["config"]["steps"] == 5
    assert 0.0 <= saved["held_out"]["top1"] <= 1.0
    assert len(saved["held_out"]["top1_per_class"]) == 24
    assert {"torch", "transformers"} <= set(saved["versions"])

    model = transformers.CLIPModel.from_pretrained(tmp_path)
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert model.config.text_config.eos_token_id == tokenizer.eos_token_id
    assert model.config.text_config.pad_token_id == tokenizer.pad_token_id
    assert model.config.text_config.eos_token_id != 2  # HF pools at the first eos, not argmax
    assert model.config.vision_config.image_size == train_demo.IMAGE_SIZE
    processor = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert processor["image_processor_type"] == "CLIPImageProcessor"
    assert processor["crop_size"] == {"height": 64, "width": 64}
