"""CAMs on tiny models: image-sized heatmaps in [0, 1], auto target layers, hooks released."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn as nn
from PIL import Image

from vislab.config import SimpleCNNConfig
from vislab.errors import VislabError
from vislab.explain.cam import METHOD_NAMES, cam_session, compute_cams, find_target_layer, overlay
from vislab.data.io import collect_images
from vislab.explain.overlays import explain_images
from vislab.models.outputs import logits_of
from vislab.models.registry import DataSpec
from vislab.models.simple_cnn import SimpleCNN


def _tiny_cnn(classes: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return SimpleCNN(SimpleCNNConfig(layers=2, filters=8, fc=0), classes).eval()


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._backward_hooks) for m in model.modules())


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_simple_cnn_all_methods(method: str) -> None:
    model = _tiny_cnn()
    x = torch.randn(2, 3, 24, 20)
    res = compute_cams(model, x, method)
    assert res.heatmaps.shape == (2, 24, 20)
    assert res.heatmaps.min() >= 0.0 and res.heatmaps.max() <= 1.0 and res.heatmaps.max() > 0.5
    assert res.layer == "features.6"  # last ReLU of the second block, before its pooling
    assert res.probs.shape == (2, 3) and np.allclose(res.probs.sum(1), 1, atol=1e-5)
    assert res.targets == res.probs.argmax(1).tolist()
    assert _hooks(model) == 0


def test_tiny_timm_resnet_and_explicit_targets() -> None:
    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=4).eval()
    assert find_target_layer(model)[0] == "layer4"
    assert find_target_layer(model, input_hw=(64, 64))[0] == "layer3"  # layer4 would be 2x2
    assert compute_cams(model, torch.randn(1, 3, 128, 128), "eigencam").layer == "layer4"
    res = compute_cams(model, torch.randn(1, 3, 64, 64), "gradcam++", targets=[2])
    assert res.layer == "layer3"
    assert res.heatmaps.shape == (1, 64, 64) and 0 <= res.heatmaps.min() and res.heatmaps.max() <= 1
    assert res.targets == [2]
    res = compute_cams(model, torch.randn(1, 3, 64, 64), "gradcam", layer="layer3.1.conv2")
    assert res.layer == "layer3.1.conv2" and res.heatmaps.shape == (1, 64, 64)
    assert _hooks(model) == 0


def test_vit_tokens_are_reshaped() -> None:
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2, num_classes=3).eval()
    res = compute_cams(model, torch.randn(1, 3, 32, 32), "gradcam")
    assert res.layer == "blocks.1.norm1" and res.heatmaps.shape == (1, 32, 32) and res.heatmaps.max() > 0.5


class DictModel(nn.Module):
    """Like the attention-branch network: forward returns a dict holding 'logits'."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = _tiny_cnn()

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.inner(x)
        return {"att_logits": -logits, "logits": logits}


def test_dict_and_tuple_outputs() -> None:
    model = DictModel().eval()
    x = torch.randn(2, 3, 16, 16)
    res = compute_cams(model, x, "gradcam")
    assert res.heatmaps.shape == (2, 16, 16)
    with torch.no_grad():
        expect = torch.softmax(model.inner(x), 1).numpy()
    np.testing.assert_allclose(res.probs, expect, atol=1e-5)  # the 'logits' entry, not 'att_logits'
    t = torch.zeros(1)
    assert logits_of((t, "x")) is t
    with pytest.raises(KeyError, match="att_logits"):
        logits_of({"att_logits": t})


def test_hooks_released_when_cam_fails() -> None:
    model = _tiny_cnn()
    with pytest.raises(RuntimeError):
        with cam_session(model, "gradcam") as run:
            run(torch.randn(1, 5, 16, 16))  # wrong channel count: the error comes through
    assert _hooks(model) == 0


def test_bad_method_and_layer_are_user_errors() -> None:
    model = _tiny_cnn()
    with pytest.raises(VislabError, match="gradcam\\+\\+"):
        compute_cams(model, torch.randn(1, 3, 16, 16), "lime")
    with pytest.raises(VislabError, match="features.4"):
        compute_cams(model, torch.randn(1, 3, 16, 16), "gradcam", layer="nope")


