"""The prepared cache serves what the files hold now: replaced images are re-decoded, deleted
or broken ones refused by `prepare` and skipped by training as the no-cache path skips them,
corrupted bytes and another decoder rebuild it, and a full disk is one line with no
temporary folder left behind."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from vislab.cli import app
from vislab.config import DataConfig
from vislab.data import cache as cache_mod
from vislab.data import cache_check
from vislab.data.manifest import write_manifest
from vislab.errors import VislabError
from vislab.testing.images import write_image


def _dataset(root: Path, n: int = 6, ds: Path | None = None) -> Path:
    rows = []
    for i in range(n):
        p = write_image(root / "src" / f"{i % 2}" / f"{i}.png", seed=i, size=(40, 30))
        rows.append({"path": str(p.resolve()), "label": str(i % 2), "split": "train" if i < n - 2 else "val", "status": "ok"})
    ds = ds or root / "ds"
    write_manifest(pd.DataFrame(rows), ds)
    return ds


def _spec(size: int) -> dict:
    return {"input_size": [3, size, size], "mean": [0.5] * 3, "std": [0.25] * 3, "crop_pct": 1.0, "interpolation": "bilinear"}


def test_replaced_image_is_re_decoded_and_deleted_one_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from vislab.data.batch_augment import BatchTransform
    from vislab.data.cached import CachedClassifyDataModule
    from vislab.data.datamodule import ClassifyDataModule

    ds = _dataset(tmp_path)
    first = cache_mod.prepare_cache(ds, 16, workers=1)
    victim = Path(first.paths[4])  # a val image
    st = victim.stat()
    write_image(victim, seed=99, size=(40, 30))  # same name, same pixel size, other pixels
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert cache_mod.open_cache(ds, 16) is None
    cfg = DataConfig(batch_size=4, num_workers=0, augment={"preset": "none"})
    cached = CachedClassifyDataModule(ds, cfg, _spec(16))
    x8 = torch.cat([b[0] for b in cached.val_dataloader()])
    assert "1 image(s) changed since it was prepared" in capsys.readouterr().err
    ref = torch.cat([x for x, _ in ClassifyDataModule(ds, cfg, _spec(16)).val_dataloader()])
    torch.testing.assert_close(BatchTransform((16, 16), _spec(16)["mean"], _spec(16)["std"])(x8), ref, atol=1e-5, rtol=0)
    assert cache_mod.open_cache(ds, 16) is not None  # refreshed in place, served again
    Path(first.paths[1]).unlink()
    with pytest.raises(VislabError, match=r"1 of the 6 images .* file not found; the dataset changed since `vislab curate`"):
        cache_mod.open_cache(ds, 16)
    res = CliRunner().invoke(app, ["prepare", str(ds), "--size", "16", "--workers", "1"])
    assert res.exit_code == 2 and "Traceback" not in res.output and f"{first.paths[1]}: file not found" in res.output.replace("\n", "")


@pytest.mark.parametrize("in_memory", [True, False])
def test_images_zeroed_in_place_are_caught_on_open_and_rebuilt(tmp_path: Path, capsys: pytest.CaptureFixture, in_memory: bool) -> None:
    ds = _dataset(tmp_path)
    good = cache_mod.prepare_cache(ds, 16, workers=1)
    expected = np.array(good.images)
    store = good.root / "images.npy"
    arr = np.load(store, mmap_mode="r+")
    arr[:] = 0  # size and header intact
    arr.flush()
    del arr
    assert cache_mod.open_cache(ds, 16, in_memory=in_memory) is None
    rebuilt = cache_mod.prepare_cache(ds, 16, workers=1, in_memory=in_memory)
    assert "does not match the checksums" in capsys.readouterr().err
    np.testing.assert_array_equal(np.asarray(rebuilt.images), expected)


def test_another_decoder_or_pixel_limit_rebuilds(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ds = _dataset(tmp_path)
    good = cache_mod.prepare_cache(ds, 16, workers=1)
    index = json.loads((good.root / "index.json").read_text())
    assert set(index["decoder"]) == {"pillow", "torchvision", "max_pixels"}
    index["decoder"]["pillow"] = "0.1"
    (good.root / "index.json").write_text(json.dumps(index))
    assert cache_mod.open_cache(ds, 16) is None
    cache_mod.prepare_cache(ds, 16, workers=1)
    assert "prepared with pillow 0.1" in capsys.readouterr().err
    (ds / "curation.json").write_text(json.dumps({"options": {"max_pixels": 10**9}}))
    assert cache_mod.open_cache(ds, 16) is None


def test_full_disk_is_one_line_and_leaves_no_temporary_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ds = _dataset(tmp_path)
    monkeypatch.setattr(cache_check, "free_bytes", lambda folder: 1000)
    with pytest.raises(VislabError, match=r"disk full: the cache needs .* MB in .*cache, 0.0 MB free"):
        cache_mod.prepare_cache(ds, 16, workers=1)
    assert [p.name for p in (ds / "cache").iterdir()] == []


@pytest.mark.parametrize("workers", [1, 2])
def test_full_tmpfs_is_one_line_and_leaves_no_temporary_folder(tmp_path: Path, workers: int) -> None:
    """A real 300 KB filesystem holding the dataset folder (the images lie elsewhere): the
    100-image array at 32x32 (300 KB) cannot fit."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("needs root to mount a small tmpfs")
    try:
        ds = _dataset(tmp_path, n=100, ds=mnt / "ds")
        res = CliRunner().invoke(app, ["prepare", str(ds), "--size", "32", "--workers", str(workers)])
        assert res.exit_code == 2 and "Traceback" not in res.output, res.output
        assert "disk full" in res.output and str(ds / "cache") in res.output.replace("\n", "")
        assert list((ds / "cache").iterdir()) == []
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_images_gone_or_broken_after_prepare_are_skipped_as_without_the_cache(tmp_path: Path) -> None:
    """Prepared, then one train image deleted and one val image replaced by a broken file: the
    cached run warns and completes, as the no-cache run does; past train.health.max_bad_images
    it stops with the no-cache path's one line. The user's files are left as they are."""
    from vislab.config import dump_config
    from vislab.testing.images import write_bad_ztxt_png
    from vislab.testing.synthetic import make_pattern_dataset, tiny_config

    data = make_pattern_dataset(tmp_path / "d", per_class=20, size=16)  # 36 train, 12 val, 12 test
    runner = CliRunner()
    assert runner.invoke(app, ["prepare", str(data), "--size", "16", "--workers", "1"]).exit_code == 0
    rows = pd.read_csv(data / "manifest.csv", dtype=str, keep_default_na=False)
    train_paths = rows[rows["split"] == "train"]["path"].tolist()
    broken = rows[rows["split"] == "val"]["path"].tolist()[0]
    Path(train_paths[0]).unlink()
    write_bad_ztxt_png(broken)
    before = _files(data / "images")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(dump_config(tiny_config(data={"cache": True}, train={"epochs": 1, "health": {"max_bad_images": 0.1}})))

    res = runner.invoke(app, ["train", str(cfg), "--data", str(data), "--out", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    out = res.output.replace("\n", "")
    assert f"health warn: 1 unreadable image(s) in the train split skipped: {train_paths[0]} (file not found" in out
    assert f"in the val split skipped: {broken} (corrupt image (SyntaxError" in out
    entries = {m["split"]: m for m in json.loads((tmp_path / "run" / "health.json").read_text()) if m["code"] == "unreadable_images"}
    assert entries["train"]["paths"] == [train_paths[0]] and entries["val"]["paths"] == [broken]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["stopped_reason"] == "completed"
    assert _files(data / "images") == before  # nothing rewritten, nothing added

    for p in train_paths[1:4]:  # 4 of 36 > 10 %
        Path(p).unlink()
    res = runner.invoke(app, ["train", str(cfg), "--data", str(data), "--out", str(tmp_path / "run2")])
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    last = res.output.strip().splitlines()[-1]
    assert last.startswith("error: 4 of the 36 train images cannot be read, over train.health.max_bad_images = 0.1; e.g. ")
    assert "last.ckpt saved. The dataset changed since `vislab curate`" in res.output.replace("\n", "")
    res = runner.invoke(app, ["prepare", str(data), "--size", "16", "--workers", "1"])  # prepare itself still refuses
    assert res.exit_code == 2 and "5 of the 60 images the cache holds cannot be read" in res.output.replace("\n", "")


def test_cached_loader_replaces_training_images_and_drops_evaluation_ones(tmp_path: Path) -> None:
    from vislab.data.cached import CachedClassifyDataModule

    ds = _dataset(tmp_path, n=8)  # train: 0..5, val: 6, 7
    cfg = DataConfig(batch_size=6, num_workers=0, augment={"preset": "none"})
    dm = CachedClassifyDataModule(ds, cfg, _spec(16))
    whole = dm.train_dataloader().dataset
    assert whole.serve is None
    paths = dm.splits.train["path"].tolist()
    Path(paths[1]).unlink()
    Path(dm.splits.val["path"].tolist()[0]).unlink()
    dm = CachedClassifyDataModule(ds, cfg, _spec(16))
    train = dm.train_dataloader().dataset
    x, y, _ = train[(np.arange(6), 7)]
    expected = whole[(np.array([0, 2, 2, 3, 4, 5]), 7)][0]  # the next readable image stands in
    np.testing.assert_array_equal(x, expected)
    assert len(train[(np.array([1, 2]), 7)][0]) == 2
    assert train.unreadable == [(paths[1], "file not found (deleted or moved?)")]
    (vx, vy), = list(dm.val_dataloader())
    assert len(vx) == 1 and len(dm.unreadable["val"].bad) == 1
    assert dm.unreadable["train"].bad == {}  # reported when its loader runs, as without the cache


@pytest.mark.parametrize("workers", [0, 2])
def test_memory_mapped_block_corrupted_past_the_sampled_check_stops_training_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int
) -> None:
    """One byte flipped in a block the open does not sample: the open serves the store, and
    the first batch that reads that block stops the run with one line naming the store and
    the fix; `prepare --force`, the fix named, gives a store that trains."""
    from vislab.config import dump_config
    from vislab.testing.synthetic import make_pattern_dataset, tiny_config

    monkeypatch.setattr(cache_check, "BLOCK_BYTES", 16 * 16 * 3)  # a block per image: 60 blocks
    monkeypatch.setattr(cache_check, "SAMPLED_BLOCKS", 0)  # header, first and last block only
    monkeypatch.setattr(cache_mod, "RAM_SHARE", 0.0)  # memory-mapped, as a store too big for RAM is
    data = make_pattern_dataset(tmp_path / "d", per_class=20, size=16)
    runner = CliRunner()
    assert runner.invoke(app, ["prepare", str(data), "--size", "16", "--workers", "1"]).exit_code == 0
    store = next((data / "cache").glob("*-16x16")) / "images.npy"
    arr = np.load(store, mmap_mode="r+")
    arr[30, 5, 5, 1] ^= 0xFF
    arr.flush()
    del arr
    opened = cache_mod.open_cache(data, 16, skip_unreadable=True)
    assert opened is not None and not opened.in_memory  # the sampled check passes
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(dump_config(tiny_config(data={"cache": True, "num_workers": workers}, train={"epochs": 1})))
    res = runner.invoke(app, ["train", str(cfg), "--data", str(data), "--out", str(tmp_path / "run")])
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    last = res.output.strip().splitlines()[-1].replace("\n", "")
    assert last.startswith(f"error: {store}: block 30 of its pixels (images 30-30) does not match the checksum"), last
    assert f"--size 16x16 --force" in res.output.replace("\n", "")
    assert runner.invoke(app, ["prepare", str(data), "--size", "16", "--workers", "1", "--force"]).exit_code == 0
    res = runner.invoke(app, ["train", str(cfg), "--data", str(data), "--out", str(tmp_path / "run2")])
    assert res.exit_code == 0, res.output
