"""Batches of crop-detection samples (`data/crops.py`) from a curated photo dataset.

- train: every usable `train` row once an epoch, in a seeded order (`EpochSampler`), each
  image's sample made on the fly and seeded by (run seed, epoch, image), so it is the same
  with any number of workers and after a resume (which continues mid-epoch as
  classification does); `samples_per_image` K > 1 draws K samples from one decode of the
  photo (decoding and the full-size resize are most of a sample's cost on a CPU), and a
  batch then holds batch_size // K photos, K samples each;
- val / evaluate: the fixed evaluation set of `eval_samples` (each image once uncropped and
  `eval_crops_per_image` times cropped, seeded by `eval_seed`): the same crops in every epoch,
  run and process;
- predict: image files read whole (never cropped), all at one fixed seeded resize.

An image that cannot be decoded is left out of its batch and logged (`unreadable`, read by
the health monitor; evaluate passes a handler that refuses). Images too small for the
smallest crop's patch grid are refused before training, naming the first, as curate's
`--min-size` would have.

Batches are `CropSample`s: (thumb uint8, patches uint8, cells, rect, cropped).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import lightning as L
import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, default_collate

from vislab.config import DataConfig
from vislab.config_crops import CropsConfig
from vislab.data.crops import CropSample, EvalItem, eval_samples, load_sample, make_sample, plan_sample, render_sample, sample_seed
from vislab.data.datamodule import BadImages, EpochSampler, UnreadableLog, loop_position, train_min_batch
from vislab.data.io import MAX_PIXELS, ImageDecodeError, load_image
from vislab.errors import DatasetError, SettingError, VislabError


class _Failed(tuple):
    """(path, reason) of a sample whose image could not be decoded."""


class ImageEpochSampler(EpochSampler):
    """`EpochSampler`'s order, with each training index's seed keyed by the IMAGE (run seed,
    epoch, index), not by its position: an image's sample does not depend on the order."""

    def __iter__(self) -> Iterator[Any]:
        order = self._order()
        start, self.skip = self.skip, 0
        for pos in range(start, len(order)):
            yield (order[pos], sample_seed(self.seed, self.epoch, order[pos])) if self.train else order[pos]


class TrainSamples(Dataset):
    """Training samples: key (index, seed) -> the image's sample under that seed."""

    def __init__(self, paths: Sequence[str], cfg: CropsConfig, max_pixels: int = MAX_PIXELS) -> None:
        self.paths, self.cfg, self.max_pixels = list(paths), cfg, max_pixels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: tuple[int, int]) -> list[CropSample] | _Failed:
        """The image's `samples_per_image` samples: the first seeded by `seed` (one sample per
        image is the same as ever), the others by (seed, k)."""
        index, seed = key
        path = self.paths[index]
        try:
            image = load_image(path, max_pixels=self.max_pixels)
        except ImageDecodeError as err:
            return _Failed((path, err.reason))
        seeds = [seed, *(np.random.default_rng([seed, k]) for k in range(1, self.cfg.samples_per_image))]
        return [make_sample(image, s, self.cfg, train=True, name=path) for s in seeds]


class EvalSamples(Dataset):
    """The fixed evaluation samples (`eval_samples` items), with `cfg.stress` applied."""

    def __init__(self, items: Sequence[EvalItem], cfg: CropsConfig, max_pixels: int = MAX_PIXELS) -> None:
        self.items, self.cfg, self.max_pixels = list(items), cfg, max_pixels

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> CropSample | _Failed:
        item = self.items[index]
        try:
            return load_sample(item, self.cfg, self.max_pixels)
        except ImageDecodeError as err:
            return _Failed((item.path, err.reason))


def whole_photo(image: Image.Image, cfg: CropsConfig, seed: int) -> tuple[CropSample, int]:
    """A photo as it is (predict, serve): never cropped, resized and (a portrait) turned as
    `seed` draws, the same for every photo so a result depends on the pixels alone; the
    truth fields of the sample are placeholders. Also the plan's rotation."""
    plan = plan_sample(image.size, seed, cfg, train=False, crop=False)
    return render_sample(image, plan, cfg), plan.rotation


class WholePhotos(Dataset):
    """`whole_photo` of each file, with its position in the list."""

    def __init__(self, paths: Sequence[str], cfg: CropsConfig, seed: int, max_pixels: int = MAX_PIXELS) -> None:
        self.paths, self.cfg, self.seed, self.max_pixels = list(paths), cfg, seed, max_pixels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[CropSample, int, int] | _Failed:
        try:
            return (*whole_photo(load_image(self.paths[index], max_pixels=self.max_pixels), self.cfg, self.seed), index)
        except ImageDecodeError as err:
            return _Failed((self.paths[index], err.reason))


def collate_dropping(on_bad: Callable[[BadImages], None], min_batch: int = 1) -> Callable[[list[Any]], Any]:
    """A collate that leaves undecodable samples out (handing their (path, reason) to
    `on_bad`, in the main process through `_Batches`); None for a batch left too small."""

    def collate(items: list[Any]) -> Any:
        bad = [tuple(i) for i in items if isinstance(i, _Failed)]
        good = [s for i in items if not isinstance(i, _Failed) for s in (i if isinstance(i, list) else [i])]
        return (default_collate(good) if len(good) >= min_batch else None), bad

    return collate