def test_explain_images_top_k_and_class(tmp_path) -> None:
    model = _tiny_cnn()
    spec = DataSpec(input_size=(3, 32, 32), mean=(0.5,) * 3, std=(0.5,) * 3, crop_pct=1.0)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)) for _ in range(3)]
    out = explain_images(model, spec, ["a", "b", "c"], images, method="gradcam", top_k=2)
    assert len(out) == 6 and {e.rank for e in out} == {1, 2}
    for e in out:
        assert e.heatmap.shape == (32, 32) and e.overlay.shape == (224, 224, 3) and e.overlay.dtype == np.uint8
    first = [e for e in out if e.rank == 1]
    second = [e for e in out if e.rank == 2]
    assert all(a.prob >= b.prob for a, b in zip(first, second))
    chosen = explain_images(model, spec, ["a", "b", "c"], images[:1], method="eigencam", class_name="c")
    assert [e.class_name for e in chosen] == ["c"] and chosen[0].rank == 0
    with pytest.raises(VislabError, match="classes are a, b, c"):
        explain_images(model, spec, ["a", "b", "c"], images, class_name="zebra")


def test_collect_images_and_overlay(tmp_path) -> None:
    (tmp_path / "sub").mkdir()
    for name in ("b.png", "sub/a.jpg", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in collect_images([tmp_path])] == ["b.png", "a.jpg"]
    with pytest.raises(VislabError, match="no such image"):
        collect_images([tmp_path / "missing.png"])
    img = np.zeros((8, 8, 3), np.uint8)
    heat = np.zeros((8, 8), np.float32)
    heat[0, 0] = 1.0
    ov = overlay(img, heat)
    assert ov.shape == (8, 8, 3) and ov[0, 0].tolist() != ov[7, 7].tolist()


def test_explain_cli_on_run_dir(tmp_path) -> None:
    import json

    from typer.testing import CliRunner

    from vislab.cli import app
    from vislab.testing.rundirs import make_run_dir

    run = make_run_dir(tmp_path, name="run", checkpoint=True, n_test=6)
    images = tmp_path / "run-data" / "images" / "dog"
    out = tmp_path / "overlays"
    res = CliRunner().invoke(app, ["explain", str(run), str(images), "--top-k", "2", "--method", "gradcam++", "--out", str(out)])
    assert res.exit_code == 0, res.output
    n_images = len(list(images.glob("*.png")))
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == 2 * n_images and all("__gradcampp" in p.name for p in pngs)
    index = json.loads((out / "explanations.json").read_text())
    assert len(index) == len(pngs) and {r["rank"] for r in index} == {1, 2} and index[0]["layer"] == "features.6"
    with Image.open(pngs[0]) as im:
        assert im.size == (224, 224)
    res = CliRunner().invoke(app, ["explain", str(run), str(images), "--class", "zebra"])
    assert res.exit_code == 2 and "classes are cat, dog, fox" in res.output


def _hostile_inputs(folder) -> None:
    """Good images with odd names, and files Pillow fails on in its less usual ways."""
    import os

    from vislab.testing.images import write_bad_ztxt_png, write_huge_header_png, write_image

    folder.mkdir(parents=True, exist_ok=True)
    write_image(folder / "good.png", seed=1)
    write_image(folder / os.fsdecode(b"odd\xff name[1].png"), seed=2)  # not UTF-8, and rich markup-like
    write_image(folder / ("long" * 20 + "A.png"), seed=3)  # two names alike in their first 60 characters
    write_image(folder / ("long" * 20 + "B.png"), seed=4)
    write_bad_ztxt_png(folder / "ztxt.png")  # Pillow raises SyntaxError while loading
    write_huge_header_png(folder / "bomb.png")  # Pillow raises DecompressionBombError


