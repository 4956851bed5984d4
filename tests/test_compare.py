"""`vislab compare`: one row per run, sorted, in table / md / csv / html."""

from __future__ import annotations

import io
import json
import os
import pty
import shutil
import subprocess
import sys

import pandas as pd
import yaml
import pytest
from typer.testing import CliRunner

from vislab.cli import app
from vislab.errors import VislabError
from vislab.report.compare import compare_runs, render, result_columns
from vislab.testing.rundirs import make_run_dir

MODELS = ("simple_cnn", "resnet18", "efficientnet_b0")
COLUMNS = [c.key for c in result_columns(["classify"])]  # the columns of a comparison of classification runs


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    out = []
    for i, model in enumerate(MODELS):
        out.append(
            make_run_dir(
                root,
                name=f"run{i}",
                model=model,
                skill=0.5 + 1.2 * i,
                seed=i,
                dataset=False,
                wall_time_s=3600.0 * (3 - i),
                params={"trainable": 1_000_000 * (i + 1), "frozen": 250_000 * i, "total": 1_000_000 * (i + 1) + 250_000 * i},
            )
        )
    return out


def test_rows_carry_the_run_files(runs) -> None:
    df = compare_runs(runs)
    assert list(df["run"]) == ["run0", "run1", "run2"]  # given order when not sorted
    assert list(df["model"]) == list(MODELS)
    for _, row in df.iterrows():
        metrics = json.loads((runs[int(row["run"][-1])] / "eval/test/metrics.json").read_text())
        assert row["test_acc"] == pytest.approx(metrics["accuracy"])
        assert row["mca"] == pytest.approx(metrics["mca"])
        assert row["f1"] == pytest.approx(metrics["f1_macro"])
    assert df.loc[2, "params_frozen"] == 500_000 and df.loc[2, "params_total"] == 3_500_000
    assert df.loc[0, "input"] == "32x32" and df.loc[0, "epochs"] == 5


def test_sorting(runs) -> None:
    by_acc = compare_runs(runs, sort="test_acc")
    assert by_acc["test_acc"].is_monotonic_decreasing  # higher is better: best first
    by_time = compare_runs(runs, sort="wall_time_s")
    assert by_time["wall_time_s"].is_monotonic_increasing
    assert compare_runs(runs, sort="-wall_time_s")["wall_time_s"].is_monotonic_decreasing
    assert list(compare_runs(runs, sort="+mca")["mca"]) == sorted(by_acc["mca"])
    with pytest.raises(VislabError, match="unknown column; use one of run, model"):
        compare_runs(runs, sort="bogus")


def test_formats(runs) -> None:
    df = compare_runs(runs)
    md = render(df, "md").strip().splitlines()
    assert len(md) == 2 + len(runs) and md[0].startswith("| run | model | input |")
    assert "0:30:00" not in md[1] and "3:00:00" in md[2]  # wall time as h:mm:ss
    assert "1.00M" in md[2] and "0.25M" in md[3]
    back = pd.read_csv(io.StringIO(render(df, "csv")))
    assert list(back.columns[: len(COLUMNS)]) == list(COLUMNS)
    assert back["test_acc"].tolist() == pytest.approx(df["test_acc"].tolist())
    page = render(df, "html")
    assert page.startswith("<!DOCTYPE html>") and "http" not in page and page.count("<tr>") == 1 + len(runs)
    with pytest.raises(VislabError, match="--format"):
        render(df, "xlsx")


def test_missing_eval_leaves_cells_empty(tmp_path) -> None:
    run = make_run_dir(tmp_path, name="a<b>&c", dataset=False)
    shutil.rmtree(run / "eval")
    df = compare_runs([run])
    assert pd.isna(df.loc[0, "test_acc"])
    md = render(df, "md")
    assert "| a&lt;b&gt;&amp;c | simple_cnn |" in md
    assert "a&lt;b&gt;&amp;c" in render(df, "html")


