from pathlib import Path

from moderator.demo.labels import DEMO_CONCEPTS, write_labeled_set
from moderator.policy import load_policies

ROOT = Path(__file__).resolve().parents[3]


def test_labeled_set_layout_matches_the_demo_policy(tmp_path: Path) -> None:
    counts = write_labeled_set(tmp_path, 48, seed=3, size=32)
    # 48 images = two balanced blocks of the 24 shapes: each concept gets its 2 positives.
    assert counts == {**{c: 2 for c in DEMO_CONCEPTS.values()}, "none": 38}
    assert len(list((tmp_path / "shapes.red_star").glob("*.png"))) == 2
    ids = {c.id for c in load_policies(ROOT / "policies" / "demo.yaml").concepts}
    assert set(DEMO_CONCEPTS.values()) <= ids
