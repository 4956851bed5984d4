"""The crops task through the generic commands: train (with resume and extension), evaluate
(fixed evaluation set, --crops-per-image, --aberration, the baseline beside every figure),
predict (picture and JSON, unreadable files), report and compare, on tiny synthetic lens
photos (vislab.testing.lens)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from typer.testing import CliRunner

from vislab.cli import app
from vislab.errors import VislabError
from vislab.testing.lens import make_lens_dataset, tiny_crops_run
from vislab.testing.rundirs import make_run_dir


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Two cores shared with other jobs: more than one intra-op thread only spins."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def invoke(*args: str) -> object:
    return CliRunner().invoke(app, [str(a) for a in args])


def train_cli(cfg: object, data: Path, out: Path, *extra: str) -> str:
    config = out.parent / f"{out.name}.yaml"
    config.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    res = invoke("train", config, "--data", data, "--out", out, *extra)
    assert res.exit_code == 0, res.output
    return res.output


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_lens_dataset(tmp_path_factory.mktemp("lens") / "data", splits=(16, 6, 6))


@pytest.fixture(scope="module")
def run(dataset, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("crops") / "run"
    train_cli(tiny_crops_run(), dataset, out)
    return out


def test_train_writes_the_crops_columns_monitor_and_section(run) -> None:
    metrics = pd.read_csv(run / "metrics.csv")
    assert list(metrics.columns[:10]) == [
        "epoch", "train/loss", "train/flag_acc", "train/patch_acc", "val/loss", "val/flag_acc", "val/auc", "val/patch_acc", "val/iou", "val/cf_err",
    ]
    assert len(metrics) == 2 and metrics[["val/loss", "val/auc", "val/iou", "val/cf_err"]].notna().all().all()
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["task"] == "crops" and saved["crops"]["patch_size"] == 24 and saved["crops"]["loss"] == {"patch": 0.15, "rect": 3.0, "flag": 1.0, "size": 0.0}
    assert saved["train"]["monitor"] == "val/loss" and saved["train"]["monitor_mode"] == "min"
    assert json.loads((run / "run.json").read_text())["classes"] == [f"r{r}c{c}" for r in range(4) for c in range(4)]
    lr = metrics["lr"].tolist()
    assert lr[1] == pytest.approx(lr[0] * 0.942, rel=1e-3)  # the paper's per-epoch decay, a recipe value


def test_the_recorded_input_size_is_the_thumbnail_the_run_used(dataset, tmp_path) -> None:
    """run.json, summary.json, the report's header and compare show `crops.thumb_size`, not
    the registry's default size of the model (37x56 for crop_detector_tiny)."""
    from vislab.report.compare import run_row

    out = tmp_path / "run"
    train_cli(tiny_crops_run(crops={"thumb_size": [64, 40]}, train={"epochs": 1}), dataset, out)
    assert json.loads((out / "run.json").read_text())["data_spec"]["input_size"] == [3, 40, 64]
    assert json.loads((out / "summary.json").read_text())["input_size"] == [3, 40, 64]
    assert run_row(out)["input"] == "40x64"
    res = invoke("report", out)
    assert res.exit_code == 0, res.output
    assert "40×64 input" in (out / "report.html").read_text()


def test_data_img_size_is_refused_naming_thumb_size(dataset, tmp_path) -> None:
    """A crops run's thumbnail is `crops.thumb_size`: `data.img_size` would be recorded
    but never used, so it is refused before training."""
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(tiny_crops_run().model_dump(mode="json")))
    res = invoke("train", config, "--data", dataset, "--out", tmp_path / "run", "--set", "data.img_size=64")
    assert res.exit_code != 0 and "crops.thumb_size" in res.output, res.output
    assert not (tmp_path / "run" / "run.json").exists()


def test_paper_defaults_are_config_values() -> None:
    from vislab.config import build_config

    c = build_config({"task": "crops"}).section()
    assert (c.crop_prob, c.size_factor, c.resize_width, c.thumb_size, c.grid, c.patch_size) == (0.5, (0.5, 0.9), (1024, 2048), (224, 149), (4, 4), 96)
    assert (c.loss.patch, c.loss.rect, c.loss.flag) == (0.15, 3.0, 1.0) and c.interpolations == ["nearest", "linear", "area", "cubic", "lanczos"]
    with pytest.raises(VislabError, match=r"'crops.size_factor'"):
        build_config({"task": "crops", "crops": {"size_factor": [0.9, 0.5]}}, "x.yaml")


