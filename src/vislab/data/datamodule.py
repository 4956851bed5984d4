"""Manifest -> batches for classification: splits, decoding, augmentation, sampling.

Reproducibility and resume are designed in rather than bolted on:

- The order of an epoch is a pure function of (seed, epoch): `EpochSampler` draws it from its
  own generator, so neither the global RNG nor the number of workers changes it.
- Each training image is augmented under its own seed (seed, epoch, position), so the same
  seed gives the same augmented pixels with 0 or 8 workers, and after a resume.
- The datamodule's state (epoch and batches already done) goes into every checkpoint, so a
  resume from a mid-epoch checkpoint continues that epoch where it stopped instead of
  replaying its first batches.
- Under DDP the sampler shards by rank itself (Lightning's distributed sampler is switched
  off by the trainer), which keeps the three properties above with several processes.

If the manifest has no `val` rows, `val_fraction` of each train class is held out as
validation with a seeded generator (and the run says so); test rows are never used here.

An image deleted, truncated or swapped after curation does not abort the run from inside a
worker: the dataset hands back an `Unreadable` marker, the loader's collate step leaves it
out (in training it is replaced by the next readable image of the table, under the same
augmentation seed, so batches keep their size and BatchNorm never sees a batch of one), and
the loader reports its path to the datamodule's `unreadable` logs, per split. The health
check (`vislab.health`) warns with the count and stops the run, after saving a checkpoint,
past `train.health.max_bad_images` of a split.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, NamedTuple, Sequence

import lightning as L
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from vislab.config import DataConfig
from vislab.data import transforms as tfm
from vislab.data.io import MAX_PIXELS, ImageDecodeError, load_image
from vislab.data.manifest import class_names, dataset_max_pixels, read_manifest, refuse_boxes, usable
from vislab.errors import DatasetError, VislabError

# a training sample whose image cannot be read is replaced by one of the next images of the
# table; past this many unreadable ones in a row the batch shrinks (and one left with a single
# image is dropped, which leaves that epoch a batch short: by then the health check has
# almost surely stopped the run)
SUBSTITUTE_TRIES = 16


@dataclass
class Splits:
    """Rows (path, label, target) per split and how validation was obtained."""

    train: pd.DataFrame
    val: pd.DataFrame
    test: pd.DataFrame
    classes: list[str]
    val_source: str  # "manifest" or "held out ..."


def _with_targets(rows: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    index = {c: i for i, c in enumerate(classes)}
    out = rows[["path", "label"]].copy()
    out["target"] = out["label"].map(index)
    return out.reset_index(drop=True)


def holdout(train: pd.DataFrame, fraction: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Stratified, seeded hold-out: round(fraction * n) of each class (at least 1 when n >= 2)."""
    rng = np.random.default_rng(seed)
    val_idx: list[int] = []
    for _, grp in train.groupby("label", sort=True):
        n = len(grp)
        k = min(n - 1, max(1, int(round(fraction * n)))) if n >= 2 else 0
        val_idx += sorted(rng.choice(grp.index.to_numpy(), size=k, replace=False).tolist())
    mask = train.index.isin(val_idx)
    return train[~mask].reset_index(drop=True), train[mask].reset_index(drop=True)


