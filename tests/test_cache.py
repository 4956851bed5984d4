"""The prepared cache: exact pixels of the eval decode, keyed by manifest, atomic, rebuilt when
stale; the cached datamodule serves the same pixels as the file path."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from vislab.cli import app
from vislab.config import DataConfig
from vislab.data import cache as cache_mod
from vislab.data.io import load_image
from vislab.data.manifest import read_manifest, write_manifest
from vislab.data.transforms import decode_size, eval_transform
from vislab.errors import VislabError
from vislab.testing.images import write_image


def _dataset(root: Path) -> Path:
    """Images that exercise every decode path: EXIF rotation, draft mode, alpha, grey, upscaling."""
    files = [
        ("a/big_rotated.jpg", dict(seed=1, size=(300, 200), orientation=6)),  # draft: 4x smaller decode
        ("a/square.jpg", dict(seed=2, size=(64, 64))),
        ("a/tiny.png", dict(seed=3, size=(20, 14))),  # upscaled
        ("b/alpha.png", dict(seed=4, size=(40, 30), mode="RGBA")),
        ("b/grey.png", dict(seed=5, size=(30, 50), mode="L")),
        ("b/wide.jpg", dict(seed=6, size=(120, 40))),
    ]
    rows = []
    for i, (rel, kw) in enumerate(files):
        p = write_image(root / "src" / rel, **kw)
        rows.append({"path": str(p.resolve()), "label": rel.split("/")[0], "split": "train" if i < 4 else "val", "status": "ok"})
    rows.append({"path": str((root / "src/a/broken.jpg").resolve()), "label": "a", "split": "train", "status": "quarantined", "reason": "truncated"})
    write_manifest(pd.DataFrame(rows), root / "ds")
    return root / "ds"


def _eval_pixels(path: str, w: int, h: int) -> np.ndarray:
    """What the eval transform feeds the model (before normalising), as uint8 H x W x 3."""
    t = eval_transform((3, h, w), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), crop_pct=1.0)
    side = decode_size({"input_size": (3, h, w), "crop_pct": 1.0})
    x = t(load_image(path, (side, side)))
    return (x * 255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()


@pytest.mark.parametrize("size", ["32", "48x32"])
def test_cache_pixels_equal_the_eval_decode(tmp_path: Path, size: str) -> None:
    ds = _dataset(tmp_path)
    cache = cache_mod.prepare_cache(ds, size, workers=1)
    w, h = cache_mod.parse_cache_size(size)
    rows = read_manifest(ds)
    ok = rows[rows["status"] == "ok"]
    assert cache.paths == ok["path"].tolist()  # only usable rows, manifest order
    assert cache.labels == ok["label"].tolist() and cache.splits == ok["split"].tolist()
    assert cache.images.shape == (len(ok), h, w, 3) and cache.images.dtype == np.uint8
    for i, path in enumerate(cache.paths):
        np.testing.assert_array_equal(cache.images[i], _eval_pixels(path, w, h), err_msg=path)
    # the rotated photo is stored as displayed: portrait content, i.e. not the raw landscape pixels
    raw = load_image(cache.paths[0])
    assert raw.size == (200, 300)


def test_changed_manifest_gets_a_new_key_and_is_never_served_stale(tmp_path: Path) -> None:
    ds = _dataset(tmp_path)
    first = cache_mod.prepare_cache(ds, 16, workers=1)
    assert cache_mod.open_cache(ds, 16).root == first.root  # reused, not rebuilt
    df = pd.read_csv(ds / "manifest.csv", dtype=str, keep_default_na=False)
    df.loc[df["path"].str.endswith("square.jpg"), "label"] = "b"
    write_manifest(df, ds)
    assert cache_mod.open_cache(ds, 16) is None
    second = cache_mod.prepare_cache(ds, 16, workers=1)
    assert second.root != first.root and second.root.name.startswith(second.manifest_hash[:12])
    assert second.labels[second.paths.index(next(p for p in second.paths if p.endswith("square.jpg")))] == "b"
    assert cache_mod.open_cache(ds, 32) is None  # another size is another key


def test_partial_or_corrupt_store_is_rebuilt_and_tmp_left_by_dead_process_removed(tmp_path: Path) -> None:
    ds = _dataset(tmp_path)
    good = cache_mod.prepare_cache(ds, 16, workers=1)
    expected = np.array(good.images)
    index = json.loads((good.root / "index.json").read_text())
    index["paths"] = index["paths"][:-1]  # row count no longer matches the array
    (good.root / "index.json").write_text(json.dumps(index))
    assert cache_mod.open_cache(ds, 16) is None
    dead = good.root.parent / f"{good.root.name}.tmp-999999999"
    dead.mkdir()
    rebuilt = cache_mod.prepare_cache(ds, 16, workers=1)
    np.testing.assert_array_equal(rebuilt.images, expected)
    assert not dead.exists()
    (rebuilt.root / "index.json").unlink()
    assert cache_mod.open_cache(ds, 16) is None


def test_parallel_prepare_matches_serial_and_memmap_mode(tmp_path: Path) -> None:
    ds = _dataset(tmp_path)
    serial = np.array(cache_mod.prepare_cache(ds, 24, workers=1).images)
    parallel = cache_mod.prepare_cache(ds, 24, workers=2, force=True, in_memory=False)
    assert not parallel.in_memory
    np.testing.assert_array_equal(np.asarray(parallel.images), serial)
    assert cache_mod.open_cache(ds, 24, in_memory=True).in_memory


def test_prepare_cli(tmp_path: Path) -> None:
    ds = _dataset(tmp_path)
    runner = CliRunner()
    res = runner.invoke(app, ["prepare", str(ds), "--size", "16", "--workers", "1"])
    assert res.exit_code == 0, res.output
    assert "6 images at 16x16" in res.output
    bad = runner.invoke(app, ["prepare", str(ds), "--size", "big"])
    assert bad.exit_code == 2 and "--size" in bad.output


def test_prepare_cli_builds_the_store_a_cropped_grey_run_opens(tmp_path: Path) -> None:
    """`prepare --size 35 --crop 32 --grey` is the store of a 32-px grey model at crop_pct 0.9:
    training opens it as it is; a crop larger than the store is one line."""
    from vislab.data.cached import CachedClassifyDataModule

    ds = _dataset(tmp_path)
    res = CliRunner().invoke(app, ["prepare", str(ds), "--size", "35", "--crop", "32", "--grey", "--workers", "1"])
    assert res.exit_code == 0, res.output
    assert "6 images at 35x35, cropped to 32x32 by the model, grey" in res.output.replace("\n", "")
    spec = {"input_size": [3, 32, 32], "mean": [0.5] * 3, "std": [0.5] * 3, "crop_pct": 0.9, "interpolation": "bilinear"}
    dm = CachedClassifyDataModule(ds, DataConfig(batch_size=4, num_workers=0, grayscale=True), spec)
    opened = cache_mod.open_cache(ds, **dm.cache_pixels())
    assert opened is not None and opened.root.name.endswith("-35x35-crop32x32-grey")
    bad = CliRunner().invoke(app, ["prepare", str(ds), "--size", "32", "--crop", "35"])
    assert bad.exit_code == 2 and "--crop 35x35: larger than --size 32x32" in bad.output.replace("\n", "")


def test_file_changed_since_curation_is_a_clear_error(tmp_path: Path) -> None:
    ds = _dataset(tmp_path)
    victim = Path(read_manifest(ds)["path"][0])
    victim.write_bytes(b"no longer an image")
    with pytest.raises(Exception, match="re-run `vislab curate`"):
        cache_mod.prepare_cache(ds, 16, workers=1)
    assert not any(p.name.endswith(f".tmp-{os.getpid()}") for p in (ds / "cache").iterdir())


def test_cached_datamodule_serves_the_eval_pixels(tmp_path: Path) -> None:
    from vislab.data.batch_augment import BatchTransform
    from vislab.data.cached import CachedClassifyDataModule
    from vislab.data.datamodule import ClassifyDataModule

    ds = _dataset(tmp_path)
    spec = {"input_size": [3, 32, 32], "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3], "crop_pct": 1.0, "interpolation": "bilinear"}
    cfg = DataConfig(batch_size=4, num_workers=0, augment={"preset": "none"})
    plain = ClassifyDataModule(ds, cfg, spec)
    cached = CachedClassifyDataModule(ds, cfg, spec)
    ref = torch.cat([x for x, _ in plain.val_dataloader()])
    batches = list(cached.val_dataloader())
    x8 = torch.cat([b[0] for b in batches])
    assert x8.dtype == torch.uint8 and x8.is_contiguous(memory_format=torch.channels_last)
    tf = BatchTransform((32, 32), spec["mean"], spec["std"])
    torch.testing.assert_close(tf(x8), ref, atol=1e-5, rtol=0)
    assert torch.equal(torch.cat([b[1] for b in batches]), torch.cat([y for _, y in plain.val_dataloader()]))
    train = next(iter(cached.train_dataloader()))
    assert len(train) == 3 and train[2].dtype == torch.long  # uint8 images, targets, augmentation seed


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real photos (scikit-image's) as JPEGs of the sizes where the cache once went astray:
    640x480 (a crop_pct < 1 store sat a pixel off the eval crop), 384x288 (another JPEG
    draft scale at 32 px and crop_pct 0.875), 283x283, one EXIF-rotated, and a 50x4000 PNG
    (trimmed before resizing). All but one per class are validation images."""
    skimage_data = pytest.importorskip("skimage.data")
    from PIL import Image

    root = tmp_path_factory.mktemp("photos")
    astronaut, coffee, chelsea = (Image.fromarray(f()) for f in (skimage_data.astronaut, skimage_data.coffee, skimage_data.chelsea))
    files = {
        "a/astronaut_640x480.jpg": astronaut.resize((640, 480)),
        "a/coffee_384x288.jpg": coffee.resize((384, 288)),
        "a/chelsea_283x283.jpg": chelsea.resize((283, 283)),
        "b/chelsea_451x300.jpg": chelsea,
        "b/coffee_rotated.jpg": coffee.resize((600, 450)),
        "b/astronaut_283x283.jpg": astronaut.resize((283, 283)),
        "b/tall_50x4000.png": chelsea.resize((50, 4000)),
    }
    rows = []
    for i, (rel, im) in enumerate(files.items()):
        path = root / "src" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        exif = Image.Exif()
        if "rotated" in rel:
            exif[0x0112] = 6
        im.save(path, quality=92, exif=exif) if path.suffix == ".jpg" else im.save(path)
        split = "train" if rel.endswith("283x283.jpg") else "val"
        rows.append({"path": str(path.resolve()), "label": rel[0], "split": split, "status": "ok"})
    write_manifest(pd.DataFrame(rows), root / "ds")
    return root / "ds"


