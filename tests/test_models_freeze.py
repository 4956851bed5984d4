"""Fine-tuning support: freezing the backbone, BatchNorm staying in eval, parameter groups, counts."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from vislab.config import ModelConfig
from vislab.models import backbones, factory
from vislab.testing.models import tiny_model

MODELS = [
    pytest.param(lambda: tiny_model(), id="simple_cnn"),
    pytest.param(lambda: factory.create_model(ModelConfig(name="test_efficientnet"), 3), id="timm"),
    pytest.param(lambda: factory.create_model(ModelConfig(name="test_resnet", head={"hidden": 8}), 3), id="mlp_head"),
]


def _step(model: nn.Module) -> None:
    model.zero_grad(set_to_none=True)
    model(torch.randn(4, 3, 32, 32)).sum().backward()


def _bns(model: nn.Module) -> list[nn.BatchNorm2d]:
    return [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]


@pytest.mark.parametrize("build", MODELS)
def test_freeze_changes_which_parameters_get_gradients(build) -> None:
    model = build()
    backbone, head = backbones.split_parameters(model)
    assert backbone and head
    head_ids = {id(p) for p in model.get_classifier().parameters()}
    assert {id(p) for _, p in head} == head_ids

    backbones.set_backbone_frozen(model, True)
    assert backbones.is_backbone_frozen(model)
    model.train()
    _step(model)
    assert all(p.grad is None for _, p in backbone)
    assert all(p.grad is not None for _, p in head)
    counts = backbones.count_parameters(model)
    assert counts["trainable"] == sum(p.numel() for _, p in head)
    assert counts["frozen"] == sum(p.numel() for _, p in backbone)
    assert counts["total"] == counts["trainable"] + counts["frozen"]

    backbones.set_backbone_frozen(model, False)
    model.train()
    _step(model)
    assert all(p.grad is not None for _, p in backbone)
    assert backbones.count_parameters(model)["frozen"] == 0


@pytest.mark.parametrize("build", MODELS)
def test_frozen_batchnorm_stays_in_eval_after_model_train(build) -> None:
    model = build()
    backbones.set_backbone_frozen(model, True)
    bns = _bns(model)
    assert bns and not any(bn.training for bn in bns)
    before = [bn.running_mean.clone() for bn in bns]
    model.train()  # what Lightning does at every epoch start
    _step(model)
    assert not any(bn.training for bn in bns)
    assert all(torch.equal(a, bn.running_mean) for a, bn in zip(before, bns))

    model.train()
    assert any(bn.training for bn in bns)  # until the next forward ...
    backbones.apply_frozen_bn_eval(model)
    assert not any(bn.training for bn in bns)  # ... unless the trainer re-applies eval at once

    backbones.set_backbone_frozen(model, False)
    model.train()
    _step(model)
    assert all(bn.training for bn in bns)
    assert not all(torch.equal(a, bn.running_mean) for a, bn in zip(before, bns))


def test_param_groups_split_lr_and_weight_decay() -> None:
    model = factory.create_model(ModelConfig(name="test_resnet", head={"hidden": 8}), 3)
    groups = {g["name"]: g for g in backbones.param_groups(model, lr=0.1, backbone_lr_mult=0.1, weight_decay=1e-4)}
    assert set(groups) == {"backbone", "backbone_no_decay", "head", "head_no_decay"}
    assert groups["backbone"]["lr"] == pytest.approx(0.01) and groups["head"]["lr"] == pytest.approx(0.1)
    assert groups["backbone"]["weight_decay"] == 1e-4 and groups["head_no_decay"]["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in groups["backbone"]["params"] + groups["head"]["params"])
    assert all(p.ndim <= 1 for p in groups["backbone_no_decay"]["params"] + groups["head_no_decay"]["params"])
    grouped = [id(p) for g in groups.values() for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters())  # each exactly once
    backbones.set_backbone_frozen(model, True)
    frozen_groups = backbones.param_groups(model, lr=0.1)
    assert sum(len(g["params"]) for g in frozen_groups) == len(list(model.parameters()))
    opt = torch.optim.AdamW(frozen_groups)  # frozen parameters are carried, so unfreezing needs no new optimizer
    assert len(opt.param_groups) == 4


def test_param_groups_skip_decay_for_no_weight_decay_names() -> None:
    model = factory.create_model(ModelConfig(name="test_vit"), 3)
    groups = {g["name"]: g for g in backbones.param_groups(model, lr=1.0, weight_decay=0.1)}
    no_decay = {id(p) for p in groups["backbone_no_decay"]["params"]}
    assert id(model.pos_embed) in no_decay and id(model.cls_token) in no_decay


def test_own_head_module_names_take_precedence() -> None:
    model = tiny_model()
    model.head_module_names = lambda: ["head", "features.0"]
    _, head = backbones.split_parameters(model)
    assert {n.split(".")[0] for n, _ in head} == {"head", "features"}


def test_sync_batchnorm_conversion_keeps_timm_activations() -> None:
    model = factory.create_model(ModelConfig(name="test_efficientnet"), 3).eval()
    x = torch.randn(1, 3, 32, 32)
    expected = model(x)
    converted = backbones.convert_sync_batchnorm(model).eval()
    assert any(isinstance(m, nn.SyncBatchNorm) for m in converted.modules())
    assert torch.allclose(converted(x), expected, atol=1e-5)