def test_resume_and_extension_continue_the_run_exactly(run, dataset, tmp_path) -> None:
    """One epoch, then --resume --epochs 2: the second epoch is the uninterrupted run's
    (samples seeded per (epoch, image), RNG and optimizer restored)."""
    out = tmp_path / "resumed"
    train_cli(tiny_crops_run(train={"epochs": 1}), dataset, out)
    res = invoke("train", "--resume", "--out", out, "--epochs", "2")
    assert res.exit_code == 0, res.output
    whole, resumed = pd.read_csv(run / "metrics.csv"), pd.read_csv(out / "metrics.csv")
    assert len(resumed) == 2
    cols = ["train/loss", "val/loss", "val/patch_acc", "val/iou", "lr"]
    np.testing.assert_allclose(resumed[cols].to_numpy(), whole[cols].to_numpy(), rtol=1e-4)


def test_evaluate_reports_every_figure_beside_the_baseline(run, dataset) -> None:
    res = invoke("evaluate", run, "--crops-per-image", "2")
    assert res.exit_code == 0, res.output
    assert "crop acc " in res.output and "(baseline " in res.output and "crop-factor error" in res.output
    m = json.loads((run / "eval" / "test" / "metrics.json").read_text())
    assert m["num_images"] == 6 and m["num_samples"] == 18 and m["crops_per_image"] == 2 and m["aberration"] is None
    for key in ("flag_acc", "flag_auc", "patch_acc", "iou", "crop_factor_error"):
        assert m["model"][key] is not None and m["baseline"][key] is not None
    assert len(m["model"]["patch_acc_per_cell"]) == 16 and m["chance"]["patch_acc"] == 1 / 16
    assert m["crop_acc"] == m["model"]["flag_acc"] and m["crop_factor_error"] == m["model"]["crop_factor_error"]
    # the baseline predicts the mean training rectangle: the sampler's draws for the 16 training photos
    assert m["baseline"]["flag_auc"] == 0.5 and "16 photos" in m["baseline_from"]
    # the flag to beat is the set's majority: 12 of 18 samples cropped, always "cropped" 66.7%
    assert m["baseline"]["flag_acc"] == pytest.approx(12 / 18) and m["baseline_predicts"]["flag"] == "cropped"
    assert "(baseline 66.7%: always cropped)" in res.output
    preds = pd.read_csv(run / "eval" / "test" / "predictions.csv")
    assert len(preds) == 18 and preds["cropped"].sum() == 12
    assert np.load(run / "eval" / "test" / "probs.npy").shape == (18, 16, 16)
    crops = preds[preds["cropped"]]
    assert crops["cf_err"].mean() == pytest.approx(m["crop_factor_error"], rel=1e-6)
    assert ((crops["true_x2"] - crops["true_x1"]) < 0.91).all() and (preds.loc[~preds["cropped"], "true_x1"] == 0).all()


def test_the_evaluation_set_is_the_same_every_time_and_stress_changes_only_pixels(run) -> None:
    out = run / "eval" / "test"
    assert invoke("evaluate", run).exit_code == 0
    first = pd.read_csv(out / "predictions.csv")
    assert invoke("evaluate", run).exit_code == 0
    again = pd.read_csv(out / "predictions.csv")
    pd.testing.assert_frame_equal(first, again)  # same crops, same model: same everything
    res = invoke("evaluate", run, "--aberration", "vignette=0.5,red=2")
    assert res.exit_code == 0, res.output
    stressed_dir = run / "eval" / "test-aberration-vignette0.5-red2"
    stressed = pd.read_csv(stressed_dir / "predictions.csv")
    truth = [c for c in first.columns if c.startswith("true_")] + ["path", "cropped", "cells_true"]
    pd.testing.assert_frame_equal(first[truth], stressed[truth])
    assert not np.allclose(first["crop_prob"], stressed["crop_prob"])
    m = json.loads((stressed_dir / "metrics.json").read_text())
    assert m["aberration"] == {"vignette": 0.5, "red": 2.0, "blue": 0.0, "distortion": 0.0}


