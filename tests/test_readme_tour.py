"""README.md's "A short tour" runs as written, top to bottom, with the real `vislab` command.

The tour's ```bash block is run as one bash script (`set -euo pipefail`, traced) in an empty
folder, with this interpreter's bin folder first on PATH, so a command edited in the README is
the command tested. Only two things differ from a reader's shell, both shown in the README:
lines marked `# needs the internet` are skipped (a warning names them; only `vislab collect`
and commands that read what it downloaded may carry the mark), and VISLAB_SERVE_PORT is set to
a free port so a server already on 8000 cannot answer for the tour's. The background
`vislab serve ... &` is stopped by the test with SIGTERM to the script's process group.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from vislab.testing.processes import wait_group_gone

README = Path(__file__).resolve().parents[1] / "README.md"
HEADING = "## A short tour"
API_HEADING = "## Python API"
INTERNET = "# needs the internet"
TIMEOUT = 900  # seconds for the whole tour (2-7 minutes on a loaded 2-core machine)


def tour_block(text: str, heading: str = HEADING, lang: str = "bash") -> str:
    """The first ```LANG block under a heading (before the next `## ` heading)."""
    start = text.index(heading)
    end = text.find("\n## ", start + len(heading))
    section = text[start : end if end != -1 else None]
    match = re.search(rf"^```{lang}\n(.*?)^```$", section, re.S | re.M)
    assert match, f"{README}: no ```{lang} block under {heading!r}"
    return match.group(1)


def internet_lines(block: str) -> list[str]:
    """The commands marked as needing the internet; each must be a `vislab collect` or read
    the folder one of them downloads into (`--photos DIR`), and fit on one line."""
    lines = block.splitlines()
    marked = [(i, line) for i, line in enumerate(lines) if line.rstrip().endswith(INTERNET)]
    downloads: set[str] = set()
    for i, line in marked:
        assert i == 0 or not lines[i - 1].rstrip().endswith("\\"), f"mark the whole command on one line: {line}"
        words = shlex.split(line.split(INTERNET)[0], comments=True)
        command = [w for w in words if not re.match(r"^[A-Z_]+=", w)]  # VAR=value prefixes
        if command[:2] == ["vislab", "collect"]:
            downloads.add(command[command.index("--out") + 1])
        else:
            assert "--photos" in command and command[command.index("--photos") + 1] in downloads, (
                f"only `vislab collect` and what reads its downloads may skip: {line}"
            )
    return [line for _, line in marked]


def tour_script(block: str, skipped: list[str]) -> str:
    lines = [f"echo 'tour: skipped (needs the internet): '{shlex.quote(line)}" if line in skipped else line for line in block.splitlines()]
    return "set -euo pipefail\nset -x\n" + "\n".join(lines) + "\necho 'tour: done'\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_group(proc: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM to the tour's process group (the background server), then wait for all to leave."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    proc.wait(timeout)
    left = wait_group_gone(proc.pid, timeout)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"the tour's background processes {left} ignored SIGTERM for {timeout}s"


def test_the_parser_finds_the_tour_and_refuses_other_skips():
    block = tour_block(README.read_text())
    assert "vislab train" in block and "vislab serve" in block
    with pytest.raises(AssertionError, match="only `vislab collect`"):
        internet_lines("vislab train digits-cnn --data d --out r   # needs the internet\n")


def readme_commands(text: str) -> list[str]:
    """Every `vislab ...` command in the README's ```bash blocks: continuation lines joined,
    comments dropped, split at `;`, `&&`, `|` and `&`, VAR=value prefixes left out."""
    commands = []
    for block in re.findall(r"^```bash\n(.*?)^```$", text, re.S | re.M):
        for line in block.replace("\\\n", " ").splitlines():
            lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
            lexer.whitespace_split = True
            words: list[str] = []
            for word in [*lexer, ";"]:
                if word.strip(";&|"):
                    words.append(word)
                    continue
                command = [w for w in words if not re.match(r"^[A-Z_]+=", w)] if words and re.match(r"^[A-Z_]+=", words[0]) else words
                if command[:1] == ["vislab"]:
                    commands.append(shlex.join(command))
                words = []
    return commands


def parse_command(command: str) -> str:
    """Parse one `vislab ...` command line with the real CLI's parser (commands, options,
    argument counts and option types, as the shell would run it) without running it; the
    command path it resolves to."""
    import typer

    from vislab.cli import app

    group = typer.main.get_command(app)
    ctx = group.make_context("vislab", shlex.split(command)[1:])
    while hasattr(group, "resolve_command") and ctx._protected_args + ctx.args:
        name, group, rest = group.resolve_command(ctx, ctx._protected_args + ctx.args)
        ctx = group.make_context(name, rest, parent=ctx)
    return ctx.command_path


def test_every_vislab_command_in_the_readme_parses():
    from typer._click.exceptions import ClickException

    commands = readme_commands(README.read_text())
    assert len(commands) > 40 and any("--sanity" in c for c in commands) and any(c.startswith("vislab serve runs/kitti") for c in commands)
    wrong = []
    for command in commands:
        try:
            parse_command(command)
        except ClickException as err:
            wrong.append(f"{command}: {err.format_message()}")
    assert wrong == []


