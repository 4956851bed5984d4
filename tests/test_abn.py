"""Attention Branch Network: shapes on several backbones and sizes, loss, branch gradients."""

from __future__ import annotations

import pytest
import timm
import torch

from vislab.models.abn import ABN, abn_loss


@pytest.mark.parametrize("name", ["vgg11", "resnet18"])
@pytest.mark.parametrize("size", [32, 64, 96])
def test_forward_shapes_any_input_size(name: str, size: int) -> None:
    model = ABN(timm.create_model(name, num_classes=7), 7).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, size, size))
    assert out["logits"].shape == (2, 7)
    assert out["att_logits"].shape == (2, 7)
    att = out["attention"]
    reduction = model.stage["reduction"]
    assert att.shape[:2] == (2, 1)
    assert att.shape[-1] == pytest.approx(size / reduction, abs=1)
    assert float(att.min()) >= 0.0 and float(att.max()) <= 1.0


def test_stage_is_selectable_and_checked() -> None:
    backbone = timm.create_model("resnet18", num_classes=3)
    model = ABN(backbone, 3, stage=3)
    assert model.stage["module"] == "layer3"
    out = model(torch.randn(1, 3, 64, 64))
    assert out["attention"].shape[-1] == 4
    from vislab.errors import VislabError

    with pytest.raises(VislabError, match="out of range"):
        ABN(timm.create_model("resnet18", num_classes=3), 3, stage=9)


def test_loss_is_weighted_sum() -> None:
    torch.manual_seed(0)
    out = {"logits": torch.randn(4, 3), "att_logits": torch.randn(4, 3)}
    y = torch.tensor([0, 1, 2, 1])
    ce = torch.nn.functional.cross_entropy
    total, parts = abn_loss(out, y, alpha=0.3, beta=2.0)
    expected = 0.3 * ce(out["att_logits"], y) + 2.0 * ce(out["logits"], y)
    assert torch.allclose(total, expected)
    assert torch.allclose(parts["att_loss"], ce(out["att_logits"], y))


def test_alpha_zero_trains_perception_only() -> None:
    torch.manual_seed(0)
    model = ABN(timm.create_model("resnet18", num_classes=3), 3)
    out = model(torch.randn(2, 3, 64, 64))
    total, _ = abn_loss(out, torch.tensor([0, 2]), alpha=0.0, beta=1.0)
    total.backward()
    score_grad = model.attention_branch.score.weight.grad
    assert score_grad is None or torch.count_nonzero(score_grad) == 0
    assert torch.count_nonzero(model.backbone.fc.weight.grad) > 0


def test_create_model_wraps_and_loads_plain_backbone_weights(tmp_path) -> None:
    from vislab.config import ModelConfig
    from vislab.models.backbones import set_backbone_frozen
    from vislab.models.registry import create_model

    plain = create_model(ModelConfig(name="resnet18"), 4)
    path = tmp_path / "plain.pth"
    torch.save(plain.state_dict(), path)
    cfg = ModelConfig(name="resnet18", attention="abn", weights=path)
    model = create_model(cfg, 4)
    assert isinstance(model, ABN)
    assert torch.equal(model.backbone.conv1.weight, plain.conv1.weight)
    assert model.vislab_load_report["new_modules"] == ["attention_branch"]
    set_backbone_frozen(model, True)
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"attention_branch", "backbone"}
    assert not model.backbone.layer1[0].conv1.weight.requires_grad
    assert model.backbone.fc.weight.requires_grad


def test_simple_cnn_backbone() -> None:
    from vislab.config import ModelConfig, SimpleCNNConfig
    from vislab.models.registry import create_model

    cfg = ModelConfig(name="simple_cnn", attention="abn", simple_cnn=SimpleCNNConfig(layers=3, filters=8, fc=0))
    model = create_model(cfg, 3)
    out = model(torch.randn(2, 3, 32, 32))
    assert out["attention"].shape == (2, 1, 8, 8)
