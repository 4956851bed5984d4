"""`vislab report` and `vislab compare` on damaged or foreign run files: one line naming the
file and the field, exit status 2, never a traceback; compare does not read the per-image
files (predictions.csv, probs.npy) it has no use for."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Callable

import pytest
from typer.testing import CliRunner

from vislab.cli import app
from vislab.errors import VislabError
from vislab.report.rundata import read_eval
from vislab.testing.rundirs import make_run_dir

TEST = Path("eval/test")


def _edit(name: str, change: Callable[[dict], None]) -> Callable[[Path], None]:
    def damage(run: Path) -> None:
        value = json.loads((run / name).read_text())
        change(value)
        (run / name).write_text(json.dumps(value))

    return damage


def _write(name: str, data: bytes) -> Callable[[Path], None]:
    return lambda run: (run / name).write_bytes(data)


def _cut(name: str, keep: Callable[[bytes], int]) -> Callable[[Path], None]:
    return lambda run: (run / name).write_bytes((run / name).read_bytes()[: keep((run / name).read_bytes())])


def _per_class_nan(m: dict) -> None:
    m["per_class"][0]["accuracy"] = float("nan")


# (damage, file the report names or None: it renders, file compare names or None: it compares)
CASES = {
    "predictions-empty": (_write(f"{TEST}/predictions.csv", b""), "predictions.csv", None),
    "predictions-not-csv": (_write(f"{TEST}/predictions.csv", b'a,b\n1,2,3\n"x\n'), "predictions.csv", None),
    "predictions-cut-in-a-row": (_cut(f"{TEST}/predictions.csv", lambda b: b.index(b",", b.index(b"\n", 200)) + 3), "predictions.csv", None),
    "metrics-json-a-list": (_write(f"{TEST}/metrics.json", b"[]"), "metrics.json: holds a list", "metrics.json: holds a list"),
    "per-class-text": (_edit(f"{TEST}/metrics.json", lambda m: m.update(per_class="x")), "metrics.json: per_class is text", "metrics.json: per_class"),
    "health-not-objects": (_write("health.json", b'[1,"x",null]'), "health.json: [0]", "health.json: [0]"),
    "config-a-list": (_write("config.yaml", b"- a\n"), "config.yaml: holds a list", "config.yaml: holds a list"),
    "config-not-utf8": (_write("config.yaml", b"\xff\xfe"), "config.yaml: not UTF-8", "config.yaml: not UTF-8"),
    "config-not-yaml": (_write("config.yaml", b"task: [classify\n"), "config.yaml: not valid YAML", "config.yaml: not valid YAML"),
    "config-other-task": (lambda run: (run / "config.yaml").write_text((run / "config.yaml").read_text().replace("task: classify", "task: crops")),
                          "metrics.json: has no model, baseline", "metrics.json: has no model"),
    "params-text": (_edit("summary.json", lambda s: s.update(params={"total": "many"})), "summary.json: params.total", "summary.json: params.total"),
    "wall-time-text": (_edit("summary.json", lambda s: s.update(wall_time_s="x")), "summary.json: wall_time_s", "summary.json: wall_time_s"),
    "data-spec-a-list": (_edit("run.json", lambda i: i.update(data_spec=[1, 2])), "run.json: data_spec", "run.json: data_spec"),
    "history-not-utf8": (_write("metrics.csv", b"\x00\xff\xfe x\n1,2\n"), "metrics.csv: not UTF-8", "metrics.csv: not UTF-8"),
    "history-cut-short": (_cut("metrics.csv", lambda b: 150), None, None),
    "per-class-nan": (_edit(f"{TEST}/metrics.json", _per_class_nan), None, None),
    "probs-empty": (_write(f"{TEST}/probs.npy", b""), None, None),
}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    return make_run_dir(tmp_path_factory.mktemp("runs"), name="run", n_test=30, dataset=False)


@pytest.mark.parametrize("command", ["report", "compare"])
@pytest.mark.parametrize("case", list(CASES))
def test_damaged_run_files_are_one_line_or_no_matter(tmp_path, pristine, case, command) -> None:
    import shutil

    damage, report_names, compare_names = CASES[case]
    run = Path(shutil.copytree(pristine, tmp_path / case))
    damage(run)
    args = ["report", str(run), "--no-cams"] if command == "report" else ["compare", str(run)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = CliRunner().invoke(app, args)
    names = report_names if command == "report" else compare_names
    lines = res.output.strip().splitlines()
    assert "Traceback" not in res.output and (res.exception is None or isinstance(res.exception, SystemExit)), res.output
    assert not [str(w.message) for w in caught]
    if names is None:
        assert res.exit_code == 0, res.output
        assert len(lines) == 1 if command == "report" else case in res.output, res.output
    else:
        assert res.exit_code == 2 and len(lines) == 1, res.output
        assert names in lines[0] and str(run) in lines[0], lines


@pytest.mark.parametrize("data, reason", [(b"", "empty"), (b"junk\n", "pickled")])
def test_a_damaged_probs_file_is_one_line_when_read(pristine, tmp_path, data, reason) -> None:
    import shutil

    run = Path(shutil.copytree(pristine, tmp_path / "run"))
    (run / TEST / "probs.npy").write_bytes(data)
    with pytest.raises(VislabError) as err:
        read_eval(run / TEST).probs
    assert str(err.value).startswith(f"{run / TEST / 'probs.npy'}: not a NumPy array file (") and reason in str(err.value)
    assert "\n" not in str(err.value)


def test_an_infinite_figure_is_a_dash_in_compare(pristine, tmp_path) -> None:
    import shutil

    run = Path(shutil.copytree(pristine, tmp_path / "run"))
    _edit(f"{TEST}/metrics.json", lambda m: m.update(mca=float("inf")))(run)
    res = CliRunner().invoke(app, ["compare", str(run), "--format", "md"])
    assert res.exit_code == 0 and "inf" not in res.output.split("\n", 2)[2] and "| — |" in res.output, res.output
