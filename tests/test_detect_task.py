"""The detect task end to end on the synthetic shapes set: a tiny detector learns it, a
killed run resumes to the same weights and extends, evaluate matches classes by name,
predict draws and writes boxes, report / compare / export work, and a Darknet file's
classes transfer by name."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from typer.testing import CliRunner

from vislab.cli import app
from vislab.runs import load_checkpoint_file
from vislab.testing.detection import tiny_detect_config, write_label_dataset, write_shapes_dataset, yolo_line
from vislab.testing.images import write_corrupt_png
from vislab.testing.models import single_thread, weights_digest
from vislab.train import train

runner = CliRunner()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """On a busy 2-core machine torch's two intra-op threads mostly wait for each other."""
    with single_thread():
        yield


def ok(*args: object):
    res = runner.invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    return res


def curate(src: Path, out: Path, split: str = "0.6,0.2,0.2") -> Path:
    ok("curate", src, "--out", out, "--split", split, "--workers", "1")
    return out


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    return curate(write_shapes_dataset(root / "src", n=24, negatives=2), root / "ds")


# augmentation of every kind and multi-scale: everything that consumes randomness
SECTIONS = {
    "seed": 2,
    "data": {"batch_size": 6},
    "detect": {"mosaic": 0.5, "mixup": 0.3, "multi_scale": 0.25},
    "train": {"epochs": 2, "checkpoint_every_steps": 2},
}

KILLER = """
import json, os, signal, sys
import torch
from lightning.pytorch.callbacks import Callback
from vislab.testing.detection import tiny_detect_config
from vislab.train import train

class KillAt(Callback):
    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == int(sys.argv[4]):
            os.kill(os.getpid(), signal.SIGKILL)

torch.set_num_threads(1)
train(tiny_detect_config(**json.loads(sys.argv[3])), sys.argv[1], sys.argv[2], callbacks=[KillAt()])
"""


@pytest.fixture(scope="module")
def reference(small, tmp_path_factory) -> Path:
    """The config trained without interruption (2 epochs)."""
    return train(tiny_detect_config(**SECTIONS), small, tmp_path_factory.mktemp("ref") / "full")


def test_a_class_boxed_only_in_val_or_test_is_warned(small, tmp_path, capsys) -> None:
    """A class with boxes in val/test and none in train trained silently: never learnt, its AP
    of 0 pulled mAP down (classification refuses the like; a warning here, as a rare class of a
    COCO-style subset often lands in one split)."""
    import shutil

    ds = Path(shutil.copytree(small, tmp_path / "ds"))
    manifest = pd.read_csv(ds / "manifest.csv")
    boxes = pd.read_csv(ds / "boxes.csv", keep_default_na=False)
    train_paths = set(manifest.loc[manifest["split"] == "train", "path"])
    held = boxes[~boxes["path"].isin(train_paths)]
    gone = held["class"].iloc[0]
    assert (boxes["class"] == gone).sum() > (held["class"] == gone).sum() > 0
    boxes = boxes[~(boxes["path"].isin(train_paths) & (boxes["class"] == gone))]
    boxes.to_csv(ds / "boxes.csv", index=False)
    train(tiny_detect_config(train={"epochs": 1}), ds, tmp_path / "run")
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("warning:")]
    assert [ln for ln in lines if f"'{gone}' has boxes in val/test but none in train" in ln], lines
    train(tiny_detect_config(train={"epochs": 1}), small, tmp_path / "plain")
    assert "none in train" not in capsys.readouterr().err