def test_cli_compare(runs, tmp_path) -> None:
    res = CliRunner().invoke(app, ["compare", *map(str, runs), "--sort", "test_acc"])
    assert res.exit_code == 0, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert lines[0].split()[:3] == ["run", "model", "input"]
    assert [ln.split()[0] for ln in lines[1:]] == ["run2", "run1", "run0"]
    res = CliRunner().invoke(app, ["compare", *map(str, runs), "--format", "md"])
    assert res.exit_code == 0 and res.output.startswith("| run |")
    out = tmp_path / "cmp.html"
    res = CliRunner().invoke(app, ["compare", *map(str, runs), "-f", "html", "-o", str(out)])
    assert res.exit_code == 0 and out.read_text().count("<tr>") == 4
    res = CliRunner().invoke(app, ["compare", str(tmp_path / "nope")])
    assert res.exit_code == 2 and "no such run directory" in res.output


def _configure(run, **dotted) -> None:
    """Change keys of a run's config.yaml, as a run trained with `--set` would have saved them."""
    from vislab.config import apply_overrides, build_config, save_config

    raw = yaml.safe_load((run / "config.yaml").read_text())
    save_config(build_config(apply_overrides(raw, [f"{k.replace('__', '.')}={v}" for k, v in dotted.items()])), run / "config.yaml")


def test_config_keys_that_differ_get_columns(tmp_path) -> None:
    a = make_run_dir(tmp_path, name="a", dataset=False)
    b = make_run_dir(tmp_path, name="b", dataset=False)
    c = make_run_dir(tmp_path, name="c", model="resnet18", dataset=False)
    _configure(a, optim__lr=0.01, data__augment__preset="strong")
    _configure(b, optim__lr=0.1, data__augment__preset="strong", model__simple_cnn__layers=3)
    _configure(c, optim__lr=0.1, data__augment__preset="strong")
    df = compare_runs([a, b, c])
    varying = [col for col in df.columns if col.startswith("config.")]
    # preset is the same everywhere; simple_cnn.* matters only to the simple_cnn runs; the
    # model name has its own column; config order
    assert varying == ["config.model.simple_cnn.layers", "config.optim.lr"]
    assert df["config.optim.lr"].tolist() == [0.01, 0.1, 0.1]
    assert df["config.model.simple_cnn.layers"].tolist()[:2] == [2, 3] and pd.isna(df["config.model.simple_cnn.layers"][2])
    md = render(df, "md").splitlines()
    assert md[0].startswith("| run | model | input | simple_cnn.layers | optim.lr | trainable params |")
    assert md[2].startswith("| a | simple_cnn | 32x32 | 2 | 0.01 |") and md[4].startswith("| c | resnet18 | 32x32 |  | 0.1 |")
    assert list(compare_runs([a, b, c], sort="-optim.lr")["run"]) == ["b", "c", "a"]
    back = pd.read_csv(io.StringIO(render(df, "csv")))
    assert back["config.optim.lr"].tolist() == [0.01, 0.1, 0.1]
    res = CliRunner().invoke(app, ["compare", str(a), str(b), str(c)])
    assert res.exit_code == 0 and res.output.split()[3:5] == ["simple_cnn.layers", "optim.lr"]
    assert not compare_runs([b, c]).filter(like="config.").columns.tolist()  # nothing that matters to both differs


def test_many_differences_share_one_column(tmp_path) -> None:
    a = make_run_dir(tmp_path, name="a", dataset=False)
    b = make_run_dir(tmp_path, name="b", dataset=False)
    keys = ["optim.lr=0.5", "optim.momentum=0.5", "optim.weight_decay=0.1", "train.label_smoothing=0.1", "data.batch_size=8",
            "data.augment.preset=none", "scheduler.name=cosine", "train.grad_clip=1.0", "model.simple_cnn.filters=4", "seed=7"]
    _configure(b, **{k.split("=")[0].replace(".", "__"): k.split("=")[1] for k in keys})
    df = compare_runs([a, b])
    assert len([c for c in df.columns if c.startswith("config.")]) == len(keys)
    md = render(df, "md").splitlines()
    cells = len(COLUMNS) - 1 + 8 + 1  # the shown columns (no ABN run), 8 config keys and the rest in one
    assert "| other config |" in md[0] and md[0].count("|") == cells + 1
    assert "| train.label_smoothing=0.1; train.grad_clip=1 |" in md[3]


def test_run_names_tell_runs_apart(tmp_path) -> None:
    a = make_run_dir(tmp_path / "a", name="run", dataset=False)
    b = make_run_dir(tmp_path / "b", name="run", dataset=False)
    x = make_run_dir(tmp_path / "b", name="x", dataset=False)
    df = compare_runs([a, b, x])
    assert list(df["run"]) == ["a/run", "b/run", "x"]
    assert list(df["path"]) == [str(a), str(b), str(x)]