def _refuse_untrained(dataset_dir: str | Path, df: pd.DataFrame, names: Sequence[str], trained: set[str]) -> None:
    """Every class gets an output, so one with no training image would get an output that is
    never trained, and its val/test images could never be right: a silent wrong result, so refused."""
    missing = [c for c in names if c not in trained]
    if not missing:
        return
    rows = usable(df)
    where = sorted(set(rows.loc[rows["label"].isin(missing), "split"].fillna("").replace("", "no split")))
    shown = ", ".join(f"'{c}'" for c in missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
    raise DatasetError(
        f"{dataset_dir}: class(es) {shown} have no training images (only in {'/'.join(where)}), so the model could never "
        "learn them; curate again so each class has train images (or move some of their images to split train in "
        "manifest.csv), or leave those classes out (curate --min-per-class, or remove their folder)"
    )


def classification_splits(
    dataset_dir: str | Path, val_fraction: float = 0.1, seed: int = 0, classes: Sequence[str] | None = None
) -> Splits:
    """Train/val/test rows of a curated dataset, labels mapped to ids in `classes` order."""
    refuse_boxes(dataset_dir)
    df = read_manifest(dataset_dir)
    names = list(classes) if classes is not None else class_names(df)
    if len(names) < 2:
        what, fix = (
            (f"only one usable class ('{names[0]}')", "add images of another class (a folder per class)")
            if names
            else ("no usable labelled image", "sort the photos into a folder per class (ROOT/<class>/...)")
        )
        raise DatasetError(f"{dataset_dir}: {what}, and classification needs at least 2 classes; {fix} and curate again")
    train = usable(df, "train")
    if train.empty:
        raise DatasetError(
            f"{dataset_dir}: no usable rows with split 'train'; curate with --split 0.7,0.15,0.15 "
            "(or --val-per-class/--test-per-class)"
        )
    if classes is None:
        _refuse_untrained(dataset_dir, df, names, set(train["label"]))
    unknown = sorted(set(train["label"]) - set(names))
    if unknown:
        raise DatasetError(f"{dataset_dir}: train labels {unknown} are not among the run's classes")
    val = usable(df, "val")
    source = "manifest"
    if val.empty:
        train, val = holdout(train, val_fraction, seed)
        source = f"held out {val_fraction:.0%} of train per class (seed {seed}): the manifest has no val split"
    if val.empty:
        raise DatasetError(
            f"{dataset_dir}: no validation images (no val split, and too few train images per class to hold some out); "
            "curate with --split 0.7,0.15,0.15 or add images"
        )
    test = usable(df, "test")
    test = test[test["label"].isin(names)]
    return Splits(
        _with_targets(train, names), _with_targets(val[val["label"].isin(names)], names), _with_targets(test, names), names, source
    )


class Unreadable(NamedTuple):
    """What the dataset returns for an image that cannot be decoded (instead of raising in a
    worker, which would end the whole run)."""

    path: str
    reason: str
    index: int
    seed: int | None


BadImages = list[tuple[str, str]]  # (path, reason) of the unreadable images of a batch


@dataclass
class UnreadableLog:
    """The images of one split found unreadable so far (path -> reason), and the split's size."""

    split: str
    total: int
    bad: dict[str, str] = field(default_factory=dict)

    def add(self, items: Iterable[tuple[str, str]]) -> None:
        for path, reason in items:
            self.bad.setdefault(path, reason)


class ImageTableDataset(Dataset):
    """Decoded, transformed images of a table (path, target); target -1 when unknown.

    An index may be an int or `(index, aug_seed)`: with a seed the random transform runs
    under that seed in a forked RNG, so augmentation does not depend on worker or process.
    An image that cannot be decoded comes back as `Unreadable`; `collate` deals with it.
    """

    def __init__(
        self, paths: Sequence[str], targets: Sequence[int], transform: Callable, size_hint: int | None = None, max_pixels: int = MAX_PIXELS
    ) -> None:
        self.paths = list(paths)
        self.max_pixels = max_pixels  # the dataset's curate --max-pixels
        self.targets = [int(t) for t in targets]
        self.transform = transform
        self.size_hint = (size_hint, size_hint) if size_hint else None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int] | Unreadable:
        index, seed = key if isinstance(key, tuple) else (key, None)
        try:
            return self.load(index, seed)
        except ImageDecodeError as err:
            return Unreadable(self.paths[index], err.reason, index, seed)

    def load(self, index: int, seed: int | None = None) -> tuple[torch.Tensor, int]:
        """Sample `index` transformed (under `seed` when given); raises ImageDecodeError."""
        img = load_image(self.paths[index], self.size_hint, self.max_pixels)
        if seed is None:
            x = self.transform(img)
        else:
            with torch.random.fork_rng(devices=[]):
                # the CPU generator only: torch.manual_seed would also queue (slow) seeds for every accelerator
                torch.random.default_generator.manual_seed(seed)
                x = self.transform(img)
        return x, self.targets[index]

    def collate(self, items: list[Any]) -> tuple[torch.Tensor | None, torch.Tensor | None, BadImages]:
        """Batch the readable samples; (path, reason) of the unreadable ones ride along.

        A training sample (it has an augmentation seed) is replaced by the next readable image
        of the table under the same seed, so the batch keeps its size and the replacement does
        not depend on the worker; an evaluation sample is left out (metrics count each image once).
        """
        good, bad = self.readable(items)
        if not good:
            return None, None, bad
        x, y = default_collate(good)
        return x, y, bad

    def readable(self, items: list[Any]) -> tuple[list[Any], BadImages]:
        """The batch's readable samples (a training sample that could not be read replaced
        as `collate` says) and the unreadable ones' (path, reason)."""
        good: list[Any] = []
        bad: BadImages = []
        for item in items:
            if not isinstance(item, Unreadable):
                good.append(item)
                continue
            bad.append((item.path, item.reason))
            if item.seed is not None:
                sub = self._substitute(item, bad)
                if sub is not None:
                    good.append(sub)
        return good, bad

    def _substitute(self, item: Unreadable, bad: BadImages) -> tuple[torch.Tensor, int] | None:
        for k in range(1, min(SUBSTITUTE_TRIES, len(self))):
            j = (item.index + k) % len(self)
            try:
                return self.load(j, item.seed)
            except ImageDecodeError as err:
                bad.append((self.paths[j], err.reason))
        return None