class _Loader(DataLoader):
    """A DataLoader whose batches come with their unreadable images, reported here (main
    process), and whose empty batches are skipped."""

    def __init__(self, ds: Dataset, on_bad: Callable[[BadImages], None], min_batch: int = 1, **kwargs: Any) -> None:
        self.on_bad = on_bad
        super().__init__(ds, collate_fn=collate_dropping(on_bad, min_batch), **kwargs)

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        for batch, bad in super().__iter__():
            if bad:
                self.on_bad(bad)
            if batch is not None:
                yield batch


def holdout_rows(train: pd.DataFrame, fraction: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, val): round(fraction * n) seeded-random rows held out (at least 1 when n >= 2)."""
    n = len(train)
    k = min(n - 1, max(1, round(fraction * n))) if n >= 2 else 0
    take = np.random.default_rng(seed).permutation(n)[:k]
    mask = np.zeros(n, dtype=bool)
    mask[take] = True
    return train[~mask].reset_index(drop=True), train[mask].reset_index(drop=True)


def check_sizes(rows: pd.DataFrame, cfg: CropsConfig, source: str) -> None:
    """Refuse, naming the first, photos too small for the smallest crop's patch grid."""
    w = pd.to_numeric(rows["width"], errors="coerce").fillna(0).to_numpy()
    h = pd.to_numeric(rows["height"], errors="coerce").fillna(0).to_numpy()
    small = np.flatnonzero(np.minimum(w, h) < cfg.min_side)
    if len(small):
        i = int(small[0])
        more = f" (and {len(small) - 1} more)" if len(small) > 1 else ""
        raise SettingError(
            f"{rows['path'].iloc[i]}: {int(w[i])}x{int(h[i])} is too small for crop samples{more} in {source}: each side "
            f"needs {cfg.min_side} px (crops.patch_size * grid / smallest size_factor); curate with --min-size {cfg.min_side}x{cfg.min_side} "
            "or lower crops.patch_size",
            ("crops.patch_size", "crops.grid", "crops.size_factor"),
        )


def crops_rows(dataset_dir: str | Path, val_fraction: float, seed: int) -> tuple[dict[str, pd.DataFrame], str]:
    """The usable train/val/test rows of a crops dataset and where val came from (the manifest,
    else `val_fraction` of train held out); a dataset too small to train is a DatasetError."""
    from vislab.data.manifest import manifest_path, read_manifest, usable

    df = usable(read_manifest(dataset_dir))
    train, val = df[df["split"] == "train"].reset_index(drop=True), df[df["split"] == "val"].reset_index(drop=True)
    source = "manifest"
    if val.empty:
        train, val = holdout_rows(train, val_fraction, seed)
        source = f"held out {val_fraction:.0%} of train (seed {seed}): the manifest has no val split"
    if len(train) < 2 or val.empty:
        raise DatasetError(f"{manifest_path(dataset_dir)}: crop detection needs at least 2 train and 1 val photo (has {len(train)} and {len(val)})")
    return {"train": train, "val": val, "test": df[df["split"] == "test"].reset_index(drop=True)}, source