@pytest.mark.parametrize(
    "size,crop_pct,colour",
    [
        ((32, 32), 1.0, "rgb"),
        ((32, 32), 0.9, "rgb"),
        ((32, 32), 0.875, "rgb"),
        ((224, 224), 0.95, "rgb"),
        ((32, 64), 1.0, "rgb"),
        ((32, 64), 0.9, "rgb"),
        ((32, 32), 1.0, "grey"),
        ((32, 32), 0.9, "one channel"),
    ],
)
def test_cached_validation_is_exactly_what_the_file_loader_feeds_the_model(
    photos: Path, size: tuple[int, int], crop_pct: float, colour: str
) -> None:
    """The model sees the same validation tensors with data.cache true or false (so the
    same as evaluate, predict and serve): same crop window, same JPEG draft scale, same grey."""
    from vislab.data.batch_augment import BatchTransform
    from vislab.data.cached import CachedClassifyDataModule
    from vislab.data.datamodule import ClassifyDataModule

    channels = 1 if colour == "one channel" else 3
    grey = colour != "rgb"
    spec = {"input_size": [channels, *size], "mean": [0.5, 0.4, 0.3], "std": [0.25] * 3, "crop_pct": crop_pct, "interpolation": "bilinear"}
    cfg = DataConfig(batch_size=8, num_workers=0, augment={"preset": "none"}, grayscale=grey)
    files = torch.cat([x for x, _ in ClassifyDataModule(photos, cfg, spec, channels=channels).val_dataloader()])
    tf = BatchTransform(size, spec["mean"], spec["std"], channels=channels, grayscale=grey)
    cached = torch.cat([tf(x) for x, _ in CachedClassifyDataModule(photos, cfg, spec, channels=channels).val_dataloader()])
    assert files.shape == cached.shape == (5, channels, *size)
    levels = ((cached - files).abs() * 0.25 * 255).flatten(1).amax(1)  # per image, in 8-bit levels
    assert levels.max() < 0.01, f"cached pixels off by up to {levels.tolist()} levels"


