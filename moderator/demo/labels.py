"""A labeled image set for `moderator policy test` against policies/demo.yaml.

`python -m moderator.demo.labels --out labeled/ --n 240` writes `labeled/<concept id>/*.png`
(and `labeled/none/` for images no concept should match), the directory layout `policy test`
reads. Images come fresh from the shapes generator, so the figures are held-out figures.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from moderator.demo.shapes import generate

# Which demo.yaml concept each shape is a positive for; every other shape is a negative.
DEMO_CONCEPTS: dict[str, str] = {
    "red star": "shapes.red_star",
    "blue circle": "shapes.blue_circle",
    "green triangle": "shapes.green_triangle",
    "black square": "shapes.black_square",
    "white star": "shapes.white_star_profile",
}


def write_labeled_set(out: Path, n: int, seed: int, size: int = 128) -> dict[str, int]:
    """Write `n` images under `out`; returns how many went to each folder."""
    counts: dict[str, int] = {}
    for i, sample in enumerate(generate(n, seed, size=size)):
        folder = DEMO_CONCEPTS.get(sample.label, "none")
        target = out / folder
        target.mkdir(parents=True, exist_ok=True)
        sample.image.save(target / f"{i:05d}-{sample.label.replace(' ', '-')}.png")
        counts[folder] = counts.get(folder, 0) + 1
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--n", type=int, default=240)
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args()
    for folder, count in sorted(write_labeled_set(args.out, args.n, args.seed).items()):
        print(f"{count:5d}  {args.out / folder}")


if __name__ == "__main__":
    main()
