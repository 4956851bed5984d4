"""`weights: PATH`: local files in every accepted form; only classifier-head keys may differ."""

from __future__ import annotations

import argparse
import logging

import pytest
import torch

from vislab.config import ModelConfig
from vislab.errors import VislabError
from vislab.models import factory
from vislab.models.weights import load_weights
from vislab.testing.models import save_weights, tiny_model, tiny_model_config


def _same(a: torch.nn.Module, b: torch.nn.Module, skip: str = "\0") -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return all(torch.equal(v, sb[k]) for k, v in sa.items() if not k.startswith(skip))


@pytest.mark.parametrize(
    "kind,suffix", [("state_dict", ".pth"), ("state_dict", ".pt"), ("safetensors", ".safetensors"), ("lightning", ".ckpt"), ("timm", ".pth.tar")]
)
def test_local_weights_load_in_every_form(tmp_path, kind: str, suffix: str) -> None:
    source = tiny_model(simple_cnn={"init_seed": 1})
    path = save_weights(source, tmp_path / f"w{suffix}", kind=kind)
    cfg = tiny_model_config(simple_cnn={"init_seed": 2}, weights=path)
    model = factory.create_model(cfg, 3)
    assert _same(model, source)
    report = model.vislab_load_report
    assert report["source"] == "file" and report["loaded"] == len(source.state_dict())
    assert report["new_head"] is False
    if kind == "lightning":
        assert report["strip_prefix"] == "model." and report["ignored"] == ["criterion.weight"]


def test_lightning_checkpoint_of_compiled_model(tmp_path) -> None:
    source = tiny_model(simple_cnn={"init_seed": 1})
    path = save_weights(source, tmp_path / "last.ckpt", kind="lightning", prefix="model._orig_mod.")
    model = tiny_model(simple_cnn={"init_seed": 2})
    report = load_weights(model, path)
    assert report.strip_prefix == "model._orig_mod." and _same(model, source)


def test_other_class_count_skips_and_reports_head(tmp_path, caplog) -> None:
    source = tiny_model(num_classes=10, simple_cnn={"init_seed": 1})
    path = save_weights(source, tmp_path / "w.safetensors", kind="safetensors")
    fresh = tiny_model(num_classes=4, simple_cnn={"init_seed": 2})
    with caplog.at_level(logging.WARNING, logger="vislab.models.weights"):
        model = factory.create_model(tiny_model_config(simple_cnn={"init_seed": 2}, weights=path), 4)
    report = model.vislab_load_report
    assert report["new_head"] is True
    assert len(report["skipped_head"]) == 2 and all(k.startswith("head.3.") for k in report["skipped_head"])
    assert "head.3.weight" in caplog.text and "skipped 2 classifier-head keys" in caplog.text
    assert _same(model, source, skip="head.3.")  # backbone and hidden FC from the file
    assert torch.equal(model.head[3].weight, fresh.head[3].weight)  # classifier keeps its init


def test_timm_checkpoint_into_mlp_head_model(tmp_path) -> None:
    plain = factory.create_model(ModelConfig(name="test_resnet"), 1000)
    path = save_weights(plain, tmp_path / "resnet.pth")
    model = factory.create_model(ModelConfig(name="test_resnet", head={"hidden": 8}, weights=path), 3)
    report = model.vislab_load_report
    assert report["add_prefix"] == "backbone." and report["skipped_head"] == ["backbone.fc.weight", "backbone.fc.bias"]
    assert torch.equal(model.backbone.conv1[0].weight, plain.conv1[0].weight)


def test_mismatched_backbone_key_is_an_error(tmp_path) -> None:
    source = tiny_model(simple_cnn={"filters": 8})
    path = save_weights(source, tmp_path / "w.pth")
    with pytest.raises(VislabError) as err:
        factory.create_model(tiny_model_config(weights=path), 3)
    text = str(err.value)
    assert str(path) in text and "with other shapes" in text and "features.0.weight (8, 3, 3, 3) vs (4, 3, 3, 3)" in text
    assert "\n" not in text


def test_missing_and_unexpected_keys_are_errors(tmp_path) -> None:
    source = tiny_model()
    sd = source.state_dict()
    sd.pop("features.1.running_var")
    sd["extra.weight"] = torch.zeros(1)
    path = tmp_path / "w.pth"
    torch.save(sd, path)
    with pytest.raises(VislabError, match=r"1 missing \(features.1.running_var\); 1 unexpected \(extra.weight\)"):
        load_weights(tiny_model(), path)


def test_unusable_files_are_clear_errors(tmp_path) -> None:
    model = tiny_model()
    with pytest.raises(VislabError, match="not found"):
        load_weights(model, tmp_path / "nope.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(VislabError, match="not a PyTorch weights file"):
        load_weights(model, garbage)
    no_sd = tmp_path / "meta.pth"
    torch.save({"epoch": 3}, no_sd)
    with pytest.raises(VislabError, match="holds no state_dict"):
        load_weights(model, no_sd)
    other = tmp_path / "other.pth"
    torch.save({"x.weight": torch.zeros(2)}, other)
    with pytest.raises(VislabError, match="no key of .* matches"):
        load_weights(model, other)


def test_pickled_objects_are_refused(tmp_path) -> None:
    path = tmp_path / "obj.ckpt"
    torch.save({"state_dict": tiny_model().state_dict(), "hparams": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(VislabError, match=r"holds a Python object \(argparse.Namespace\)"):
        load_weights(tiny_model(), path)