def test_a_stress_test_goes_beside_the_clean_evaluation_which_report_and_compare_keep(run) -> None:
    """`--aberration` used to write eval/test/ too: the clean evaluation was lost and the report
    showed the stressed numbers as the test split's. Now each setting has its own folder."""
    assert invoke("evaluate", run, "--crops-per-image", "1").exit_code == 0
    clean = json.loads((run / "eval" / "test" / "metrics.json").read_text())
    res = invoke("evaluate", run, "--crops-per-image", "1", "--aberration", "vignette=0.6,distortion=-0.1")
    assert res.exit_code == 0, res.output
    stressed_dir = run / "eval" / "test-aberration-vignette0.6-distortion-0.1"
    assert f"eval: {stressed_dir}" in res.output.replace("\n", "")
    assert json.loads((run / "eval" / "test" / "metrics.json").read_text()) == clean  # untouched
    stressed = json.loads((stressed_dir / "metrics.json").read_text())
    assert clean["aberration"] is None and clean["variant"] is None
    assert stressed["variant"] == "aberration-vignette0.6-distortion-0.1" and stressed["aberration"]["vignette"] == 0.6
    assert stressed["model"] != clean["model"]
    assert invoke("report", run).exit_code == 0
    assert "Stress test:" not in (run / "report.html").read_text()  # the page details the clean split
    res = invoke("report", run, "--split", stressed_dir.name)
    assert res.exit_code == 0, res.output
    assert "Stress test:" in (run / "report.html").read_text()
    for split, m in (("test", clean), (stressed_dir.name, stressed)):
        res = invoke("compare", run, "--format", "csv", "--split", split)
        assert res.exit_code == 0, res.output
        assert pd.read_csv(io.StringIO(res.output)).loc[0, "patch_acc"] == pytest.approx(m["patch_acc"]), split
    res = invoke("evaluate", run, "--crops-per-image", "2", "--name", "test-two-crops")
    assert res.exit_code == 0, res.output
    assert json.loads((run / "eval" / "test-two-crops" / "metrics.json").read_text())["crops_per_image"] == 2
    assert json.loads((run / "eval" / "test" / "metrics.json").read_text()) == clean
    res = invoke("evaluate", run, "--name", "../elsewhere")
    assert res.exit_code == 2 and "--name '../elsewhere': contains the path separator '/'" in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_rectangle_option_reaches_the_evaluation(run, monkeypatch) -> None:
    """`--rectangle` picks what evaluate scores. The tiny run calls no photo cropped (its flags
    sit near 0.5), so the flag is forced to "cropped" here: `cells` must then report, for every
    sample, the crop that sample's decode-grid patches decode to (recomputed here from the same
    fixed samples); `head` the head's rectangle; `mean` their mean.
    (models/crops_decode.py's own tests check the gate by the flag.)"""
    import vislab.tasks.crops_module as crops_module
    from vislab.data.crops import eval_samples, load_sample
    from vislab.data.manifest import read_manifest, usable
    from vislab.models.crops_decode import decode_cells
    from vislab.runs import load_run

    real = crops_module.final_rect
    monkeypatch.setattr(crops_module, "final_rect", lambda rect, flag, cells, centres, cfg: real(rect, torch.full_like(flag, 5.0), cells, centres, cfg))
    out = run / "eval" / "test"
    rects = {}
    for mode in ("head", "cells", "mean"):
        res = invoke("evaluate", run, "--crops-per-image", "2", "--rectangle", mode)
        assert res.exit_code == 0, res.output
        assert json.loads((out / "metrics.json").read_text())["rectangle"] == mode
        rects[mode] = pd.read_csv(out / "predictions.csv")[["pred_x1", "pred_x2", "pred_y1", "pred_y2"]].to_numpy()
    loaded = load_run(run)
    cfg = loaded.cfg.section()
    rows = usable(read_manifest(loaded.info["dataset_dir"]))
    samples = [load_sample(i, cfg) for i in eval_samples(rows[rows["split"] == "test"]["path"].tolist(), 2, cfg.eval_seed)]
    assert all(s.decode_patches.shape[0] == 64 for s in samples)
    with torch.no_grad():
        logits = loaded.model.locate_patches(torch.stack([s.decode_patches for s in samples]))
    decoded = decode_cells(logits, torch.stack([s.decode_centres for s in samples]), cfg.grid, cfg.size_factor, cfg.decode_evidence).numpy()
    np.testing.assert_allclose(rects["cells"], decoded, atol=1e-4)
    np.testing.assert_allclose(rects["mean"], (decoded + rects["head"].clip(0, 1)) / 2, atol=1e-4)
    assert not np.allclose(rects["head"], rects["cells"], atol=1e-3)
    res = invoke("evaluate", run, "--rectangle", "mlp")
    assert res.exit_code == 2 and "--rectangle mlp: not a choice; use one of head, cells, mean" in res.output


