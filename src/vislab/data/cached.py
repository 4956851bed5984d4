"""The classification DataModule on the prepared cache: whole uint8 batches, no per-image work.

Same splits, epoch order, augmentation seeds (a batch takes its first sample's), DDP sharding
and mid-epoch resume as
`ClassifyDataModule` (it is a subclass and keeps its sampler), but a batch is one fancy-index
into the cache array: `CachedLoader` yields N x 3 x H x W uint8 (a view of the N x H x W x 3
array, so its memory is already channels_last) with the targets and, in training, the
batch's augmentation seed. The task's `on_after_batch_transfer` then normalises and augments
the batch with `batch_augment.BatchTransform` on the device it landed on (the GPU when there
is one).

The cache is built at the eval transform's resize size (input size / crop_pct), for the
model's input size (its centre crop) and colour mode, so validation sees exactly the pixels
`vislab evaluate` decodes from the files, at any crop_pct, grey runs included (tests check
it).

Images that cannot be read any more (the cache's `unreadable` rows) are handled as
`SkippingLoader` handles them: each loader reports its split's ones to the datamodule's
`unreadable` log when it starts (the health check warns, and stops the run past
`train.health.max_bad_images`); in training the next readable image of the table stands in
for one, in evaluation it is left out.

A memory-mapped cache has only a sample of its blocks checked on open; `CachedBatches` checks
each other block the first time it reads it (`cache_check.BlockCheck`) and hands a
`CorruptCache` back instead of the batch, which `CachedLoader` raises as one line (raised in a
worker it would come back wrapped in that worker's traceback).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple, Sequence

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from vislab.config import DataConfig
from vislab.data.cache import PreparedCache, open_cache, prepare_cache
from vislab.data.cache_check import BlockCheck
from vislab.data.datamodule import SUBSTITUTE_TRIES, BadImages, ClassifyDataModule, EpochSampler
from vislab.data.transforms import resize_size
from vislab.errors import VislabError


class CorruptCache(NamedTuple):
    """What `CachedBatches` returns for a batch whose pixels fail their block checksum."""

    message: str


class CachedBatches(Dataset):
    """Batches of cache rows, as numpy arrays: a worker hands them back through its pipe in
    one pickle, where each tensor would cost a shared-memory segment of its own (for small
    batches that hand-off, not the gather, bounded the loader). `CachedLoader` makes them tensors.

    `unreadable`: (position, path, why) of the rows that cannot be served; with `substitute`
    (training) the next readable position stands in for each, and a batch left with one
    image is served empty (BatchNorm cannot normalise it), else it is left out. `check`
    verifies the blocks a batch reads (memory-mapped stores)."""

    def __init__(
        self,
        images: np.ndarray,
        rows: np.ndarray,
        targets: Sequence[int],
        unreadable: Sequence[tuple[int, str, str]] = (),
        substitute: bool = False,
        check: BlockCheck | None = None,
    ) -> None:
        self.images = images
        self.check = check
        self.rows = np.asarray(rows, dtype=np.int64)
        self.targets = np.asarray(list(targets), dtype=np.int64)
        self.unreadable: BadImages = [(path, why) for _, path, why in unreadable]
        self.substitute = substitute
        self.serve: np.ndarray | None = None  # position -> position served in its place (-1: none)
        if unreadable:
            bad = np.zeros(len(self.rows), dtype=bool)
            bad[[pos for pos, _, _ in unreadable]] = True
            self.serve = np.where(bad, -1, np.arange(len(self.rows)))
            for pos in np.flatnonzero(bad) if substitute else ():
                ahead = (pos + np.arange(1, min(SUBSTITUTE_TRIES, len(bad)))) % len(bad)
                good = ahead[~bad[ahead]]
                self.serve[pos] = good[0] if len(good) else -1

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: tuple[np.ndarray, int | None]) -> tuple[Any, ...] | CorruptCache:
        """`key`: what `BatchKeys` yields, (positions array, the batch's augmentation seed or None).
        Returns N x H x W x C uint8 pixels, the targets and, in training, the seed."""
        pos, seed = key
        if self.serve is not None:
            served = self.serve[pos]
            pos = served[served >= 0]
            if self.substitute and len(pos) < min(2, len(served)):
                pos = pos[:0]
        corrupt = self.check.first_read(self.images, self.rows[pos]) if self.check is not None else None
        if corrupt:
            return CorruptCache(corrupt)
        x, y = np.ascontiguousarray(self.images[self.rows[pos]]), self.targets[pos]
        return (x, y) if seed is None else (x, y, seed)


def _as_is(batch: Any) -> Any:
    """The collate step of `CachedLoader`: a key already makes a whole batch."""
    return batch


class CachedLoader(DataLoader):
    """DataLoader of `CachedBatches` + `BatchKeys` that yields tensors: N x 3 x H x W uint8
    (a view of the NHWC pixels, so already channels_last), int64 targets and, in training,
    the seed as a 0-d tensor. Pinned when a GPU is there.

    Like `SkippingLoader`: the dataset's unreadable images go to `on_unreadable` when an epoch
    starts, and a batch left empty by them is not yielded."""

    def __init__(
        self,
        ds: CachedBatches,
        sampler: BatchKeys,
        on_unreadable: Callable[[BadImages], None] | None = None,
        **kwargs: Any,
    ) -> None:
        self.pin = bool(kwargs.pop("pin_memory", False))
        self.on_unreadable = on_unreadable
        super().__init__(ds, batch_size=None, sampler=sampler, collate_fn=_as_is, **kwargs)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:  # type: ignore[override]
        assert isinstance(self.dataset, CachedBatches)
        if self.dataset.unreadable and self.on_unreadable is not None:
            self.on_unreadable(self.dataset.unreadable)
        for batch in super().__iter__():
            if isinstance(batch, CorruptCache):
                raise VislabError(batch.message)
            x, y, *seed = batch
            if not len(x):
                continue
            pixels = torch.from_numpy(x).permute(0, 3, 1, 2)
            if self.pin:
                pixels = pixels.pin_memory()
            yield (pixels, torch.from_numpy(y), *(torch.tensor(s, dtype=torch.long) for s in seed))


class BatchKeys(Sampler):
    """An `EpochSampler`'s epoch as batch keys for `CachedBatches`: an int64 array of positions
    and the batch's augmentation seed (None in evaluation). Arrays, not lists of per-sample
    tuples, so handing a key to a worker costs one small pickle."""

    def __init__(self, sampler: EpochSampler, batch_size: int, drop_last: bool) -> None:
        self.sampler = sampler
        self.batch_size = batch_size
        self.drop_last = drop_last

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[np.ndarray, int | None]]:
        return self.sampler.batch_keys(self.batch_size, self.drop_last)

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)


class CachedClassifyDataModule(ClassifyDataModule):
    """`ClassifyDataModule` reading the prepared cache instead of image files."""

    def __init__(self, dataset_dir: str | Path, cfg: DataConfig, spec: dict[str, Any], *args: Any, **kwargs: Any) -> None:
        super().__init__(dataset_dir, cfg, spec, *args, **kwargs)
        self.cache: PreparedCache | None = None

    def cache_size(self) -> tuple[int, int]:
        """(W, H) the cache is built at: the eval transform's resize size."""
        h, w = resize_size(self.spec["input_size"], float(self.spec.get("crop_pct", 1.0) or 1.0))
        return w, h

    def _interpolation(self) -> str:
        interp = str(self.spec.get("interpolation", "bilinear"))
        return interp if interp in ("bilinear", "bicubic", "nearest") else "bilinear"

    def cache_pixels(self) -> dict[str, Any]:
        """What the cache holds, as `prepare_cache` / `open_cache` arguments: the eval
        geometry at `cache_size` for the model's input (its centre crop), grey when the
        model is fed grey (converted before resizing, as the eval transform does)."""
        h, w = (int(v) for v in self.spec["input_size"][-2:])
        grey = bool(self.cfg.grayscale) or self.channels == 1
        return {"size": self.cache_size(), "interpolation": self._interpolation(), "keep": (w, h), "grey": grey}

    def prepare_data(self) -> None:
        """Build the cache once (rank 0 per node) before any process opens it."""
        from rich.console import Console

        prepare_cache(
            self.dataset_dir,
            **self.cache_pixels(),
            console=Console(stderr=True),
            in_memory=False,
            skip_unreadable=True,
            explain=True,
        )

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        if self.cache is None:
            found = open_cache(self.dataset_dir, **self.cache_pixels(), skip_unreadable=True)
            if found is None:
                self.prepare_data()
                found = open_cache(self.dataset_dir, **self.cache_pixels(), skip_unreadable=True)
            self.cache = found

    def dataset(self, rows: pd.DataFrame, train: bool) -> CachedBatches:  # type: ignore[override]
        self.setup()
        assert self.cache is not None
        paths = rows["path"].tolist()
        where = self.cache.indices(paths)
        bad = self.cache.unreadable
        unreadable = [(pos, paths[pos], bad[row]) for pos, row in enumerate(where.tolist()) if row in bad] if bad else []
        return CachedBatches(self.cache.images, where, rows["target"].tolist(), unreadable, substitute=train, check=self.cache.check)

    def make_loader(self, ds: Dataset, sampler: Sampler, batch_size: int, drop_last: bool, split: str = "train") -> DataLoader:
        """`split` names the log that the split's unreadable images go to."""
        workers = self.cfg.num_workers
        assert isinstance(ds, CachedBatches) and isinstance(sampler, EpochSampler)
        return CachedLoader(
            ds,
            BatchKeys(sampler, batch_size, drop_last),
            on_unreadable=self.unreadable_log(split).add,
            num_workers=workers,
            persistent_workers=bool(workers and self.cfg.persistent_workers),
            pin_memory=torch.cuda.is_available(),
            generator=torch.Generator().manual_seed(self.seed),
        )
