"""Boxes drawn on images: predictions in red, truth in green (the report's and predict's colours)."""

from __future__ import annotations

from typing import Sequence

from PIL import Image, ImageDraw

TRUTH = (40, 200, 70)
PREDICTED = (230, 40, 40)


def draw_boxes(
    img: Image.Image, boxes: Sequence[Sequence[float]], labels: Sequence[str], color: tuple[int, int, int], width: int | None = None
) -> Image.Image:
    """`img` (a copy, RGB) with each box outlined in `color` and its label above it."""
    out = img.convert("RGB").copy()
    draw = ImageDraw.Draw(out)
    w = width or max(1, round(max(out.size) / 300))
    for box, label in zip(boxes, labels):
        x1, y1, x2, y2 = (float(v) for v in box)
        draw.rectangle([x1, y1, x2, y2], outline=color, width=w)
        if label:
            left, top, right, bottom = draw.textbbox((x1, y1), label)
            th = bottom - top
            ty = y1 - th - 2 if y1 - th - 2 >= 0 else y1
            draw.rectangle([x1, ty, x1 + (right - left) + 4, ty + th + 2], fill=color)
            draw.text((x1 + 2, ty), label, fill=(255, 255, 255))
    return out