def test_task_options_are_checked_generically(run, tmp_path) -> None:
    res = invoke("evaluate", run, "--aberration", "vignete=0.5")
    assert res.exit_code == 2 and "--aberration 'vignete=0.5': vignete" in res.output and len(res.output.strip().splitlines()) == 1
    res = invoke("evaluate", run, "--aberration", "vignette")
    assert res.exit_code == 2 and "is not KEY=NUMBER" in res.output
    classify = make_run_dir(tmp_path, checkpoint=True)
    res = invoke("evaluate", classify, "--crops-per-image", "3")
    assert res.exit_code == 2 and "--crops-per-image: not an option of task classify" in res.output
    assert not (classify / "eval" / "test" / "metrics.json").exists() or "crops_per_image" not in (classify / "eval" / "test" / "metrics.json").read_text()


def diverged_copy(run: Path, dest: Path) -> Path:
    """A copy of `run` whose model head's weights are NaN (a diverged model), its checksum
    sidecar rewritten so the checkpoint loads."""
    import shutil

    from vislab.runs import file_sha256

    shutil.copytree(run, dest)
    ckpt = dest / "checkpoints" / "best.ckpt"
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    heads = [k for k in state["state_dict"] if ".head." in k and k.endswith("weight")]
    assert heads
    for k in heads:
        state["state_dict"][k] = torch.full_like(state["state_dict"][k], float("nan"))
    torch.save(state, ckpt)
    side = dest / "checkpoints" / "best.ckpt.sha256"
    body = json.loads(side.read_text())
    body.update(sha256=file_sha256(ckpt), bytes=ckpt.stat().st_size)
    side.write_text(json.dumps(body) + "\n")
    return dest


def test_a_diverged_model_is_counted_and_refused_per_photo_not_called_uncropped(run, dataset, tmp_path) -> None:
    """NaN outputs used to crash evaluate (sklearn: Input contains NaN) and made predict print
    `"crop_prob": NaN` (not JSON) with `"cropped": false`: now evaluate counts them in
    metrics.json and scores the rest; predict gives an error entry per photo."""
    from vislab.tasks.crops import prediction_fields

    bad = diverged_copy(run, tmp_path / "diverged")
    res = invoke("evaluate", bad, "--crops-per-image", "1")
    assert res.exit_code == 0, res.output
    m = json.loads((bad / "eval" / "test" / "metrics.json").read_text())
    assert m["nonfinite_predictions"] == m["num_samples"] == 12
    assert m["model"]["images"] == 0 and m["model"]["flag_auc"] is None and m["baseline"]["images"] == 12
    assert "12 of 12 samples gave non-finite" in res.output
    res = invoke("report", bad, "--no-cams")  # the page says so too, under its title
    assert res.exit_code == 0, res.output
    assert "12 of 12 samples gave non-finite" in (bad / "report.html").read_text()
    photo = sorted((dataset / "images").glob("*.png"))[0]
    res = invoke("predict", bad, photo, "--format", "json")  # every photo failed: the command fails naming why
    assert res.exit_code == 2 and "photo_000.png: the model gave non-finite" in res.output and "NaN," not in res.output, res.output
    cells = [[float("nan")] * 16 for _ in range(16)]
    assert set(prediction_fields([0.1, 0.9, 0.1, 0.9], float("nan"), cells, 0)) == {"error"}


def test_a_very_negative_flag_logit_is_a_probability_not_an_overflow() -> None:
    from vislab.tasks.crops import prediction_fields

    cells = [[1 / 16] * 16 for _ in range(16)]
    far = prediction_fields([0.1, 0.9, 0.1, 0.9], -1000.0, cells, 0)
    assert far["crop_prob"] == 0.0 and not far["cropped"]
    assert prediction_fields([0.1, 0.9, 0.1, 0.9], 1000.0, cells, 0)["crop_prob"] == 1.0


