"""Manifest + boxes.csv -> batches for detection: letterbox, box-aware augmentation, collate.

Every image is letterboxed into the training canvas (H, W): scaled to fit with its aspect
kept, centred, the rest grey (114, as Darknet and Ultralytics pad), boxes moved with it.
Training adds, each drawn from the sample's own seed (so augmentation is the same with any
number of workers and after a resume, as for classification):

- scale / translate: the letterbox scale times U(1 - scale, 1 + scale), the offset moved by
  up to `translate` of the canvas; what falls outside is cut, and a box keeps its cut part
  only when at least `MIN_VISIBLE` of it is still in the picture (and it is at least 2 px);
- mosaic (probability `mosaic`): four images, each letterboxed as above into one cell of a
  2 x 2 grid whose centre is drawn in the middle half of the canvas;
- mixup (probability `mixup`): the sample blended with another one, Beta(32, 32) weights,
  the boxes of both kept;
- HSV: hue, saturation and value gains; horizontal flip.

Validation's plain letterbox keeps every box of positive area, however small (a 1-px traffic
light far away), so val mAP scores the truths `vislab evaluate` scores.

Ignore regions (KITTI DontCare, COCO crowd, VOC difficult) travel with the boxes, flagged,
so the loss counts neither positives nor negatives inside them.

A batch is (images [B, 3, H, W] in [0, 1], targets [N, 7]: image index in the batch, class
id, x1, y1, x2, y2 in canvas pixels, ignore flag); an ignore region of no class of the run
(DontCare) has class -1. For evaluate and predict, batches are (images, meta [B, 7]:
position, scale x, scale y, pad x, pad y, width, height of the image), so boxes map back to
its pixels (two scales: the pasted size is rounded to whole pixels on each side).
Validation's plain letterbox batches are (images, targets, meta): validation scores boxes
mapped back as evaluate does.

An image whose decoded size is not the manifest's width x height was edited after curation
(resized or cropped in place): its boxes in boxes.csv no longer fit it, so it is unreadable
(`changed_reason`), counted and skipped as a broken file is, in training, validation and
evaluate alike, instead of being scored and trained against stale boxes.

Sampling, resume mid-epoch, DDP sharding, unreadable images and the steps-per-epoch rule are
the classification datamodule's (`DetectDataModule` subclasses it and changes what a sample
is); the splits are the manifest's, validation held out of train (seeded) when it has none.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch
from PIL import Image

from vislab.data.datamodule import (
    BadImages,
    ClassifyDataModule,
    ImageTableDataset,
    Splits,
)
from vislab.data.io import MAX_PIXELS, ImageDecodeError, load_image
from vislab.errors import DatasetError, VislabError

PAD_VALUE = 114
CHANGED = "changed since vislab curate"
MIN_VISIBLE = 0.25  # share of a cut box that must stay in the picture for it to stay a box
MIN_SIDE = 2.0  # pixels


@dataclass(frozen=True)
class DetectAugment:
    """The training augmentation switches (the `detect:` section's, see tasks/detect.py)."""

    flip: float = 0.5
    scale: float = 0.25
    translate: float = 0.1
    hsv_h: float = 0.015
    hsv_s: float = 0.5
    hsv_v: float = 0.3
    mosaic: float = 0.0
    mixup: float = 0.0

    @staticmethod
    def off() -> "DetectAugment":
        return DetectAugment(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)


def canvas_of(size: int | Sequence[int]) -> tuple[int, int]:
    """(H, W) of an `img_size` (N or [H, W])."""
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def letterbox_params(width: int, height: int, canvas: tuple[int, int]) -> tuple[float, int, int]:
    """(scale, pad x, pad y) that fit a width x height image centred into canvas (H, W): the
    pads are whole pixels, half the room the pasted (whole-pixel) size leaves, rounded down
    (as Ultralytics pads), the formula the exported model's metadata gives (export_info)."""
    ch, cw = canvas
    scale = min(cw / width, ch / height)
    nw, nh = pasted_size(width, height, scale)
    return scale, (cw - nw) // 2, (ch - nh) // 2


def unletterbox(
    boxes: torch.Tensor, scale_x: float, scale_y: float, pad_x: float, pad_y: float, width: int, height: int
) -> torch.Tensor:
    """Canvas-pixel boxes [N, 4] back to the image's own pixels, clipped to it. The two
    scales are those of the pasted (whole-pixel) size: on a 3000 x 200 image at 416 the
    height is 28 px, not 27.7, and one scale put a box at y 100-150 back at 101-151.4."""
    out = boxes.clone()
    out[:, [0, 2]] = ((out[:, [0, 2]] - pad_x) / scale_x).clamp(0, width)
    out[:, [1, 3]] = ((out[:, [1, 3]] - pad_y) / scale_y).clamp(0, height)
    return out


def letterbox(
    img: Image.Image, canvas: tuple[int, int], boxes: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float, float, int, int]]:
    """`img` (RGB) fitted centred into a grey canvas (H, W): the pixels, its boxes (rows:
    class, x1, y1, x2, y2, ignore) moved with it, every one of positive area kept, and the
    meta (scale x, scale y, pad x, pad y, width, height) `unletterbox` maps boxes back with.
    The one letterbox of validation, evaluate, predict and serve."""
    w, h = img.size
    scale, px, py = letterbox_params(w, h, canvas)
    ch, cw = canvas
    arr = np.full((ch, cw, 3), PAD_VALUE, np.uint8)
    rows = np.zeros((0, 6)) if boxes is None else boxes
    moved = _paste(arr, img, rows, scale, px, py, (0, 0, cw, ch), every_box=True)
    nw, nh = pasted_size(w, h, scale)
    return arr, moved, (nw / w, nh / h, float(px), float(py), w, h)