class SkippingLoader(DataLoader):
    """DataLoader of an `ImageTableDataset` yielding (images, targets, and whatever else its
    `collate` puts before the unreadable list) without the unreadable images: each batch's
    (path, reason) list goes to `on_unreadable` in the main process (with any number of
    workers), which may log it or raise. A batch left with fewer than `min_batch` images is
    dropped (training: BatchNorm cannot normalise a batch of one)."""

    def __init__(
        self, ds: ImageTableDataset, *, on_unreadable: Callable[[BadImages], None], min_batch: int = 1, **kwargs: Any
    ) -> None:
        self.on_unreadable = on_unreadable
        self.min_batch = min_batch
        super().__init__(ds, collate_fn=ds.collate, **kwargs)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:  # type: ignore[override]
        for *batch, bad in super().__iter__():
            if bad:
                self.on_unreadable(bad)
            if batch[0] is not None and len(batch[0]) >= self.min_batch:
                yield tuple(batch)


def train_min_batch(batch_size: int) -> int:
    """The fewest images a training batch may hold: two, so that BatchNorm never normalises a
    batch that unreadable images (or a short last batch) left with one; but never more than the
    batch size, since `data.batch_size: 1` asks for batches of one and would otherwise train nothing."""
    return min(2, batch_size)


def aug_seed(seed: int, epoch: int, position: int) -> int:
    """A distinct 63-bit seed per (run seed, epoch, position in the epoch)."""
    return int(np.random.SeedSequence([seed & 0xFFFFFFFF, epoch, position]).generate_state(2, np.uint32).view(np.uint64)[0] >> 1)