def test_crops_per_image_and_eval_seed_have_upper_bounds(run) -> None:
    """A huge --crops-per-image used to hang evaluate while memory grew (the set is listed up
    front); eval_seed above 2**32-1 repeated a smaller seed's set."""
    from vislab.config import build_config
    from vislab.config_crops import MAX_EVAL_CROPS_PER_IMAGE

    res = invoke("evaluate", run, "--crops-per-image", "99999999999999999999")
    assert res.exit_code == 2 and f"must be 0 to {MAX_EVAL_CROPS_PER_IMAGE}" in res.output and len(res.output.strip().splitlines()) == 1
    with pytest.raises(VislabError, match=r"'crops.eval_crops_per_image'"):
        build_config({"task": "crops", "crops": {"eval_crops_per_image": MAX_EVAL_CROPS_PER_IMAGE + 1}}, "x.yaml")
    with pytest.raises(VislabError, match=r"'crops.eval_seed'"):
        build_config({"task": "crops", "crops": {"eval_seed": 2**32}}, "x.yaml")
    assert build_config({"task": "crops", "crops": {"eval_seed": 2**32 - 1}}).section().eval_seed == 2**32 - 1


@pytest.mark.parametrize("text", ["vignette=0", "red=-0", ",", "vignette=0,blue=0.0"])
def test_an_all_zero_aberration_is_refused_as_the_clean_evaluation(run, text) -> None:
    before = (run / "eval" / "test" / "metrics.json").read_bytes() if (run / "eval" / "test" / "metrics.json").exists() else None
    res = invoke("evaluate", run, "--aberration", text)
    assert res.exit_code == 2 and "every value is zero, which is the clean evaluation" in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1
    after = (run / "eval" / "test" / "metrics.json").read_bytes() if (run / "eval" / "test" / "metrics.json").exists() else None
    assert after == before


def test_duplicate_aberration_keys_are_refused_and_folder_names_are_exact(run) -> None:
    from vislab.tasks.crops import aberration_variant, parse_aberration

    res = invoke("evaluate", run, "--aberration", "vignette=0.2,vignette=0.5")
    assert res.exit_code == 2 and "vignette is given twice" in res.output and len(res.output.strip().splitlines()) == 1
    assert aberration_variant(parse_aberration("vignette=0.4")) == "aberration-vignette0.4"
    assert aberration_variant(parse_aberration("vignette=0.5,red=2")) == "aberration-vignette0.5-red2"  # the names evaluations already have
    assert aberration_variant(parse_aberration("vignette=0.4000001")) == "aberration-vignette0.4000001"
    assert aberration_variant(parse_aberration("red=1e-7")) != aberration_variant(parse_aberration("red=1.0000001e-7"))


def test_predict_draws_the_frame_and_writes_json_beside_it(run, dataset, tmp_path) -> None:
    from PIL import Image

    photo = sorted((dataset / "images").glob("*.png"))[0]
    portrait = tmp_path / "portrait.png"
    Image.open(photo).transpose(Image.Transpose.ROTATE_90).save(portrait)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not a jpeg")
    res = invoke("predict", run, photo, portrait, broken, "--format", "json")
    assert res.exit_code == 0, res.output
    results, _ = json.JSONDecoder().raw_decode(res.output)  # stderr follows: the count of unreadable files
    assert [r["path"] for r in results] == [str(photo), str(portrait), str(broken)]
    assert "error" in results[2] and "picture" not in results[2]
    for r in results[:2]:
        assert 0 <= r["crop_prob"] <= 1 and len(r["rect"]) == 4 and np.asarray(r["cells"]).shape == (16, 16)
        png, js = Path(r["picture"]), Path(r["json"])
        assert png.parent == run / "predict" and png.is_file() and Image.open(png).size[0] > 500
        assert js == png.with_suffix(".json") and json.loads(js.read_text())["crop_prob"] == r["crop_prob"]
    assert results[1]["rotation"] in (90, 270)
    for r in results[:2]:  # the tiny run calls every photo uncropped: it fills its frame, the estimate kept apart
        assert not r["cropped"] and r["rect"] == [0.0, 1.0, 0.0, 1.0] and r["crop_factor"] == 1.0
        assert len(r["rect_if_cropped"]) == 4 and 0 < r["crop_factor_if_cropped"] <= 1
    res = invoke("predict", run, photo, broken)  # the table every task prints, not tab-separated text
    assert res.exit_code == 0, res.output
    assert "\t" not in res.output and "p(crop)" in res.output and "│" in res.output
    assert "not cropped" in res.output and "if cropped" in res.output and "0.00-1.00 / 0.00-1.00" in res.output
    res = invoke("predict", run, broken)
    assert res.exit_code == 2 and "none of the 1 image(s) could be read" in res.output


