"""The prepared cache's folder on disk: an update never carries corrupted rows over, a store
of a copied dataset with relative paths is rebuilt for the copy, leftovers of killed
prepares are removed, and a full disk (bytes or inodes) or a symlinked store is one line."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from vislab.cli import app
from vislab.data import cache as cache_mod
from vislab.data import cache_check
from vislab.data.manifest import write_manifest
from vislab.errors import VislabError
from vislab.locks import waiting_lock
from vislab.testing.images import write_image


def _dataset(root: Path, n: int = 6, relative: bool = False) -> Path:
    """n images under DS/img (paths relative to DS when `relative`) and DS's manifest."""
    ds = root / "ds"
    rows = []
    for i in range(n):
        p = write_image(ds / "img" / f"{i % 2}" / f"{i}.png", seed=i, size=(40, 30))
        path = str(p.relative_to(ds)) if relative else str(p.resolve())
        rows.append({"path": path, "label": str(i % 2), "split": "train" if i < n - 2 else "val", "status": "ok"})
    write_manifest(pd.DataFrame(rows), ds)
    return ds


def _one_line_error(args: list[str]) -> str:
    res = CliRunner().invoke(app, args)
    said = res.output.strip()
    assert res.exit_code == 2 and "Traceback" not in said, said
    return " ".join(said.split())


@contextmanager
def _tmpfs(folder: Path, options: str) -> Iterator[Path]:
    folder.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True).returncode:
        pytest.skip("needs root to mount a small tmpfs")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=False)


def test_update_after_a_changed_image_re_decodes_rows_of_corrupted_blocks(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ds = _dataset(tmp_path)
    good = cache_mod.prepare_cache(ds, 16, workers=1)
    expected = np.array(good.images)
    arr = np.load(good.root / "images.npy", mmap_mode="r+")
    arr[5] = 0  # bit rot in one row
    arr.flush()
    del arr
    assert cache_mod.open_cache(ds, 16) is None
    os.utime(good.paths[0])  # another image touched: only changed rows would be re-decoded
    updated = cache_mod.prepare_cache(ds, 16, workers=1, explain=True)
    np.testing.assert_array_equal(np.asarray(updated.images), expected)
    err = capsys.readouterr().err
    assert f"cache {good.root}: updating it (`vislab prepare {ds} --size 16x16` updates it ahead)" in err
    assert "1 image(s) changed since it was prepared" in err and "other image(s) no longer match their checksums" in err


def test_copied_dataset_with_relative_paths_gets_a_store_of_its_own_files(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ds = _dataset(tmp_path, relative=True)
    first = cache_mod.prepare_cache(ds, 16, workers=1)
    copy = shutil.copytree(ds, tmp_path / "copy")  # the store too, with the original's paths
    served = cache_mod.prepare_cache(copy, 16, workers=1)
    assert served.paths == [str(copy / Path(p).relative_to(ds)) for p in first.paths]
    assert "the dataset folder was copied or moved" in capsys.readouterr().err
    np.testing.assert_array_equal(np.asarray(served.images), np.asarray(first.images))
    assert cache_mod.open_cache(copy, 16).paths == served.paths  # served as it is from now on
    assert cache_mod.open_cache(ds, 16).paths == first.paths


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_leftovers_of_killed_prepares_are_removed_for_any_store(tmp_path: Path) -> None:
    ds = _dataset(tmp_path)
    root = ds / "cache"
    root.mkdir()
    dead = root / f"0123456789ab-128x128.tmp-{_dead_pid()}"  # another manifest's, its builder gone
    reused = root / f"0123456789ab-64x64.tmp-{os.getppid()}"  # a live pid that holds no lock for it
    building = root / f"0123456789ab-32x32.tmp-{os.getpid()}"  # its builder holds the store's lock
    for tmp in (dead, reused, building):
        tmp.mkdir()
        (tmp / "images.npy").write_bytes(b"\0" * 1000)
    with waiting_lock(root / "0123456789ab-32x32.lock"):
        cache_mod.prepare_cache(ds, 16, workers=1)
        assert not dead.exists() and not reused.exists() and building.exists()


def test_disk_full_names_the_stores_of_earlier_manifests(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ds = _dataset(tmp_path)
    old = ds / "cache" / "0123456789ab-16x16"
    old.mkdir(parents=True)
    (old / "images.npy").write_bytes(b"\1" * 300_000)
    monkeypatch.setattr(cache_check, "free_bytes", lambda folder: 1000)
    with pytest.raises(VislabError, match=r"disk full: .* 1 store\(s\) there of earlier manifests of this dataset hold 0\.3 MB .*0123456789ab-16x16"):
        cache_mod.prepare_cache(ds, 16, workers=1)
    assert old.exists()


def test_index_that_does_not_fit_is_the_disk_full_line(tmp_path: Path) -> None:
    """The array fits and index.json (long paths) does not: counted before decoding."""
    deep = tmp_path.joinpath(*["d" * 200] * 15)  # paths of about 3,000 characters
    deep.mkdir(parents=True)
    base = write_image(deep / "base.png", size=(8, 8))
    rows = []
    for i in range(400):
        os.link(base, deep / f"{i}.png")
        rows.append({"path": str(deep / f"{i}.png"), "label": "ab"[i % 2], "split": "train" if i % 4 else "val", "status": "ok"})
    with _tmpfs(tmp_path / "small", "size=8m") as small:
        ds = small / "ds"
        write_manifest(pd.DataFrame(rows), ds)
        room = 400 * 8 * 8 * 3 + cache_check.SPACE_MARGIN + 200_000  # the array and the margin, not the index
        with open(small / "filler", "wb") as f:
            os.posix_fallocate(f.fileno(), 0, cache_check.free_bytes(small) - room)
        said = _one_line_error(["prepare", str(ds), "--size", "8", "--workers", "1"])
        assert said.startswith(f"error: disk full: the cache needs") and f"in {ds / 'cache'}" in said, said
        assert list((ds / "cache").iterdir()) == []


def test_no_inodes_left_is_the_disk_full_line(tmp_path: Path) -> None:
    with _tmpfs(tmp_path / "small", "size=4m,nr_inodes=3") as small:
        ds = _dataset(tmp_path)
        shutil.copy(ds / "manifest.csv", small / "manifest.csv")  # the folder's inode, this one and cache/'s
        said = _one_line_error(["prepare", str(small), "--size", "16", "--workers", "1"])
        assert said == f"error: disk full: the cache does not fit in {small / 'cache'}, 4.2 MB free and no file entries (inodes) left; free space there or prepare a smaller --size", said


def test_symlinked_store_that_must_be_rebuilt_is_one_line_and_its_target_kept(tmp_path: Path) -> None:
    ds = _dataset(tmp_path)
    built = cache_mod.prepare_cache(ds, 16, workers=1)
    elsewhere = shutil.move(built.root, tmp_path / "other-disk")
    built.root.symlink_to(elsewhere)
    assert cache_mod.open_cache(ds, 16) is not None  # served through the link
    write_image(built.paths[0], seed=99, size=(40, 30))
    os.utime(built.paths[0], ns=(0, 10**18))
    said = _one_line_error(["prepare", str(ds), "--size", "16", "--workers", "1"])
    assert f"{built.root}: a symbolic link (to {elsewhere})" in said and "link the whole" in said
    assert built.root.is_symlink() and (Path(elsewhere) / "images.npy").exists()