def test_explain_skips_undecodable_images_and_keeps_hostile_names_inside_out(tmp_path) -> None:
    import json

    from typer.testing import CliRunner

    from vislab.cli import app
    from vislab.testing.rundirs import make_run_dir

    classes = ["../../x", "猫", "犬", "[/x]"]  # a path, two names that slug alike, rich markup
    run = make_run_dir(tmp_path / "runs", classes=classes, dataset=False, checkpoint=True)
    images = tmp_path / "in"
    _hostile_inputs(images)
    out = tmp_path / "out" / "overlays"
    before = {p for p in tmp_path.rglob("*")}
    res = CliRunner().invoke(app, ["explain", str(run), str(images), "--top-k", "4", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "ztxt.png: error: cannot read image: corrupt image (SyntaxError" in res.output
    assert "bomb.png: error: cannot read image: decompression bomb: 10,000,000,000 pixels, over the 178,956,970-pixel limit" in res.output
    written = {p for p in tmp_path.rglob("*")} - before
    assert written and all(p == out or out in p.parents or p == out.parent for p in written)
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == 4 * 4  # every good image x every class, none overwritten by another
    assert all(len(p.name.encode()) < 160 for p in pngs)
    index = json.loads((out / "explanations.json").read_text())
    assert {r["class"] for r in index if "class" in r} == set(classes)
    assert sorted(r["source"].rsplit("/", 1)[-1] for r in index if "error" in r) == ["bomb.png", "ztxt.png"]

    bad_only = tmp_path / "bad"
    bad_only.mkdir()
    (images / "ztxt.png").rename(bad_only / "ztxt.png")
    res = CliRunner().invoke(app, ["explain", str(run), str(bad_only), "--out", str(tmp_path / "o2")])
    assert res.exit_code == 2 and "no image left to explain" in res.output and "Traceback" not in res.output
    (tmp_path / "file").write_text("x")
    res = CliRunner().invoke(app, ["explain", str(run), str(images), "--out", str(tmp_path / "file" / "sub")])
    assert res.exit_code == 2 and "a file, not a folder" in res.output


def test_predict_table_shows_hostile_class_names_and_error_rows(tmp_path) -> None:
    from typer.testing import CliRunner

    from vislab.cli import app
    from vislab.testing.rundirs import make_run_dir

    run = make_run_dir(tmp_path / "runs", classes=["[/x]", "[bold]b", "c"], dataset=False, checkpoint=True)
    images = tmp_path / "in"
    _hostile_inputs(images)
    res = CliRunner().invoke(app, ["predict", str(run), str(images), "-k", "3"])
    assert res.exit_code == 0, res.output
    assert "[/x]" in res.output and "[bold]b" in res.output and "SyntaxError" in res.output
    assert res.output.count("error") == 2


def test_explain_scores_a_large_jpeg_as_predict_does(tmp_path) -> None:
    """A JPEG larger than the model's input decodes in draft mode for predict and evaluate;
    explain decoded it whole, and its probabilities differed (0.781 against 0.775)."""
    from vislab.explain.overlays import explain_run
    from vislab.predict import predict
    from vislab.testing.images import write_image
    from vislab.testing.rundirs import make_run_dir

    run = make_run_dir(tmp_path, name="run", checkpoint=True)
    photo = write_image(tmp_path / "photo.jpg", seed=5, size=(900, 700))
    [row] = predict(run, [photo], top_k=1)
    [shown] = explain_run(run, [photo], top_k=1, out=tmp_path / "overlays")
    assert shown.class_name == row["pred"] and abs(shown.prob - row["confidence"]) < 1e-5


def test_an_empty_gradcam_map_is_recorded_and_named_with_methods_to_try(tmp_path) -> None:
    """A class whose classifier weights are all negative: at the last ReLU (activations >= 0)
    every Grad-CAM channel weight is negative, so the map is cut to zero everywhere, for any
    image; EigenCAM, which needs no gradient of the class, still maps a region."""
    import json

    import torch
    from typer.testing import CliRunner

    from vislab.cli import app
    from vislab.testing.rundirs import make_run_dir

    run = make_run_dir(tmp_path, name="run", checkpoint=True, n_test=3)
    ckpt = run / "checkpoints" / "best.ckpt"
    saved = torch.load(ckpt, weights_only=False)
    saved["state_dict"]["model.head.1.weight"][2] = -saved["state_dict"]["model.head.1.weight"][2].abs() - 0.01  # fox
    torch.save(saved, ckpt)
    image = sorted((tmp_path / "run-data" / "images" / "cat").glob("*.png"))[0]
    out = tmp_path / "overlays"
    res = CliRunner().invoke(app, ["explain", str(run), str(image), "--class", "fox", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert f"note: the gradcam map of {image.name} (fox) is zero everywhere at layer features.6" in res.output
    assert res.output.rstrip().splitlines()[-2].endswith("try --method gradcam++ or --method eigencam")
    (entry,) = json.loads((out / "explanations.json").read_text())
    assert entry["empty_map"] is True and entry["class"] == "fox"
    res = CliRunner().invoke(app, ["explain", str(run), str(image), "--class", "fox", "--method", "eigencam", "--out", str(out)])
    assert res.exit_code == 0 and "note:" not in res.output, res.output
    assert json.loads((out / "explanations.json").read_text())[0]["empty_map"] is False


def _pngs(folder) -> list[str]:
    return sorted(p.name for p in folder.glob("*.png"))


def _index(folder) -> list[dict]:
    import json

    return json.loads((folder / "explanations.json").read_text())


def test_attention_refuses_layer_and_each_method_has_one_default_folder(tmp_path) -> None:
    """--layer with --method attention ran on the attention branch regardless; --method
    GradCAM++ and --method Attention wrote to GradCAMpp/ and Attention/ beside gradcampp/ and
    attention/."""
    from typer.testing import CliRunner

    from vislab.cli import app
    from vislab.testing.rundirs import make_run_dir

    run = make_run_dir(tmp_path, name="run", checkpoint=True, attention="abn", n_test=3)
    image = sorted((tmp_path / "run-data" / "images" / "cat").glob("*.png"))[0]
    res = CliRunner().invoke(app, ["explain", str(run), str(image), "--method", "attention", "--layer", "features.0"])
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert res.output.strip().startswith("error: --layer features.0: --method attention") and len(res.output.strip().splitlines()) == 1
    assert not (run / "explain").exists()
    for method in ("Attention", "attention", "GradCAM++", "gradcam++", "grad-cam-pp"):
        res = CliRunner().invoke(app, ["explain", str(run), str(image), "--method", method])
        assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (run / "explain").iterdir()) == ["attention", "gradcampp"]


def test_a_file_named_several_ways_is_explained_once(tmp_path, monkeypatch) -> None:
    """Four spellings of one image printed four result lines but wrote one overlay, three
    times over, and listed it four times in explanations.json; a file is now explained once
    (as cp copies a source named twice once), while another image of the same name is not
    one of them."""
    import shutil

    from typer.testing import CliRunner

    from vislab.cli import app
    from vislab.testing.rundirs import make_run_dir

    run = make_run_dir(tmp_path, name="run", checkpoint=True, n_test=3)
    monkeypatch.chdir(tmp_path)
    image = sorted(Path("run-data/images/cat").glob("*.png"))[0]
    Path("other").mkdir()
    shutil.copy(sorted(Path("run-data/images/dog").glob("*.png"))[0], Path("other") / image.name)  # same name, another file
    Path("link.png").symlink_to(image)
    spellings = [str(image), str(image), f"./{image}", f"run-data/images/../images/cat/{image.name}", "link.png"]
    res = CliRunner().invoke(app, ["explain", str(run), *spellings, f"other/{image.name}", "--out", "ex"])
    assert res.exit_code == 0, res.output
    assert res.output.count(" -> ") == 2 and "each file is explained once" in res.output
    assert len(_pngs(Path("ex"))) == 2
    index = _index(Path("ex"))
    assert len(index) == 2 and len({e["output"] for e in index}) == 2
    assert {e["source"] for e in index} == {str(image), f"other/{image.name}"}


def test_the_index_lists_every_overlay_the_folder_holds_after_any_calls(tmp_path) -> None:
    """Each call replaced explanations.json: after --top-k 3 then --layer features.2, three
    overlays stayed but the index listed one, and the default layer's overlay had been
    overwritten by the features.2 map (the layer was not in the name). Now an overlay of
    another layer is named for it, the index is merged by output file, an overlay removed
    by hand leaves the index, and files vislab did not write are left alone."""
    from typer.testing import CliRunner

    from vislab.cli import app
    from vislab.testing.rundirs import make_run_dir

    run = make_run_dir(tmp_path, name="run", checkpoint=True, n_test=3)
    image = sorted((tmp_path / "run-data" / "images" / "cat").glob("*.png"))[0]
    out = tmp_path / "ex"
    out.mkdir()
    (out / "mine.png").write_bytes(b"not vislab's")

    def explain(*args: str) -> None:
        res = CliRunner().invoke(app, ["explain", str(run), str(image), "--out", str(out), *args])
        assert res.exit_code == 0, res.output

    def agree() -> list[dict]:
        index = _index(out)
        names = [Path(e["output"]).name for e in index]
        assert sorted(names) == sorted(set(_pngs(out)) - {"mine.png"}), (names, _pngs(out))
        assert all(Path(e["output"]).parent == out for e in index)
        return index

    explain("--top-k", "3")
    assert len(agree()) == 3
    [top] = [e for e in _index(out) if e["rank"] == 1]
    default_bytes = Path(top["output"]).read_bytes()
    explain("--layer", "features.2")
    index = agree()
    assert len(index) == 4 and index[0]["layer"] == "features.2" and index[0]["output"].endswith("__gradcam__features.2.png")
    assert Path(top["output"]).read_bytes() == default_bytes  # the default layer's overlay is still its own
    explain("--layer", "features.6")  # the default layer, named as without --layer: it replaces that overlay
    assert len(agree()) == 4
    explain("--method", "eigencam")
    assert len(agree()) == 5
    Path(top["output"]).unlink()
    explain("--method", "eigencam")
    assert len(agree()) == 4
    assert (out / "mine.png").read_bytes() == b"not vislab's"

    (out / "explanations.json").write_text("my notes")
    res = CliRunner().invoke(app, ["explain", str(run), str(image), "--out", str(out)])
    assert res.exit_code == 2 and "not an index written by vislab explain" in res.output and "Traceback" not in res.output
    assert (out / "explanations.json").read_text() == "my notes"


def _blocked_on(path: Path) -> bool:
    """Whether some process waits for a flock on `path` (a `->` line of /proc/locks naming its inode)."""
    ino = os.stat(path).st_ino
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if "->" in fields and fields[fields.index("->") + 5].split(":")[-1] == str(ino):
            return True
    return False


def test_two_explains_into_one_folder_keep_each_others_entries(tmp_path) -> None:
    """Each explain read explanations.json when it started and wrote it when it ended, so two
    at once into one folder lost the entries of the one that finished first. Now the
    overlays and the index are written under a lock, the index read again inside it: a real
    second process waits while the folder is being written, then keeps what was added."""
    import json
    import shutil
    import subprocess
    import sys
    import time

    from typer.testing import CliRunner

    from vislab.cli import app
    from vislab.explain.overlays import INDEX
    from vislab.locks import waiting_lock
    from vislab.testing.processes import single_thread_env
    from vislab.testing.rundirs import make_run_dir

    INDEX_LOCK = ".explanations.lock"  # the lock's documented name (explain/overlays.py), so this test also runs before it existed
    if not Path("/proc/locks").exists():
        pytest.skip("needs Linux /proc/locks to see a process waiting for a lock")
    run = make_run_dir(tmp_path, name="run", checkpoint=True, n_test=3)
    cat, dog = (sorted((tmp_path / "run-data" / "images" / c).glob("*.png"))[0] for c in ("cat", "dog"))
    out = tmp_path / "ex"
    assert CliRunner().invoke(app, ["explain", str(run), str(cat), "--out", str(out)]).exit_code == 0
    [first] = _index(out)
    with waiting_lock(out / INDEX_LOCK):
        proc = subprocess.Popen([sys.executable, "-m", "vislab.cli", "explain", str(run), str(dog), "--out", str(out)],
                                env=single_thread_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 120
        while not _blocked_on(out / INDEX_LOCK) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert proc.poll() is None and _blocked_on(out / INDEX_LOCK), f"explain wrote the folder while it was locked: {proc.communicate()[0]}"
        other = out / "other__cat__gradcam.png"  # what a third explain finishing now adds
        shutil.copy(first["output"], other)
        (out / INDEX).write_text(json.dumps([{**first, "source": "elsewhere/other.png", "output": str(other)}, first]))
    assert proc.wait(timeout=120) == 0, proc.communicate()[0]
    index = _index(out)
    assert sorted(Path(e["output"]).name for e in index) == sorted(_pngs(out)) and len(index) == 3
    assert not (out / INDEX_LOCK).exists()