def pasted_size(width: int, height: int, scale: float) -> tuple[int, int]:
    """The whole-pixel size an image is resized to at `scale`."""
    return max(1, round(width * scale)), max(1, round(height * scale))


def _paste(
    canvas: np.ndarray,
    img: Image.Image,
    boxes: np.ndarray,
    scale: float,
    ox: float,
    oy: float,
    rect: tuple[int, int, int, int],
    every_box: bool = False,
) -> np.ndarray:
    """Draw `img` scaled by `scale` with its top-left at (ox, oy) into `canvas`, cut to `rect`
    (x1, y1, x2, y2); returns its boxes (rows: class, x1, y1, x2, y2, ignore) moved and cut,
    without those that left the picture. Augmentation also drops boxes cut or shrunk below
    `MIN_VISIBLE` / `MIN_SIDE` (too little left to learn); with `every_box` (the plain
    letterbox of validation) each box of positive area stays, as evaluate scores them all."""
    w, h = img.size
    nw, nh = pasted_size(w, h, scale)
    x1, y1, x2, y2 = rect
    ix, iy = round(ox), round(oy)
    cx1, cy1, cx2, cy2 = max(x1, ix), max(y1, iy), min(x2, ix + nw), min(y2, iy + nh)
    if cx2 > cx1 and cy2 > cy1:
        resized = np.asarray(img.resize((nw, nh), Image.BILINEAR))
        canvas[cy1:cy2, cx1:cx2] = resized[cy1 - iy : cy2 - iy, cx1 - ix : cx2 - ix]
    if len(boxes) == 0:
        return boxes.reshape(0, 6)
    sx, sy = nw / w, nh / h
    moved = boxes.copy()
    moved[:, [1, 3]] = boxes[:, [1, 3]] * sx + ix
    moved[:, [2, 4]] = boxes[:, [2, 4]] * sy + iy
    area = (moved[:, 3] - moved[:, 1]) * (moved[:, 4] - moved[:, 2])
    moved[:, [1, 3]] = moved[:, [1, 3]].clip(x1, x2)
    moved[:, [2, 4]] = moved[:, [2, 4]].clip(y1, y2)
    bw, bh = moved[:, 3] - moved[:, 1], moved[:, 4] - moved[:, 2]
    region = moved[:, 5] > 0
    keep = (bw > 0) & (bh > 0)
    if not every_box:
        keep &= region | ((bw >= MIN_SIDE) & (bh >= MIN_SIDE) & (bw * bh >= MIN_VISIBLE * area))
    return moved[keep]


def changed_reason(now: tuple[int, int], manifest: tuple[int, int]) -> str:
    """Why an image whose size is not the manifest's is unreadable: its boxes are stale."""
    return f"{CHANGED} (now {now[0]}x{now[1]}, the manifest says {manifest[0]}x{manifest[1]}); run vislab curate again"