def test_images_per_s_reads_as_people_write_it(tmp_path) -> None:
    runs = []
    for name, ips in (("slow", 11.94), ("fast", 1234.4), ("crawl", 0.834)):
        run = make_run_dir(tmp_path, name=name, dataset=False)
        summary = json.loads((run / "summary.json").read_text())
        summary["train_images_per_s"] = ips
        (run / "summary.json").write_text(json.dumps(summary))
        runs.append(run)
    md = render(compare_runs(runs), "md").splitlines()
    assert [ln.rstrip(" |").rsplit("| ", 1)[1] for ln in md[2:]] == ["11.9", "1,234", "0.83"]


def test_a_sanity_check_folder_is_left_out_with_a_note(runs, tmp_path) -> None:
    from vislab.testing.synthetic import make_pattern_dataset, tiny_config
    from vislab.train import train

    data = make_pattern_dataset(tmp_path / "data", per_class=6, size=16)
    sanity = tmp_path / "sanity"
    train(tiny_config(train={"sanity_steps": 2}), data, sanity, sanity=True)
    res = CliRunner().invoke(app, ["compare", str(runs[0]), str(sanity)])
    assert res.exit_code == 0, res.output
    assert f"left out {sanity}: a `vislab train --sanity` check" in res.output
    assert "run0" in res.output
    res = CliRunner().invoke(app, ["report", str(sanity)])
    assert res.exit_code == 2 and "--sanity` check (sanity.json), not a trained run" in res.output


def test_a_run_without_its_config_or_with_a_hand_edited_run_json(tmp_path) -> None:
    a = make_run_dir(tmp_path, name="a", dataset=False)
    b = make_run_dir(tmp_path, name="b", dataset=False)
    c = make_run_dir(tmp_path, name="c", dataset=False)
    _configure(b, optim__lr=0.1)
    (c / "config.yaml").unlink()  # an unknown config takes no part in the diff: it differed in every key
    df = compare_runs([a, b, c])
    assert [col for col in df.columns if col.startswith("config.")] == ["config.optim.lr"]
    (c / "run.json").write_text("[]")
    res = CliRunner().invoke(app, ["compare", str(a), str(c)])
    assert res.exit_code == 2 and "run.json: holds a list, not an object" in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_a_metric_that_is_not_a_percent_prints_four_figures() -> None:
    from vislab.report.compare import _cell

    assert _cell(None, "test_iou", 0.7948566504017947, pd.Series(dtype=object)) == "0.7949"  # printed in full before


def test_markup_in_run_paths_prints_as_written(tmp_path) -> None:
    a = make_run_dir(tmp_path / "cmp2" / "a", name="x[/]y", dataset=False)
    b = make_run_dir(tmp_path / "cmp2" / "b", name="x[/]y", dataset=False)
    link = make_run_dir(tmp_path, name="[link=https:evil.example]click here", dataset=False)
    bold = make_run_dir(tmp_path, name="[bold red]pwn", dataset=False)
    res = CliRunner().invoke(app, ["compare", str(a), str(b)])
    assert res.exit_code == 0, res.output  # rich read '[/]' as a closing tag: MarkupError
    assert [ln.split()[0] for ln in res.output.splitlines()[1:]] == ["a/x[/]y", "b/x[/]y"]
    res = CliRunner().invoke(app, ["compare", str(link), str(bold)])
    assert res.exit_code == 0, res.output
    assert "[link=https:evil.example]click here " in res.output and "[bold red]pwn " in res.output


def test_control_characters_in_run_names_are_shown_not_sent(tmp_path) -> None:
    evil = make_run_dir(tmp_path, name="ok\x1b[2J\x1b[31mFAKE", dataset=False)
    c1 = make_run_dir(tmp_path, name="ok\x9b2JFAKE", dataset=False)  # U+009B: CSI as one 8-bit control
    shown = {
        "table": [r"ok\x1b[2J\x1b[31mFAKE ", r"ok\x9b2JFAKE "],
        "md": [r"| ok\\x1b\[2J\\x1b\[31mFAKE |", r"| ok\\x9b2JFAKE |"],  # md escapes '\' and '['
    }
    for fmt, texts in shown.items():
        res = CliRunner().invoke(app, ["compare", str(evil), str(c1), "--format", fmt])
        assert res.exit_code == 0, res.output
        assert "\x1b" not in res.output and "\x9b" not in res.output, fmt
        assert all(text in res.output for text in texts), fmt


