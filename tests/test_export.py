"""ONNX export: outputs match PyTorch at another batch size, dict models export their logits,
a run directory exports with its classes and normalisation, and a mismatch fails loudly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from typer.testing import CliRunner

from vislab.cli import app
from vislab.errors import VislabError
from vislab.export import check_onnx, export_onnx_model, onnx_session
from vislab.testing.models import tiny_model
from vislab.testing.processes import vislab_with_read_only
from vislab.testing.rundirs import make_run_dir


@pytest.mark.parametrize("name", ["simple_cnn", "fast_cnn"])
def test_tiny_model_export_matches_pytorch_at_any_batch_size(tmp_path: Path, name: str) -> None:
    torch.manual_seed(0)
    kwargs = {"fast_cnn": {"widths": [8, 16, 16]}} if name == "fast_cnn" else {}
    model = tiny_model(name, num_classes=4, **kwargs).eval()
    path = export_onnx_model(model, (3, 32, 32), tmp_path / "m.onnx")
    assert check_onnx(path, model, (3, 32, 32), batch=5) < 1e-4
    x = torch.randn(7, 3, 32, 32)
    got = onnx_session(path).run(None, {"input": x.numpy()})[0]
    np.testing.assert_allclose(got, model(x).detach().numpy(), atol=1e-4, rtol=1e-3)


def test_dict_model_exports_its_logits(tmp_path: Path) -> None:
    model = tiny_model("simple_cnn", num_classes=3, attention="abn").eval()
    assert isinstance(model(torch.zeros(1, 3, 32, 32)), dict)
    path = export_onnx_model(model, (3, 32, 32), tmp_path / "abn.onnx")
    outputs = [o.name for o in onnx.load(str(path)).graph.output]
    assert outputs == ["logits"]
    check_onnx(path, model, (3, 32, 32))


def test_mismatch_fails_loudly(tmp_path: Path) -> None:
    model = tiny_model("simple_cnn", num_classes=3).eval()
    path = export_onnx_model(model, (3, 32, 32), tmp_path / "m.onnx")
    other = tiny_model("simple_cnn", num_classes=3, simple_cnn={"init_seed": 99}).eval()
    with pytest.raises(VislabError, match="differ from PyTorch"):
        check_onnx(path, other, (3, 32, 32))


def test_export_run_cli_writes_checked_file_with_metadata(tmp_path: Path) -> None:
    run = make_run_dir(tmp_path, checkpoint=True, input_size=24)
    res = CliRunner().invoke(app, ["export", str(run), "--format", "onnx"])
    assert res.exit_code == 0, res.output
    path = run / "export" / "model.onnx"
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(meta["vislab_classes"]) == ["cat", "dog", "fox"]
    assert json.loads(meta["vislab_data_spec"])["input_size"] == [3, 24, 24]
    info = json.loads(path.with_suffix(".json").read_text())
    assert info["max_abs_diff"] < 1e-4 and info["input_shape"] == ["batch", 3, 24, 24]
    bad = CliRunner().invoke(app, ["export", str(run), "--format", "tflite"])
    assert bad.exit_code == 2 and "supported formats" in bad.output


def test_export_out_that_is_a_folder_or_under_a_file_is_one_line(tmp_path: Path) -> None:
    import os

    run = make_run_dir(tmp_path, checkpoint=True, input_size=24)
    (tmp_path / "afile").write_text("x")
    os.mkfifo(tmp_path / "pipe.onnx")
    for out, says in (
        (tmp_path, "is a folder"),
        (tmp_path / "afile" / "model.onnx", "a file, not a folder"),
        (tmp_path / "pipe.onnx", "not a regular file"),
        (tmp_path / "model.json", "export's description"),
    ):
        res = CliRunner().invoke(app, ["export", str(run), "--out", str(out)])
        assert res.exit_code == 2 and says in res.output and "Traceback" not in res.output, (out, res.output)
        assert len(res.output.strip().splitlines()) == 1
    assert (tmp_path / "afile").read_text() == "x"
    res = CliRunner().invoke(app, ["export", str(run), "--out", str(tmp_path / "new" / "m.onnx")])
    assert res.exit_code == 0 and (tmp_path / "new" / "m.onnx").is_file() and (tmp_path / "new" / "m.json").is_file()


def test_export_out_in_a_read_only_folder_is_one_line(tmp_path: Path) -> None:
    run = make_run_dir(tmp_path, checkpoint=True, input_size=24)
    ro = tmp_path / "ro"
    ro.mkdir()
    said = vislab_with_read_only(ro, "export", run, "--out", ro / "m.onnx")
    if said is None:
        pytest.skip("needs util-linux unshare and user namespaces to make a folder read-only")
    assert f"{ro / 'm.onnx'}: cannot write (Read-only file system)" in said


def test_export_out_never_replaces_files_it_did_not_write(tmp_path: Path) -> None:
    run = make_run_dir(tmp_path, checkpoint=True, input_size=24)
    (tmp_path / "notes.json").write_text("my notes")
    (tmp_path / "mine.onnx").write_bytes(b"someone's model")
    before = {p: p.read_bytes() for p in [run / "run.json", *sorted((run / "checkpoints").glob("*")), tmp_path / "notes.json", tmp_path / "mine.onnx"]}
    for out, says in (
        (run / "run.onnx", "run.json exists and is not a vislab export's description"),
        (run / "checkpoints" / "best.ckpt", "name the model file *.onnx"),
        (tmp_path / "notes.txt", "name the model file *.onnx"),
        (tmp_path / "notes.onnx", "notes.json exists and is not a vislab export's description"),
        (tmp_path / "mine.onnx", "exists and was not written by vislab export"),
    ):
        res = CliRunner().invoke(app, ["export", str(run), "--out", str(out)])
        assert res.exit_code == 2 and says in res.output, (out, res.output)
        assert len(res.output.strip().splitlines()) == 1
    assert {p: p.read_bytes() for p in before} == before
    assert not (run / "run.onnx").exists() and not (tmp_path / "notes.onnx").exists()
    again = tmp_path / "new" / "m.onnx"  # an earlier export of its own is replaced
    for _ in range(2):
        res = CliRunner().invoke(app, ["export", str(run), "--out", str(again)])
        assert res.exit_code == 0, res.output


def test_export_refuses_a_description_linked_out_of_the_run(tmp_path: Path) -> None:
    """export/model.json a link to a user's file (a run folder from someone else): export
    wrote the model's description into that file."""
    run = make_run_dir(tmp_path, checkpoint=True, input_size=24)
    victim = tmp_path / "notes.json"
    victim.write_text("my notes")
    (run / "export").mkdir()
    (run / "export" / "model.json").symlink_to(victim)
    res = CliRunner().invoke(app, ["export", str(run)])
    assert res.exit_code == 2, res.output
    assert "model.json: would be written outside" in res.output and "through the symbolic link" in res.output
    assert len(res.output.strip().splitlines()) == 1
    assert victim.read_text() == "my notes" and not (run / "export" / "model.onnx").exists()


def test_export_of_last_ckpt_says_so_and_records_no_local_path(tmp_path: Path) -> None:
    """A run without best.ckpt was exported from last.ckpt silently, and the file's metadata
    held the checkpoint's absolute path (the user's folder layout, in a file they share)."""
    run = make_run_dir(tmp_path, checkpoint=True, input_size=24)
    ckpt = torch.load(run / "checkpoints" / "best.ckpt", weights_only=False)
    torch.save({**ckpt, "epoch": 6}, run / "checkpoints" / "last.ckpt")
    (run / "checkpoints" / "best.ckpt").unlink()
    res = CliRunner().invoke(app, ["export", str(run)])
    assert res.exit_code == 0, res.output
    assert "no best.ckpt (run interrupted?): exported last.ckpt, epoch 7" in res.output
    meta = {p.key: p.value for p in onnx.load(str(run / "export" / "model.onnx")).metadata_props}
    assert json.loads(meta["vislab_checkpoint"]) == {"file": "last.ckpt", "epoch": 7, "while_training": False}
    assert str(tmp_path) not in "".join(meta.values())
