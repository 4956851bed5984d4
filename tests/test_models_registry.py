"""Model names: registry rules, listing, metadata, the `vislab models` command, name errors."""

from __future__ import annotations

import pytest
import torch.nn as nn
from typer.testing import CliRunner

from vislab.cli import app
from vislab.config import ModelConfig
from vislab.errors import VislabError
from vislab.models import factory, registry


def test_duplicate_registration_raises() -> None:
    with pytest.raises(ValueError, match="registered twice"):
        registry.register_model("simple_cnn")(lambda cfg, num_classes: nn.Identity())


def test_list_models_by_pattern() -> None:
    assert factory.list_models() == sorted(factory.list_models())
    assert "simple_cnn" in factory.list_models("simple*")
    assert factory.list_models("zz*") == []
    with_timm = factory.list_models("*efficientnet_lite*", include_timm=True)
    assert "tf_efficientnet_lite0" in with_timm and "simple_cnn" not in with_timm


def test_model_info_reports_source_and_spec() -> None:
    own = factory.model_info("simple_cnn")
    assert own["source"] == "vislab" and own["spec"]["input_size"] == [3, 64, 64]
    timm_info = factory.model_info("tf_efficientnet_lite0")
    assert timm_info["source"] == "timm"
    assert timm_info["spec"]["input_size"] == [3, 224, 224]
    assert timm_info["pretrained"] == ["true", "pypi"]
    assert factory.model_info("resnet18")["pretrained"] == ["true"]


def test_unknown_name_suggests_close_names() -> None:
    with pytest.raises(VislabError, match=r"unknown model 'efficientnet_lite_0'; did you mean .*efficientnet_lite0"):
        factory.create_model(ModelConfig(name="efficientnet_lite_0"), 3)
    with pytest.raises(VislabError, match="did you mean simple_cnn"):
        factory.check_name("simple-cnn")


def test_vislab_model_rejects_pretrained_and_head() -> None:
    with pytest.raises(VislabError, match="no pretrained weights"):
        factory.create_model(ModelConfig(name="simple_cnn", pretrained=True), 3)
    with pytest.raises(VislabError, match="model.head"):
        factory.create_model(ModelConfig(name="simple_cnn", head={"hidden": 8}), 3)


def test_pretrained_and_weights_together_is_an_error(tmp_path) -> None:
    cfg = ModelConfig(name="test_resnet", pretrained=True, weights=tmp_path / "w.pth")
    with pytest.raises(VislabError, match="keep one"):
        factory.create_model(cfg, 3)


def test_cli_models_lists_names_and_fails_on_no_match() -> None:
    runner = CliRunner()
    out = runner.invoke(app, ["models"])
    assert out.exit_code == 0 and "simple_cnn" in out.stdout.split()
    out = runner.invoke(app, ["models", "tf_efficientnet_lite?", "--timm"])
    assert out.exit_code == 0
    assert out.stdout.split() == [f"tf_efficientnet_lite{i}" for i in range(5)]
    out = runner.invoke(app, ["models", "no_such_*"])
    assert out.exit_code == 2 and "--timm" in out.output
