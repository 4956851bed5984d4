"""The datamodule's guarantees: seeded hold-out, epoch order as a function of (seed, epoch),
rank shards, mid-epoch skip, and augmentation fixed by its seed."""

from __future__ import annotations

import numpy as np
import torch

from vislab.config import DataConfig
from vislab.data.datamodule import ClassifyDataModule, EpochSampler, classification_splits
from vislab.testing.synthetic import make_pattern_dataset


def test_missing_val_split_is_held_out_per_class_and_seeded(tmp_path):
    data = make_pattern_dataset(tmp_path / "d", per_class=20, size=8, splits=(0.8, 0.0, 0.2))
    a = classification_splits(data, val_fraction=0.25, seed=1)
    b = classification_splits(data, val_fraction=0.25, seed=1)
    c = classification_splits(data, val_fraction=0.25, seed=2)
    assert a.val_source.startswith("held out 25% of train per class (seed 1)")
    assert a.val["label"].value_counts().tolist() == [4, 4, 4]  # 25 % of each class's 16 train images
    assert len(a.train) == 36 and set(a.train["path"]).isdisjoint(a.val["path"])
    assert a.val["path"].tolist() == b.val["path"].tolist() != c.val["path"].tolist()
    assert len(a.test) == 12


def test_epoch_order_depends_only_on_seed_and_epoch():
    s = EpochSampler(10, seed=4)
    first = list(s)
    assert first == list(EpochSampler(10, seed=4))
    s.set_epoch(1)
    second = list(s)
    assert sorted(i for i, _ in second) == list(range(10)) and second != first
    assert len({seed for _, seed in first + second}) == 20  # every (epoch, position) its own aug seed


def test_rank_shards_cover_the_epoch_and_skip_resumes():
    shards = [list(EpochSampler(10, seed=0, num_replicas=3, rank=r)) for r in range(3)]
    assert {len(x) for x in shards} == {4}  # padded to equal length for lockstep DDP steps
    assert {i for shard in shards for i, _ in shard} == set(range(10))
    evals = [list(EpochSampler(10, shuffle=False, num_replicas=3, rank=r, train=False)) for r in range(3)]
    assert sorted(i for shard in evals for i in shard) == list(range(10))  # each image once
    s = EpochSampler(10, seed=0)
    full = list(s)
    s.skip = 6
    assert list(s) == full[6:] and list(s) == full  # skip applies to one iteration only


def test_augmentation_is_fixed_by_its_seed(tmp_path):
    data = make_pattern_dataset(tmp_path / "d", per_class=4, size=16)
    cfg = DataConfig(augment={"preset": "strong", "rotation": 30})
    spec = {"input_size": [3, 16, 16], "mean": [0.5] * 3, "std": [0.5] * 3, "crop_pct": 1.0}
    dm = ClassifyDataModule(data, cfg, spec)
    dm.setup()
    ds = dm.dataset(dm.splits.train, train=True)
    torch.manual_seed(0)
    x1, _ = ds[(0, 123)]
    torch.manual_seed(99)
    x2, _ = ds[(0, 123)]
    x3, _ = ds[(0, 124)]
    assert torch.equal(x1, x2) and not torch.equal(x1, x3)
    state = torch.get_rng_state()
    ds[(1, 5)]
    assert torch.equal(state, torch.get_rng_state())  # the global RNG is left alone


def test_sixteen_bit_greyscale_pngs_curate_and_train_as_their_8_bit_picture(tmp_path):
    from vislab.data.curate import curate
    from vislab.testing.images import smooth_image, write_sixteen_bit

    pictures = {}
    for label, seeds in (("a", (1, 2)), ("b", (3, 4))):
        for seed in seeds:
            pictures[str(write_sixteen_bit(tmp_path / "src" / label / f"{seed}.png", seed=seed, size=(16, 16)))] = seed
    summary = curate(tmp_path / "src", out=tmp_path / "ds", split="0.5,0.5", workers=1)
    assert summary["status"]["ok"] == 4
    spec = {"input_size": [3, 16, 16], "mean": [0.0] * 3, "std": [1.0] * 3, "crop_pct": 1.0}
    dm = ClassifyDataModule(tmp_path / "ds", DataConfig(), spec)
    dm.setup()
    for rows, train in ((dm.splits.train, True), (dm.splits.val, False)):
        ds = dm.dataset(rows, train=train)
        for i, path in enumerate(ds.paths):
            x, _ = ds.load(i)
            expected = torch.tensor(np.asarray(smooth_image(pictures[path], (16, 16), "L")), dtype=torch.float32) / 255
            assert x.shape == (3, 16, 16)
            if not train:  # augmentation moves pixels; evaluation shows the picture itself
                assert torch.allclose(x[0], expected, atol=1 / 255)
            assert 0.2 < x.mean() < 0.8  # not clipped to white


def test_training_on_a_one_class_dataset_is_one_line_naming_the_dataset_and_the_fix(tmp_path):
    from typer.testing import CliRunner

    from vislab.cli import app
    from vislab.data.curate import curate
    from vislab.testing.images import write_image_folder

    write_image_folder(tmp_path / "photos", ["cat"], per_class=4, size=(16, 16))
    curate(tmp_path / "photos", out=tmp_path / "ds", split="0.5,0.5", workers=1)
    res = CliRunner().invoke(app, ["train", "digits-cnn", "--data", str(tmp_path / "ds"), "--out", str(tmp_path / "run")])
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and len(res.stderr.strip().splitlines()) == 1
    assert " ".join(res.stderr.split()) == (
        f"error: {tmp_path / 'ds'}: only one usable class ('cat'), and classification needs at least 2 classes; "
        "add images of another class (a folder per class) and curate again"
    )


def test_a_class_without_training_images_is_refused_naming_it(tmp_path):
    """A class only in val would get an output that is never trained and val images that can
    never be right; training refuses it in one line instead of training without a word."""
    import pandas as pd
    from typer.testing import CliRunner

    from vislab.cli import app
    from vislab.config import dump_config
    from vislab.testing.synthetic import tiny_config

    data = make_pattern_dataset(tmp_path / "d", per_class=10, size=16)
    manifest = pd.read_csv(data / "manifest.csv", keep_default_na=False)
    manifest.loc[manifest["label"] == "diagonal", "split"] = "val"
    manifest.to_csv(data / "manifest.csv", index=False)
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(dump_config(tiny_config(train={"epochs": 1})))
    res = CliRunner().invoke(app, ["train", str(cfg), "--data", str(data), "--out", str(tmp_path / "run")])
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and len(res.stderr.strip().splitlines()) == 1, res.output
    text = " ".join(res.stderr.split())
    assert "class(es) 'diagonal' have no training images (only in val)" in text and "curate again" in text, text
    assert not (tmp_path / "run").exists()