def test_markdown_cells_are_text_one_line_each(tmp_path) -> None:
    names = ["<img src=x onerror=alert(1)>", "two\nlines", "[click](javascript:alert(1))", "a|b\\"]
    runs = [make_run_dir(tmp_path, name=n, dataset=False) for n in names]
    df = compare_runs(runs)
    md = render(df, "md").splitlines()
    assert len(md) == 2 + len(runs)  # a newline in a folder name split its row in two
    cells = [ln.split(" | ")[0].removeprefix("| ") for ln in md[2:]]
    assert cells == [
        "&lt;img src=x onerror=alert(1)&gt;",
        r"two\\x0alines",  # renders as two\x0alines
        r"\[click\](javascript:alert(1))",
        r"a\|b\\",
    ]
    assert all(ln.count(" | ") == md[0].count(" | ") for ln in md[2:])  # no extra cell from the '|'
    assert r'<td class="l">two\x0alines</td>' in render(df, "html")  # the HTML table shows it too


def test_csv_for_spreadsheets_does_not_run_formulas(tmp_path) -> None:
    names = ["=1+1", "+SUM(A1)", "-2+3", "@cmd", "-0.5", "plain"]
    runs = [make_run_dir(tmp_path, name=n, dataset=False) for n in names]
    _configure(runs[0], optim__lr=0.5, model__kwargs__offset=-0.5)
    _configure(runs[1], model__kwargs__offset="=cmd|' /C calc'!A0")
    res = CliRunner().invoke(app, ["compare", *map(str, runs), "--format", "csv"])
    assert res.exit_code == 0, res.output
    back = pd.read_csv(io.StringIO(res.stdout), dtype={"run": str})
    assert back["run"].tolist() == ["'=1+1", "'+SUM(A1)", "'-2+3", "'@cmd", "-0.5", "plain"]
    assert back["path"].tolist() == [str(r) for r in runs]  # absolute paths start with '/'
    assert back["config.optim.lr"][0] == 0.5 and back["test_acc"].dtype == float  # numbers stay numbers
    assert back["config.model.kwargs.offset"].tolist()[:2] == ["-0.5", "'=cmd|' /C calc'!A0"]


def _on_a_terminal(args: list[str]) -> str:
    """What `vislab ARGS` writes to a terminal (a pseudo-terminal as its stdout)."""
    leader, follower = pty.openpty()
    try:
        subprocess.run([sys.executable, "-m", "vislab.cli", *args], stdout=follower, timeout=120, check=True)
    finally:
        os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the terminal has no writer left
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    return b"".join(chunks).decode()


def test_csv_is_exact_when_piped_and_shows_control_characters_on_a_terminal(tmp_path) -> None:
    evil = make_run_dir(tmp_path, name="ok\x1b[2JFAKE", dataset=False)
    args = ["compare", str(evil), "--format", "csv"]
    piped = subprocess.run([sys.executable, "-m", "vislab.cli", *args], capture_output=True, text=True, timeout=120, check=True)
    assert pd.read_csv(io.StringIO(piped.stdout))["path"][0] == str(evil)
    shown = _on_a_terminal(args)
    assert "\x1b" not in shown and r"ok\x1b[2JFAKE" in shown


