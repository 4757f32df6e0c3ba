"""The shipped demo model: loads by name, verifies, and still knows its world."""

import moderator
from moderator.demo.evaluate import zero_shot_accuracy
from moderator.embed.paths import DEMO_DIR


def test_demo_model_ships_inside_the_package_and_is_small() -> None:
    files = {p.name: p.stat().st_size for p in DEMO_DIR.iterdir()}
    assert {"manifest.json", "vision.onnx", "text.onnx", "tokenizer.json", "MODEL_CARD.md"} <= set(
        files
    )
    assert sum(files.values()) < 20 * 1024 * 1024


def test_demo_model_zero_shot_accuracy_on_fresh_images() -> None:
    model = moderator.load_model("demo", providers=("cpu",))
    assert model.model_id == "demo-shapes"
    # 96 images = 4 balanced blocks of the 24 classes, from a seed the card does not use.
    result = zero_shot_accuracy(model, n=96, seed=424242, size=128)
    assert result.overall >= 0.95, result.per_class