def test_portrait_rectangles_are_turned_back() -> None:
    from vislab.tasks.crops import prediction_fields

    cells = [[0.0] * 16] * 16
    # the landscape view of a portrait photo turned counter-clockwise: its left strip is the photo's bottom strip
    assert prediction_fields([0.0, 0.5, 0.0, 1.0], 3.0, cells, 90)["rect"] == [0.0, 1.0, 0.0, 0.5]
    assert prediction_fields([0.0, 0.5, 0.0, 1.0], 3.0, cells, 270)["rect"] == [0.0, 1.0, 0.5, 1.0]
    assert prediction_fields([0.1, 0.6, 0.2, 0.7], 3.0, cells, 0)["crop_factor"] == pytest.approx(0.5)


def test_a_photo_called_uncropped_fills_its_frame_and_keeps_the_estimate_apart() -> None:
    from vislab.tasks.crops import prediction_fields

    cells = [[0.0] * 16] * 16
    called_uncropped = prediction_fields([0.1, 0.6, 0.2, 0.7], -0.1, cells, 90)
    assert not called_uncropped["cropped"] and called_uncropped["rect"] == [0.0, 1.0, 0.0, 1.0] and called_uncropped["crop_factor"] == 1.0
    assert called_uncropped["rect_if_cropped"] == pytest.approx([0.3, 0.8, 0.1, 0.6]) and called_uncropped["crop_factor_if_cropped"] == pytest.approx(0.5)
    called_cropped = prediction_fields([0.1, 0.6, 0.2, 0.7], 0.1, cells, 0)
    assert called_cropped["rect"] == called_cropped["rect_if_cropped"] == pytest.approx([0.1, 0.6, 0.2, 0.7])


def test_report_and_compare_show_the_crops_figures(run, tmp_path) -> None:
    assert invoke("evaluate", run, "--crops-per-image", "1").exit_code == 0
    res = invoke("report", run)
    assert res.exit_code == 0, res.output
    page = (run / "report.html").read_text()
    for sid in ("health", "metrics", "curves", "cf-error", "frames", "patches", "cases", "data", "config"):
        assert f'<section id="{sid}"' in page, sid
    assert "baseline" in page and "Crop-factor error" in page and "Patch accuracy per cell" in page
    assert "(always not cropped)" in page and "evaluation set&#x27;s majority" in page  # a tie: 6 whole, 6 cropped
    assert 'id="confusion"' not in page
    for name in ("crops_cf_error_test.png", "crops_frames_test.png", "crops_patches_test.png", "crops_best_test.png", "crops_worst_test.png"):
        assert (run / "plots" / name).is_file(), name
    classify = make_run_dir(tmp_path, name="classify-run", dataset=False)
    res = invoke("compare", run, classify, "--format", "csv")
    assert res.exit_code == 0, res.output
    table = pd.read_csv(io.StringIO(res.output))
    m = json.loads((run / "eval" / "test" / "metrics.json").read_text())
    row = table[table["run"] == "run"].iloc[0]
    assert row["crop_acc"] == pytest.approx(m["crop_acc"]) and row["rect_iou"] == pytest.approx(m["iou"])
    assert row["crop_factor_err"] == pytest.approx(m["crop_factor_error"]) and row["patch_acc"] == pytest.approx(m["patch_acc"])
    assert "crop_auc" in table.columns and "test_acc" in table.columns


