"""Fixtures shared by test files: headless Chromium for the browser tests, and tiny trained
detect and crops runs (seconds each, made once per session) that the serve tests share, and
two classes of crops of two skimage photos for fine-tuning a pretrained backbone (`photos`).

Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs them) and selenium; without
them a test that asks for `browser` skips and says which packages are missing. Set
VISLAB_SCREENSHOT_DIR to keep the screenshots for a look (the `keep_screenshot` fixture).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest


def _one_torch_thread_per_worker() -> None:
    """Under pytest-xdist with a worker per core (`make test`: two on CI's two cores), torch in
    each worker and in every process a test starts (the CLI, the README tour) runs one
    intra-op thread. With two threads each, the workers' and their children's threads fight
    for the cores and mostly wait on each other: test_abn.py plus test_train_engine.py took
    87 s wall and 76 s of CPU that way on a busy 2-core machine, 41 s and 36 s with one thread
    (run one after the other).
    An OMP_NUM_THREADS already set is kept."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if os.environ.get("PYTEST_XDIST_WORKER") and workers >= (os.cpu_count() or 1):
        os.environ.setdefault("OMP_NUM_THREADS", "1")


_one_torch_thread_per_worker()

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1280,900",
)


def _find(*names: str) -> str | None:
    for name in names:
        found = shutil.which(name) or (name if os.path.isfile(name) else None)
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
    chrome = _find("/usr/bin/chromium", "chromium", "chromium-browser")
    driver_bin = _find("/usr/bin/chromedriver", "chromedriver")
    if chrome is None or driver_bin is None:
        pytest.skip("headless Chromium not found: install the Debian packages `chromium chromium-driver` "
                    "(apt-get install -y chromium chromium-driver)")
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = chrome
    for flag in CHROMIUM_FLAGS:
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(driver_bin), options=opts)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


@pytest.fixture
def keep_screenshot():
    """`keep_screenshot(path, name)` copies a screenshot to $VISLAB_SCREENSHOT_DIR/name when
    that variable is set."""

    def keep(shot: Path, name: str) -> None:
        folder = os.environ.get("VISLAB_SCREENSHOT_DIR")
        if folder:
            Path(folder).mkdir(parents=True, exist_ok=True)
            shutil.copy(shot, Path(folder) / name)

    return keep


@pytest.fixture
def low_pixel_limit(monkeypatch) -> int:
    """The default decompression-bomb limit lowered to 100 pixels: a tiny synthetic image is
    then over it as a 60-megapixel photo is over the real one (178,956,970), without writing
    such a file. Every decoder and image dataset of vislab.data whose limit defaults to the
    real one gets the lowered default, so a reader that is not told a dataset's
    `curate --max-pixels` refuses its images here as it would refuse large photos."""
    import importlib
    import inspect

    import vislab.data.manifest as manifest_mod
    from vislab.fsguard import MAX_PIXELS

    low = 100
    monkeypatch.setattr(manifest_mod, "MAX_PIXELS", low)
    for name in ("io", "crops", "datamodule", "det_datamodule", "crops_datamodule"):
        module = importlib.import_module(f"vislab.data.{name}")
        for obj in vars(module).values():
            func = obj.__init__ if inspect.isclass(obj) else obj
            if getattr(obj, "__module__", None) == module.__name__ and inspect.isfunction(func) and MAX_PIXELS in (func.__defaults__ or ()):
                monkeypatch.setattr(func, "__defaults__", tuple(low if d == MAX_PIXELS else d for d in func.__defaults__))
    return low


@pytest.fixture
def report_tiles(monkeypatch) -> list:
    """The pictures of every tile the report's galleries draw (None: 'image unreadable')."""
    import vislab.report.plots as plots

    drawn: list = []
    real = plots._tile_grid

    def spy(tiles, *args, **kwargs):
        drawn.extend(t[0] for t in tiles)
        return real(tiles, *args, **kwargs)

    monkeypatch.setattr(plots, "_tile_grid", spy)
    return drawn


