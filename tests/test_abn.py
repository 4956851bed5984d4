"""Attention Branch Network: shapes on several backbones and sizes, loss, branch gradients."""

from __future__ import annotations

import re

import pytest
import timm
import torch

from vislab.errors import VislabError
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
    from vislab.models.factory import create_model

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
    from vislab.models.factory import create_model

    cfg = ModelConfig(name="simple_cnn", attention="abn", simple_cnn=SimpleCNNConfig(layers=3, filters=8, fc=0))
    model = create_model(cfg, 3)
    out = model(torch.randn(2, 3, 32, 32))
    assert out["attention"].shape == (2, 1, 8, 8)


def _square_task(n: int, size: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Grey noise with one small square whose colour (red or blue) is the class; returns the
    images, labels and a mask of where the square is."""
    x = torch.rand(n, 3, size, size, generator=gen) * 0.4 + 0.3
    y = torch.randint(0, 2, (n,), generator=gen)
    mask = torch.zeros(n, 1, size, size)
    side = size // 4
    pos = torch.randint(0, size - side + 1, (n, 2), generator=gen)
    for i in range(n):
        r, c = pos[i].tolist()
        colour = torch.tensor([1.0, 0.0, 0.0]) if y[i] == 0 else torch.tensor([0.0, 0.0, 1.0])
        x[i, :, r : r + side, c : c + side] = colour[:, None, None]
        mask[i, 0, r : r + side, c : c + side] = 1
    return x, y, mask


def test_tiny_abn_learns_and_attends_to_the_deciding_region() -> None:
    from vislab.config import ModelConfig, SimpleCNNConfig
    from vislab.models.abn import attention_upsampled
    from vislab.models.factory import create_model

    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    cfg = ModelConfig(name="simple_cnn", attention="abn", simple_cnn=SimpleCNNConfig(layers=3, filters=8, fc=0, dropout=0.0))
    model = create_model(cfg, 2)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(40):
        x, y, _ = _square_task(32, 32, gen)
        loss, _ = abn_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    x, y, mask = _square_task(128, 32, gen)
    with torch.no_grad():
        out = model(x)
    acc = (out["logits"].argmax(1) == y).float().mean().item()
    assert acc >= 0.9
    att = attention_upsampled(out["attention"], (32, 32))
    inside = (att * mask).sum() / mask.sum()
    outside = (att * (1 - mask)).sum() / (1 - mask).sum()
    assert inside > 1.3 * outside, (float(inside), float(outside))


def test_abn_trains_through_the_engine(tmp_path) -> None:
    import pandas as pd

    from vislab.evaluate import evaluate
    from vislab.testing.synthetic import make_pattern_dataset, tiny_config
    from vislab.train import train

    data = make_pattern_dataset(tmp_path / "data", classes=("horizontal", "vertical"), per_class=12, size=16)
    cfg = tiny_config(train={"epochs": 2})
    cfg.model.attention = "abn"
    cfg.model.abn.alpha = 0.5
    run = train(cfg, data, tmp_path / "run")
    metrics = pd.read_csv(run / "metrics.csv")
    for col in ("train/att_loss", "train/per_loss", "val/att_acc", "val/per_loss"):
        assert col in metrics.columns, col
    assert len(metrics) == 2
    result = evaluate(run, split="test")
    assert 0.0 <= result["accuracy"] <= 1.0
    assert 0.0 <= result["att_accuracy"] <= 1.0 and "att_mca" in result


def test_abn_run_explains_reports_and_compares(tmp_path) -> None:
    import json

    import numpy as np
    from PIL import Image

    from vislab.errors import VislabError
    from vislab.evaluate import evaluate
    from vislab.explain.overlays import explain_run
    from vislab.report.compare import compare_runs, to_markdown
    from vislab.report.html import write_report
    from vislab.testing.synthetic import make_pattern_dataset, tiny_config
    from vislab.train import train

    data = make_pattern_dataset(tmp_path / "data", classes=("horizontal", "vertical"), per_class=8, size=16)
    cfg = tiny_config(train={"epochs": 1})
    cfg.model.attention = "abn"
    abn_run = train(cfg, data, tmp_path / "abn")
    evaluate(abn_run, split="test")
    plain_run = train(tiny_config(train={"epochs": 1}), data, tmp_path / "plain")
    evaluate(plain_run, split="test")

    images = sorted(p for p in (data).rglob("*.png"))[:3]
    results = explain_run(abn_run, images, method="attention")
    assert len(results) == 3 and all(r.output.is_file() for r in results)
    for r in results:
        assert r.heatmap.shape == (16, 16) and r.heatmap.min() == 0.0 and r.heatmap.max() == 1.0
        assert Image.open(r.output).size[0] >= 224
    index = json.loads((results[0].output.parent / "explanations.json").read_text())
    assert {"attention_min", "attention_max"} <= set(index[0]) and index[0]["attention_min"] <= index[0]["attention_max"]
    assert results[0].output.parent.name == "attention"
    with pytest.raises(VislabError, match="one attention map per image"):
        explain_run(abn_run, images, method="attention", top_k=2)
    with pytest.raises(VislabError, match="no attention branch"):
        explain_run(plain_run, images, method="attention")
    gradcam = explain_run(abn_run, images[:1], method="gradcam")  # CAMs still work on the perception logits
    assert np.isfinite(gradcam[0].heatmap).all()

    page = write_report(abn_run).read_text()
    assert 'id="attention"' in page and 'href="#attention"' in page and "Attention branch: accuracy" in page
    assert (abn_run / "plots" / "attention_test.png").is_file()
    plain_page = write_report(plain_run).read_text()
    assert 'id="attention"' not in plain_page and 'href="#attention"' not in plain_page

    table = to_markdown(compare_runs([abn_run, plain_run]))
    header, _, abn_row, plain_row = table.splitlines()
    assert "attention-branch test acc %" in header
    assert "simple_cnn+ABN" in abn_row and "+ABN" not in plain_row
    assert "attention-branch" not in to_markdown(compare_runs([plain_run]))


def test_abn_under_a_custom_head(tmp_path) -> None:
    """EfficientNet-Lite0 with the GAP-MLP head (flowers-transfer's earlier model) and an attention
    branch: it trains through the engine, the branch sits on the backbone's stages, the head
    is the perception branch's classifier, and Grad-CAM and attention maps explain it."""
    import numpy as np

    from vislab.explain.overlays import explain_run, load_trained
    from vislab.models.backbones import MLPHeadModel, head_module_names
    from vislab.testing.synthetic import make_pattern_dataset, tiny_config
    from vislab.train import train

    data = make_pattern_dataset(tmp_path / "data", classes=("horizontal", "vertical"), per_class=5, size=32)
    cfg = tiny_config(model={"name": "tf_efficientnet_lite0", "head": {"hidden": 16}, "attention": "abn"},
                      data={"img_size": 32, "batch_size": 4}, train={"epochs": 1})
    run = train(cfg, data, tmp_path / "run")
    model = load_trained(run).model
    assert isinstance(model, ABN) and isinstance(model.backbone, MLPHeadModel)
    assert model.stage["module"].startswith("backbone.blocks.")  # a stage of the backbone, under the head
    assert model.get_classifier() is model.backbone.head
    assert head_module_names(model) == ["attention_branch", "backbone.head"]  # what a frozen warm-up trains
    model.train()
    out = model(torch.randn(2, 3, 32, 32))
    abn_loss(out, torch.tensor([0, 1]))[0].backward()
    assert torch.count_nonzero(model.backbone.head[-1].weight.grad) > 0  # the perception loss reaches the head
    assert torch.count_nonzero(model.attention_branch.score.weight.grad) > 0
    images = sorted(data.rglob("*.png"))[:2]
    for method in ("gradcam", "attention"):
        results = explain_run(run, images, method=method)
        assert len(results) == 2 and all(r.output.is_file() and np.isfinite(r.heatmap).all() for r in results)


@pytest.mark.parametrize(
    "name,stage,layout",
    [("test_vit", None, "tokens (B, N, C)"), ("mambaout_femto", None, "channels-last"), ("mambaout_femto", 0, "channels-last")],
)
def test_abn_refuses_stages_that_are_not_nchw_maps(name: str, stage: int | None, layout: str) -> None:
    # ViT blocks output tokens and MambaOut stages (B, H, W, C): the branch's BatchNorm2d would
    # crash on them or, when H happens to equal C (MambaOut stage 0 at 192 px), attend over (W, C)
    from vislab.config import ModelConfig
    from vislab.models.factory import create_model

    with pytest.raises(VislabError, match=rf"^model.attention: abn needs a backbone .*{re.escape(layout)}"):
        create_model(ModelConfig(name=name, attention="abn", abn={"stage": stage}), 5, load_weights=False)


def test_abn_layout_probe_leaves_the_backbone_untouched() -> None:
    backbone = timm.create_model("resnet18", num_classes=3)
    backbone.layer1.eval()
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    model = ABN(backbone, 3)
    assert backbone.training and not backbone.layer1.training and backbone.layer2.training
    assert all(torch.equal(before[k], v) for k, v in backbone.state_dict().items())
    assert model(torch.zeros(2, 3, 32, 32))["attention"].shape == (2, 1, 1, 1)