def manifest_sizes(rows: pd.DataFrame) -> list[tuple[int, int] | None]:
    """Per manifest row its (width, height) as curate read it (None where not recorded)."""
    w = pd.to_numeric(rows["width"], errors="coerce") if "width" in rows else pd.Series([np.nan] * len(rows))
    h = pd.to_numeric(rows["height"], errors="coerce") if "height" in rows else pd.Series([np.nan] * len(rows))
    return [None if pd.isna(a) or pd.isna(b) else (int(a), int(b)) for a, b in zip(w, h)]


def _hsv(arr: np.ndarray, rng: np.random.Generator, aug: DetectAugment) -> np.ndarray:
    """Random hue shift and saturation / value gains (Ultralytics' HSV augmentation)."""
    gains = rng.uniform(-1, 1, 3) * np.array([aug.hsv_h, aug.hsv_s, aug.hsv_v]) + np.array([0.0, 1.0, 1.0])
    hsv = np.asarray(Image.fromarray(arr).convert("HSV")).astype(np.float32)
    hsv[..., 0] = (hsv[..., 0] + gains[0] * 255) % 256
    hsv[..., 1:] = np.clip(hsv[..., 1:] * gains[1:], 0, 255)
    return np.asarray(Image.fromarray(hsv.astype(np.uint8), "HSV").convert("RGB"))


def _unused(img: Image.Image) -> Image.Image:
    """The per-image transform slot of the base dataset (detection transforms boxes too)."""
    return img


