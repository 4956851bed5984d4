"""Images per second of vislab's cached loader against torchvision's ImageFolder, same run.

Both sides deliver what a training step consumes: normalised float batches with the same
augmentation (CIFAR-10: random 2-pixel translate + horizontal flip; photos: centre view at
224 + horizontal flip), the same images, batch size and worker count.

- baseline: `torchvision.datasets.ImageFolder` + PIL transforms + `DataLoader`;
- vislab: the prepared cache (`vislab prepare`, timed separately as a one-time cost) read
  by the cached datamodule's pieces (`CachedLoader` of `CachedBatches` + `BatchKeys` + `EpochSampler`), and
  `BatchTransform` on the whole batch, as the task's `on_after_batch_transfer` does.

Datasets: CIFAR-10 (50,000 32x32 JPEGs) and the camera photos (84 JPEGs up to 2400 px) at
224x224. Needs `../shared/data` beside the repository (or VISLAB_SHARED_DATA); without it,
prints a skip message and exits 0. Prints one JSON object.

    python benchmarks/loader.py [--workers 2] [--work DIR] [--cifar-images 10000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tarfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("VISLAB_SHARED_DATA", REPO.parent / "shared" / "data"))
CIFAR = "cifar10-train.tar.gz"
PHOTOS = "photos-digicam.tar"
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def unpack(archive: Path, dest: Path, marker: str) -> Path:
    if not (dest / marker).exists():
        dest.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive) as tf:
            tf.extractall(dest, filter="data")
    return dest / marker


def curate(src: Path, out: Path) -> Path:
    if not (out / "manifest.csv").is_file():
        exe = Path(sys.executable).with_name("vislab")
        cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "vislab.cli"]
        subprocess.run(cmd + ["curate", str(src), "--out", str(out), "--seed", "0"], check=True, capture_output=True)
    return out


def drain(loader, finish, epochs: int) -> tuple[float, int]:
    """Best images/s over `epochs` full passes; `finish` turns a loader item into the float batch."""
    best, count = 0.0, 0
    for _ in range(epochs):
        n = 0
        start = time.perf_counter()
        for item in loader:
            x = finish(item)
            n += x.shape[0]
        rate = n / (time.perf_counter() - start)
        best, count = max(best, rate), n
    return best, count


def baseline_rate(root: Path, size: int, mean, std, batch: int, workers: int, limit: int | None, epochs: int, translate: bool):
    import torch
    from torch.utils.data import DataLoader, Subset
    from torchvision import datasets, transforms as T

    steps = [] if size == 32 else [T.Resize(size), T.CenterCrop(size)]
    if translate:
        steps.append(T.RandomCrop(size, padding=2, padding_mode="reflect"))
    steps += [T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std)]
    ds = datasets.ImageFolder(str(root), transform=T.Compose(steps))
    if limit is not None and limit < len(ds):
        ds = Subset(ds, torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))[:limit].tolist())
    loader = DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers, persistent_workers=workers > 0)
    return drain(loader, lambda item: item[0], epochs)


def cached_rate(dataset_dir: Path, size: int, mean, std, batch: int, workers: int, limit: int | None, epochs: int, translate: bool):
    import numpy as np
    import torch
    from vislab.data.batch_augment import BatchTransform
    from vislab.data.cache import prepare_cache
    from vislab.data.cached import BatchKeys, CachedBatches, CachedLoader
    from vislab.data.datamodule import EpochSampler

    start = time.perf_counter()
    cache = prepare_cache(dataset_dir, size)
    prepare_s = time.perf_counter() - start
    n = len(cache) if limit is None else min(limit, len(cache))
    rows = np.random.default_rng(0).permutation(len(cache))[:n]
    labels = sorted(set(cache.labels))
    targets = [labels.index(cache.labels[i]) for i in rows]
    ds = CachedBatches(cache.images, rows, targets)
    sampler = EpochSampler(n, seed=0, shuffle=True)
    loader = CachedLoader(ds, BatchKeys(sampler, batch, False), num_workers=workers, persistent_workers=workers > 0)
    aug = {"hflip": 0.5, "crop_padding": 2 if translate else None}
    tf = BatchTransform((size, size), mean, std, aug)
    rate, count = drain(loader, lambda item: tf(item[0], train=True, seed=int(item[2])), epochs)
    return rate, count, prepare_s, cache.in_memory


def load_average() -> list[float]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers, the same for both sides")
    ap.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "vislab-bench-loader")
    ap.add_argument("--cifar-images", type=int, default=10000, help="images per baseline epoch on CIFAR-10 (the cached side reads all)")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--photo-batch", type=int, default=16)
    args = ap.parse_args()
    if not (DATA / CIFAR).is_file() or not (DATA / PHOTOS).is_file():
        print(json.dumps({"skipped": f"no {CIFAR} / {PHOTOS} under {DATA}; set VISLAB_SHARED_DATA to the shared data folder"}))
        return
    import torch

    work = args.work
    out: dict = {
        "benchmark": "loader",
        "workers": args.workers,
        "torch_threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "load_average_before": load_average(),
    }
    # CIFAR-10: 32x32 JPEGs
    cifar_root = unpack(DATA / CIFAR, work / "cifar", "cifar10/train")
    cifar_ds = curate(cifar_root, work / "cifar-ds")
    base, base_n = baseline_rate(cifar_root, 32, CIFAR_MEAN, CIFAR_STD, args.batch, args.workers, args.cifar_images, 2, True)
    fast, fast_n, prep, in_ram = cached_rate(cifar_ds, 32, CIFAR_MEAN, CIFAR_STD, args.batch, args.workers, None, 3, True)
    out["cifar10"] = {
        "batch": args.batch,
        "imagefolder_images_per_s": round(base, 1),
        "imagefolder_images": base_n,
        "cached_images_per_s": round(fast, 1),
        "cached_images": fast_n,
        "ratio": round(fast / base, 1),
        "target_ratio": 20,
        "prepare_seconds": round(prep, 1),
        "cache_in_ram": in_ram,
    }
    # camera photos at 224: ImageFolder needs a class folder, so link the photos into one
    photos = unpack(DATA / PHOTOS, work / "photos", "photos")
    tree = work / "photos-tree" / "photo"
    if not tree.is_dir():
        tree.mkdir(parents=True)
        for p in sorted(photos.iterdir()):
            if p.suffix.lower() in (".jpg", ".jpeg"):
                (tree / p.name).symlink_to(p.resolve())
    photos_ds = curate(tree.parent, work / "photos-ds")
    base, base_n = baseline_rate(tree.parent, 224, IMAGENET_MEAN, IMAGENET_STD, args.photo_batch, args.workers, None, 2, False)
    fast, fast_n, prep, in_ram = cached_rate(photos_ds, 224, IMAGENET_MEAN, IMAGENET_STD, args.photo_batch, args.workers, None, 20, False)
    out["photos_224"] = {
        "batch": args.photo_batch,
        "imagefolder_images_per_s": round(base, 1),
        "cached_images_per_s": round(fast, 1),
        "images": fast_n,
        "ratio": round(fast / base, 1),
        "target_ratio": 3,
        "prepare_seconds": round(prep, 1),
        "cache_in_ram": in_ram,
    }
    out["load_average_after"] = load_average()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
