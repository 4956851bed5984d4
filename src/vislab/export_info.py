"""What an exported model's metadata says about preparing its inputs and reading its outputs.

A user of the .onnx file has neither vislab nor its config, so the steps vislab's own
pipeline takes (data/io.py's decode, data/transforms.py's eval transform, the detector's
letterbox, the crops sampler) are written out here as plain values: each task's
`export_metadata` hook builds its entries with these functions, and README's "Using the
exported model" reads them back with Pillow and numpy only.
"""

from __future__ import annotations

from typing import Any, Sequence

from vislab.data.io import SIXTEEN_BIT_MODES, ALPHA_MODES
from vislab.channels import channel_stats
from vislab.data.transforms import TRIM_ASPECT, decode_size, resize_size

WHITE = [255, 255, 255]


def decode_steps() -> list[dict[str, Any]]:
    """data/io.load_image's steps, which every task's images go through first."""
    return [
        {"op": "exif_transpose", "why": "photos are shown the way the camera held them (EXIF orientation)"},
        {"op": "sixteen_bit_to_8", "modes": sorted(SIXTEEN_BIT_MODES), "how": "keep the high byte (value >> 8)"},
        {
            "op": "alpha_on_white",
            "modes": sorted(ALPHA_MODES),
            "also": "mode P with 'transparency' in its info",
            "background": WHITE,
            "why": "transparent pixels become white, not black (Image.convert('RGB') drops alpha and keeps the hidden colour)",
        },
        {"op": "convert", "mode": "RGB"},
    ]


def classify_preprocess(spec: dict[str, Any], grayscale: bool) -> dict[str, Any]:
    """The eval transform of a classifier's DataSpec as ordered steps and a one-paragraph summary."""
    channels, height, width = (int(v) for v in spec["input_size"])
    crop_pct = float(spec.get("crop_pct", 1.0))
    interpolation = spec.get("interpolation", "bilinear")
    grey = grayscale or channels == 1
    mean, std = channel_stats(spec["mean"], channels), channel_stats(spec["std"], channels)
    both = resize_size((height, width), crop_pct)
    side = both[0]
    steps: list[dict[str, Any]] = [
        {"op": "jpeg_draft", "size": [decode_size(spec)] * 2, "why": "JPEGs decode at the smallest scale still this large (Image.draft)"},
        *decode_steps(),
    ]
    if grey:
        steps.append({"op": "convert", "mode": "L", "channels": channels, "why": "a grey model: Pillow's luma of the RGB image, repeated when channels is 3"})
    if height == width:
        steps.append({"op": "trim_long_side", "max_aspect": TRIM_ASPECT, "side": side, "keep": height, "why": "over 4:1 images are centre-cut along the long side before resizing"})
        steps.append({"op": "resize_shorter_side", "size": side, "interpolation": interpolation, "antialias": True, "library": "Pillow Image.resize"})
    else:
        steps.append({"op": "resize", "size_hw": list(both), "interpolation": interpolation, "antialias": True, "library": "Pillow Image.resize"})
    steps += [
        {"op": "center_crop", "size_hw": [height, width], "offset": "round((side - crop) / 2)"},
        {"op": "scale", "factor": 1 / 255, "why": "uint8 to [0, 1]"},
        {"op": "normalize", "mean": mean, "std": std, "why": "per channel (x - mean) / std; a grey model's are the RGB values averaged"},
        {"op": "layout", "layout": "NCHW", "dtype": "float32", "input": "input"},
    ]
    summary = (
        f"Open the image, apply its EXIF orientation, put transparent pixels on white and convert to RGB"
        f"{', then to grey (L)' if grey else ''}; resize the shorter side to {side} px ({interpolation}, antialiased, "
        f"as Pillow does) and centre-crop {height}x{width}; scale to [0, 1], subtract mean {mean} and divide by std {std}; "
        f"feed a float32 NCHW batch [N, {channels}, {height}, {width}] as 'input'. Softmax of 'logits' gives vislab predict's probabilities."
    )
    return {"task": "classify", "summary": summary, "steps": steps, "output": {"logits": "[N, classes]; softmax over axis 1 = probabilities, in vislab_classes order"}}


def detect_preprocess(canvas_hw: Sequence[int], pad_value: int, conf: float, iou: float, max_det: int) -> dict[str, Any]:
    """The detector's letterbox input and how to read its raw `detections` (no NMS in the graph)."""
    height, width = (int(v) for v in canvas_hw)
    steps = [
        *decode_steps(),
        {
            "op": "letterbox",
            "size_hw": [height, width],
            "pad_value": pad_value,
            "interpolation": "bilinear",
            "how": "scale = min(W / w, H / h); resize to nw = max(1, round(w * scale)), nh = max(1, round(h * scale)); paste with its top-left at pad_x = (W - nw) // 2, pad_y = (H - nh) // 2 (whole pixels, rounded down) on a canvas of pad_value",
        },
        {"op": "scale", "factor": 1 / 255, "why": "uint8 to [0, 1]; no mean/std"},
        {"op": "layout", "layout": "NCHW", "dtype": "float32", "input": "input"},
    ]
    output = {
        "detections": "[N, boxes, 5 + classes]: x1, y1, x2, y2 (canvas pixels), objectness, then class probabilities; NOT filtered",
        "nms_in_graph": False,
        "postprocess": {
            "score": "objectness * class probability (the best class per box)",
            "conf": conf,
            "nms_iou": iou,
            "max_det": max_det,
            "how": "per box its best class; keep score >= conf, then per-class NMS at nms_iou, at most max_det boxes",
        },
        "unletterbox": "x = (x_canvas - pad_x) / (nw / w), y = (y_canvas - pad_y) / (nh / h), clipped to the image",
    }
    summary = (
        f"Letterbox the RGB image into {height}x{width} (aspect kept, centred, padded with {pad_value}), scale to [0, 1] without "
        f"mean/std, feed float32 NCHW as 'input'. 'detections' are raw decoded boxes without NMS: keep objectness * class "
        f"probability >= {conf}, apply per-class NMS at IoU {iou}, keep at most {max_det}, and map boxes back by undoing the letterbox. "
        "vislab_data_spec's resize and crop do not apply to this model."
    )
    return {"task": "detect", "summary": summary, "steps": steps, "output": output}


def crops_inputs(thumb_wh: Sequence[int], patch: int, cells: int) -> dict[str, Any]:
    """What the crop detector's `thumb` and `patches` inputs are: uint8 samples, not normalised images."""
    tw, th = (int(v) for v in thumb_wh)
    summary = (
        f"Two uint8 inputs, not normalised: 'thumb' [N, 3, {th}, {tw}] (a thumbnail of the whole photo) and 'patches' "
        f"[N, {cells}, 3, {patch}, {patch}] (one patch per grid cell); the model normalises them itself. They are built by "
        "vislab's crops sampler (vislab.data.crops), which vislab predict runs; vislab_data_spec's input_size, mean and std "
        "describe the thumbnail branch inside the model, not something to apply to the inputs."
    )
    inputs = {
        "thumb": {"shape": ["N", 3, th, tw], "dtype": "uint8", "normalised": False},
        "patches": {"shape": ["N", cells, 3, patch, patch], "dtype": "uint8", "normalised": False},
        "built_by": "vislab.data.crops (the crops sampler vislab predict uses)",
    }
    return {"task": "crops", "summary": summary, "inputs": inputs, "output": {"rect": "the estimated original frame", "flag": "crop logit", "cells": "patch cell logits"}}
