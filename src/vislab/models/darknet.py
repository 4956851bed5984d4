"""Official Darknet `.weights` files in and out, for vislab's `yolov3` and `yolov3_tiny`.

A `.weights` file (Darknet's `save_weights`) is a header, int32 major, minor, revision,
then the count of images seen (int64 when major*10 + minor >= 2 and major, minor < 1000,
else int32), then float32 values for each [convolutional] layer in cfg order: with
batch_normalize, the BN bias (beta), scale (gamma), running mean and running variance;
without, the conv bias; then the conv weights [out, in, k, k]. The file holds no names and
no shapes, so it only fits an architecture that matches layer for layer, and the one check
it allows is that the count of floats is exact; a mismatch is refused, never half-loaded.

We map onto our own architecture (`YOLO.darknet_layers()` lists its convs in cfg order)
rather than building a network from the cfg, so imported and trained models share one code
path. A `.cfg` is still read when given: `config_from_cfg` takes the classes, anchors and
input size from it, and `load_darknet_weights` checks its conv layers against ours.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import torch

from vislab.errors import VislabError
from vislab.fsguard import SpecialFileError, open_regular, read_bounded
from vislab.models.yolo import YOLO, YOLOConfig

MAX_WEIGHTS_BYTES = 1024**3  # yolov3.weights is 248 MB
CfgSection = tuple[str, dict[str, str]]


def parse_cfg(path: str | Path) -> list[CfgSection]:
    """A Darknet `.cfg` as (section name, {key: value}) in file order; comments dropped."""
    try:
        text = read_bounded(path, 1024**2).decode("utf-8", "replace")
    except (OSError, SpecialFileError) as err:
        raise VislabError(f"{path}: cannot read the Darknet cfg ({err})") from None
    sections: list[CfgSection] = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("[") and line.endswith("]"):
            sections.append((line[1:-1].strip().lower(), {}))
        elif "=" in line and sections:
            key, value = line.split("=", 1)
            sections[-1][1][key.strip()] = value.strip()
        else:
            raise VislabError(f"{path}: line {n} ('{line[:40]}') is neither a [section] nor key=value")
    return sections


def config_from_cfg(path: str | Path) -> YOLOConfig:
    """The `YOLOConfig` a Darknet cfg describes: yolov3 (3 [yolo] layers) or yolov3-tiny (2),
    with its classes, its anchors ordered by the [yolo] masks (rising stride), its input size."""
    sections = parse_cfg(path)
    yolos = [opts for name, opts in sections if name == "yolo"]
    net = next((opts for name, opts in sections if name == "net"), {})
    arch = {3: "yolov3", 2: "yolov3_tiny"}.get(len(yolos))
    if arch is None:
        raise VislabError(f"{path}: {len(yolos)} [yolo] layers; only yolov3 (3) and yolov3-tiny (2) layouts are supported")
    try:
        classes = int(yolos[0]["classes"])
        pairs = [float(v) for v in yolos[0]["anchors"].split(",") if v.strip()]
        all_anchors = list(zip(pairs[0::2], pairs[1::2]))
        anchors = [all_anchors[int(m)] for opts in reversed(yolos) for m in opts["mask"].split(",")]
        size, height = int(net.get("width", 416)), int(net.get("height", net.get("width", 416)))
        channels = int(net.get("channels", 3))
    except (KeyError, ValueError, IndexError) as err:
        raise VislabError(f"{path}: a [yolo] or [net] section lacks or mangles a field ({err}); expected classes, anchors, mask") from None
    if size != height:
        raise VislabError(f"{path}: [net] width {size} != height {height}; vislab's YOLO takes square input")
    return YOLOConfig(arch=arch, num_classes=classes, anchors=tuple(anchors), img_size=size, in_chans=channels)


def _layer_spec(conv: torch.nn.Conv2d, has_bn: bool) -> tuple[int, int, int, bool]:
    return conv.out_channels, conv.kernel_size[0], conv.stride[0], has_bn


def check_cfg(model: YOLO, cfg_path: str | Path) -> None:
    """Refuse a cfg whose [convolutional] layers (filters, size, stride, batch_normalize)
    differ from the model's, naming the first that differs."""
    convs = [opts for name, opts in parse_cfg(cfg_path) if name in ("convolutional", "conv")]
    ours = [_layer_spec(c, bn is not None) for c, bn in model.darknet_layers()]
    for i, (opts, mine) in enumerate(zip(convs, ours)):
        try:
            theirs = (int(opts.get("filters", 1)), int(opts.get("size", 1)), int(opts.get("stride", 1)), opts.get("batch_normalize", "0") == "1")
        except ValueError as err:
            raise VislabError(f"{cfg_path}: [convolutional] #{i} has a field that is not a number ({err})") from None
        if theirs != mine:
            raise VislabError(
                f"{cfg_path}: [convolutional] #{i} is filters/size/stride/bn {theirs}, "
                f"but {model.cfg.arch} has {mine} there; the cfg is another architecture or class count"
            )
    if len(convs) != len(ours):
        raise VislabError(f"{cfg_path}: {len(convs)} [convolutional] layers, {model.cfg.arch} has {len(ours)}")


def _floats_needed(model: YOLO) -> int:
    return sum(conv.weight.numel() + (4 * bn.num_features if bn is not None else conv.out_channels) for conv, bn in model.darknet_layers())