def test_runs_scored_on_different_test_sets_are_flagged(tmp_path, capsys) -> None:
    """Test figures of other images (another dataset, fewer labelled images, a class missing)
    or best val acc of other validation sets are not ranked side by side without a word."""
    from vislab.evaluate import evaluate
    from vislab.testing.rundirs import make_dataset

    full = make_dataset(tmp_path / "full", per_class=20)  # 3 test images of each of cat, dog, fox
    part = make_dataset(tmp_path / "part", classes=("cat", "dog"), per_class=20, seed=1)
    a, b, c = (make_run_dir(tmp_path, name=n, dataset=False, checkpoint=True, seed=i) for i, n in enumerate("abc"))
    for run, data in ((a, full), (b, part), (c, full)):
        evaluate(run, data=data, name="test")
    capsys.readouterr()

    df = compare_runs([a, b])
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 3 and all(line.startswith("compare: warning: eval/test of these runs ") for line in err)
    assert f"a on {full.resolve()}, b on {part.resolve()}" in err[0]
    assert "(a 9, b 6)" in err[1] and "(b has none of fox)" in err[2]
    assert list(df["dataset"]) == ["full", "part"] and list(df["n_test"]) == [9, 6]
    md = render(df, "md").splitlines()
    assert "| epochs | dataset | n test | best val acc % |" in md[0] and "| 5 | full | 9 |" in md[2] and "| 5 | part | 6 |" in md[3]
    back = pd.read_csv(io.StringIO(render(df, "csv")))
    assert list(back["dataset"]) == ["full", "part"] and list(back["n_test"]) == [9, 6]
    res = CliRunner().invoke(app, ["compare", str(a), str(b)])
    assert res.exit_code == 0 and "n test" in res.output and "part" in res.output

    same = compare_runs([a, c])  # one test set: no word, no column
    assert capsys.readouterr().err == "" and "dataset" not in same and "n_test" not in same

    lines = (full / "manifest.csv").read_text().splitlines(keepends=True)  # re-curated in place: a train image less
    first_train = next(i for i, line in enumerate(lines) if ",train," in line)
    (full / "manifest.csv").write_text("".join(lines[:first_train] + lines[first_train + 1:]))
    evaluate(c, data=full, name="test")
    capsys.readouterr()
    df = compare_runs([a, c])
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "scored different datasets" in err[0] and "(manifest " in err[0]
    assert df["dataset"][0] != df["dataset"][1] and "n_test" not in df

    for run, source in ((a, "manifest"), (c, "held out 10% of train (seed 2)")):
        info = json.loads((run / "run.json").read_text())
        (run / "run.json").write_text(json.dumps({**info, "val_source": source}))
    compare_runs([a, c])
    err = capsys.readouterr().err.splitlines()
    assert err[-1] == "compare: warning: the best validation figures of these runs come from different validation sets (a: (val: manifest); c: (val: held out 10% of train (seed 2)))"


def test_a_split_no_run_has_is_one_line_naming_the_sets_there_are(runs, tmp_path, capsys) -> None:
    res = CliRunner().invoke(app, ["compare", str(runs[0]), "--split", "tset", "--format", "csv"])
    assert res.exit_code == 2
    assert res.output == f"error: {runs[0]}/eval/tset: not evaluated (have: test); run `vislab evaluate {runs[0]} --split tset`\n"
    report = CliRunner().invoke(app, ["report", str(runs[0]), "--split", "tset", "--no-cams"])
    assert report.output.splitlines()[-1] == res.output.strip()  # report --split says it alike
    with pytest.raises(VislabError, match=r"^--split tset: none of the 3 runs has eval/tset \(have: test\); run `vislab evaluate RUN --split tset`"):
        compare_runs(runs, split="tset")

    other = shutil.copytree(runs[1], tmp_path / "other")
    shutil.move(other / "eval" / "test", other / "eval" / "val")
    capsys.readouterr()
    df = compare_runs([runs[0], other])  # one run lacks eval/test: compared, with a word
    assert pd.isna(df.loc[1, "test_acc"]) and not pd.isna(df.loc[0, "test_acc"])
    assert capsys.readouterr().err == f"compare: warning: {other}/eval/test: not evaluated (have: val); run `vislab evaluate {other} --split test`\n"


def _as_detection_run(run) -> None:
    """A run directory turned into a detection run's: config.yaml's `task: detect` and the
    figures a detection evaluation writes (what `vislab compare` reads of it)."""
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    (run / "config.yaml").write_text(yaml.safe_dump({**cfg, "task": "detect"}))
    metrics = {"map50": 0.61, "map50_95": 0.35, "precision_at_conf": 0.7, "recall_at_conf": 0.5, "f1_at_conf": 0.58}
    (run / "eval" / "test" / "metrics.json").write_text(json.dumps(metrics))