def test_the_readme_command_check_catches_a_wrong_option_or_command():
    from typer._click.exceptions import ClickException

    text = "```bash\nFOO=1 vislab train x --sanityy   # a comment\nvislab stats d; vislab modelz | head\n```\n"
    commands = readme_commands(text)
    assert commands == ["vislab train x --sanityy", "vislab stats d", "vislab modelz"]
    assert parse_command(commands[1]) == "vislab stats"
    for bad in (commands[0], commands[2]):
        with pytest.raises(ClickException):
            parse_command(bad)


@pytest.mark.slow
@pytest.mark.timeout(TIMEOUT + 60)
def test_readme_tour_runs_as_written(tmp_path):
    if shutil.which("curl") is None:
        pytest.skip("the README tour's serve step needs curl: install the Debian package `curl`")
    block = tour_block(README.read_text())
    skipped = internet_lines(block)
    if skipped:
        warnings.warn(f"README tour: skipped {len(skipped)} command(s) that need the internet: " + " | ".join(s.split(INTERNET)[0].strip() for s in skipped))
    script = tmp_path / "tour.sh"
    script.write_text(tour_script(block, skipped))
    work = tmp_path / "tour"
    work.mkdir()
    port = free_port()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}", "VISLAB_SERVE_PORT": str(port)}
    env.pop("FLICKR_API_KEY", None)
    log = tmp_path / "tour.log"
    with open(log, "w") as sink:  # a file, not a pipe: the background server keeps its stdout open
        proc = subprocess.Popen(["bash", str(script)], cwd=work, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        proc.wait(TIMEOUT)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the tour took over {TIMEOUT}s:\n{log.read_text()[-8000:]}") from None
    finally:
        stop_group(proc)
    out = log.read_text()
    assert proc.returncode == 0 and "\ntour: done\n" in out, f"a README tour command failed (the last '+' line):\n{out[-8000:]}"
    assert "Traceback" not in out, out[-8000:]

    # what the tour says it makes is there
    for path in ("datasets/digits/manifest.csv", "runs/digits/report.html", "runs/digits/export/model.onnx", "sweeps/digits/results.csv", "my.yaml"):
        assert (work / path).is_file(), f"the tour did not write {path}"
    assert json.loads((work / "runs/digits/summary.json").read_text())["epochs_completed"] == 14  # --resume --epochs 14
    # the server answered the tour's requests: models listed, a digit predicted
    assert re.search(r'"name":\s*"digits"', out) and re.search(r'"name":\s*"digits-abn"', out), out[-8000:]
    assert re.search(r'"model":\s*"digits",\s*"task":\s*"classify".*"results":\s*\[\{"file":\s*"0003.png"', out), out[-8000:]


@pytest.mark.slow
def test_readme_python_api_example_runs(tmp_path):
    """The README's Python API block, as written, after the tour's first line (the digits)."""
    from vislab.data.examples import export_digits

    export_digits(tmp_path / "photos")
    code = tour_block(README.read_text(), API_HEADING, "python")
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    accuracy, top = res.stdout.strip().splitlines()[-2:]
    assert 0.3 < float(accuracy) <= 1.0, res.stdout  # 10 classes: chance is 0.1
    assert top.startswith("[{'label': "), res.stdout
    assert (tmp_path / "runs/api/eval/test/metrics.json").is_file()


def test_api_names_are_the_functions_not_their_modules():
    # vislab.train is also a module: importing it must not shadow the function `from vislab` gives
    code = (
        "import types, vislab\n"
        "from vislab import curate, evaluate, load_config, predict, train\n"
        "import vislab.train, vislab.predict\n"
        "names = [curate, evaluate, load_config, predict, train, vislab.train, vislab.export_run]\n"
        "assert all(callable(f) and not isinstance(f, types.ModuleType) for f in names), names\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]


def test_the_files_and_extras_the_readme_names_are_the_checkouts():
    """A path in backquotes is one a reader can open from the checkout, and each `pip install`
    of extras asks for extras pyproject.toml defines, all of those the command needs (the
    transfer benchmark's peers load the `weights` extra's ImageNet weights too)."""
    import tomllib

    root = README.parent
    text = README.read_text()
    paths = set(re.findall(r"`((?:src|tests|benchmarks|configs|vislab)/[\w./-]+\.(?:py|yaml|html))`", text))
    assert paths and [p for p in sorted(paths) if not (root / p).is_file()] == []
    extras = tomllib.loads((root / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for wanted in re.findall(r'pip install -e "\.\[([\w,]+)\]"', text):
        assert set(wanted.split(",")) <= set(extras), wanted
    peers = re.search(r'interpreter of an environment with vislab\[([\w,]+)\]', (root / "benchmarks/transfer.py").read_text()).group(1)
    assert f'`benchmarks/transfer.py` (`pip install -e ".[{peers}]"` for the peers' in " ".join(text.split())