def test_cached_loader_gives_the_same_batches_with_workers(tmp_path: Path) -> None:
    from vislab.data.cached import CachedClassifyDataModule

    ds = _dataset(tmp_path)
    spec = {"input_size": [3, 16, 16], "mean": [0.5] * 3, "std": [0.25] * 3, "crop_pct": 1.0, "interpolation": "bilinear"}
    epochs = []
    for workers in (0, 2):
        dm = CachedClassifyDataModule(ds, DataConfig(batch_size=1, num_workers=workers), spec, seed=5)
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(1)
        epochs.append(list(loader))
    assert len(epochs[0]) == len(epochs[1]) > 1
    for a, b in zip(*epochs):
        assert [t.dtype for t in a] == [torch.uint8, torch.long, torch.long]
        assert a[0].is_contiguous(memory_format=torch.channels_last)
        assert all(torch.equal(s, t) for s, t in zip(a, b))


@pytest.mark.parametrize("workers", [1, 2])
def test_prepare_on_images_deleted_or_broken_after_curation_is_one_line(tmp_path: Path, workers: int) -> None:
    from vislab.testing.images import write_bad_ztxt_png

    ds = _dataset(tmp_path)
    paths = [str((tmp_path / "src" / rel).resolve()) for rel in ("a/square.jpg", "a/tiny.png")]
    Path(paths[0]).unlink()
    res = CliRunner().invoke(app, ["prepare", str(ds), "--size", "16", "--workers", str(workers)])
    assert res.exit_code == 2 and "Traceback" not in res.output
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and res.output.strip().splitlines()[-1] == errors[0]  # after the progress bar
    assert f"{paths[0]}: file not found" in res.output.replace("\n", "") and "re-run `vislab curate`" in res.output
    write_image(Path(paths[0]), seed=2, size=(64, 64))
    write_bad_ztxt_png(paths[1])  # Pillow raises SyntaxError, which escaped the old catch
    with pytest.raises(VislabError, match=r"tiny.png: corrupt image \(SyntaxError"):
        cache_mod.prepare_cache(ds, 16, workers=workers)
    assert cache_mod.open_cache(ds, 16) is None


