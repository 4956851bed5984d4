"""`model.weights: FILE.weights` for a detection run: an official Darknet file as the start.

The file holds no class names and no shapes. Its class names come from
`detect.weights_classes`, else the one `*.names` file beside it (Darknet ships coco.names
so); its architecture is checked against a `.cfg` of the same stem beside it when there is
one. The file is loaded into the run's architecture (same input size and anchors) with the
file's class count, then re-headed to the run's classes (`models.yolo.transfer_classes`):
backbone, neck, box and objectness rows kept, each run class taking the class row of the
file's class of the same name (case-insensitive; `detect.class_map` names another), the
others starting fresh. What happened is in run.json's `weights` record.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Mapping, Sequence

from vislab.errors import VislabError
from vislab.fsguard import SpecialFileError, read_bounded
from vislab.models.darknet import check_darknet_size, config_from_cfg, load_darknet_weights
from vislab.models.yolo import YOLO, transfer_classes


def _names_file(weights: Path, given: Path | None) -> Path:
    if given is not None:
        return given
    found = sorted(weights.parent.glob("*.names"))
    if len(found) != 1:
        what = "no *.names file" if not found else f"{len(found)} *.names files"
        raise VislabError(
            f"model.weights: {weights} is a Darknet file, which holds no class names, and its folder has {what}; "
            "set detect.weights_classes: PATH to its names file (one class per line, e.g. coco.names)"
        )
    return found[0]


def read_names(path: Path) -> list[str]:
    """A Darknet names file: one class per line, blank lines skipped."""
    try:
        text = read_bounded(path, 1 << 20).decode("utf-8", "replace")
    except (OSError, SpecialFileError) as err:
        raise VislabError(f"detect.weights_classes: cannot read {path} ({err})") from None
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise VislabError(f"detect.weights_classes: {path} names no class; give a file with one class name per line")
    return names


def _check_class_map(class_map: Mapping[str, str], classes: Sequence[str], source_names: Sequence[str], names_path: Path) -> None:
    """detect.class_map names run classes and classes of the names file (case-insensitive), else one line naming the key."""
    not_run = [k for k in class_map if k not in classes]
    if not_run:
        raise VislabError(f"detect.class_map: {', '.join(map(repr, not_run))} is not a class of this run ({', '.join(classes)}); "
                          "map run classes to classes of model.weights")
    known = {n.lower() for n in source_names}
    not_source = [v for v in class_map.values() if v.lower() not in known]
    if not_source:
        raise VislabError(f"detect.class_map: {', '.join(map(repr, not_source))} is not a class of {names_path}; "
                          "map run classes to names that file lists")


def load_darknet_transfer(
    model: YOLO, weights: Path, classes: Sequence[str], class_map: Mapping[str, str], names_file: Path | None
) -> YOLO:
    """`model`'s architecture with `weights` loaded and re-headed to `classes`."""
    if not isinstance(model, YOLO) or model.cfg.arch == "timm":
        raise VislabError("model.weights: a Darknet .weights file fits yolov3 or yolov3_tiny only; use a .pth/.safetensors file for this model")
    names_path = _names_file(weights, names_file)
    source_names = read_names(names_path)
    cfg_path = weights.with_suffix(".cfg")
    if cfg_path.is_file() and config_from_cfg(cfg_path).num_classes != len(source_names):
        raise VislabError(f"{cfg_path}: says {config_from_cfg(cfg_path).num_classes} classes, its names file {len(source_names)}; give the matching names file")
    _check_class_map(class_map, classes, source_names, names_path)
    check_darknet_size(model, weights, len(source_names), f" (the lines of {names_path})")
    source = YOLO(replace(model.cfg, num_classes=len(source_names)))
    report = load_darknet_weights(source, weights, cfg_path if cfg_path.is_file() else None)
    taken = transfer_classes(source, source_names, list(classes), dict(class_map))
    source.vislab_spec = getattr(model, "vislab_spec", None)
    source.vislab_load_report = {**report, "names": len(source_names), "classes_from": taken}
    return source