class DetectionDataset(ImageTableDataset):
    """Letterboxed (in training, augmented) images of a table with their boxes.

    `boxes[i]` is image i's array of rows (class id, x1, y1, x2, y2, ignore) in its pixels.
    An augmented sample is (image tensor, boxes tensor [n, 6] in canvas pixels), a plain
    letterboxed one (validation) (image tensor, boxes, meta [7]), and with `predict` (image
    tensor, meta [7]); `collate` batches them (targets get the image index first).
    `sizes[i]` is image i's (width, height) in the manifest, which its boxes are of: an
    image decoded at another size raises ImageDecodeError (`changed_reason`).
    """

    def __init__(
        self,
        paths: Sequence[str],
        boxes: Sequence[np.ndarray],
        canvas: tuple[int, int],
        aug: DetectAugment | None = None,
        predict: bool = False,
        sizes: Sequence[tuple[int, int] | None] | None = None,
        max_pixels: int = MAX_PIXELS,
    ) -> None:
        super().__init__(paths, range(len(paths)), transform=_unused, max_pixels=max_pixels)
        self.boxes = [np.asarray(b, dtype=np.float64).reshape(-1, 6) for b in boxes]
        self.sizes = list(sizes) if sizes is not None else [None] * len(self.paths)
        self.canvas = canvas
        self.aug = aug
        self.predict = predict

    def load(self, index: int, seed: int | None = None) -> tuple[torch.Tensor, ...]:
        if seed is None or self.aug is None:
            arr, boxes, meta = self._letterbox(index)
            meta_t = torch.as_tensor(meta, dtype=torch.float32)
            if self.predict:
                return self._tensor(arr), meta_t
            return self._tensor(arr), torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 6), meta_t
        rng = np.random.default_rng(seed)
        arr, boxes = self._augmented(index, rng)
        if self.aug.mixup and rng.random() < self.aug.mixup:
            other, other_boxes = self._augmented(int(rng.integers(len(self))), rng)
            lam = rng.beta(32.0, 32.0)
            arr = (arr.astype(np.float32) * lam + other.astype(np.float32) * (1 - lam)).astype(np.uint8)
            boxes = np.concatenate([boxes, other_boxes])
        return self._tensor(arr), torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 6)

    @staticmethod
    def _tensor(arr: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.array(arr, dtype=np.uint8)).permute(2, 0, 1).float().div_(255)

    def _blank(self) -> np.ndarray:
        return np.full((*self.canvas, 3), PAD_VALUE, np.uint8)

    def _image(self, index: int) -> Image.Image:
        """Image `index` decoded, refused when its size is not the one its boxes are of."""
        img = load_image(self.paths[index], max_pixels=self.max_pixels)
        want = self.sizes[index]
        if want is not None and img.size != tuple(want):
            raise ImageDecodeError(changed_reason(img.size, want), self.paths[index])
        return img

    def _letterbox(self, index: int) -> tuple[np.ndarray, np.ndarray, list[float]]:
        arr, boxes, meta = letterbox(self._image(index), self.canvas, self.boxes[index])
        return arr, boxes, [float(self.targets[index]), *map(float, meta)]

    def _augmented(self, index: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        aug = self.aug
        assert aug is not None
        ch, cw = self.canvas
        canvas = self._blank()
        if aug.mosaic and rng.random() < aug.mosaic:
            xc, yc = int(rng.uniform(0.25, 0.75) * cw), int(rng.uniform(0.25, 0.75) * ch)
            cells = [(0, 0, xc, yc), (xc, 0, cw, yc), (0, yc, xc, ch), (xc, yc, cw, ch)]
            picks = [index, *rng.integers(len(self), size=3).tolist()]
            parts = [self._place(canvas, int(i), cell, rng) for i, cell in zip(picks, cells)]
            boxes = np.concatenate(parts)
        else:
            boxes = self._place(canvas, index, (0, 0, cw, ch), rng)
        if aug.hsv_h or aug.hsv_s or aug.hsv_v:
            canvas = _hsv(canvas, rng, aug)
        if aug.flip and rng.random() < aug.flip:
            canvas = canvas[:, ::-1]
            boxes = boxes.copy()
            boxes[:, [1, 3]] = cw - boxes[:, [3, 1]]
        return canvas, boxes

    def _place(self, canvas: np.ndarray, index: int, rect: tuple[int, int, int, int], rng: np.random.Generator) -> np.ndarray:
        """Image `index` letterboxed into `rect` of the canvas with random scale and shift."""
        aug = self.aug
        assert aug is not None
        img = self._image(index)
        w, h = img.size
        x1, y1, x2, y2 = rect
        rw, rh = x2 - x1, y2 - y1
        scale = min(rw / w, rh / h) * rng.uniform(1 - aug.scale, 1 + aug.scale)
        ox = x1 + (rw - w * scale) / 2 + rng.uniform(-aug.translate, aug.translate) * rw
        oy = y1 + (rh - h * scale) / 2 + rng.uniform(-aug.translate, aug.translate) * rh
        return _paste(canvas, img, self.boxes[index], scale, ox, oy, rect)

    def collate(self, items: list[Any]) -> tuple[Any, ...]:
        """Images stacked; boxes as one [N, 7] table with the image index first, then the
        metas stacked when the samples carry them (predict: the metas only); the batch's
        unreadable samples last, as for classification."""
        good, bad = self.readable(items)
        if not good:
            return None, None, bad
        x = torch.stack([g[0] for g in good])
        if self.predict:
            return x, torch.stack([g[1] for g in good]), bad
        rows = [torch.cat([torch.full((len(b), 1), float(i)), b], 1) for i, b in enumerate(g[1] for g in good)]
        targets = torch.cat(rows) if rows else torch.zeros(0, 7)
        if len(good[0]) == 3:
            return x, targets, torch.stack([g[2] for g in good]), bad
        return x, targets, bad


def detection_table(dataset_dir: str | Path, classes: Sequence[str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """(usable manifest rows, their boxes, class names in id order) of a detection dataset."""
    from vislab.data.boxes import dataset_box_classes, read_boxes
    from vislab.data.manifest import has_boxes, read_manifest, usable

    if not has_boxes(dataset_dir):
        raise DatasetError(
            f"{dataset_dir}: not a detection dataset (no boxes.csv); curate a YOLO, KITTI, COCO or VOC folder "
            "with `vislab curate`, or train it with task: classify"
        )
    rows = usable(read_manifest(dataset_dir))
    boxes = read_boxes(dataset_dir)
    names = list(classes) if classes is not None else dataset_box_classes(dataset_dir, boxes)
    if not names:
        raise DatasetError(f"{dataset_dir}: boxes.csv holds no box of any class; nothing to learn")
    return rows, boxes[boxes["path"].isin(set(rows["path"]))], names


def box_arrays(boxes: pd.DataFrame, paths: Sequence[str], classes: Sequence[str]) -> list[np.ndarray]:
    """Per path, rows (class id, x1, y1, x2, y2, ignore); boxes of a class not in `classes`
    are left out unless they are ignore regions (class -1 for a region of no listed class)."""
    index = {c: i for i, c in enumerate(classes)}
    ids = boxes["class"].map(lambda c: index.get(c, -1)).to_numpy(np.float64)
    table = np.column_stack([ids, boxes[["x1", "y1", "x2", "y2"]].to_numpy(np.float64), boxes["ignore"].to_numpy(np.float64)])
    keep = (ids >= 0) | (table[:, 5] > 0)
    by_path: dict[str, list[np.ndarray]] = {}
    for path, row in zip(boxes["path"].to_numpy()[keep], table[keep]):
        by_path.setdefault(path, []).append(row)
    return [np.array(by_path[p]) if p in by_path else np.zeros((0, 6)) for p in paths]


def detection_splits_of(rows: pd.DataFrame, val_fraction: float, seed: int, classes: list[str]) -> Splits:
    """The manifest's train/val/test rows; without val rows, `val_fraction` of train held
    out (seeded; detection images are not stratified here: curate already stratified)."""
    split = rows["split"].fillna("")
    train, val, test = (rows[split == s].reset_index(drop=True) for s in ("train", "val", "test"))
    source = "manifest"
    if val.empty:
        if len(train) < 2:
            raise DatasetError("no validation images: the manifest has no val split and too few train images to hold some out")
        order = np.random.default_rng(seed).permutation(len(train))
        n = max(1, round(val_fraction * len(train)))
        val, train = train.iloc[np.sort(order[:n])].reset_index(drop=True), train.iloc[np.sort(order[n:])].reset_index(drop=True)
        source = f"held out {val_fraction:.0%} of train (seed {seed}): the manifest has no val split"
    if train.empty:
        raise DatasetError("no training images: the manifest's train split is empty; re-curate with a train share")
    for df in (train, val, test):
        df["target"] = 0
    return Splits(train, val, test, list(classes), source)


class DetectDataModule(ClassifyDataModule):
    """Batches of (letterboxed images, box table) from a curated detection dataset.

    `canvas` is the training input (H, W); `aug` the training augmentation; `classes` the
    run's class names (None: the dataset's own)."""

    def __init__(
        self,
        dataset_dir: str | Path,
        cfg: Any,
        spec: dict[str, Any],
        classes: Sequence[str] | None,
        seed: int,
        canvas: tuple[int, int],
        aug: DetectAugment,
        sanity_batch: bool = False,
        max_pixels: int | None = None,
    ) -> None:
        super().__init__(dataset_dir, cfg, spec, classes, seed, 3, sanity_batch, max_pixels)
        self.canvas = canvas
        self.aug = aug
        self.box_rows: pd.DataFrame | None = None
        self._sizes: Sequence[tuple[int, int] | None] | None = None

    def setup(self, stage: str | None = None) -> None:
        if stage == "predict" or self.splits is not None:
            return
        rows, boxes, names = detection_table(self.dataset_dir, self.classes)
        self.box_rows, self.classes = boxes, names
        self.splits = detection_splits_of(rows, self.cfg.val_fraction, self.seed, names)

    def dataset(self, rows: pd.DataFrame, train: bool) -> DetectionDataset:
        assert self.box_rows is not None and self.classes is not None
        paths = rows["path"].tolist()
        boxes = box_arrays(self.box_rows, paths, self.classes)
        return DetectionDataset(paths, boxes, self.canvas, self.aug if train else None, sizes=manifest_sizes(rows), max_pixels=self.decode_limit())

    def predict_on(  # type: ignore[override]
        self,
        paths: Sequence[str],
        targets: Sequence[int] | None = None,
        *,
        on_unreadable: Callable[[BadImages], None],
        batch_size: int | None = None,
        num_workers: int | None = None,
        sizes: Sequence[tuple[int, int] | None] | None = None,
    ) -> None:
        """Image files to letterbox for evaluate and predict; batches carry each file's meta.
        `sizes`: the manifest's (width, height) of each, when the files are a dataset's."""
        self._sizes = sizes
        super().predict_on(paths, list(range(len(paths))), on_unreadable=on_unreadable, batch_size=batch_size, num_workers=num_workers)

    def predict_dataset(self, paths: list[Path], targets: list[int]) -> DetectionDataset:
        """Letterboxed images with their metas (no boxes): what predict_step maps back."""
        return DetectionDataset(paths, [np.zeros((0, 6))] * len(paths), self.canvas, predict=True, sizes=self._sizes, max_pixels=self.decode_limit())

    def sample_batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        raise VislabError("detection runs have no data-dependent initialisation (sample_batch)")
