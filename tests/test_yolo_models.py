"""YOLO models: every registered detector runs forward and backward at 64 px, the timm head
takes its widths from feature_info, decoding and NMS, Darknet's stride-1 pool, class transfer."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch
import torch.nn as nn

from vislab.config import ModelConfig
from vislab.errors import VislabError
from vislab.models import backbones, factory
from vislab.models.yolo import YOLO, PadPool, YOLOConfig, decode_boxes, postprocess, transfer_classes
from vislab.testing.models import single_thread

@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with single_thread():
        yield


DETECT = [n for n in factory.list_models() if factory.model_info(n).get("task") == "detect"]
SMALL_ANCHORS = ((8, 8), (16, 16), (24, 20), (20, 30), (32, 32), (48, 48))


def test_detectors_are_registered_with_their_metadata() -> None:
    assert set(DETECT) == {"yolov3", "yolov3_tiny", "yolov3_timm"}
    info = factory.model_info("yolov3")
    assert info["spec"]["input_size"] == [3, 416, 416] and info["strides"] == [8, 16, 32]
    assert info["anchors"][0] == [10, 13] and info["anchors"][-1] == [373, 326]
    assert factory.model_info("yolov3_tiny")["anchors"][-1] == [344, 319]


@pytest.mark.parametrize("name", DETECT)
def test_every_detector_forward_backward(name: str) -> None:
    model = factory.create_model(ModelConfig(name=name), 3)
    strides = factory.model_info(name)["strides"]
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    model.train()
    raw = model(x)
    assert [tuple(r.shape) for r in raw] == [(2, 3, 64 // s, 64 // s, 8) for s in strides]
    model.zero_grad(set_to_none=True)
    sum(r.float().pow(2).mean() for r in raw).backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, f"parameters without gradient: {no_grad[:5]}"

    model.eval()
    with torch.no_grad():
        out = model(x)
        again = model.decode(model.forward_head(model.forward_features(x)))
    assert out.shape == (2, 3 * sum((64 // s) ** 2 for s in strides), 8)
    assert torch.equal(out, again)
    assert (out[..., 2:4] > out[..., :2]).all() and ((out[..., 4:] >= 0) & (out[..., 4:] <= 1)).all()
    assert backbones.head_module_names(model) == ["levels", "pred"]
    backbones.set_backbone_frozen(model, True)
    assert all(not p.requires_grad for p in model.backbone.parameters())
    assert all(p.requires_grad for p in model.levels.parameters()) and all(p.requires_grad for p in model.pred.parameters())


@pytest.mark.parametrize("levels,strides", [(3, [8, 16, 32]), (2, [16, 32])])
def test_timm_head_widths_come_from_feature_info(levels: int, strides: list[int]) -> None:
    # test_resnet's last three levels are 48, 192, 96 wide: no rule of thumb would guess them
    model = YOLO(YOLOConfig(arch="timm", backbone="test_resnet", levels=levels, num_classes=2))
    info = model.backbone.body.feature_info
    assert model.strides == strides == list(info.reduction())
    channels = list(info.channels())
    for i, level in enumerate(model.levels):
        lateral = model.levels[i + 1].lateral.conv.out_channels if i + 1 < levels else 0
        assert level.neck[0].conv.in_channels == channels[i] + lateral
    assert model.anchors.shape == (levels, 3, 2)
    raw = model.train()(torch.rand(1, 3, 64, 64))
    assert [r.shape[2] for r in raw] == [64 // s for s in strides]


def test_model_kwargs_set_anchors_and_bad_ones_fail_in_one_line() -> None:
    cfg = ModelConfig(name="yolov3_tiny", kwargs={"anchors": [list(a) for a in SMALL_ANCHORS], "img_size": 64})
    model = factory.create_model(cfg, 2)
    assert model.anchors[1, 2].tolist() == [48.0, 48.0] and model.cfg.img_size == 64
    bad = [
        {"backbone": "resnet18"},  # only yolov3_timm has a backbone setting
        {"anchors": [[10, 13], [16, 30]]},  # 2 anchors over 2 levels is fine, 5 is not:
    ]
    with pytest.raises(VislabError, match="model.kwargs: 'backbone' is not a yolov3_tiny setting"):
        factory.create_model(ModelConfig(name="yolov3_tiny", kwargs=bad[0]), 2)
    with pytest.raises(VislabError, match="5 anchors do not split over 2 levels"):
        factory.create_model(ModelConfig(name="yolov3_tiny", kwargs={"anchors": SMALL_ANCHORS[:5]}), 2)
    with pytest.raises(VislabError, match="timm has no model 'no_such_net'"):
        factory.create_model(ModelConfig(name="yolov3_timm", kwargs={"backbone": "no_such_net"}), 2)
    with pytest.raises(VislabError, match="last 2 or 3 feature levels"):
        factory.create_model(ModelConfig(name="yolov3_timm", kwargs={"levels": 4}), 2)


def test_darknet_stride1_maxpool_takes_the_max_of_pixels_inside() -> None:
    # Darknet pads right/bottom with -FLT_MAX: on a negative map the edge keeps its own value
    x = -torch.arange(1.0, 10.0).view(1, 1, 3, 3)
    y = PadPool()(x)
    assert y.shape == x.shape
    assert y[0, 0].tolist() == [[-1.0, -2.0, -3.0], [-4.0, -5.0, -6.0], [-7.0, -8.0, -9.0]]
    tiny = YOLO(YOLOConfig(arch="yolov3_tiny"))
    assert isinstance(tiny.backbone.layers[11], PadPool)
    assert [r.shape[2] for r in tiny.train()(torch.rand(1, 3, 416, 416))] == [26, 13]


def test_decode_boxes_is_darknets_formula() -> None:
    raw = torch.zeros(1, 2, 2, 3, 6)  # two anchors, 2 x 3 grid
    raw[0, 1, 1, 2, :4] = torch.tensor([2.0, -1.0, math.log(2), 0.0])
    anchors = torch.tensor([[10.0, 20.0], [30.0, 40.0]])
    boxes = decode_boxes(raw, anchors, stride=16)
    assert boxes[0, 0, 0, 0].tolist() == [8 - 5, 8 - 10, 8 + 5, 8 + 10]
    cx, cy = (2 + torch.sigmoid(torch.tensor(2.0))) * 16, (1 + torch.sigmoid(torch.tensor(-1.0))) * 16
    expect = torch.stack([cx - 30, cy - 20, cx + 30, cy + 20])
    assert torch.allclose(boxes[0, 1, 1, 2], expect)


def _pred(box: list[float], obj: float, cls: list[float]) -> list[float]:
    return [*box, obj, *cls]


def test_postprocess_scores_thresholds_and_nms_per_class() -> None:
    preds = torch.tensor(
        [
            [
                _pred([10, 10, 50, 50], 0.9, [0.9, 0.1]),  # kept: score 0.81
                _pred([12, 12, 52, 52], 0.8, [0.9, 0.1]),  # same class, IoU 0.82: suppressed
                _pred([12, 12, 52, 52], 0.8, [0.1, 0.7]),  # other class: kept
                _pred([60, 60, 90, 90], 0.9, [0.2, 0.2]),  # score 0.18 < conf
            ]
        ]
    )
    (det,) = postprocess(preds, conf=0.25, iou=0.45)
    assert det[:, 5].tolist() == [0.0, 1.0]
    assert torch.allclose(det[:, 4], torch.tensor([0.81, 0.56]))
    assert det[0, :4].tolist() == [10, 10, 50, 50]
    assert len(postprocess(preds, conf=0.25, iou=0.45, max_det=1)[0]) == 1
    multi = postprocess(preds, conf=0.05, iou=0.45, multi_label=True)[0]
    # the last box under both classes; the others' second class is suppressed by a better box
    assert sorted(multi[:, 5].tolist()) == [0.0, 0.0, 1.0, 1.0]
    assert postprocess(torch.zeros(2, 0, 7))[1].shape == (0, 6)


def _rows(conv: nn.Conv2d, anchors: int, row: int) -> tuple[torch.Tensor, torch.Tensor]:
    no = conv.out_channels // anchors
    idx = [a * no + row for a in range(anchors)]
    return conv.weight[idx].detach().clone(), conv.bias[idx].detach().clone()


def test_transfer_classes_copies_mapped_rows_and_keeps_box_and_objectness() -> None:
    old, new = ["person", "car", "dog"], ["Car", "Pedestrian", "Cyclist"]
    model = YOLO(YOLOConfig(arch="timm", backbone="test_efficientnet", levels=2, num_classes=3, anchors=SMALL_ANCHORS))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    old_pred = [(p.weight.detach().clone(), p.bias.detach().clone()) for p in model.pred]
    report = transfer_classes(model, old, new, mapping={"Pedestrian": "person"})
    assert report == {"Car": "car", "Pedestrian": "person", "Cyclist": None}
    assert model.num_classes == 3 and model.cfg.num_classes == 3
    for (ow, ob), conv in zip(old_pred, model.pred):
        old_conv = nn.Conv2d(conv.in_channels, ow.shape[0], 1)
        old_conv.weight.data, old_conv.bias.data = ow, ob
        for row in range(5):  # box and objectness rows stay
            assert all(torch.equal(a, b) for a, b in zip(_rows(conv, 3, row), _rows(old_conv, 3, row)))
        for new_row, old_row in ((5, 6), (6, 5)):  # Car <- car, Pedestrian <- person
            assert all(torch.equal(a, b) for a, b in zip(_rows(conv, 3, new_row), _rows(old_conv, 3, old_row)))
        cyclist_w, cyclist_b = _rows(conv, 3, 7)
        assert not any(torch.equal(cyclist_w, _rows(old_conv, 3, r)[0]) for r in (5, 6, 7))
        assert torch.allclose(cyclist_b, torch.full_like(cyclist_b, math.log(0.6 / (3 - 0.99))))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if not k.startswith("pred."))

    grown = transfer_classes(model, new, ["car", "truck"])  # case-insensitive, another class count
    assert grown == {"car": "Car", "truck": None} and model.pred[0].out_channels == 3 * 7
    with pytest.raises(VislabError, match=r"old classes \['horse'\]"):
        transfer_classes(model, ["car", "truck"], ["a"], mapping={"a": "horse"})
    with pytest.raises(VislabError, match="has 2 classes but 3 old names"):
        transfer_classes(model, old, new)