def test_decoding_allows_the_pixel_limit_the_dataset_was_curated_with(tmp_path: Path, monkeypatch) -> None:
    """curate --max-pixels above the default accepted an image: prepare and the training
    loader must decode it too (prepare refused it as 'changed since curation')."""
    import vislab.data.manifest as manifest_mod
    from vislab.data.datamodule import ClassifyDataModule

    monkeypatch.setattr(manifest_mod, "MAX_PIXELS", 1000)  # a default that 64x64 = 4,096 pixels is over
    ds = _dataset(tmp_path)
    with pytest.raises(VislabError, match="over the 1,000-pixel limit"):
        cache_mod.prepare_cache(ds, 16, workers=1)
    (ds / "curation.json").write_text(json.dumps({"options": {"max_pixels": 100_000}}))
    assert manifest_mod.dataset_max_pixels(ds) == 100_000
    assert cache_mod.prepare_cache(ds, 16, workers=1).images.shape[0] == 6
    spec = {"input_size": [3, 16, 16], "mean": [0.5] * 3, "std": [0.5] * 3, "crop_pct": 1.0, "interpolation": "bilinear"}
    plain = ClassifyDataModule(ds, DataConfig(batch_size=4, num_workers=0, augment={"preset": "none"}), spec)
    assert len(torch.cat([x for x, _ in plain.val_dataloader()])) == 2  # decoded under the recorded limit