def test_killed_detection_run_resumes_to_the_same_weights_and_extends(small, reference, tmp_path) -> None:
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    run = tmp_path / "killed"
    # 14 train images / batch 6 = 2 steps an epoch: step 3 is in epoch 2, one step after a save
    proc = subprocess.run([sys.executable, str(script), str(small), str(run), json.dumps(SECTIONS), "3"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert load_checkpoint_file(run / "checkpoints/last.ckpt")["global_step"] == 2
    train(None, None, run, resume=True)
    resumed, full = pd.read_csv(run / "metrics.csv"), pd.read_csv(reference / "metrics.csv")
    cols = ["train/loss", "val/loss", "val/map50", "val/map"]
    pd.testing.assert_frame_equal(resumed[cols], full[cols], rtol=1e-5)
    assert weights_digest(run) == weights_digest(reference)  # model, optimiser, data position, augmentation RNG restored
    train(None, None, run, resume=True, epochs=3)  # --epochs extends the finished run
    assert pd.read_csv(run / "metrics.csv")["epoch"].tolist() == [0, 1, 2]
    assert json.loads((run / "summary.json").read_text())["monitor"] == "val/map50"


def test_evaluate_writes_detection_metrics_and_data_matches_classes_by_name(small, reference, tmp_path) -> None:
    res = ok("evaluate", reference, "--split", "test")
    assert "test: mAP@0.5 " in res.output and "at conf 0.5" in res.output
    m = json.loads((reference / "eval/test/metrics.json").read_text())
    for key in ("map50", "map50_95", "precision_at_conf", "recall_at_conf", "f1_at_conf", "best_f1_conf", "per_class_ap", "at_confidence", "at_best_f1", "curves", "coco"):
        assert key in m, key
    at = m["at_confidence"]["all"]
    assert (m["precision_at_conf"], m["recall_at_conf"], m["f1_at_conf"]) == (at["precision"], at["recall"], at["f1"])
    assert m["precision"] == "32-true"  # the generic field (numeric precision) keeps its meaning
    assert set(m["per_class_ap"]) == {"square", "circle", "triangle"} and len(m["curves"]["confidence_grid"]) == 101
    images = pd.read_csv(reference / "eval/test/images.csv")
    assert len(images) == m["num_samples"] and {"tp", "fp", "fn", "f1"} <= set(images.columns)

    # another dataset: 'circle' shared, 'boat' only there, square/triangle only in the run
    other = write_label_dataset(
        tmp_path / "other", {f"o{i}": yolo_line(0, (0.2, 0.2, 0.5, 0.5)) + yolo_line(1, (0.6, 0.6, 0.9, 0.9)) for i in range(4)},
        size=(64, 64), names=["circle", "boat"],
    )
    other_ds = curate(other, tmp_path / "other_ds", "1,0,0")
    res = ok("evaluate", reference, "--data", other_ds, "--split", "train")
    m = json.loads((reference / "eval/train-other_ds/metrics.json").read_text())
    assert m["class_match"] == {"matched": ["circle"], "run_only": ["square", "triangle"], "dataset_only": ["boat"]}
    notes = [ln for ln in res.output.splitlines() if ln.startswith("note: classes left out")]
    assert len(notes) == 1 and "boat (in the data, not a class of the run: its boxes are not scored)" in notes[0], res.output
    assert "square, triangle (a class of the run with no box in the data: no AP)" in notes[0]
    assert m["at_confidence"]["per_class"]["circle"]["tp"] + m["at_confidence"]["per_class"]["circle"]["fn"] == 4  # boats are not truths

    unrelated = curate(write_label_dataset(tmp_path / "boats", {f"b{i}": yolo_line(0, (0.1, 0.1, 0.4, 0.4)) for i in range(3)}, size=(64, 64), names=["boat"]),
                       tmp_path / "boats_ds", "1,0,0")
    res = runner.invoke(app, ["evaluate", str(reference), "--data", str(unrelated), "--split", "train"])
    assert res.exit_code == 2 and "no box of the run's classes (square, circle, triangle)" in res.stderr and "boat" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_evaluate_on_kitti_data_prints_kitti_ap_and_the_classes_left_out(tmp_path) -> None:
    """A Car run evaluated on KITTI data with Pedestrians too: the line gives the KITTI AP the
    devkit's difficulties give (metrics.json's `kitti`), and one note says Pedestrian's boxes
    are not scored, since the run has no such class."""
    from vislab.testing.detection import kitti_line

    rng = np.random.default_rng(0)

    def frames(prefix: str, with_pedestrians: bool) -> dict[str, str]:
        out = {}
        for i in range(8):
            x, y = rng.integers(4, 40, 2)
            text = kitti_line("Car", (x, y, x + 40, y + 44))
            if with_pedestrians:
                text += kitti_line("Pedestrian", (80, 10, 100, 60), 0.0, 0)
            out[f"{prefix}{i}"] = text
        return out

    cars = curate(write_label_dataset(tmp_path / "cars", frames("c", False), size=(128, 96)), tmp_path / "cars_ds", "0.75,0.25,0")
    both = curate(write_label_dataset(tmp_path / "both", frames("b", True), size=(128, 96), seed=1), tmp_path / "both_ds", "1,0,0")
    run = train(tiny_detect_config(train={"epochs": 1}), cars, tmp_path / "run")
    res = ok("evaluate", run, "--data", both, "--split", "train")
    m = json.loads((run / "eval/train-both_ds/metrics.json").read_text())
    assert m["class_match"] == {"matched": ["Car"], "run_only": [], "dataset_only": ["Pedestrian"]}
    mean = m["kitti"]["mean"]
    assert mean["moderate"] is not None
    line = next(ln for ln in res.output.splitlines() if ln.startswith("train-both_ds: mAP@0.5 "))
    assert f"KITTI AP (Car) easy {mean['easy']:.1%} moderate {mean['moderate']:.1%} hard {mean['hard']:.1%}" in line, res.output
    notes = [ln for ln in res.output.splitlines() if ln.startswith("note: ")]
    assert notes == ["note: classes left out: Pedestrian (in the data, not a class of the run: its boxes are not scored)"], res.output


def test_evaluate_at_conf_counts_every_box_predict_returns_when_val_conf_is_higher(small, reference, tmp_path) -> None:
    """detect.val_conf above detect.conf: evaluate kept boxes down to val_conf only, so its
    P/R/F1 "at conf" silently missed every box scored between the two (P 100% R 33% where
    `predict --conf` returned 38 boxes). It keeps them down to the lower of the two now; mAP
    still counts those down to val_conf, as before."""
    import shutil

    run = Path(shutil.copytree(reference, tmp_path / "run"))
    manifest = pd.read_csv(small / "manifest.csv")
    val = manifest.loc[manifest["split"] == "val", "path"].tolist()
    scores = sorted(b["score"] for r in json.loads(ok("predict", run, *val, "--conf", "0.001", "--format", "json").stdout) for b in r["boxes"])
    conf, val_conf = scores[len(scores) // 4], scores[-len(scores) // 4]  # a quarter of the boxes under conf, one over val_conf
    assert conf < val_conf
    config = yaml.safe_load((run / "config.yaml").read_text())

    def evaluate(name: str, **detect: float) -> dict:
        config["detect"].update(detect)
        (run / "config.yaml").write_text(yaml.safe_dump(config))
        res = ok("evaluate", run, "--split", "val", "--name", name)
        return {**json.loads((run / f"eval/{name}/metrics.json").read_text()), "output": res.output}

    same = evaluate("same", conf=val_conf, val_conf=val_conf)  # kept down to val_conf, as before
    m = evaluate("high", conf=conf, val_conf=val_conf)
    returned = sum(len(r["boxes"]) for r in json.loads(ok("predict", run, *val, "--format", "json").stdout))
    at = m["at_confidence"]["all"]
    assert at["tp"] + at["fp"] == returned > sum(s >= val_conf for s in scores), (at, returned)  # the boxes between the two counted
    assert pd.read_csv(run / "eval/high/images.csv")["detections"].sum() == returned
    assert f"at conf {conf}" in m["output"] and m["f1_at_conf"] == at["f1"]
    assert (m["map50"], m["map50_95"]) == (same["map50"], same["map50_95"])  # mAP counts the boxes over val_conf only


def test_predict_draws_and_writes_boxes_and_reports_unreadable_files(small, reference, tmp_path) -> None:
    image = sorted((small.parent / "src/images").glob("*.png"))[0]
    bad = write_corrupt_png(tmp_path / "broken.png")
    out = tmp_path / "pred"
    res = ok("predict", reference, image, bad, "--conf", "0.01", "--iou", "0.5", "--format", "json", "--out", out)
    results = json.loads(res.stdout)
    assert results[1]["path"] == str(bad) and "cannot read image" in results[1]["error"]
    boxes = results[0]["boxes"]
    assert boxes and all(b["score"] >= 0.01 and b["class"] in ("square", "circle", "triangle") for b in boxes)
    assert (results[0]["width"], results[0]["height"]) == (64, 64)
    drawn = sorted((out / "images").glob("*.jpg"))
    labels = sorted((out / "labels").glob("*.txt"))
    assert len(drawn) == 1 and len(labels) == 1  # the unreadable file has none
    rows = [line.split() for line in labels[0].read_text().splitlines()]
    assert len(rows) == len(boxes)
    cx = (boxes[0]["x1"] + boxes[0]["x2"]) / 2 / 64
    assert float(rows[0][1]) == pytest.approx(cx, abs=1e-4) and (out / "classes.txt").read_text().split() == ["square", "circle", "triangle"]
    table = pd.read_csv(io.StringIO(ok("predict", reference, image, "--conf", "0.01", "--iou", "0.5", "--format", "csv").stdout))
    assert len(table) == len(boxes)
    res = runner.invoke(app, ["predict", str(reference), str(image), "--top-k", "3"])
    assert res.exit_code == 2 and "--top-k" in res.stderr


def test_report_compare_and_onnx_export_of_a_detector(small, reference, tmp_path) -> None:
    ok("evaluate", reference, "--split", "test")
    ok("report", reference)
    page = (reference / "report.html").read_text()
    for sid in ("metrics", "pr-curves", "per-class", "best-worst", "errors", "curves", "data", "config"):
        assert f'<section id="{sid}"' in page, sid
    assert "mAP@0.5" in page and 'id="confusion"' not in page
    assert list((reference / "plots").glob("det_worst_test.png")) and list((reference / "plots").glob("det_curves_test.png"))
    table = pd.read_csv(io.StringIO(ok("compare", reference, "--format", "csv").output))
    assert {"map50", "map50_95", "det_precision", "det_recall", "det_f1"} <= set(table.columns)
    m = json.loads((reference / "eval/test/metrics.json").read_text())
    assert table.loc[0, "map50"] == pytest.approx(m["map50"])
    if m["recall_at_conf"] is not None:
        assert table.loc[0, "det_recall"] == pytest.approx(m["recall_at_conf"])

    res = ok("export", reference)
    assert "ONNX Runtime matches PyTorch" in res.output
    import onnxruntime as ort

    from vislab.runs import load_run

    run = load_run(reference)
    x = torch.rand(2, 3, 64, 64)
    got = ort.InferenceSession(str(reference / "export/model.onnx")).run(None, {"input": x.numpy()})[0]
    with torch.inference_mode():
        ref = run.model.eval()(x).numpy()
    assert got.shape == ref.shape and got.shape[-1] == 5 + 3
    np.testing.assert_allclose(got, ref, atol=1e-3, rtol=1e-3)


def test_report_of_a_detector_refuses_a_plot_linked_out_of_the_run(reference, tmp_path) -> None:
    """plots/det_curves_test.png a link to a user's file (a run folder from someone else):
    the detection report's figures were written through it, with no check at all."""
    import shutil

    run = tmp_path / "received"
    shutil.copytree(reference, run, symlinks=True)
    (run / "report.html").unlink(missing_ok=True)  # another test may have reported the reference run
    ok("evaluate", run, "--split", "test")
    victim = tmp_path / "notes.png"
    victim.write_text("a user's file")
    (run / "plots").mkdir(exist_ok=True)
    (run / "plots" / "det_curves_test.png").unlink(missing_ok=True)
    (run / "plots" / "det_curves_test.png").symlink_to(victim)
    res = runner.invoke(app, ["report", str(run)])
    assert res.exit_code == 2, res.output
    assert "det_curves_test.png: would be written outside" in res.stderr and "through the symbolic link" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert victim.read_text() == "a user's file" and not (run / "report.html").exists()


def test_predict_writes_one_classes_txt_line_per_class_whatever_a_name_holds(small, reference, tmp_path) -> None:
    """A class name with a newline (from a dataset curated before names were checked) made
    classes.txt one line longer than the classes, so the YOLO ids in labels/*.txt named the
    wrong classes from that line on."""
    import shutil

    from vislab.fsguard import printable

    run = tmp_path / "run"
    shutil.copytree(reference, run, symlinks=True)
    info = json.loads((run / "run.json").read_text())
    info["classes"] = ["square", "cir\ncle", "tri\x1b[2Jangle"]
    (run / "run.json").write_text(json.dumps(info))
    images = sorted((small.parent / "src/images").glob("*.png"))[:4]
    out = tmp_path / "pred"
    results = json.loads(ok("predict", run, *images, "--conf", "0.01", "--format", "json", "--out", out).stdout)
    names = (out / "classes.txt").read_text().split("\n")[:-1]
    assert names == ["square", "cir\\x0acle", "tri\\x1b[2Jangle"]
    for r in results:
        label = out / "labels" / (Path(r["drawn"]).stem + ".txt")
        ids = [int(line.split()[0]) for line in label.read_text().splitlines()]
        assert [names[i] for i in ids] == [printable(b["class"]) for b in r["boxes"]]
    assert any(b["class"] != "square" for r in results for b in r["boxes"])  # a later id is exercised


def test_a_run_with_a_hub_backbone_restores_without_the_hub(small, tmp_path, monkeypatch) -> None:
    """`pretrained: true` reaches timm's hub when training starts; evaluating, predicting or
    exporting the finished run takes every weight from its checkpoint and must not."""
    import timm

    from vislab.models import backbones
    from vislab.runs import load_run

    def downloaded(name: str, kwargs: dict) -> torch.nn.Module:
        torch.manual_seed(123)  # stands in for the hub's file: fixed, non-default weights
        return timm.create_model(name, **kwargs)

    monkeypatch.setattr(backbones, "hub_pretrained", downloaded)
    model = {"name": "yolov3_timm", "pretrained": True, "kwargs": {"backbone": "test_resnet", "levels": 2}}
    anchors = [[12, 12], [16, 16], [20, 20], [20, 20], [25, 25], [30, 30]]
    run_dir = train(tiny_detect_config(model=model, detect={"anchors": anchors}, train={"epochs": 1}), small, tmp_path / "run")
    trained = load_checkpoint_file(run_dir / "checkpoints/last.ckpt")["state_dict"]

    def offline(name: str, kwargs: dict) -> torch.nn.Module:
        raise AssertionError("restoring the run reached for the hub")

    monkeypatch.setattr(backbones, "hub_pretrained", offline)
    run = load_run(run_dir)
    saved = {k.removeprefix("model."): v for k, v in trained.items() if k.startswith("model.")}
    restored = run.model.state_dict()
    assert saved.keys() == restored.keys() and all(torch.equal(restored[k], v) for k, v in saved.items())
    ok("evaluate", run_dir, "--split", "test")
    with pytest.raises(AssertionError, match="reached for the hub"):
        train(tiny_detect_config(model=model, detect={"anchors": anchors}, train={"epochs": 1}), small, tmp_path / "again")


def test_darknet_weights_start_a_run_with_classes_taken_by_name(small, tmp_path) -> None:
    from vislab.models.darknet import save_darknet_weights
    from vislab.models.yolo import YOLO, YOLOConfig
    from vislab.tasks import get_task

    names = [f"thing{i}" for i in range(6)]
    names[4] = "Circle"  # case-insensitive match for the run's 'circle'
    names[1] = "box"
    source = YOLO(YOLOConfig(arch="yolov3_tiny", num_classes=6, img_size=64))
    torch.nn.init.normal_(source.pred[0].weight)
    weights = save_darknet_weights(source, tmp_path / "tiny.weights")
    (tmp_path / "my.names").write_text("\n".join(names) + "\n")
    cfg = tiny_detect_config(model={"name": "yolov3_tiny", "kwargs": {}, "weights": str(weights)}, detect={"class_map": {"square": "box"}})
    model = get_task("detect").create_model(cfg, ["square", "circle", "triangle"])
    a = model.num_anchors
    new, old = model.pred[0].weight.view(a, 8, -1), source.pred[0].weight.view(a, 11, -1)
    assert torch.equal(new[:, :5], old[:, :5])  # box and objectness rows kept
    assert torch.equal(new[:, 5 + 1], old[:, 5 + 4]) and torch.equal(new[:, 5 + 0], old[:, 5 + 1])  # Circle -> circle, box -> square
    assert model.vislab_load_report["classes_from"] == {"square": "box", "circle": "Circle", "triangle": None}
    assert torch.equal(model.backbone.layers[0].conv.weight, source.backbone.layers[0].conv.weight)

    (tmp_path / "other.names").write_text("a\n")  # two names files: which one is meant is unclear
    with pytest.raises(Exception, match="set detect.weights_classes"):
        get_task("detect").create_model(cfg, ["square"])


def test_a_run_started_from_darknet_weights_resumes_without_the_file(small, tmp_path) -> None:
    """Resume rebuilt the model through the Darknet transfer, so a run whose .weights file (and
    its .names) had moved failed on a missing *.names file though last.ckpt holds every weight."""
    from vislab.models.darknet import save_darknet_weights
    from vislab.tasks import get_task

    start = tmp_path / "start"
    start.mkdir()
    source = get_task("detect").create_model(tiny_detect_config(), ["square", "thing"], load_weights=False)
    weights = save_darknet_weights(source, start / "two.weights")
    (start / "two.names").write_text("square\nthing\n")
    run = train(tiny_detect_config(model={"weights": str(weights)}, train={"epochs": 1}), small, tmp_path / "run")
    assert json.loads((run / "run.json").read_text())["weights"]["classes_from"]["square"] == "square"
    start.rename(tmp_path / "moved")
    train(None, None, run, resume=True, epochs=2)
    assert pd.read_csv(run / "metrics.csv")["epoch"].tolist() == [0, 1]


def test_a_tiny_detector_learns_the_shapes(tmp_path) -> None:
    """mAP@0.5 >= 0.8 on held-out shapes after seconds of training."""
    ds = curate(write_shapes_dataset(tmp_path / "src", n=100, seed=1), tmp_path / "ds", "0.75,0.25,0")
    run = train(tiny_detect_config(train={"epochs": 16}), ds, tmp_path / "run")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["best_val"]["val/map50"] >= 0.8, pd.read_csv(run / "metrics.csv")[["epoch", "train/loss", "val/map50"]].to_string()


def test_the_detect_section_is_validated() -> None:
    from vislab.config import build_config
    from vislab.errors import VislabError

    with pytest.raises(VislabError, match=r"detect.img_size.*multiples of 32"):
        build_config({"task": "detect", "detect": {"img_size": 100}})
    with pytest.raises(VislabError, match=r"unknown key 'detect.mosiac'; did you mean detect.mosaic"):
        build_config({"task": "detect", "detect": {"mosiac": 0.5}})
    cfg = build_config({"task": "detect", "model": {"name": "yolov3_tiny"}})
    assert cfg.train.monitor == "val/map50" and cfg.train.monitor_mode == "max"
    from vislab.tasks import get_task

    for data, key in (({"img_size": 64}, "data.img_size"), ({"cache": True}, "data.cache")):
        with pytest.raises(VislabError, match=key):  # classification settings a detector does not use are refused, not ignored
            get_task("detect").build(build_config({"task": "detect", "model": {"name": "yolov3_tiny"}, "data": data}), Path("."))
    assert yaml.safe_load(yaml.safe_dump(cfg.model_dump(mode="json")))["detect"]["img_size"] == 416


def test_anchors_that_do_not_split_over_the_levels_name_detect_anchors(small, tmp_path) -> None:
    """5 anchors in detect.anchors over yolov3_tiny's 2 levels were reported as model.kwargs.anchors,
    a key the user never set (and a detection run refuses)."""
    from vislab.errors import SettingError

    five = [[12, 12], [16, 16], [20, 20], [25, 25], [30, 30]]
    with pytest.raises(SettingError, match=r"^detect.anchors: 5 anchors do not split over 2 levels") as err:
        train(tiny_detect_config(detect={"anchors": five}, train={"epochs": 1}), small, tmp_path / "run")
    assert err.value.keys == ("detect.anchors",) and "model.kwargs" not in str(err.value)


def test_a_detection_inside_a_dontcare_region_is_not_a_false_positive() -> None:
    """Validation's mAP: a box table's ignore region of no class (DontCare, class -1) is a crowd
    box of every class, so a confident detection inside it costs nothing."""
    from torchmetrics.detection import MeanAveragePrecision

    from vislab.tasks.detect_module import map_targets

    # image 0: one car (class 1) and a DontCare region; image 1: nothing
    targets = torch.tensor([[0, 1, 10, 10, 30, 30, 0], [0, -1, 40, 40, 60, 60, 1]], dtype=torch.float32)
    preds = [
        {"boxes": torch.tensor([[41.0, 41, 59, 59], [10, 10, 30, 30]]), "scores": torch.tensor([0.95, 0.9]), "labels": torch.tensor([1, 1])},
        {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)},
    ]

    def map50(t: torch.Tensor) -> float:
        metric = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend="faster_coco_eval")
        metric.update(preds, map_targets(t, 2, num_classes=2))
        return float(metric.compute()["map_50"])

    mapped = map_targets(targets, 2, num_classes=2)
    assert mapped[0]["labels"].tolist() == [1, 0, 1] and mapped[0]["iscrowd"].tolist() == [0, 1, 1] and len(mapped[1]["boxes"]) == 0
    assert map50(targets) == pytest.approx(1.0)
    assert map50(targets[:1]) < 0.9  # without the region the same detection is a false positive ranked first


def test_validation_map_scores_what_evaluate_scores_padding_tiny_truths_and_max_det(tmp_path) -> None:
    """The same detections, through validation (Lightning's loop) and through evaluate's
    predict_step and coco_map, give the same mAP: a car box spilling into the letterbox
    padding is clipped to the image in both (scored on the canvas its IoU was 0.55, not 1),
    a 1.3-px truth on the canvas stays a truth in validation, and validation counts
    detect.max_det detections per image."""
    import lightning as L
    from PIL import Image

    from vislab.data.boxes import image_targets
    from vislab.data.datamodule import SkippingLoader
    from vislab.data.det_datamodule import DetectionDataset
    from vislab.metrics.detection import coco_map
    from vislab.tasks import get_task
    from vislab.tasks.detect import canvas, detect_spec
    from vislab.tasks.detect_module import DetectTask

    cfg = tiny_detect_config()
    classes = ["light", "car"]
    path = tmp_path / "wide.png"
    Image.new("RGB", (200, 100), (90, 120, 150)).save(path)  # 64 x 32 on the 64-px canvas, 16 px of padding above
    truths = pd.DataFrame({"path": [str(path)] * 3, "class": ["light", "light", "car"], "x1": [50.0, 100.0, 10.0], "y1": [40.0, 20.0, 0.0],
                           "x2": [54.0, 160.0, 60.0], "y2": [44.0, 80.0, 30.0], "ignore": [False] * 3, "truncated": [np.nan] * 3, "occluded": [np.nan] * 3})
    rows = np.column_stack([[0, 0, 1], truths[["x1", "y1", "x2", "y2"]].to_numpy(), np.zeros(3)])
    val = DetectionDataset([str(path)], [rows], canvas(cfg))
    boxes = val.load(0)[1]
    assert len(boxes) == 3  # the 1.28 x 1.28-px light is not dropped as augmentation drops specks

    # the big light found first, then 120 false lights, then the small light: rank 122; the
    # car's box reaches 8 px up into the padding (its truth starts at the image's top, y 16)
    car = boxes[2, 1:5].clone()
    assert car[1] == 16
    car[1] = 8.0
    false = torch.tensor([[30.0, 24, 36, 30]]).repeat(120, 1)
    det_boxes = torch.cat([boxes[1:2, 1:5], false, boxes[0:1, 1:5], car[None]])
    scores = torch.cat([torch.tensor([0.9]), torch.linspace(0.8, 0.2, 120), torch.tensor([0.1, 0.7])])
    labels = torch.tensor([0] * 122 + [1], dtype=torch.float32)
    dets = torch.cat([det_boxes, scores[:, None], labels[:, None]], 1)

    task = DetectTask(cfg.model_dump(mode="json"), classes, detect_spec(cfg), model=get_task("detect").create_model(cfg, classes))
    task.detect = lambda x, conf, iou: (task.model.forward_head(task.model.forward_features(x)), [dets.clone() for _ in x])  # type: ignore[method-assign]
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.validate(task, dataloaders=SkippingLoader(val, on_unreadable=print, batch_size=1), verbose=False)
    validation = trainer.callback_metrics

    predict = DetectionDataset([str(path)], [np.zeros((0, 6))], canvas(cfg), predict=True)
    found = task.predict_step(predict.collate([predict.load(0)])[:2], 0)
    evaluate = coco_map(found, image_targets(truths, [str(path)]), classes, max_dets=cfg.section().max_det)
    light = (51 + 50 * 2 / 122) / 101  # recall 0.5 at precision 1, then 1.0 at 2/122
    assert evaluate["per_class"]["car"] == pytest.approx({"ap50": 1.0, "ap50_95": 1.0})
    assert evaluate["map50_95"] == pytest.approx((light + 1) / 2, abs=1e-6)
    assert float(validation["val/map50"]) == pytest.approx(evaluate["map50"], abs=1e-6)
    assert float(validation["val/map"]) == pytest.approx(evaluate["map50_95"], abs=1e-6)


def test_an_image_resized_after_curate_is_unreadable_in_training_and_evaluate(tmp_path) -> None:
    """An image resized in place after curation was trained and scored against its stale
    boxes without a word (coco128: mAP 68.7% -> 56.2%). Now its size is checked against the
    manifest's: counted and skipped in training as a broken file is, refused by evaluate;
    a photo shown turned by its EXIF orientation (manifest size = displayed size) still reads."""
    from PIL import Image

    src = write_shapes_dataset(tmp_path / "src", n=12)
    photo = Image.open(src / "images/s0000.png").resize((64, 40))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 64x40, shown 40x64
    photo.save(src / "images/turned.jpg", quality=95, exif=exif)
    (src / "labels/turned.txt").write_text(yolo_line(0, (0.2, 0.2, 0.6, 0.6)))
    ds = curate(src, tmp_path / "ds", "0.5,0.25,0.25")
    rows = pd.read_csv(ds / "manifest.csv")
    assert rows.loc[rows["path"].str.endswith("turned.jpg"), ["width", "height"]].values.tolist() == [[40, 64]]
    resized = {}
    for split in ("train", "test"):
        path = rows.loc[(rows["split"] == split) & rows["path"].str.endswith(".png"), "path"].iloc[0]
        Image.open(path).resize((32, 32)).save(path)
        resized[split] = path

    run = train(tiny_detect_config(train={"epochs": 1, "health": {"max_bad_images": 0.5}}), ds, tmp_path / "run")
    health = [m for m in json.loads((run / "health.json").read_text()) if m["code"] == "unreadable_images"]
    assert [(m["split"], m["count"], m["paths"]) for m in health] == [("train", 1, [resized["train"]])]
    assert "changed since vislab curate (now 32x32, the manifest says 64x64); run vislab curate again" in health[0]["message"]

    res = runner.invoke(app, ["evaluate", str(run), "--split", "test"])
    assert res.exit_code != 0
    assert res.stderr.strip() == f"error: {resized['test']}: changed since vislab curate (now 32x32, the manifest says 64x64); run vislab curate again"


def test_predict_out_labels_curate_back_to_the_same_boxes(small, reference, tmp_path) -> None:
    """predict --out writes YOLO lines 'class cx cy w h score' (as Ultralytics' save_conf);
    vislab's own curate refused every one ('malformed: 6 fields'), so predictions could not
    become a dataset (pseudo-labels). The score is now read past."""
    images = sorted((small.parent / "src/images").glob("*.png"))[:3]
    out = tmp_path / "pred"
    results = json.loads(ok("predict", reference, *images, "--conf", "0.05", "--format", "json", "--out", out).stdout)
    lines = [line.split() for f in sorted((out / "labels").glob("*.txt")) for line in f.read_text().splitlines()]
    assert lines and {len(fields) for fields in lines} == {6}
    ok("curate", out, "--out", tmp_path / "ds", "--split", "1,0,0", "--workers", "1")
    det = json.loads((tmp_path / "ds/curation.json").read_text())["detection"]
    assert det["problem_counts"] == {}
    back = pd.read_csv(tmp_path / "ds/boxes.csv")
    want = [(b["class"], b["x1"], b["y1"], b["x2"], b["y2"]) for r in results for b in r["boxes"]]
    got = list(back[["class", "x1", "y1", "x2", "y2"]].itertuples(index=False, name=None))
    assert [g[0] for g in got] == [w[0] for w in want]
    np.testing.assert_allclose([g[1:] for g in got], [w[1:] for w in want], atol=0.01)


def test_a_dataset_curated_over_the_default_pixel_limit_trains_evaluates_and_predicts(tmp_path, low_pixel_limit, report_tiles) -> None:
    """curate --max-pixels above the default accepted the photos (60-megapixel frames), then the
    detection loader decoded them under the default and refused every one as a decompression
    bomb: training, evaluate and predict failed on the dataset's own images. Now training and
    evaluate decode under the dataset's curate --max-pixels, predict (and its --out pictures)
    under the run's (run.json's max_pixels), and the report's galleries show them."""
    src = write_shapes_dataset(tmp_path / "src", n=8)  # 64x64 = 4,096 pixels, over the lowered default
    ok("curate", src, "--out", tmp_path / "ds", "--split", "0.5,0.25,0.25", "--workers", "1", "--max-pixels", "5000")
    run = train(tiny_detect_config(train={"epochs": 1}), tmp_path / "ds", tmp_path / "run")
    assert json.loads((run / "run.json").read_text())["max_pixels"] == 5000
    assert "decompression bomb" not in (run / "health.json").read_text()
    ok("evaluate", run, "--split", "test")
    assert json.loads((run / "eval" / "test" / "metrics.json").read_text())["num_samples"] == 1
    ok("report", run)
    assert report_tiles and all(tile is not None for tile in report_tiles)
    ok("predict", run, src / "images" / "s0000.png", "--out", tmp_path / "pred", "--conf", "0")
    assert (tmp_path / "pred" / "images" / "00000_s0000.jpg").is_file()


def test_the_report_galleries_draw_the_boxes_evaluate_counts_at_conf(small, tmp_path, monkeypatch) -> None:
    """predictions.csv wrote scores to 5 decimals and the galleries filtered those at conf: a
    box scored 0.499996 read 0.50000, drawn at conf 0.5 while evaluate's figures (images.csv)
    did not count it. Scores are now written as the shortest text that reads back as the same
    float32 and the galleries keep them by the rule evaluate counts by (metrics.detection.kept)."""
    import vislab.report.detect as report_detect
    import vislab.tasks.detect_eval as detect_eval
    from vislab.data.boxes import read_boxes

    run = train(tiny_detect_config(train={"epochs": 1}, detect={"conf": 0.5}), small, tmp_path / "run")
    truth = read_boxes(small)
    under = np.float32(0.499996)

    def detector(plugin, run, paths, dataset_dir, **_):  # every truth found, the first image's boxes just under conf
        found = {}
        for i, path in enumerate(paths):
            mine = truth[(truth["path"] == path) & ~truth["ignore"]]
            found[i] = {"pos": i, "boxes": torch.tensor(mine[["x1", "y1", "x2", "y2"]].to_numpy(), dtype=torch.float32),
                        "scores": torch.full((len(mine),), under if i == 0 else 0.9, dtype=torch.float32),
                        "labels": torch.tensor([run.classes.index(c) for c in mine["class"]], dtype=torch.long)}
        return found

    monkeypatch.setattr(detect_eval, "run_detector", detector)
    ok("evaluate", run, "--split", "test")
    images = pd.read_csv(run / "eval" / "test" / "images.csv")
    scores = pd.read_csv(run / "eval" / "test" / "predictions.csv", dtype={"score": str})["score"]
    assert "0.499996" in set(scores)
    drawn: dict[str, int] = {}
    real_draw = report_detect._draw

    def spy(path, truth_rows, preds, *args):
        drawn[path] = len(preds)
        return real_draw(path, truth_rows, preds, *args)

    monkeypatch.setattr(report_detect, "_draw", spy)
    ok("report", run)
    first = images.loc[0, "path"]
    assert images.loc[0, "detections"] == 0 and drawn[first] == 0  # under conf: neither counted nor drawn
    assert all(drawn[p] == n for p, n in zip(images["path"], images["detections"]) if p in drawn)
