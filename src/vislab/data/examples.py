"""Example data that ships inside installed packages, written out as image folders.

The demo and the docs need a real dataset on a machine with no network: scikit-learn ships
the 1,797 UCI handwritten digits (8x8, 17 grey levels). Writing them as `ROOT/<digit>/*.png`
gives a folder tree exactly like a user's own photos, so the demo exercises the real path.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image


def export_digits(out: str | Path, scale: int = 4) -> int:
    """Write sklearn's digits as `out/<digit>/NNNN.png` (grey, upscaled `scale`x); returns count.

    Existing files with the same content are left alone, so re-running is cheap and idempotent.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    root = Path(out)
    images = (digits.images * (255.0 / 16.0)).round().astype(np.uint8)
    for i, (img, target) in enumerate(zip(images, digits.target)):
        folder = root / str(int(target))
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{i:04d}.png"
        if path.exists():
            continue
        pil = Image.fromarray(img)
        if scale > 1:
            pil = pil.resize((8 * scale, 8 * scale), Image.NEAREST)
        pil.save(path, optimize=False)
    return len(images)


def main() -> None:
    parser = argparse.ArgumentParser(description="Write a bundled example dataset as an image folder tree.")
    parser.add_argument("name", choices=["digits"])
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    n = export_digits(args.out)
    print(f"wrote {n} digit images under {args.out}")


if __name__ == "__main__":
    main()
