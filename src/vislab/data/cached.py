"""The classification DataModule on the prepared cache: whole uint8 batches, no per-image work.

Same splits, epoch order, per-sample seeds, DDP sharding and mid-epoch resume as
`ClassifyDataModule` (it is a subclass and keeps its sampler), but a batch is one fancy-index
into the cache array: `CachedBatches` returns N x 3 x H x W uint8 (a view of the N x H x W x 3
array, so its memory is already channels_last) with the targets and, in training, the
batch's augmentation seed. The task's `on_after_batch_transfer` then normalises and augments
the batch with `batch_augment.BatchTransform` on the device it landed on (the GPU when there
is one).

The cache is built at the eval transform's resize size (input size / crop_pct), so with
crop_pct 1 validation sees exactly the pixels `vislab evaluate` decodes from the files.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from vislab.config import DataConfig
from vislab.data.cache import PreparedCache, open_cache, prepare_cache
from vislab.data.datamodule import ClassifyDataModule


class CachedBatches(Dataset):
    """Batches of cache rows: key = list of row positions, or of (position, seed) in training."""

    def __init__(self, images: np.ndarray, rows: np.ndarray, targets: Sequence[int]) -> None:
        self.images = images
        self.rows = np.asarray(rows, dtype=np.int64)
        self.targets = torch.as_tensor(list(targets), dtype=torch.long)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: Any) -> tuple[torch.Tensor, ...]:
        """`key`: what `BatchKeys` yields, `(positions array, batch seed or None)`, or a plain
        list of positions or of (position, seed) pairs (the first pair's seed seeds the batch)."""
        if isinstance(key, tuple) and len(key) == 2 and isinstance(key[0], np.ndarray):
            pos, seed = key
        else:
            seeded = bool(key) and isinstance(key[0], tuple)
            pos = np.fromiter((k[0] if seeded else k for k in key), dtype=np.int64, count=len(key))
            seed = key[0][1] if seeded else None
        x = torch.from_numpy(np.ascontiguousarray(self.images[self.rows[pos]])).permute(0, 3, 1, 2)
        y = self.targets[torch.from_numpy(pos)]
        if seed is not None:
            return x, y, torch.tensor(seed, dtype=torch.long)
        return x, y


class BatchKeys(Sampler):
    """Groups the keys of a per-sample sampler into batch keys for `CachedBatches`: an int64
    array of positions and the batch's augmentation seed (the first sample's, None when the
    sampler gives no seeds). Arrays, not lists of tuples, so handing a key to a worker costs
    one small pickle rather than hundreds of Python objects."""

    def __init__(self, sampler: Sampler, batch_size: int, drop_last: bool) -> None:
        self.sampler = sampler
        self.batch_size = batch_size
        self.drop_last = drop_last

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[np.ndarray, int | None]]:
        if hasattr(self.sampler, "batch_keys"):  # EpochSampler: whole batches, no per-sample work
            yield from self.sampler.batch_keys(self.batch_size, self.drop_last)
            return
        batch: list[Any] = []
        for key in self.sampler:
            batch.append(key)
            if len(batch) == self.batch_size:
                yield self._pack(batch)
                batch = []
        if batch and not self.drop_last:
            yield self._pack(batch)

    @staticmethod
    def _pack(batch: list[Any]) -> tuple[np.ndarray, int | None]:
        if isinstance(batch[0], tuple):
            return np.fromiter((k[0] for k in batch), dtype=np.int64, count=len(batch)), int(batch[0][1])
        return np.asarray(batch, dtype=np.int64), None

    def __len__(self) -> int:
        n = len(self.sampler)  # type: ignore[arg-type]
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)


class CachedClassifyDataModule(ClassifyDataModule):
    """`ClassifyDataModule` reading the prepared cache instead of image files."""

    def __init__(self, dataset_dir: str | Path, cfg: DataConfig, spec: dict[str, Any], *args: Any, **kwargs: Any) -> None:
        super().__init__(dataset_dir, cfg, spec, *args, **kwargs)
        self.cache: PreparedCache | None = None

    def cache_size(self) -> tuple[int, int]:
        """(W, H) the cache is built at: the eval transform's resize size."""
        h, w = (int(v) for v in self.spec["input_size"][-2:])
        crop = float(self.spec.get("crop_pct", 1.0) or 1.0)
        return int(math.floor(w / crop)), int(math.floor(h / crop))

    def _interpolation(self) -> str:
        interp = str(self.spec.get("interpolation", "bilinear"))
        return interp if interp in ("bilinear", "bicubic", "nearest") else "bilinear"

    def prepare_data(self) -> None:
        """Build the cache once (rank 0 per node) before any process opens it."""
        from rich.console import Console

        prepare_cache(self.dataset_dir, self.cache_size(), interpolation=self._interpolation(), console=Console(stderr=True), in_memory=False)

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        if self.cache is None:
            found = open_cache(self.dataset_dir, self.cache_size(), self._interpolation())
            if found is None:
                self.prepare_data()
                found = open_cache(self.dataset_dir, self.cache_size(), self._interpolation())
            self.cache = found

    def dataset(self, rows: pd.DataFrame, train: bool) -> CachedBatches:  # type: ignore[override]
        self.setup()
        assert self.cache is not None
        return CachedBatches(self.cache.images, self.cache.indices(rows["path"].tolist()), rows["target"].tolist())

    def make_loader(self, ds: Dataset, sampler: Sampler, batch_size: int, drop_last: bool) -> DataLoader:
        workers = self.cfg.num_workers
        return DataLoader(
            ds,
            batch_size=None,
            sampler=BatchKeys(sampler, batch_size, drop_last),
            num_workers=workers,
            persistent_workers=bool(workers and self.cfg.persistent_workers),
            pin_memory=torch.cuda.is_available(),
            generator=torch.Generator().manual_seed(self.seed),
        )
