"""The cifar10-fast pieces, each switch on its own: the fast net and its whitening stem, batched
augmentation (translate, flip, normalise, channels_last, seeds), TTA views, lookahead, precision
choice, and tiny training runs with every switch of the recipe on and off."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from vislab.config import RECIPES_DIR, ModelConfig, load_config
from vislab.data import batch_augment as ba
from vislab.models.fast_cnn import FastCNN, whitening_filters
from vislab.models.factory import create_model
from vislab.tricks import Lookahead, recipe_callbacks, resolve_precision

CONFIGS = RECIPES_DIR
SMALL = {"widths": [8, 16, 16]}


def test_whitening_filters_decorrelate_patches() -> None:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(64, 3, 12, 12, generator=g)
    images = base + 0.8 * base.roll(1, dims=3) + torch.tensor([0.5, -0.2, 0.1]).view(1, 3, 1, 1)  # correlated, offset
    weight, bias = whitening_filters(images, kernel=2, eps=1e-6)
    assert weight.shape == (24, 3, 2, 2) and torch.allclose(weight[:12], -weight[12:])
    out = torch.nn.functional.conv2d(images, weight[:12], bias[:12])
    flat = out.permute(0, 2, 3, 1).reshape(-1, 12).double()
    assert flat.mean(0).abs().max() < 1e-3
    cov = torch.cov(flat.T)
    assert torch.allclose(cov, torch.eye(12, dtype=cov.dtype), atol=2e-2)


def test_fast_cnn_stem_is_frozen_and_set_from_data_only_when_whitening() -> None:
    cfg = ModelConfig(name="fast_cnn", fast_cnn=SMALL)
    model = create_model(cfg, 10)
    assert isinstance(model, FastCNN) and not model.stem.weight.requires_grad and model.stem.bias.requires_grad
    before = model.stem.weight.clone()
    model.init_whitening(torch.rand(16, 3, 32, 32))
    assert not torch.equal(before, model.stem.weight)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert [f["num_chs"] for f in model.feature_info] == [8, 16, 16]
    plain = create_model(ModelConfig(name="fast_cnn", fast_cnn={**SMALL, "whiten": False, "dirac_init": False}), 10)
    assert plain.stem.weight.requires_grad
    assert [c for c in recipe_callbacks(load_config(None, ["model.name=fast_cnn", "model.fast_cnn.whiten=false"]))] == []


def test_dirac_init_and_logit_scale_switches() -> None:
    torch.manual_seed(0)
    on = create_model(ModelConfig(name="fast_cnn", fast_cnn=SMALL), 3)
    conv = on.stages[1].conv2.weight  # 16 -> 16: identity on every channel
    assert torch.equal(conv[:, :, 1, 1], torch.eye(16)) and conv[:, :, 0, 0].abs().sum() == 0
    torch.manual_seed(0)
    off = create_model(ModelConfig(name="fast_cnn", fast_cnn={**SMALL, "dirac_init": False, "logit_scale": 1.0}), 3)
    assert not torch.equal(off.stages[1].conv2.weight[:, :, 1, 1], torch.eye(16))
    x = torch.rand(2, 3, 32, 32)
    for model, scale in ((on.eval(), 1 / 9), (off.eval(), 1.0)):
        pooled = model.forward_head(model.forward_features(x), pre_logits=True)
        assert torch.allclose(model(x), model.head(pooled) * scale)


def _batch(n: int = 6, size: int = 8) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (n, size, size, 3), generator=g, dtype=torch.uint8).permute(0, 3, 1, 2)


def test_batch_transform_normalises_like_the_eval_transform_and_keeps_channels_last() -> None:
    x = _batch()
    tf = ba.BatchTransform((8, 8), (0.5, 0.4, 0.3), (0.2, 0.3, 0.4))
    y = tf(x)
    ref = (x.float() / 255 - torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1)) / torch.tensor([0.2, 0.3, 0.4]).view(1, 3, 1, 1)
    torch.testing.assert_close(y, ref)
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert ba.BatchTransform((4, 4), (0.5,) * 3, (0.5,) * 3)(x).shape == (6, 3, 4, 4)  # centre crop


def test_translate_and_flip_are_exact_shifts_and_mirrors_and_seeded() -> None:
    x = ba.to_float(_batch(32))
    g = torch.Generator().manual_seed(3)
    out = ba.random_translate(x, 2, g)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2), mode="reflect")
    shifts = set()
    for i in range(len(x)):
        hits = [(dy, dx) for dy in range(5) for dx in range(5) if torch.equal(out[i], padded[i, :, dy : dy + 8, dx : dx + 8])]
        assert hits, f"image {i} is not a shifted crop"
        shifts.add(hits[0])
    assert len(shifts) > 5  # shifts vary per image
    flipped = ba.random_flip(x, 0.5, torch.Generator().manual_seed(0))
    mirrored = [torch.equal(flipped[i], x[i].flip(2)) for i in range(len(x))]
    kept = [torch.equal(flipped[i], x[i]) for i in range(len(x))]
    assert all(m or k for m, k in zip(mirrored, kept)) and 5 < sum(mirrored) < 27
    aug = {"hflip": 0.5, "crop_padding": 2}
    tf = ba.BatchTransform((8, 8), (0.5,) * 3, (0.5,) * 3, aug)
    assert torch.equal(tf(_batch(), train=True, seed=7), tf(_batch(), train=True, seed=7))
    assert not torch.equal(tf(_batch(), train=True, seed=7), tf(_batch(), train=True, seed=8))
    assert torch.equal(tf(_batch(), train=False, seed=7), tf(_batch()))  # eval: no augmentation


def test_other_batched_augmentations_keep_shape_and_range() -> None:
    aug = {"random_resized_crop": (0.5, 1.0), "rotation": 15.0, "shear": 5.0, "color_jitter": 0.3, "vflip": 0.5, "random_erasing": 0.5}
    tf = ba.BatchTransform((6, 6), (0.5,) * 3, (0.5,) * 3, aug)
    y = tf(_batch(16), train=True, seed=1)
    assert y.shape == (16, 3, 6, 6) and torch.isfinite(y).all() and y.abs().max() <= 1.0 + 1e-5
    grey = ba.BatchTransform((8, 8), (0.5,) * 3, (0.5,) * 3, channels=1, grayscale=True)(_batch())
    assert grey.shape == (6, 1, 8, 8)


def test_tta_views() -> None:
    x = torch.rand(2, 3, 8, 8)
    assert len(ba.tta_views(x, flip=False)) == 1
    views = ba.tta_views(x, flip=True)
    assert len(views) == 2 and torch.equal(views[1], x.flip(3))
    views = ba.tta_views(x, flip=True, translate=1)
    assert len(views) == 6 and all(v.shape == x.shape for v in views)
    assert torch.equal(views[2][..., 1:, 1:], x[..., :-1, :-1])  # content moved down-right by 1
    assert torch.equal(views[3][..., :-1, :-1], x[..., 1:, 1:])


def test_lookahead_pulls_weights_towards_slow_copy() -> None:
    class Task(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = nn.Linear(2, 1, bias=False)

    class Trainer:
        global_step = 0
        estimated_stepping_batches = 10

    task, trainer = Task(), Trainer()
    nn.init.constant_(task.model.weight, 1.0)
    la = Lookahead(decay=0.5, every=2, warmup=False)
    la.on_train_start(trainer, task)
    with torch.no_grad():
        task.model.weight.fill_(3.0)
    trainer.global_step = 1
    la.on_train_batch_end(trainer, task, None, None, 0)
    assert torch.all(task.model.weight == 3.0)  # not a sync step
    trainer.global_step = 2
    la.on_train_batch_end(trainer, task, None, None, 1)
    assert torch.allclose(task.model.weight, torch.full((1, 2), 2.0))  # 0.5 * 1 + 0.5 * 3
    state = la.state_dict()
    again = Lookahead(0.5, 2, False)
    again.load_state_dict(state)
    assert again.last_step == 2 and torch.equal(again.slow[0], la.slow[0])


def test_precision_auto_follows_the_hardware(monkeypatch) -> None:
    import vislab.tricks as tricks

    assert resolve_precision("32-true") == "32-true"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(tricks, "cpu_has_bf16", lambda: True)
    assert resolve_precision("auto") == "bf16-mixed"
    monkeypatch.setattr(tricks, "cpu_has_bf16", lambda: False)
    assert resolve_precision("auto") == "32-true"


# ---- tiny training runs: every switch of the cifar10-fast recipe through the real engine


@pytest.fixture(scope="module")
def patterns(tmp_path_factory):
    from vislab.testing.synthetic import make_pattern_dataset

    return make_pattern_dataset(tmp_path_factory.mktemp("fast"), classes=("horizontal", "vertical", "checker"), per_class=16, size=16)


def _recipe(*sets: str):
    """The cifar10-fast recipe shrunk to seconds: 16 px, tiny widths, 2 epochs."""
    small = ["model.fast_cnn.widths=[8,16,16]", "model.fast_cnn.whiten_images=32", "data.img_size=16",
             "data.batch_size=8", "data.eval_batch_size=16", "data.val_fraction=0.2", "train.epochs=2",
             "train.progress=none", "train.checkpoint_every_minutes=null", "optim.lr=0.05"]
    return load_config(CONFIGS / "cifar10-fast.yaml", small + list(sets))


def _stem(run: Path) -> torch.Tensor:
    from vislab.runs import load_run

    return load_run(run).model.stem.weight.detach()


def test_recipe_config_switches_the_tricks_on() -> None:
    cfg = load_config(CONFIGS / "cifar10-fast.yaml")
    assert cfg.model.name == "fast_cnn" and cfg.model.fast_cnn.whiten and cfg.data.cache
    assert cfg.optim.name == "muon" and cfg.optim.nesterov and cfg.optim.muon_normalize and cfg.train.label_smoothing > 0
    assert cfg.optim.bias_lr_mult > 1 and not cfg.model.fast_cnn.bn_weight
    assert cfg.train.channels_last and cfg.train.precision == "auto"
    assert cfg.data.augment.hflip and cfg.data.augment.crop_padding


def test_recipe_trains_from_the_cache_with_whitening_and_lookahead(patterns, tmp_path) -> None:
    from vislab.evaluate import evaluate
    from vislab.train import train

    run = train(_recipe("train.precision=bf16-mixed", "train.averaging.kind=lookahead", "train.averaging.every=2"), patterns, tmp_path / "r")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["stopped_reason"] == "completed" and summary["epochs_completed"] == 2
    assert any((patterns / "cache").glob("*-16x16/images.npy"))  # trained from the prepared cache
    fresh = create_model(_recipe().model, 3).stem.weight
    assert not torch.equal(_stem(run), fresh)  # the frozen stem was set from the data
    m0 = evaluate(run, split="test")
    m1 = evaluate(run, split="test", tta=True, tta_translate=1)
    assert m1["tta"] and m0["num_samples"] == m1["num_samples"] == 9
    assert not np.allclose(np.load(run / "eval/test/probs.npy").sum(0), 0)


def test_ema_and_the_file_loader_without_whitening(patterns, tmp_path) -> None:
    from vislab.runs import load_checkpoint_file
    from vislab.train import train

    run = train(
        _recipe("data.cache=false", "model.fast_cnn.whiten=false", "train.averaging.kind=ema", "train.averaging.decay=0.5",
                "optim.name=sgd", "optim.nesterov=false", "optim.bias_lr_mult=1", "model.fast_cnn.bn_weight=true",
                "scheduler.name=onecycle", "train.label_smoothing=0.0", "train.channels_last=false", "train.precision=32-true"),
        patterns, tmp_path / "r")
    ckpt = load_checkpoint_file(run / "checkpoints/last.ckpt")
    assert "current_model_state" in ckpt  # the averaged weights are the checkpoint's state_dict
    averaged, current = ckpt["state_dict"]["model.head.weight"], ckpt["current_model_state"]["model.head.weight"]
    assert not torch.equal(averaged, current)
    assert not torch.equal(ckpt["state_dict"]["model.stages.0.bn1.weight"], torch.ones(8))  # BN scales learn


def test_muon_recipe_keeps_filter_norms_and_bn_scales(patterns, tmp_path) -> None:
    from vislab.runs import load_checkpoint_file
    from vislab.train import train

    run = train(_recipe("train.averaging.kind=none"), patterns, tmp_path / "r")
    state = load_checkpoint_file(run / "checkpoints/last.ckpt")["state_dict"]
    assert torch.equal(state["model.stages.0.bn1.weight"], torch.ones(8))  # bn_weight: false
    fresh = create_model(_recipe().model, 3)
    for name in ("stages.0.conv1", "stages.0.conv2", "stages.1.conv1", "stages.2.conv2"):
        w = state[f"model.{name}.weight"]  # normalised to sqrt(out) before each Muon step (the last one is tiny)
        assert abs(w.norm().item() - w.shape[0] ** 0.5) < 0.05, name
        assert not torch.equal(w, fresh.get_parameter(f"{name}.weight"))


def test_whitening_on_the_file_loader(patterns, tmp_path) -> None:
    from vislab.train import train

    run = train(_recipe("data.cache=false", "train.averaging.kind=none", "train.epochs=1"), patterns, tmp_path / "r")
    assert not torch.equal(_stem(run), create_model(_recipe().model, 3).stem.weight)


@pytest.mark.parametrize(
    "aug", [{"hflip": 0.5, "crop_padding": 2}, {"hflip": 0.5}, {"crop_padding": 3}, {}, {"crop_padding": 10}, {"hflip": 0.5, "crop_padding": 25}]
)
def test_fused_shift_flip_path_gives_the_step_by_step_pixels(aug) -> None:
    from vislab.data.batch_augment import BatchTransform, normalize, random_flip, random_translate, to_float

    x = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (16, 12, 10, 3), dtype=np.uint8)).permute(0, 3, 1, 2)
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.3, 0.25)
    for channels_last in (True, False):
        tf = BatchTransform((12, 10), mean, std, aug, channels_last=channels_last)
        for train in (True, False):
            got = tf(x, train=train, seed=7)
            gen = torch.Generator().manual_seed(7)
            ref = normalize(to_float(x), mean, std)
            if train and aug.get("crop_padding"):
                ref = random_translate(ref, aug["crop_padding"], gen)
            if train and aug.get("hflip"):
                ref = random_flip(ref, aug["hflip"], gen)
            assert torch.equal(got, ref)
            assert got.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


@pytest.mark.parametrize("size", [(8, 8), (5, 9), (1, 4)])
def test_a_padding_as_large_as_the_image_reflects_as_the_file_loaders_do(size) -> None:
    """crop_padding >= the image side: torch's reflect pad refuses it, the file loaders' PIL
    RandomCrop (numpy's reflect) reflects again; the batched paths must give those pixels."""
    from PIL import Image
    from torchvision.transforms.v2 import functional as TF

    h, w = size
    x = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (2, h, w, 3), dtype=np.uint8))
    for pad in (h, w, 2 * max(h, w) + 3):
        want = np.stack([np.asarray(TF.pad(Image.fromarray(img.numpy()), [pad] * 4, padding_mode="reflect")) for img in x])
        assert np.array_equal(ba._reflect_pad(x, pad).numpy(), want)
        nchw = x.permute(0, 3, 1, 2)
        gen = torch.Generator().manual_seed(0)
        moved = ba.random_translate(nchw, pad, gen).permute(0, 2, 3, 1).numpy()
        for i in range(len(x)):  # each image a window of the PIL-padded one
            assert any(np.array_equal(moved[i], want[i, dy : dy + h, dx : dx + w]) for dy in range(2 * pad + 1) for dx in range(2 * pad + 1))


def test_cached_training_with_a_padding_as_large_as_the_image(patterns, tmp_path) -> None:
    from vislab.train import train

    run = train(_recipe("data.augment.crop_padding=16", "train.averaging.kind=none", "train.epochs=1"), patterns, tmp_path / "r")
    assert json.loads((run / "summary.json").read_text())["stopped_reason"] == "completed"


def test_batch_keys_group_the_epoch_sampler_exactly() -> None:
    from vislab.data.cached import BatchKeys
    from vislab.data.datamodule import EpochSampler

    for train in (True, False):
        sampler = EpochSampler(300, seed=3, shuffle=True, train=train)
        sampler.set_epoch(2)
        per_sample = list(sampler)
        for skip, drop_last in ((0, False), (70, True)):
            sampler.skip = skip
            fast = list(BatchKeys(sampler, 64, drop_last))
            rest = per_sample[skip:]
            groups = [rest[i : i + 64] for i in range(0, len(rest), 64) if not drop_last or i + 64 <= len(rest)]
            assert len(fast) == len(groups)
            for (pos, seed), group in zip(fast, groups):
                assert pos.tolist() == [k[0] if train else k for k in group]
                assert seed == (group[0][1] if train else None)