def test_out_refuses_a_folder_a_link_and_a_path_under_a_file_in_one_line_before_reading_runs(runs, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    mine = tmp_path / "mine.txt"
    mine.write_text("precious\n")
    (tmp_path / "link.md").symlink_to("mine.txt")
    (tmp_path / "folder").mkdir()
    refusals = {
        "folder": "--out folder: is a folder; name the file to write, e.g. folder/compare.md",
        "link.md": "--out link.md: is a symbolic link to mine.txt; refused",
        "mine.txt/x.md": "--out mine.txt/x.md: mine.txt is a file, not a folder",
    }
    for out, said in refusals.items():
        # a run directory that does not exist: the --out refusal comes before any run is read
        res = CliRunner().invoke(app, ["compare", str(tmp_path / "no-such-run"), "-f", "md", "--out", out])
        assert res.exit_code == 2, res.output
        assert said in " ".join(res.output.split()), res.output
    assert mine.read_text() == "precious\n" and (tmp_path / "link.md").is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder", "link.md", "mine.txt"]  # no temporary file left


def test_out_makes_its_folder_and_replaces_a_plain_file_whole(runs, tmp_path) -> None:
    new = tmp_path / "not" / "yet" / "cmp.md"
    res = CliRunner().invoke(app, ["compare", *map(str, runs), "-f", "md", "--out", str(new)])
    assert res.exit_code == 0, res.output
    assert new.read_text().startswith("| run |")
    old = tmp_path / "old.csv"
    old.write_text("x" * 100_000)
    res = CliRunner().invoke(app, ["compare", *map(str, runs), "-f", "csv", "--out", str(old)])
    assert res.exit_code == 0, res.output
    assert pd.read_csv(old)["run"].tolist() == ["run0", "run1", "run2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not", "old.csv"]


def test_an_unknown_format_is_refused_before_any_run_is_read(tmp_path) -> None:
    res = CliRunner().invoke(app, ["compare", str(tmp_path / "no-such-run"), "--format", "xlsx"])
    assert res.exit_code == 2
    assert "--format 'xlsx': use one of table, md, csv, html, json" in " ".join(res.output.split())


def test_json_holds_the_csv_columns_with_null_for_missing_values(tmp_path) -> None:
    evaluated = make_run_dir(tmp_path, name="a", dataset=False)
    never = make_run_dir(tmp_path, name="b", dataset=False, seed=1)
    shutil.rmtree(never / "eval")
    res = CliRunner().invoke(app, ["compare", str(evaluated), str(never), "--format", "json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)  # the warning that b was never evaluated goes to stderr
    csv = pd.read_csv(io.StringIO(render(compare_runs([evaluated, never]), "csv")))
    assert [list(r) for r in rows] == [list(csv.columns)] * 2
    metrics = json.loads((evaluated / "eval/test/metrics.json").read_text())
    assert rows[0]["run"] == "a" and rows[0]["test_acc"] == pytest.approx(metrics["accuracy"]) and rows[0]["epochs"] == 5
    assert rows[1]["test_acc"] is None and rows[1]["mca"] is None
    assert rows[1]["config.seed"] == 1 and rows[0]["path"] == str(evaluated)


def test_runs_of_two_tasks_never_share_a_header_and_sort_keys_ignore_case(tmp_path) -> None:
    classify = make_run_dir(tmp_path, name="classify", dataset=False)
    detect = make_run_dir(tmp_path, name="detect", dataset=False)
    _as_detection_run(detect)
    df = compare_runs([classify, detect], sort="mAP50")
    assert list(df["run"]) == ["detect", "classify"]  # the detection run has mAP50, best first
    res = CliRunner().invoke(app, ["compare", str(classify), str(detect), "--sort", "MAP50"], terminal_width=400)
    assert res.exit_code == 0, res.output
    header = res.output.splitlines()[0]
    assert "F1 (macro) %" in header and "F1 @conf %" in header and "F1 %" not in header.replace("F1 (macro) %", "").replace("F1 @conf %", "")
    for fmt in ("md", "html"):
        text = render(df, fmt)
        assert "F1 (macro) %" in text and "F1 @conf %" in text
    single = CliRunner().invoke(app, ["compare", str(classify)], terminal_width=400)
    assert "F1 %" in single.output.splitlines()[0]  # alone, the short header
    assert list(compare_runs([classify, detect], sort="Test_Acc")["run"]) == ["classify", "detect"]