def test_prepare_killed_outright_leaves_no_workers_behind(tmp_path: Path) -> None:
    """SIGKILL to `vislab prepare` (a closed notebook) left its two pool workers decoding,
    reparented to init; they now die with it."""
    import signal
    import subprocess
    import sys
    import time

    from PIL import Image

    from vislab.testing.images import smooth_image
    from vislab.testing.processes import group_alive, wait_group_gone

    rows = []
    base = np.asarray(smooth_image(0, (900, 700)))  # one pattern, shifted: drawing 160 took 20-45 s
    for i in range(160):  # enough photos that preparing them outlasts the workers' start
        p = tmp_path / "src" / f"{i % 2}" / f"{i}.jpg"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.roll(base, 5 * i, axis=1)).save(p, quality=90)
        rows.append({"path": str(p.resolve()), "label": str(i % 2), "split": "train", "status": "ok"})
    write_manifest(pd.DataFrame(rows), tmp_path / "ds")
    proc = subprocess.Popen([sys.executable, "-m", "vislab.cli", "prepare", str(tmp_path / "ds"), "--size", "64", "--workers", "2"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while len(group_alive(proc.pid)) < 3:  # the command and its two workers
        assert proc.poll() is None and time.monotonic() < deadline, "prepare ended before its workers could be seen"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert wait_group_gone(proc.pid, timeout=10) == []


def _build_stale(ds: str, barrier: Any, out: Any) -> None:
    """A training's build of a stale store in its own process; puts (outcome, the store it
    got, stderr) on `out`."""
    import contextlib
    import io

    err = io.StringIO()
    barrier.wait()
    try:
        with contextlib.redirect_stderr(err):
            cache = cache_mod.prepare_cache(ds, 48, workers=1, skip_unreadable=True, in_memory=False)
        out.put(("ok", str(cache.root), err.getvalue()))
    except BaseException as e:  # noqa: BLE001 - the outcome is the test's
        out.put((f"{type(e).__name__}: {e}", "", err.getvalue()))


def test_trainings_starting_together_on_a_stale_store_build_it_once(tmp_path: Path) -> None:
    """Four processes rebuilding one stale store at once: one rebuilds it, the others wait for
    it and open it (they once raced each other's rmtree and rename: 'Directory not empty')."""
    import multiprocessing as mp

    rows = [
        {"path": str(write_image(tmp_path / "src" / f"{c}/{i}.png", seed=i, size=(96, 80)).resolve()), "label": c, "split": "train", "status": "ok"}
        for c in "ab"
        for i in range(30)
    ]
    write_manifest(pd.DataFrame(rows), tmp_path / "ds")
    ds = str(tmp_path / "ds")
    cache_mod.prepare_cache(ds, 48, workers=1)
    os.utime(rows[0]["path"], ns=(1, 1))  # same pixels, another mtime: the store is stale
    ctx = mp.get_context("fork")
    barrier, out = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_build_stale, args=(ds, barrier, out)) for _ in range(4)]
    for p in procs:
        p.start()
    got = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(10)
    assert [g[0] for g in got] == ["ok"] * 4, got
    assert len({g[1] for g in got}) == 1
    assert sum("changed since it was prepared" in g[2] for g in got) == 1, [g[2] for g in got]
    assert cache_mod.open_cache(ds, 48) is not None


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_dataset_folder_is_one_line_naming_it_and_the_ways_out(tmp_path: Path) -> None:
    """A dataset on a read-only share: building its store (none yet, or a stale one) is one
    line, not an OSError traceback; a store prepared before is still served."""
    ds = _dataset(tmp_path)
    try:
        ds.chmod(0o555)
        with pytest.raises(VislabError, match=r"cache: the cache cannot be written there .*data\.cache: false.*vislab prepare"):
            cache_mod.prepare_cache(ds, 16, workers=1, skip_unreadable=True)
        res = CliRunner().invoke(app, ["prepare", str(ds), "--size", "16", "--workers", "1"])
        assert res.exit_code == 2 and "the cache cannot be written there" in res.output and "Traceback" not in res.output
        ds.chmod(0o755)
        cache_mod.prepare_cache(ds, 16, workers=1)
        (ds / "cache").chmod(0o555)
        assert len(cache_mod.prepare_cache(ds, 16, workers=1, skip_unreadable=True)) == 6  # served as it is
        os.utime(read_manifest(ds)["path"][0], ns=(1, 1))  # stale: to be rebuilt, in a read-only folder
        with pytest.raises(VislabError, match="cannot be written there"):
            cache_mod.prepare_cache(ds, 16, workers=1, skip_unreadable=True)
    finally:
        ds.chmod(0o755)
        if (ds / "cache").exists():
            (ds / "cache").chmod(0o755)


def test_training_that_builds_its_store_names_it_the_prepare_command_and_the_store_that_did_not_fit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`vislab prepare --size 32` builds a bilinear store; a bicubic 32-px model cannot use it,
    and training says so, and which command would have built the store it builds."""
    from vislab.data.cached import CachedClassifyDataModule

    ds = _dataset(tmp_path)
    prepared = cache_mod.prepare_cache(ds, 32, workers=1)
    spec = {"input_size": [3, 32, 32], "mean": [0.5] * 3, "std": [0.5] * 3, "crop_pct": 1.0, "interpolation": "bicubic"}
    dm = CachedClassifyDataModule(ds, DataConfig(batch_size=4, num_workers=0), spec)
    capsys.readouterr()
    dm.prepare_data()
    err = " ".join(capsys.readouterr().err.split())
    built = cache_mod.open_cache(ds, **dm.cache_pixels())
    assert built is not None and built.root != prepared.root
    assert f"cache {built.root}: building it (`vislab prepare {ds} --size 32x32 --interpolation bicubic` builds it ahead)" in err
    assert f"cache {prepared.root}: not this model's store (interpolation bilinear, this model's bicubic)" in err
    capsys.readouterr()
    dm.prepare_data()  # built: opened without a word
    assert "building" not in capsys.readouterr().err