@pytest.fixture(scope="session")
def detect_run(tmp_path_factory) -> Path:
    """A detection run trained one epoch on 8 synthetic shapes images (`det`; photos in ../src/images)."""
    from typer.testing import CliRunner

    from vislab.cli import app
    from vislab.testing.detection import tiny_detect_config, write_shapes_dataset
    from vislab.testing.models import single_thread
    from vislab.train import train

    root = tmp_path_factory.mktemp("serve-detect")
    write_shapes_dataset(root / "src", n=16)
    res = CliRunner().invoke(app, ["curate", str(root / "src"), "--out", str(root / "ds"), "--split", "0.5,0.5,0", "--workers", "1"])
    assert res.exit_code == 0, res.output
    with single_thread():  # a YOLO step on a busy 2-core machine is many times slower on two threads
        return Path(train(tiny_detect_config(train={"epochs": 1}, detect={"conf": 0.05}), root / "ds", root / "det"))


@pytest.fixture(scope="session")
def crops_run(tmp_path_factory) -> Path:
    """A crops run (crop_detector_tiny) trained one epoch on synthetic lens photos (`run`; photos in ../data/images)."""
    import torch

    from vislab.testing.lens import make_lens_dataset, tiny_crops_run
    from vislab.train import train

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        root = tmp_path_factory.mktemp("serve-crops")
        data = make_lens_dataset(root / "data", splits=(12, 4, 4))
        return Path(train(tiny_crops_run(train={"epochs": 1}), data, root / "run"))
    finally:
        torch.set_num_threads(before)


# The longest files start first (longest first, measured with --durations), so that under
# pytest-xdist (`make test` runs two workers) the README tour (four minutes of real CLI
# commands) overlaps the rest of the suite instead of running alone at its end. xdist's own
# reorder (files with the most tests first) would undo this: the Makefile turns it off.
FIRST = (
    "test_readme_tour.py", "test_train_faults.py", "test_locks.py", "test_train_budget.py", "test_sweep_workers.py",
    "test_freeze_stages.py", "test_train_ddp.py", "test_crops_learning.py", "test_train_resume.py", "test_probe_head.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(FIRST)))  # stable: files stay whole, in order


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Two classes of 48-px crops of two skimage photos (a cat, a cup of coffee), curated."""
    import numpy as np
    from PIL import Image
    from typer.testing import CliRunner

    from vislab.cli import app

    skimage_data = pytest.importorskip("skimage.data")
    root, rng = tmp_path_factory.mktemp("photos"), np.random.default_rng(0)
    for name, image in (("cat", skimage_data.chelsea()), ("coffee", skimage_data.coffee())):
        (root / "src" / name).mkdir(parents=True)
        for i in range(24):
            side = int(rng.integers(150, 280))
            top, left = (int(rng.integers(0, d - side)) for d in image.shape[:2])
            Image.fromarray(image[top:top + side, left:left + side]).resize((48, 48)).save(root / "src" / name / f"{i}.png")
    res = CliRunner().invoke(app, ["curate", str(root / "src"), "--out", str(root / "ds"), "--split", "0.5,0.5,0", "--seed", "0"])
    assert res.exit_code == 0, res.output
    return root / "ds"


@pytest.fixture
def ghostscript_log(tmp_path: Path, monkeypatch) -> Path:
    """A fake Ghostscript first on PATH (`vislab.testing.images.fake_ghostscript`): the log it
    returns exists once anything ran `gs`. Pillow remembers whether it found Ghostscript, so
    that memory is cleared: every decode in the test looks for `gs` afresh, as a new process."""
    from PIL import EpsImagePlugin

    from vislab.testing.images import fake_ghostscript

    folder = tmp_path / "fake-bin"
    log = fake_ghostscript(folder)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setattr(EpsImagePlugin, "gs_binary", None)
    return log
