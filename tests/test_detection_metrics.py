"""Detection metrics: COCO mAP against COCOeval run directly, hand-checked P/R/F1, ignore
regions, and the KITTI protocol's difficulty filtering and AP|R40."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
from faster_coco_eval import COCO
from faster_coco_eval import COCOeval_faster as COCOeval

from vislab.metrics.detection import KittiSpec, coco_map, detection_report, kitti_ap, precision_recall

CLASSES = ["cat", "dog", "bird"]

# Three images, three classes, a crowd region, a duplicate, a miss, a wrong class, and
# detections whose IoU with their truth falls between 0.5 and 0.95 (so mAP@.5:.95 differs).
GT = [
    # image, class, x, y, w, h, iscrowd
    (1, "cat", 10, 10, 40, 40, 0),
    (1, "dog", 60, 10, 30, 50, 0),
    (1, "cat", 100, 100, 80, 60, 1),
    (2, "dog", 5, 5, 20, 20, 0),
    (2, "dog", 40, 40, 50, 50, 0),
    (2, "bird", 120, 20, 12, 12, 0),
    (3, "bird", 30, 30, 60, 40, 0),
    (3, "cat", 150, 150, 40, 40, 0),
]
DT = [
    # image, class, x, y, w, h, score
    (1, "cat", 12, 11, 40, 40, 0.95),
    (1, "cat", 14, 14, 36, 36, 0.40),  # duplicate of the cat above: FP
    (1, "dog", 62, 14, 30, 50, 0.80),
    (1, "cat", 110, 110, 30, 30, 0.70),  # inside the crowd region: ignored
    (2, "dog", 6, 6, 18, 22, 0.90),
    (2, "dog", 45, 38, 45, 50, 0.60),
    (2, "bird", 200, 200, 10, 10, 0.85),  # nothing there: FP
    (3, "bird", 35, 30, 55, 42, 0.75),
    (3, "dog", 150, 150, 40, 40, 0.65),  # a cat called dog: FP for dog, miss for cat
    (3, "cat", 0, 0, 10, 10, 0.30),  # FP
]


def _inputs(gt=GT, dt=DT):
    preds, targets = [], []
    for image in (1, 2, 3):
        d = [r for r in dt if r[0] == image]
        g = [r for r in gt if r[0] == image]
        preds.append(
            {
                "boxes": np.array([[x, y, x + w, y + h] for _, _, x, y, w, h, _ in d], dtype=float).reshape(
                    -1, 4
                ),
                "scores": np.array([s for *_, s in d]),
                "labels": [c for _, c, *_ in d],
            }
        )
        targets.append(
            {
                "boxes": np.array([[x, y, x + w, y + h] for _, _, x, y, w, h, _ in g], dtype=float).reshape(
                    -1, 4
                ),
                "labels": [c for _, c, *_ in g],
                "ignore": np.array([bool(z) for *_, z in g]),
            }
        )
    return preds, targets


def _cocoeval(gt=GT, dt=DT) -> COCOeval:
    """COCOeval run directly on the same boxes written as COCO JSON."""
    cats = {c: i + 1 for i, c in enumerate(CLASSES)}
    coco_gt = COCO()
    coco_gt.dataset = {
        "info": {},
        "images": [{"id": i, "width": 300, "height": 300} for i in (1, 2, 3)],
        "categories": [{"id": i, "name": c} for c, i in cats.items()],
        "annotations": [
            {
                "id": n + 1,
                "image_id": im,
                "category_id": cats[c],
                "bbox": [x, y, w, h],
                "area": w * h,
                "iscrowd": z,
            }
            for n, (im, c, x, y, w, h, z) in enumerate(gt)
        ],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(
            [
                {"image_id": im, "category_id": cats[c], "bbox": [x, y, w, h], "score": s}
                for im, c, x, y, w, h, s in dt
            ]
        )
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def test_coco_map_equals_cocoeval_run_directly_with_a_crowd_region():
    preds, targets = _inputs()
    ours = coco_map(preds, targets, CLASSES)
    ev = _cocoeval()
    assert ours["map50_95"] == pytest.approx(ev.stats[0], abs=1e-6)
    assert ours["map50"] == pytest.approx(ev.stats[1], abs=1e-6)
    assert ours["map75"] == pytest.approx(ev.stats[2], abs=1e-6)
    assert 0.3 < ours["map50_95"] < ours["map50"] < 1.0  # a non-trivial case
    precision = ev.eval["precision"]  # [T, R, K, A, M]
    for k, name in enumerate(CLASSES):
        at50 = precision[0, :, k, 0, -1]
        assert ours["per_class"][name]["ap50"] == pytest.approx(at50[at50 > -1].mean(), abs=1e-6)
        every = precision[:, :, k, 0, -1]
        assert ours["per_class"][name]["ap50_95"] == pytest.approx(every[every > -1].mean(), abs=1e-6)


def test_coco_map_takes_a_recall_point_reached_exactly_as_cocoeval_does():
    """5 truths, the first 3 found first: recall is exactly 0.6 at precision 1, so COCO's
    101-point AP is (61 x 1 + 40 x 0.5) / 101. With float32 thresholds (torchmetrics'
    default) the point 0.6 read 0.6000000238 and fell to precision 0.5: 80.5 / 101."""
    truth = [10.0, 10.0, 50.0, 50.0]
    miss = [200.0, 200.0, 240.0, 240.0]
    found = {0: [(0.9, 1)], 1: [(0.8, 1)], 2: [(0.7, 1), (0.6, 0), (0.55, 0)], 3: [(0.5, 0), (0.45, 0), (0.3, 1)], 4: [(0.4, 0), (0.2, 1)]}
    preds = [{"boxes": [truth if hit else miss for _, hit in d], "scores": [s for s, _ in d], "labels": [0] * len(d)} for d in found.values()]
    targets = [{"boxes": [truth], "labels": [0]} for _ in found]
    r = coco_map(preds, targets, ["thing"])
    ap = (61 * 1.0 + 40 * 0.5) / 101
    assert r["map50"] == pytest.approx(ap, abs=1e-6)
    assert r["map50_95"] == pytest.approx(ap, abs=1e-6)
    assert r["map75"] == pytest.approx(ap, abs=1e-6)
    assert r["per_class"]["thing"] == pytest.approx({"ap50": ap, "ap50_95": ap}, abs=1e-6)


def test_crowd_targets_are_ignored_by_the_backend_as_coco_does():
    """A detection inside a crowd region changes nothing; the same box as a plain truth
    would make the detection a true positive and the truth count."""
    preds, targets = _inputs()
    with_det = coco_map(preds, targets, CLASSES)["per_class"]["cat"]["ap50"]
    dt = [r for r in DT if r[-1] != 0.70]
    preds_without, _ = _inputs(dt=dt)
    without_det = coco_map(preds_without, targets, CLASSES)["per_class"]["cat"]["ap50"]
    assert with_det == pytest.approx(without_det, abs=1e-9)
    plain = [(im, c, x, y, w, h, 0) for im, c, x, y, w, h, _ in GT]
    _, plain_targets = _inputs(gt=plain)
    as_truth = coco_map(preds, plain_targets, CLASSES)["per_class"]["cat"]["ap50"]
    assert as_truth != pytest.approx(with_det, abs=1e-3)


def test_class_agnostic_ignore_region_reaches_every_class():
    """A DontCare-like region (ignore, class not evaluated) hides detections of any class."""
    preds = [
        {
            "boxes": [[0, 0, 10, 10], [50, 50, 60, 60], [52, 52, 58, 58]],
            "scores": [0.9, 0.8, 0.7],
            "labels": ["cat", "dog", "cat"],
        }
    ]
    targets = [
        {"boxes": [[0, 0, 10, 10], [45, 45, 65, 65]], "labels": ["cat", "DontCare"], "ignore": [False, True]}
    ]
    res = coco_map(preds, targets, ["cat", "dog"])
    assert res["per_class"]["cat"]["ap50"] == pytest.approx(1.0)
    assert res["per_class"]["dog"]["ap50"] is None  # no truth, no false positive either
    pr = precision_recall(preds, targets, ["cat", "dog"])["at_confidence"]
    assert pr["all"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "tp": 1, "fp": 0, "fn": 0}


def test_greedy_matcher_curve_matches_cocoeval_at_iou_half():
    preds, targets = _inputs()
    curves = precision_recall(preds, targets, CLASSES, confidence=0.0)["curves"]["precision_at_recall"]
    precision = _cocoeval().eval["precision"][0, :, :, 0, -1]
    for k, name in enumerate(CLASSES):
        np.testing.assert_allclose(curves[name], precision[:, k], atol=1e-12)


def test_precision_recall_f1_by_hand():
    """One image, two cats, three cat detections: 0.9 hits cat A, 0.6 is a duplicate of A,
    0.3 hits cat B (IoU 0.81).
    At confidence 0.5: TP 1, FP 1, FN 1 -> P 0.5, R 0.5, F1 0.5.
    Best F1: at 0.9 (TP1 FP0 FN1: 2/3) vs at 0.3 (TP2 FP1 FN0: 4/5) -> 0.3, F1 0.8."""
    preds = [
        {
            "boxes": [[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 29, 29]],
            "scores": [0.9, 0.6, 0.3],
            "labels": [0, 0, 0],
        }
    ]
    targets = [{"boxes": [[0, 0, 10, 10], [20, 20, 30, 30]], "labels": [0, 0], "ignore": [False, False]}]
    res = precision_recall(preds, targets, ["cat"], confidence=0.5)
    assert res["at_confidence"]["all"] == {
        "precision": 0.5,
        "recall": 0.5,
        "f1": 0.5,
        "tp": 1,
        "fp": 1,
        "fn": 1,
    }
    best = res["at_best_f1"]
    assert best["confidence"] == pytest.approx(0.3)
    assert best["all"]["f1"] == pytest.approx(0.8)
    assert (best["all"]["tp"], best["all"]["fp"], best["all"]["fn"]) == (2, 1, 0)
    by_conf = res["curves"]["by_confidence"]["cat"]
    grid = res["curves"]["confidence_grid"]
    assert by_conf["f1"][grid.index(0.3)] == pytest.approx(0.8)
    assert by_conf["f1"][grid.index(0.7)] == pytest.approx(2 / 3)
    assert by_conf["precision"][grid.index(0.95)] is None  # no detection that confident
    assert by_conf["recall"][grid.index(0.95)] == 0.0


def test_detection_in_ignore_region_is_not_a_false_positive():
    preds = [
        {"boxes": [[0, 0, 10, 10], [100, 100, 110, 110]], "scores": [0.9, 0.8], "labels": ["cat", "cat"]}
    ]
    crowd = [
        {"boxes": [[0, 0, 10, 10], [90, 90, 130, 130]], "labels": ["cat", "cat"], "ignore": [False, True]}
    ]
    res = precision_recall(preds, crowd, ["cat"])["at_confidence"]["all"]
    assert (res["tp"], res["fp"], res["fn"]) == (1, 0, 0)
    plain_region = [{"boxes": crowd[0]["boxes"][:1], "labels": ["cat"], "ignore": [False]}]
    res = precision_recall(preds, plain_region, ["cat"])["at_confidence"]["all"]
    assert (res["tp"], res["fp"], res["fn"]) == (1, 1, 0)


def _cars(heights, occluded=None, truncated=None, scores=None, shift=0.0):
    """One image per car: truth box of the given height, detection on it (IoU ~1)."""
    preds, targets = [], []
    for i, h in enumerate(heights):
        box = [100.0, 100.0, 160.0, 100.0 + h]
        det = [box[0] + shift, box[1], box[2] + shift, box[3]]
        preds.append({"boxes": [det], "scores": [scores[i] if scores else 0.9], "labels": ["Car"]})
        targets.append(
            {
                "boxes": [box],
                "labels": ["Car"],
                "ignore": [False],
                "occluded": [occluded[i] if occluded else 0],
                "truncated": [truncated[i] if truncated else 0.0],
            }
        )
    return preds, targets


def test_kitti_ap40_by_hand():
    """40 cars, all found at distinct scores, plus one false positive above them all:
    the devkit takes each TP score as a threshold (recall k/40); precision at the k-th is
    k/(k+1), whose running max from the right is 40/41 everywhere; AP|R40 skips the first
    recall position and the 41st has no threshold: AP = 39/40 * 40/41 = 39/41."""
    scores = [0.5 + i / 100 for i in range(40)]
    preds, targets = _cars([50.0] * 40, scores=scores)
    preds[0] = {
        "boxes": [preds[0]["boxes"][0], [500, 100, 560, 160]],
        "scores": [scores[0], 0.99],
        "labels": ["Car", "Car"],
    }
    # an image whose only car (30 px tall: moderate, not easy) nobody found
    preds.append({"boxes": np.zeros((0, 4)), "scores": [], "labels": []})
    targets.append(
        {"boxes": [[0, 0, 50, 30]], "labels": ["Car"], "ignore": [False], "occluded": [0], "truncated": [0]}
    )
    res = kitti_ap(preds, targets, ["Car"])
    assert res["per_class"]["Car"]["easy"] == pytest.approx(39 / 41)
    assert res["per_class"]["Car"]["ground_truth"] == {"easy": 40, "moderate": 41, "hard": 41}
    # recall now tops at 40/41, but the devkit still finds 40 thresholds: the same AP
    assert res["per_class"]["Car"]["moderate"] == pytest.approx(39 / 41)
    assert res["note"] == ""
    json.dumps(res)


def test_kitti_few_truths_cap_ap_as_the_devkit_does_and_say_so():
    """5 cars, all found, nothing else: one threshold per TP, the first recall position is
    skipped, so a perfect detector scores 4/40."""
    preds, targets = _cars([50.0] * 5, scores=[0.9, 0.8, 0.7, 0.6, 0.5])
    res = kitti_ap(preds, targets, ["Car"])
    assert res["per_class"]["Car"]["easy"] == pytest.approx(4 / 40)
    assert res["note"].startswith("Car: under 40 counted truths")


def test_kitti_difficulty_filtering_by_hand():
    """80 plain cars; 10 occluded (level 2); 10 of height 30; 10 truncated 0.4; all found,
    the hard-level ones at higher scores. Easy counts only the 80 plain cars, moderate adds
    the short ones, hard all 110. In every level the detections of cars outside it are
    neither TP nor FP, so precision stays 1 and AP is 1."""
    heights = [50.0] * 80 + [50.0] * 10 + [30.0] * 10 + [50.0] * 10
    occluded = [0] * 80 + [2] * 10 + [0] * 20
    truncated = [0.0] * 100 + [0.4] * 10
    scores = [0.5] * 80 + [0.95] * 30
    preds, targets = _cars(heights, occluded, truncated, scores)
    res = kitti_ap(preds, targets, ["Car"])["per_class"]["Car"]
    assert res["ground_truth"] == {"easy": 80, "moderate": 90, "hard": 110}
    assert res["easy"] == pytest.approx(1.0)
    assert res["moderate"] == pytest.approx(1.0)
    assert res["hard"] == pytest.approx(1.0)
    # the same detections counted as false positives would pull precision down: check the
    # filter is what keeps AP at 1 by giving the outside-level cars a class of their own
    for t in targets[80:]:
        t["labels"] = ["Tram"]
    res = kitti_ap(preds, targets, ["Car"])["per_class"]["Car"]
    assert res["easy"] < 0.9


def test_kitti_min_iou_per_class_dontcare_and_neighbours():
    """A detection at IoU ~0.6 is a TP for Pedestrian (0.5) but not for Car (0.7); a Car
    detection on a Van or inside DontCare is no false positive."""
    boxes = [[100.0, 100.0, 160.0, 160.0]] * 40
    det = [[100.0, 100.0, 160.0, 100.0 + 60 * 0.62]]  # IoU 0.62
    spec = KittiSpec()
    for name, expected in (("Pedestrian", 39 / 40), ("Car", None)):
        preds = [{"boxes": det, "scores": [0.5 + i / 100], "labels": [name]} for i in range(40)]
        targets = [{"boxes": [b], "labels": [name], "ignore": [False]} for b in boxes]
        res = kitti_ap(preds, targets, [name], spec)["per_class"][name]["moderate"]
        if expected is None:
            assert res == 0.0
        else:
            assert res == pytest.approx(expected)
    preds, targets = _cars([50.0] * 40, scores=[0.5 + i / 100 for i in range(40)])
    extra = {"Van": [300.0, 100.0, 360.0, 150.0], "DontCare": [600.0, 100.0, 700.0, 200.0]}
    targets[0] = {
        "boxes": [targets[0]["boxes"][0], extra["Van"], extra["DontCare"]],
        "labels": ["Car", "Van", "DontCare"],
        "ignore": [False, False, True],
    }
    preds[0] = {
        "boxes": [preds[0]["boxes"][0], extra["Van"], [610.0, 110.0, 650.0, 160.0]],
        "scores": [0.5, 0.99, 0.98],
        "labels": ["Car", "Car", "Car"],
    }
    assert kitti_ap(preds, targets, ["Car"])["per_class"]["Car"]["easy"] == pytest.approx(39 / 40)
    no_neighbours = KittiSpec(neighbours={})
    assert kitti_ap(preds, targets, ["Car"], no_neighbours)["per_class"]["Car"]["easy"] < 0.97


def test_detection_report_is_json():
    preds, targets = _inputs()
    res = detection_report(preds, targets, CLASSES, kitti=True)
    text = json.dumps(res, allow_nan=False)
    assert set(json.loads(text)) >= {"coco", "at_confidence", "at_best_f1", "curves", "kitti", "classes"}


def test_one_class_gets_its_per_class_ap() -> None:
    """torchmetrics returns the class list of a one-class evaluation as a 0-d tensor (KITTI Car only)."""
    from vislab.metrics.detection import coco_map

    preds = [{"boxes": [[10, 10, 50, 50], [60, 60, 90, 90]], "scores": [0.9, 0.3], "labels": [0, 0]}]
    targets = [{"boxes": [[10, 10, 50, 50]], "labels": [0]}]
    r = coco_map(preds, targets, ["Car"])
    assert r["per_class"]["Car"]["ap50"] == pytest.approx(1.0) and r["map50"] == pytest.approx(1.0)


def test_kitti_a_neighbour_kept_as_an_ignore_row_is_a_neighbour_not_dontcare():
    """`curate --classes Car` keeps a KITTI Van as an ignore row named Van: for Car it is the
    devkit's neighbour (a detection on it is no FP, a second one is), never a DontCare region."""
    van = [300.0, 100.0, 360.0, 150.0]

    def easy(van_ignore: bool) -> float:
        preds, targets = _cars([50.0] * 40, scores=[0.5 + i / 100 for i in range(40)])
        targets[0] = {"boxes": [targets[0]["boxes"][0], van], "labels": ["Car", "Van"], "ignore": [False, van_ignore]}
        preds[0] = {"boxes": [preds[0]["boxes"][0], van, van], "scores": [0.5, 0.99, 0.985], "labels": ["Car", "Car", "Car"]}
        return kitti_ap(preds, targets, ["Car"])["per_class"]["Car"]["easy"]

    assert easy(van_ignore=True) == easy(van_ignore=False) < 0.97