class EpochSampler(Sampler):
    """Indices of one epoch as a pure function of (seed, epoch), sharded by rank, skippable.

    Training (`shuffle` or `weights`) pads the order so every rank gets the same count (DDP
    steps in lockstep) and yields `(index, aug_seed)`; evaluation shards without padding,
    so metrics count each image exactly once. `skip` drops the first samples of the next
    iteration only: that is how a mid-epoch resume continues where it stopped.
    """

    def __init__(
        self,
        n: int,
        seed: int = 0,
        shuffle: bool = True,
        weights: Sequence[float] | None = None,
        num_replicas: int = 1,
        rank: int = 0,
        train: bool = True,
    ) -> None:
        self.n = n
        self.seed = seed
        self.shuffle = shuffle
        self.weights = torch.as_tensor(weights, dtype=torch.double) if weights is not None else None
        self.num_replicas = max(1, num_replicas)
        self.rank = rank
        self.train = train
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _order(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        if self.weights is not None:
            order = torch.multinomial(self.weights, self.n, replacement=True, generator=g).tolist()
        elif self.shuffle:
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        if self.num_replicas > 1:
            if self.train and order:
                total = math.ceil(self.n / self.num_replicas) * self.num_replicas
                order += order[: total - len(order)]
            order = order[self.rank :: self.num_replicas]
        return order

    def __iter__(self) -> Iterator[Any]:
        order = self._order()
        start, self.skip = self.skip, 0
        for pos in range(start, len(order)):
            if self.train:
                yield order[pos], aug_seed(self.seed, self.epoch, pos * self.num_replicas + self.rank)
            else:
                yield order[pos]

    def batch_keys(self, batch_size: int, drop_last: bool) -> Iterator[tuple[np.ndarray, int | None]]:
        """The same epoch as `__iter__`, grouped: (positions array, the batch's first sample's
        seed). One seed per batch instead of one per sample, for loaders that fetch whole batches."""
        order = np.asarray(self._order(), dtype=np.int64)
        start, self.skip = self.skip, 0
        for first in range(start, len(order), batch_size):
            chunk = order[first : first + batch_size]
            if drop_last and len(chunk) < batch_size:
                break
            seed = aug_seed(self.seed, self.epoch, first * self.num_replicas + self.rank) if self.train else None
            yield chunk, seed

    def __len__(self) -> int:
        if self.num_replicas == 1:
            return self.n
        if self.train:
            return math.ceil(self.n / self.num_replicas)
        return len(range(self.rank, self.n, self.num_replicas))


def loop_position(trainer: Any, seed: int) -> dict[str, Any]:
    """A datamodule's resume state: the epoch to continue and the batches of it already done
    (empty without a trainer); `load_state_dict` sets the sampler's epoch and skip from it."""
    if trainer is None:
        return {}
    # `started` counts epochs begun: during epoch e (and after it ends) it is e + 1
    epoch = max(0, trainer.fit_loop.epoch_progress.current.started - 1)
    done = trainer.fit_loop.epoch_loop.batch_progress.current.ready
    if done >= trainer.num_training_batches:  # saved at the end of an epoch: next one starts clean
        epoch, done = epoch + 1, 0
    return {"epoch": int(epoch), "batches_done": int(done), "seed": seed}


class ClassifyDataModule(L.LightningDataModule):
    """Batches of (image, class id) from a curated dataset for the classification task.

    `spec` is the model's DataSpec as a dict (input_size, mean, std, interpolation,
    crop_pct); `channels` the model's input channels. `sanity_batch` replaces the training
    set by one fixed, un-augmented batch (the `--sanity` overfitting check).
    """

    def __init__(
        self,
        dataset_dir: str | Path,
        cfg: DataConfig,
        spec: dict[str, Any],
        classes: Sequence[str] | None = None,
        seed: int = 0,
        channels: int = 3,
        sanity_batch: bool = False,
        max_pixels: int | None = None,
    ) -> None:
        super().__init__()
        self.dataset_dir = Path(dataset_dir)
        self.max_pixels = max_pixels  # None: the dataset's (`decode_limit`)
        self.cfg = cfg
        self.spec = dict(spec)
        self.classes = list(classes) if classes is not None else None
        self.seed = seed
        self.channels = channels
        self.sanity_batch = sanity_batch
        self.splits: Splits | None = None
        # split -> images found unreadable while loading it (read by the health check)
        self.unreadable: dict[str, UnreadableLog] = {}
        self._resume: dict[str, int] | None = None
        self._train_sampler: EpochSampler | None = None
        self._predict: tuple[list[str], list[int], Callable[[BadImages], None], int | None, int | None] | None = None

    # ---- data ---------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if stage == "predict":  # images given by `predict_on`; the dataset's splits are not needed
            return
        if self.splits is None:
            self.splits = classification_splits(self.dataset_dir, self.cfg.val_fraction, self.seed, self.classes)
            self.classes = self.splits.classes

    def _common(self) -> dict[str, Any]:
        s = self.spec
        return {
            "input_size": s["input_size"],
            "mean": s["mean"],
            "std": s["std"],
            "crop_pct": float(s.get("crop_pct", 1.0)),
            "interpolation": s.get("interpolation", "bilinear"),
            "grayscale": self.cfg.grayscale,
            "channels": self.channels,
        }

    def eval_transform(self) -> Callable:
        return tfm.eval_transform_for(self.spec, self.cfg.grayscale, self.channels)

    def train_transform(self) -> Callable:
        return tfm.train_transform(aug=tfm.resolve_augment(self.cfg.augment), **self._common())

    def _size_hint(self) -> int:
        return tfm.decode_size(self.spec)

    def decode_limit(self) -> int:
        """The pixel limit its images decode under: the one given (predict: the run's), else
        the dataset's curate --max-pixels, which accepted them."""
        return self.max_pixels if self.max_pixels is not None else dataset_max_pixels(self.dataset_dir)

    def dataset(self, rows: pd.DataFrame, train: bool) -> ImageTableDataset:
        transform = self.train_transform() if train else self.eval_transform()
        return ImageTableDataset(rows["path"].tolist(), rows["target"].tolist(), transform, self._size_hint(), self.decode_limit())

    def _world(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is None:
            return 0, 1
        return trainer.global_rank, trainer.world_size

    def unreadable_log(self, split: str) -> UnreadableLog:
        """The log of unreadable images of `split` (train, val or test), kept across epochs."""
        if split not in self.unreadable:
            total = len(getattr(self.splits, split)) if self.splits is not None else 0
            self.unreadable[split] = UnreadableLog(split, total)
        return self.unreadable[split]

    def make_loader(self, ds: Dataset, sampler: Sampler, batch_size: int, drop_last: bool, split: str = "train") -> DataLoader:
        """The DataLoader of every split (subclasses change how batches are formed here)."""
        workers = self.cfg.num_workers
        assert isinstance(ds, ImageTableDataset)
        return SkippingLoader(
            ds,
            on_unreadable=self.unreadable_log(split).add,
            min_batch=train_min_batch(batch_size) if getattr(sampler, "train", False) else 1,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=workers,
            persistent_workers=bool(workers and self.cfg.persistent_workers),
            pin_memory=torch.cuda.is_available(),
            drop_last=drop_last,
            # its own generator: creating an iterator must not draw from the global RNG
            generator=torch.Generator().manual_seed(self.seed),
        )

    def train_dataloader(self) -> DataLoader:
        self.setup("fit")
        assert self.splits is not None
        rank, world = self._world()
        rows = self.splits.train
        if self.sanity_batch:
            rng = np.random.default_rng(self.seed)
            take = rng.permutation(len(rows))[: self.cfg.batch_size]
            ds = self.dataset(rows.iloc[sorted(take)].reset_index(drop=True), train=False)
            sampler = EpochSampler(len(ds), self.seed, shuffle=False, train=False)
            return self.make_loader(ds, sampler, self.cfg.batch_size, drop_last=False)
        weights = None
        if self.cfg.sampler == "weighted":
            counts = rows["target"].value_counts()
            weights = (1.0 / rows["target"].map(counts)).tolist()
        sampler = EpochSampler(len(rows), self.seed, shuffle=True, weights=weights, num_replicas=world, rank=rank)
        if self._resume is not None:
            sampler.set_epoch(self._resume["epoch"])
            sampler.skip = self._resume["batches_done"] * self.cfg.batch_size
            self._resume = None
        self._train_sampler = sampler
        drop_last = len(sampler) > self.cfg.batch_size  # a last batch of 1 breaks BatchNorm
        return self.make_loader(self.dataset(rows, train=True), sampler, self.cfg.batch_size, drop_last)

    def _eval_loader(self, rows: pd.DataFrame, split: str) -> DataLoader:
        rank, world = self._world()
        sampler = EpochSampler(len(rows), self.seed, shuffle=False, num_replicas=world, rank=rank, train=False)
        bs = self.cfg.eval_batch_size or self.cfg.batch_size
        return self.make_loader(self.dataset(rows, train=False), sampler, bs, drop_last=False, split=split)

    def val_dataloader(self) -> DataLoader:
        self.setup("fit")
        assert self.splits is not None
        return self._eval_loader(self.splits.val, "val")

    def test_dataloader(self) -> DataLoader:
        self.setup("test")
        assert self.splits is not None
        return self._eval_loader(self.splits.test, "test")

    def predict_on(
        self,
        paths: Sequence[str],
        targets: Sequence[int],
        *,
        on_unreadable: Callable[[BadImages], None],
        batch_size: int | None = None,
        num_workers: int | None = None,
    ) -> None:
        """Set what `predict_dataloader` serves (evaluate and predict run Lightning's predict
        loop on it): image files in order, decoded and transformed like validation, each with
        an int the predict step gets back (a class id, -1 unknown, or a position). Images that
        cannot be read are left out of their batch and go to `on_unreadable`, which may raise."""
        self._predict = (list(paths), [int(t) for t in targets], on_unreadable, batch_size, num_workers)

    def predict_dataloader(self) -> DataLoader:
        if self._predict is None:
            raise RuntimeError("predict_dataloader: call predict_on(paths, targets, ...) first")
        paths, targets, on_unreadable, batch_size, num_workers = self._predict
        ds = self.predict_dataset(paths, targets)
        return SkippingLoader(
            ds,
            on_unreadable=on_unreadable,
            batch_size=batch_size or self.cfg.eval_batch_size or self.cfg.batch_size,
            num_workers=self.cfg.num_workers if num_workers is None else num_workers,
            sampler=EpochSampler(len(ds), shuffle=False, train=False),
        )

    def predict_dataset(self, paths: list[Path], targets: list[int]) -> ImageTableDataset:
        """The dataset `predict_dataloader` batches: images decoded like validation's."""
        return ImageTableDataset(paths, targets, self.eval_transform(), self._size_hint(), self.decode_limit())

    def sample_loader(self, split: str, n: int) -> DataLoader:
        """Up to `n` seeded-random images of `split` (train or val) as the eval loader gives them
        (no augmentation), in batches, with their targets: what data-dependent initialisations
        (the whitening stem, the probe head) read."""
        self.setup("fit")
        assert self.splits is not None
        rows = getattr(self.splits, split)
        take = np.sort(np.random.default_rng(self.seed).permutation(len(rows))[: min(n, len(rows))])
        ds = self.dataset(rows.iloc[take].reset_index(drop=True), train=False)
        sampler = EpochSampler(len(ds), self.seed, shuffle=False, train=False)
        return self.make_loader(ds, sampler, self.cfg.eval_batch_size or self.cfg.batch_size, drop_last=False, split=split)

    def sample_batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """`sample_loader("train", n)` as one batch."""
        loader = self.sample_loader("train", n)
        batches = list(loader)
        if not batches:
            raise VislabError(
                f"{self.dataset_dir}: none of the {len(loader.dataset)} sampled training images can be read; re-run `vislab curate`"
            )
        return torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])

    def steps_per_epoch(self, world_size: int = 1, accumulate: int = 1, limit: int | float | None = None) -> int:
        """Optimizer steps per epoch, computed without building a loader (schedulers need it early)."""
        self.setup("fit")
        assert self.splits is not None
        if self.sanity_batch:
            return 1
        per_rank = math.ceil(len(self.splits.train) / max(1, world_size))
        batches = per_rank // self.cfg.batch_size if per_rank > self.cfg.batch_size else 1
        if isinstance(limit, int) and not isinstance(limit, bool):
            batches = min(batches, limit)
        elif isinstance(limit, float):
            batches = max(1, int(batches * limit))
        return max(1, math.ceil(batches / accumulate))

    # ---- resume -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Where the training loop is: the epoch to continue and the batches of it already done."""
        return loop_position(self.trainer, self.seed)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict:
            self._resume = {"epoch": int(state_dict["epoch"]), "batches_done": int(state_dict["batches_done"])}