def test_onnx_export_matches_pytorch_on_thumbnails_and_patches(run, dataset, tmp_path) -> None:
    import onnx
    from PIL import Image

    from vislab.data.crops_datamodule import whole_photo
    from vislab.export import onnx_session
    from vislab.runs import load_run

    out = tmp_path / "crops.onnx"
    res = invoke("export", run, "--format", "onnx", "--out", out)
    assert res.exit_code == 0, res.output
    assert "thumb ['batch', 3, " in res.output and "patches ['batch', 16, 3, 24, 24]" in res.output
    graph = onnx.load(str(out)).graph
    assert [i.name for i in graph.input] == ["thumb", "patches"] and [o.name for o in graph.output] == ["rect", "flag", "cells"]
    info = json.loads(out.with_suffix(".json").read_text())
    assert info["outputs"] == ["rect", "flag", "cells"] and info["max_abs_diff"] < 1e-4
    # real samples, as predict and serve make them (uint8 pixels), at a batch size other than the traced one
    loaded = load_run(run)
    cfg = loaded.cfg.section()
    photos = sorted((dataset / "images").glob("*.png"))[:5]
    samples = [whole_photo(Image.open(p).convert("RGB"), cfg, cfg.eval_seed)[0] for p in photos]
    thumb, patches = torch.stack([s.thumb for s in samples]), torch.stack([s.patches for s in samples])
    assert thumb.dtype == torch.uint8
    with torch.inference_mode():
        want = loaded.model.float().eval()(thumb, patches)
    got = onnx_session(out).run(["rect", "flag", "cells"], {"thumb": thumb.numpy(), "patches": patches.numpy()})
    for g, w in zip(got, (want.rect, want.flag, want.cells)):
        np.testing.assert_allclose(g, w.numpy(), atol=1e-4, rtol=1e-3)
    assert not (run / "export").exists()


def test_too_small_photos_are_refused_naming_the_file(tmp_path) -> None:
    from vislab.train import train

    data = make_lens_dataset(tmp_path / "small", splits=(4, 2, 2), size=(240, 160))
    with pytest.raises(VislabError, match=r"photo_000\.png: 240x160 is too small for crop samples \(and 5 more\).*--min-size 192x192"):
        train(tiny_crops_run(), data, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_monitor_epoch_keeps_the_last_epoch(dataset, tmp_path) -> None:
    """crops-small's choice: best.ckpt is the last epoch, whatever the validation loss did."""
    from vislab.train import train

    cfg = tiny_crops_run()
    cfg.train.epochs, cfg.train.monitor, cfg.train.monitor_mode = 3, "epoch", "max"
    train(cfg, dataset, tmp_path / "run")
    best, last = (torch.load(tmp_path / "run" / "checkpoints" / f"{n}.ckpt", map_location="cpu", weights_only=False) for n in ("best", "last"))
    assert best["epoch"] == last["epoch"] == 2
    assert all(torch.equal(best["state_dict"][k], v) for k, v in last["state_dict"].items())
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["monitor"] == "epoch" and summary["best_epoch"] == 2


def test_a_dataset_curated_over_the_default_pixel_limit_trains_evaluates_and_predicts(tmp_path, low_pixel_limit, monkeypatch) -> None:
    """curate --max-pixels above the default accepted the photos (60-megapixel frames), then the
    crops loaders decoded them under the default and refused every one as a decompression
    bomb. Now training and evaluate decode under the dataset's curate --max-pixels, predict and
    its picture under the run's (run.json's max_pixels), the report's frames under the evaluation's."""
    from vislab.evaluate import evaluate
    import vislab.report.crops as report_crops
    from vislab.predict import predict
    from vislab.report.html import write_report
    from vislab.train import train

    real_view = report_crops.photo_view

    data = make_lens_dataset(tmp_path / "data", splits=(8, 2, 2))  # 288x192 photos, over the lowered default
    (data / "curation.json").write_text(json.dumps({"options": {"max_pixels": 100_000}}))
    run = train(tiny_crops_run(train={"epochs": 1}), data, tmp_path / "run")
    assert json.loads((run / "run.json").read_text())["max_pixels"] == 100_000
    assert evaluate(run, split="test")["num_images"] == 2
    photo = next((data / "images").glob("*.png"))
    (result,) = predict(run, photo)
    assert "error" not in result and Path(result["picture"]).is_file()
    views = []
    monkeypatch.setattr(report_crops, "photo_view", lambda *args: views.append(real_view(*args)) or views[-1])
    write_report(run)
    assert views and all(v is not None for v in views)  # the report's frames galleries
