"""The filesystem guards: writes stay inside their folder, special files are never read."""

from __future__ import annotations

import os
import threading

import pytest

from vislab.errors import VislabError
from vislab.fsguard import SpecialFileError, folder_name_problem, inside, open_regular, read_bounded, regular_file_problem


def test_inside_refuses_escapes(tmp_path):
    root = tmp_path / "out"
    root.mkdir()
    assert inside(root, "a", "b.png") == (root / "a" / "b.png").resolve()
    for bad in ("../x", "/etc/passwd", "a/../../x"):
        with pytest.raises(VislabError, match="outside"):
            inside(root, bad)
    (root / "link").symlink_to(tmp_path)  # a link inside that points out
    with pytest.raises(VislabError, match="outside"):
        inside(root, "link", "x")


@pytest.mark.parametrize("name", ["", ".", "..", "../x", "/abs", "tab\there", " pad", "x" * 300, "csi\x9b2J", "nel\x85x"])
def test_bad_folder_names(name):
    assert folder_name_problem(name) is not None


@pytest.mark.parametrize("name", ["cat", "Golden Retriever", "$\\badcmd{$", "a\\b", "日本"])
def test_good_folder_names(name):
    assert folder_name_problem(name) is None


def test_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    result: list[BaseException] = []

    def read() -> None:
        try:
            read_bounded(fifo)
        except BaseException as err:  # noqa: BLE001 - recorded for the assertion
            result.append(err)

    t = threading.Thread(target=read, daemon=True)
    t.start()
    t.join(5)
    assert not t.is_alive(), "reading a named pipe blocked"
    assert isinstance(result[0], SpecialFileError)
    assert regular_file_problem(fifo) == "not a regular file"


def test_device_and_size_limit(tmp_path):
    with pytest.raises(SpecialFileError):
        read_bounded("/dev/zero")
    big = tmp_path / "big.bin"
    big.write_bytes(b"x" * 100)
    with pytest.raises(SpecialFileError, match="limit"):
        read_bounded(big, limit=10)
    assert read_bounded(big, limit=100) == b"x" * 100
    with open_regular(big) as fh:
        assert fh.read(3) == b"xxx"
    assert regular_file_problem(tmp_path / "nope") == "missing"


def test_make_folder_under_a_file_is_one_line(tmp_path):
    from vislab.fsguard import make_folder

    (tmp_path / "f").write_text("x")
    assert make_folder(tmp_path / "a" / "b") == tmp_path / "a" / "b" and (tmp_path / "a" / "b").is_dir()
    for bad in (tmp_path / "f", tmp_path / "f" / "sub"):
        with pytest.raises(VislabError, match=r"--out .*a file, not a folder"):
            make_folder(bad)


def test_printable_names_survive_a_strict_utf8_stdout():
    from vislab.fsguard import printable

    odd = os.fsdecode(b"odd\xff\nname.png")
    shown = printable(odd)
    assert shown == "odd\\xff\\x0aname.png"
    shown.encode("utf-8")  # strict: no surrogates left
    assert printable("猫 [/x].png") == "猫 [/x].png"


def test_printable_shows_c1_controls_that_terminals_obey():
    from vislab.fsguard import printable

    assert printable("a\x9b2Jb\x85c") == "a\\x9b2Jb\\x85c"  # CSI and NEL as 8-bit controls
    assert printable("é\xa0ÿ") == "é\xa0ÿ"  # from U+00A0 on, text


def test_printable_shows_invisible_format_characters():
    """A bidi override made '\u202egnp.tac' print as 'cat.png'; a zero-width space hid."""
    from vislab.fsguard import printable

    assert printable("\u202egnp.tac") == "\\u202egnp.tac"
    assert printable("cat\u200b|\ufeff|\xad|\U000e0001") == "cat\\u200b|\\ufeff|\\xad|\\U000e0001"
    assert printable("cafe\u0301 猫") == "cafe\u0301 猫"  # a combining accent is visible text
    # joiners inside Persian words and emoji sequences are spelling; next to ASCII or at an end they hide
    assert printable("می\u200cخواهم 👩\u200d💻") == "می\u200cخواهم 👩\u200d💻"
    assert printable("cat\u200d|\u200cگل|گل\u200c") == "cat\\u200d|\\u200cگل|گل\\u200c"


def test_inside_names_the_link_that_leads_out(tmp_path):
    run, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    run.mkdir()
    elsewhere.mkdir()
    (run / "plots").symlink_to(elsewhere)
    with pytest.raises(VislabError, match=r"through the symbolic link .*run/plots \(to .*elsewhere\); refused") as err:
        inside(run, "plots", "curves.png")
    assert len(str(err.value).splitlines()) == 1
    (run / "inner").mkdir()
    (run / "here").symlink_to(run / "inner")  # a link that stays inside is fine
    assert inside(run, "here", "x.png") == (run / "inner" / "x.png").resolve()
    (run / "inner" / "out").symlink_to(elsewhere)  # the link named is the one that leads out
    with pytest.raises(VislabError, match=r"through the symbolic link .*run/here/out \(to"):
        inside(run, "here", "out", "x.png")


def test_atomic_writes_never_open_a_link_planted_at_either_name(tmp_path):
    """The temporary name `.NAME.tmpPID` is predictable and the final name may be a link in a
    folder received from someone else: neither is written through."""
    from vislab.runs import atomic_write_text

    victim = tmp_path / "notes.txt"
    victim.write_text("a user's file")
    out = tmp_path / "run"
    out.mkdir()
    (out / f".summary.json.tmp{os.getpid()}").symlink_to(victim)
    atomic_write_text(out / "summary.json", "{}")
    (out / "config.yaml").symlink_to(victim)
    atomic_write_text(out / "config.yaml", "task: classify\n")
    assert victim.read_text() == "a user's file"
    for name, text in (("summary.json", "{}"), ("config.yaml", "task: classify\n")):
        assert not (out / name).is_symlink() and (out / name).read_text() == text
    assert sorted(p.name for p in out.iterdir()) == [f".summary.json.tmp{os.getpid()}", "config.yaml", "summary.json"]


def test_a_failed_atomic_write_leaves_the_old_file_and_no_temporary_one(tmp_path):
    from vislab.fsguard import replacing, write_file

    target = write_file(tmp_path / "out" / "metrics.json", "{}")  # its folder is created
    with pytest.raises(RuntimeError):
        with replacing(target) as fh:
            fh.write(b"half a file")
            raise RuntimeError("the writer failed")
    assert target.read_text() == "{}" and [p.name for p in target.parent.iterdir()] == ["metrics.json"]
