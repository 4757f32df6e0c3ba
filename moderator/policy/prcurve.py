"""Precision-recall charts as small PNGs, drawn with Pillow (matplotlib is not a dependency)."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from moderator.policy.evaluate import ConceptReport

WIDTH, HEIGHT = 560, 420
# Plot area inside the canvas: room on the left/bottom for tick labels and axis names.
LEFT, RIGHT, TOP, BOTTOM = 70, 530, 50, 340
FONT_SIZE = 13
GRID = (225, 225, 225)
AXIS = (60, 60, 60)
CURVE = (31, 119, 180)
CURRENT = (214, 39, 40)
TARGET = (44, 160, 44)


def _font(size: int = FONT_SIZE) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow built without FreeType: fixed bitmap font
        return ImageFont.load_default()


def _xy(recall: float, precision: float) -> tuple[float, float]:
    return (
        LEFT + recall * (RIGHT - LEFT),
        BOTTOM - precision * (BOTTOM - TOP),
    )


def draw_pr_curve(report: ConceptReport, target: float, path: Path) -> Path:
    """Write `path` (PNG): the curve, the current threshold (red) and the suggested one (green)."""
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    font = _font()
    for i in range(6):
        v = i / 5
        x, y = _xy(v, v)
        draw.line([(x, TOP), (x, BOTTOM)], fill=GRID)
        draw.line([(LEFT, y), (RIGHT, y)], fill=GRID)
        draw.text((x, BOTTOM + 6), f"{v:.1f}", fill=AXIS, font=font, anchor="mt")
        draw.text((LEFT - 6, y), f"{v:.1f}", fill=AXIS, font=font, anchor="rm")
    draw.rectangle([LEFT, TOP, RIGHT, BOTTOM], outline=AXIS)
    draw.text(((LEFT + RIGHT) / 2, BOTTOM + 24), "recall", fill=AXIS, font=font, anchor="mt")
    label = Image.new("RGB", (120, 20), "white")
    ImageDraw.Draw(label).text((60, 10), "precision", fill=AXIS, font=font, anchor="mm")
    image.paste(label.rotate(90, expand=True), (8, int((TOP + BOTTOM) / 2 - 60)))
    title = f"{report.concept_id}   positives {report.positives}, negatives {report.negatives}"
    draw.text((LEFT, 16), title, fill=(0, 0, 0), font=_font(FONT_SIZE + 2))
    # Dashed line at the target precision.
    _, ty = _xy(0, target)
    for x in range(LEFT, RIGHT, 12):
        draw.line([(x, ty), (min(x + 6, RIGHT), ty)], fill=TARGET)
    points = [_xy(p.recall, p.precision) for p in report.curve]
    if len(points) > 1:
        draw.line(points, fill=CURVE, width=2)
    elif points:
        _dot(draw, points[0], CURVE)
    legend_y = BOTTOM + 44
    if report.target_threshold is not None:
        assert report.target_recall is not None
        assert report.target_precision is not None
        _ring(draw, _xy(report.target_recall, report.target_precision), TARGET)
        text = (
            f"precision >= {target:.2f} from threshold {report.target_threshold:.3f}: "
            f"R {report.target_recall:.2f}"
        )
        _ring(draw, (LEFT + 5, legend_y + 18), TARGET)
        draw.text((LEFT + 16, legend_y + 18), text, fill=AXIS, font=font, anchor="lm")
    text = f"current threshold {report.threshold:.3f}: "
    if report.precision is not None and report.recall is not None:
        _dot(draw, _xy(report.recall, report.precision), CURRENT)
        text += f"P {report.precision:.2f}  R {report.recall:.2f}"
    else:
        text += "no image reaches it" if report.positives else "no positives labeled"
    _dot(draw, (LEFT + 5, legend_y), CURRENT)
    draw.text((LEFT + 16, legend_y), text, fill=AXIS, font=font, anchor="lm")
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG", optimize=True)
    return path


def _dot(draw: ImageDraw.ImageDraw, at: tuple[float, float], color: tuple[int, int, int]) -> None:
    x, y = at
    draw.ellipse([x - 5, y - 5, x + 5, y + 5], fill=color, outline="white")


def _ring(draw: ImageDraw.ImageDraw, at: tuple[float, float], color: tuple[int, int, int]) -> None:
    """Hollow and larger than a dot, so it stays visible when both mark the same point."""
    x, y = at
    draw.ellipse([x - 8, y - 8, x + 8, y + 8], outline=color, width=3)