def _per_class(model: YOLO) -> int:
    """Floats one class adds: a weight row (and bias) per anchor in each prediction conv."""
    return sum((conv.in_channels + 1) * model.num_anchors for conv in model.pred)


def floats_for(model: YOLO, num_classes: int) -> int:
    """Floats a file of `model`'s architecture with `num_classes` classes holds, without
    building that model (a names file of 500,000 lines would build gigabytes to find out)."""
    return _floats_needed(model) + _per_class(model) * (num_classes - model.num_classes)


def _class_hint(model: YOLO, floats: int) -> str:
    """'; it fits N classes' when the file is this architecture with another class count."""
    classes, rest = divmod(floats - floats_for(model, 0), _per_class(model))
    return f"; it fits {model.cfg.arch} with {classes} classes" if rest == 0 and classes > 0 else ""


def _header(path: str | Path, data: bytes, size: int) -> tuple[str, int, int]:
    """(version, seen, header length) of a file of `size` bytes whose first bytes are `data`."""
    major, minor, revision = struct.unpack("<3i", data[:12]) if len(data) >= 12 else (0, 0, 0)
    wide_seen = major * 10 + minor >= 2 and major < 1000 and minor < 1000
    header = 20 if wide_seen else 16
    if size < header:
        raise VislabError(f"{path}: {size} bytes, too short for a Darknet weights header")
    seen = struct.unpack("<q" if wide_seen else "<i", data[12:header])[0]
    return f"{major}.{minor}.{revision}", seen, header


def _check_length(model: YOLO, num_classes: int, path: str | Path, version: str, body_bytes: int, names: str = "") -> None:
    """Refuse a body that is not whole floats, or not the count `model`'s architecture with
    `num_classes` classes takes (`names`: where that count came from)."""
    if body_bytes % 4:
        raise VislabError(
            f"{path}: {body_bytes:,} bytes after its header (version {version}), not a whole number of 4-byte floats; "
            "the file is cut short or has stray bytes: download or export it again"
        )
    floats, needed = body_bytes // 4, floats_for(model, num_classes)
    if floats != needed:
        raise VislabError(
            f"{path}: holds {floats:,} floats after its header (version {version}), "
            f"but {model.cfg.arch} with {num_classes} classes{names} takes {needed:,}{_class_hint(model, floats)}"
        )


def check_darknet_size(model: YOLO, path: str | Path, num_classes: int, names: str = "") -> None:
    """Refuse, from its size and header alone, a `.weights` file that does not fit `model`'s
    architecture with `num_classes` classes: checked before that model is built."""
    try:
        with open_regular(path, MAX_WEIGHTS_BYTES) as fh:
            size, data = os.fstat(fh.fileno()).st_size, fh.read(20)
    except (OSError, SpecialFileError) as err:
        raise VislabError(f"{path}: cannot read the Darknet weights ({err})") from None
    version, _, header = _header(path, data, size)
    _check_length(model, num_classes, path, version, size - header, names)


def load_darknet_weights(model: YOLO, path: str | Path, cfg_path: str | Path | None = None) -> dict[str, object]:
    """Load an official Darknet `.weights` file into `model` (yolov3 or yolov3_tiny of the
    file's class count); with `cfg_path`, check the cfg's conv layers first. Returns a report."""
    layers = model.darknet_layers()
    if cfg_path is not None:
        check_cfg(model, cfg_path)
    try:
        data = read_bounded(path, MAX_WEIGHTS_BYTES)
    except (OSError, SpecialFileError) as err:
        raise VislabError(f"{path}: cannot read the Darknet weights ({err})") from None
    version, seen, header = _header(path, data, len(data))
    body = data[header:]
    _check_length(model, model.num_classes, path, version, len(body))
    values = torch.from_numpy(np.frombuffer(body, dtype="<f4").copy())
    bad = int((~torch.isfinite(values)).sum())
    if bad:
        raise VislabError(f"{path}: {bad:,} of its {values.numel():,} floats are NaN or infinite (a damaged or diverged model); give a sound .weights file")
    pos = 0

    def take(t: torch.Tensor) -> None:
        nonlocal pos
        t.copy_(values[pos : pos + t.numel()].view_as(t))
        pos += t.numel()

    with torch.no_grad():
        for conv, bn in layers:
            if bn is not None:
                for t in (bn.bias, bn.weight, bn.running_mean, bn.running_var):
                    take(t)
            else:
                take(conv.bias)
            take(conv.weight)
    return {"source": "darknet", "file": str(path), "layers": len(layers), "version": version, "seen": seen}


def save_darknet_weights(model: YOLO, path: str | Path, seen: int = 0) -> Path:
    """Write `model` as a Darknet 0.2.0 `.weights` file (Darknet itself and other ports read it)."""
    parts = [struct.pack("<3iq", 0, 2, 0, seen)]
    for conv, bn in model.darknet_layers():
        tensors = [bn.bias, bn.weight, bn.running_mean, bn.running_var] if bn is not None else [conv.bias]
        for t in [*tensors, conv.weight]:
            parts.append(t.detach().float().cpu().numpy().astype("<f4").tobytes())
    path = Path(path)
    with open(path, "wb") as fh:
        fh.writelines(parts)
    return path


def from_darknet(cfg_path: str | Path, weights_path: str | Path) -> YOLO:
    """A YOLO built from a Darknet cfg, with its weights loaded (both checked)."""
    model = YOLO(config_from_cfg(cfg_path))
    model.vislab_load_report = load_darknet_weights(model, weights_path, cfg_path)
    return model.eval()