class CropsDataModule(L.LightningDataModule):
    """Training and validation crop samples of a curated dataset's usable rows.

    The val rows are the manifest's `val` split, else `data.val_fraction` of train held out
    (seeded). `sanity_batch` trains on one fixed batch of evaluation samples (--sanity)."""

    def __init__(
        self, dataset_dir: str | Path, cfg: CropsConfig, data: DataConfig, seed: int, sanity_batch: bool = False, max_pixels: int | None = None
    ) -> None:
        super().__init__()
        self.dataset_dir = Path(dataset_dir)
        self.max_pixels = max_pixels  # None: the dataset's (`decode_limit`)
        self.cfg, self.data, self.seed, self.sanity_batch = cfg, data, seed, sanity_batch
        self.rows: dict[str, pd.DataFrame] = {}
        self.val_source = "manifest"
        self.unreadable: dict[str, UnreadableLog] = {}
        self._resume: dict[str, int] | None = None
        self._predict: tuple[Dataset, Callable[[BadImages], None], int | None] | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.rows or stage == "predict":  # predict serves what predict_on_* set
            return
        from vislab.data.manifest import manifest_path

        rows, self.val_source = crops_rows(self.dataset_dir, self.data.val_fraction, self.seed)
        check_sizes(pd.concat([rows["train"], rows["val"]]), self.cfg, str(manifest_path(self.dataset_dir)))
        self.rows = rows

    def decode_limit(self) -> int:
        """The pixel limit its photos decode under: the one given (predict: the run's), else
        the dataset's curate --max-pixels, which accepted them."""
        from vislab.data.manifest import dataset_max_pixels

        return self.max_pixels if self.max_pixels is not None else dataset_max_pixels(self.dataset_dir)

    def split_sizes(self) -> dict[str, int]:
        self.setup()
        return {k: len(v) for k, v in self.rows.items()}

    def _log(self, split: str) -> Callable[[BadImages], None]:
        if split not in self.unreadable:
            self.unreadable[split] = UnreadableLog(split, len(self.rows.get(split, ())))
        return self.unreadable[split].add

    def _world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (0, 1) if trainer is None else (trainer.global_rank, trainer.world_size)

    def _loader(self, ds: Dataset, sampler: Any, batch_size: int, on_bad: Callable[[BadImages], None], train: bool, workers: int | None = None) -> DataLoader:
        workers = self.data.num_workers if workers is None else workers
        return _Loader(
            ds, on_bad, min_batch=train_min_batch(batch_size) if train else 1, batch_size=batch_size, sampler=sampler, num_workers=workers,
            persistent_workers=bool(workers and self.data.persistent_workers), drop_last=train and len(sampler) > batch_size,
            generator=torch.Generator().manual_seed(self.seed),
        )

    def train_dataloader(self) -> DataLoader:
        self.setup()
        rank, world = self._world()
        paths = self.rows["train"]["path"].tolist()
        if self.sanity_batch:
            items = eval_samples(paths[: self.data.batch_size], 0, self.cfg.eval_seed)
            ds: Dataset = EvalSamples([EvalItem(i.path, i.seed, crop=k % 2 == 1) for k, i in enumerate(items)], self.cfg, self.decode_limit())
            return self._loader(ds, EpochSampler(len(ds), self.seed, shuffle=False, train=False), self.data.batch_size, self._log("train"), False)
        sampler = ImageEpochSampler(len(paths), self.seed, shuffle=True, num_replicas=world, rank=rank)
        if self._resume is not None:
            sampler.set_epoch(self._resume["epoch"])
            sampler.skip = self._resume["batches_done"] * self.photos_per_batch
            self._resume = None
        return self._loader(TrainSamples(paths, self.cfg, self.decode_limit()), sampler, self.photos_per_batch, self._log("train"), True)

    @property
    def photos_per_batch(self) -> int:
        """Photos in a training batch: `batch_size` samples of `samples_per_image` each."""
        return max(1, self.data.batch_size // self.cfg.samples_per_image)

    def eval_items(self, split: str) -> list[EvalItem]:
        self.setup()
        return eval_samples(self.rows[split]["path"].tolist(), self.cfg.eval_crops_per_image, self.cfg.eval_seed)

    def val_dataloader(self) -> DataLoader:
        rank, world = self._world()
        ds = EvalSamples(self.eval_items("val"), self.cfg, self.decode_limit())
        sampler = EpochSampler(len(ds), self.seed, shuffle=False, num_replicas=world, rank=rank, train=False)
        return self._loader(ds, sampler, self.data.eval_batch_size or self.data.batch_size, self._log("val"), False)

    def steps_per_epoch(self, world_size: int = 1, accumulate: int = 1, limit: int | float | None = None) -> int:
        """Optimizer steps per epoch, without building a loader (the schedule needs it early)."""
        self.setup()
        if self.sanity_batch:
            return 1
        per_rank = math.ceil(len(self.rows["train"]) / max(1, world_size))
        batches = per_rank // self.photos_per_batch if per_rank > self.photos_per_batch else 1
        if isinstance(limit, int) and not isinstance(limit, bool):
            batches = min(batches, limit)
        elif isinstance(limit, float):
            batches = max(1, int(batches * limit))
        return max(1, math.ceil(batches / accumulate))

    # ---- evaluate and predict ----------------------------------------------------------------
    def predict_on_items(self, items: Sequence[EvalItem], cfg: CropsConfig, on_unreadable: Callable[[BadImages], None], batch_size: int | None = None) -> None:
        """Serve evaluation samples (with their truth) to `predict_dataloader`."""
        self._predict = (EvalSamples(items, cfg, self.decode_limit()), on_unreadable, batch_size)

    def predict_on_photos(self, paths: Sequence[str], on_unreadable: Callable[[BadImages], None], batch_size: int | None = None) -> None:
        """Serve whole photos (batches: (sample, rotation, position)) to `predict_dataloader`."""
        self._predict = (WholePhotos(paths, self.cfg, self.cfg.eval_seed, self.decode_limit()), on_unreadable, batch_size)

    def predict_dataloader(self) -> DataLoader:
        if self._predict is None:
            raise RuntimeError("predict_dataloader: call predict_on_items or predict_on_photos first")
        ds, on_bad, batch_size = self._predict
        bs = batch_size or self.data.eval_batch_size or self.data.batch_size
        return self._loader(ds, EpochSampler(len(ds), shuffle=False, train=False), bs, on_bad, False)

    # ---- resume (as ClassifyDataModule) -----------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return loop_position(self.trainer, self.seed)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict:
            self._resume = {"epoch": int(state_dict["epoch"]), "batches_done": int(state_dict["batches_done"])}