def test_a_score_equal_to_conf_is_kept_by_predict_and_counted_by_evaluate() -> None:
    """One rule for a confidence (score >= conf, as float64 says): predict and serve
    (postprocess) return the boxes evaluate's P/R/F1 and curves count at that confidence,
    ties included, and the ONNX note says so. predict dropped a box scored exactly at --conf
    that evaluate counted, and kept a float32 0.7 (0.69999999) at --conf 0.7 that it did not."""
    import torch

    from vislab.export_info import detect_preprocess
    from vislab.models.yolo import postprocess

    # objectness 1, so the score is the class probability: a at exactly 0.5, b at 0.75, a at float32 0.7
    raw = torch.tensor([[[10.0, 10, 50, 50, 1.0, 0.5, 0.25], [100.0, 100, 140, 140, 1.0, 0.25, 0.75], [200.0, 200, 240, 240, 1.0, 0.7, 0.1]]])
    targets = [{"boxes": [[10, 10, 50, 50], [100, 100, 140, 140], [200, 200, 240, 240]], "labels": [0, 1, 0]}]
    (scored,) = postprocess(raw, conf=0.001, iou=0.45)  # what evaluate keeps for mAP
    preds = [{"boxes": scored[:, :4], "scores": scored[:, 4], "labels": scored[:, 5].long()}]
    f32_07 = float(np.float32(0.7))
    for conf, n in ((0.5, 3), (0.7, 1), (f32_07, 2)):
        counted = precision_recall(preds, targets, ["a", "b"], confidence=conf)["at_confidence"]["all"]
        assert counted["tp"] + counted["fp"] == n, conf
        assert len(postprocess(raw, conf=conf, iou=0.45)[0]) == n, conf
    curves = precision_recall(preds, targets, ["a", "b"])["curves"]
    assert curves["confidence_grid"][50] == 0.5 and curves["confidence_grid"][70] == 0.7
    assert curves["by_confidence"]["all"]["recall"][50] == 1.0  # the 0.5 box counts at 0.5
    assert curves["by_confidence"]["all"]["recall"][70] == pytest.approx(1 / 3)  # float32 0.7 is under 0.7
    assert len(postprocess(raw, conf=0.25, iou=0.45, multi_label=True)[0]) == 5  # the 0.25s too
    note = detect_preprocess((64, 64), 114, 0.5, 0.45, 300)
    assert "probability >= 0.5" in note["summary"] and "score >= conf" in note["output"]["postprocess"]["how"]
