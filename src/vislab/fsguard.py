"""Guards for every path vislab reads or writes.

- `inside(root, *parts)`: the path a writer may use, resolved and checked to stay inside its
  output folder (a label such as `../../x` or `/abs` never escapes it).
- `make_folder(path, what)`: create an output folder, or say in one line why it cannot be
  (a file already has its name or a parent's, permission denied).
- `slug(text)`: a file-name part made of [A-Za-z0-9._-] only, for names derived from labels.
- `folder_name_problem(name)`: why a label cannot be a folder name (None when it can), so
  curate refuses such labels with a reason before any writer sees them.
- `folder_problem(path)`: why an output folder cannot be made there (it or a parent is a file).
- `output_file_problem(path, example)`: why a user's `--out FILE` cannot be written (a folder,
  a symbolic link, a special file, a path under a file); a regular file there may be replaced.
- `cannot_write(path, err, fix)`: the one-line error for a file that cannot be written.
- `printable(text)`: a file name as text any terminal prints on one line (undecodable bytes,
  control characters and invisible format characters escaped), for output that names user files.
- `open_regular(path)` / `read_bounded(path, limit)`: only regular files are read (a named
  pipe would block forever, `/dev/zero` never ends), and never more than a size limit.
- `remove_orphan_temps(root)`: the temporary files of writers killed mid-write, removed.
- `replacing(path)` / `write_file(path, data)`: a file written whole into a new temporary
  file beside it, created exclusively (an existing file or symbolic link of that name is
  never opened), then renamed onto `path`; the rename replaces a link at `path` instead of
  writing through it. Every file of a run folder (and of an output folder such as predict's
  --out) is written as `replacing(inside(root, name))`: a folder or file link that leads
  out of the folder (one received from someone else) is refused, in one line naming it.

Each raises `VislabError` (writers) or `SpecialFileError` (readers, so callers can turn it
into a per-file reason) with a message naming the path.
"""

from __future__ import annotations

import os
import re
import secrets
import stat
import unicodedata
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator

from vislab.errors import VislabError

# Reads of a single image or label file are refused above this size (a camera RAW is ~100 MB).
MAX_FILE_BYTES = 512 * 1024 * 1024
# Images above this many pixels are refused as decompression bombs (Pillow's own default limit).
MAX_PIXELS = 178_956_970
# `vislab serve`'s: a web service decodes what strangers send, and one 20 KB 1-bit PNG of
# MAX_PIXELS takes ~0.8 GB to decode; a 48-megapixel phone photo (8064 x 6048) still passes.
SERVE_MAX_PIXELS = 50_000_000
_NAME_MAX_BYTES = 255


class SpecialFileError(OSError):
    """The path is not a regular file (a pipe, device, socket or folder), or is too large to read."""


def inside(root: str | Path, *parts: str | Path) -> Path:
    """`root/parts...` made absolute, refused unless it stays inside `root`.

    Symbolic links already on disk are resolved, so a link inside `root` that points out of
    it does not let a write through either.
    """
    base = Path(os.path.realpath(root))
    target = Path(os.path.realpath(os.path.join(base, *[str(p) for p in parts])))
    if target != base and base not in target.parents:
        shown = os.path.join(*[str(p) for p in parts]) if parts else str(root)
        link = _link_on_the_way(base, parts)
        if link is not None:
            raise VislabError(
                f"{printable(shown)}: would be written outside {printable(base)} through the symbolic link {printable(link)} "
                f"(to {printable(os.readlink(link))}); refused: replace the link with a real folder or file, or remove it"
            )
        raise VislabError(f"{printable(shown)}: would be written outside {printable(base)}; refused (use labels and names without '..' or '/')")
    return target


def _link_on_the_way(base: Path, parts: tuple[str | Path, ...]) -> Path | None:
    """The first symbolic link met walking `parts` down from `base` that leads out of it
    (None when the path leaves `base` by '..' or an absolute part instead), for a message
    that names the link."""
    here = base
    for part in Path(*[str(p) for p in parts]).parts if parts else ():
        if part in ("..", os.sep) or os.path.isabs(part):
            return None
        here = here / part
        if os.path.islink(here):
            real = Path(os.path.realpath(here))
            if real != base and base not in real.parents:
                return here
    return None


def make_folder(path: str | Path, what: str = "--out") -> Path:
    """Create folder `path` (and its parents) unless it exists; refused in one line when it
    cannot be (see `folder_problem`). `what` names the option in the message."""
    path = Path(path)
    problem = folder_problem(path)
    if problem:
        raise VislabError(f"{what} {path}: {problem}; choose a folder path")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise VislabError(f"{what} {path}: cannot create the folder ({os.strerror(err.errno) if err.errno else err})") from None
    return path


def folder_problem(path: str | Path) -> str | None:
    """Why `path` cannot be (made into) a folder to write into, or None: it, or a folder
    above it, is a file. Checked before any long work, so it fails at once, in one line."""
    target = Path(os.path.abspath(path))
    for place in (target, *target.parents):
        if os.path.lexists(place):
            if os.path.isdir(place):
                return None
            return "is a file, not a folder" if place == target else f"lies under {place}, which is a file, not a folder"
    return None


def output_file_problem(path: str | Path, example: str) -> str | None:
    """Why `path`, named by the user as the one file to write (an `--out FILE`), must not be
    written, or None: it is a folder, a symbolic link (writing would replace what it points
    to, or the link), a pipe or device, or lies under a file. An existing regular file is
    the user's request to replace it (`write_file`, never through a link). Checked before
    any long work; `example` is a file name to suggest inside a folder."""
    target = Path(path)
    if os.path.islink(target):
        try:
            to = f" to {printable(os.readlink(target))}"
        except OSError:
            to = ""
        return f"is a symbolic link{to}; refused, so that neither it nor its target is replaced: name the file itself or a new one"
    if target.is_dir():
        return f"is a folder; name the file to write, e.g. {printable(target / example)}"
    if os.path.lexists(target) and not target.is_file():
        return "is not a regular file (a pipe, socket or device); name a regular file"
    problem = folder_problem(target.parent)
    return f"{printable(target.parent)} {problem}" if problem else None


def cannot_write(path: str | Path, err: OSError, fix: str = "choose a writable --out") -> VislabError:
    """The one-line error for a file that cannot be written (a read-only folder, a full disk)."""
    why = os.strerror(err.errno) if err.errno else str(err)
    return VislabError(f"{printable(path)}: cannot write ({why}); {fix}")


def slug(text: str) -> str:
    """`text` reduced to [A-Za-z0-9._-] ('+' as 'p', other runs as '_'), never empty: a safe
    part of a file name derived from a class or file name. Different texts may share a slug;
    callers that need distinct names add a hash."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text.replace("+", "p")).strip("_") or "x"


def folder_name_problem(name: str) -> str | None:
    """Why `name` cannot be one folder-name component on common filesystems, or None."""
    if name in ("", ".", ".."):
        return f"'{name}' is not a folder name"
    if "/" in name:
        return "contains the path separator '/'"
    if any(ord(ch) < 32 or 127 <= ord(ch) <= 159 for ch in name):  # C0, DEL and C1 (U+009B is CSI, ESC [)
        return "contains a control character"
    try:
        encoded = name.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate from JSON or YAML ("\ud800"): no file name holds it
        return "is not valid Unicode text (a lone surrogate)"
    if len(encoded) > _NAME_MAX_BYTES:
        return f"longer than {_NAME_MAX_BYTES} bytes"
    if name != name.strip():
        return "starts or ends with whitespace"
    return None


# Control characters (C0, DEL, C1), and any other non-ASCII one that `_escaped` checks.
_UNSHOWN = re.compile(r"[\x00-\x1f\x7f-\x9f]|[^\x00-\x7f]")


def printable(text: str | Path) -> str:
    """`text` with bytes that are not UTF-8 (kept by Python as surrogates) shown as `\\xNN`,
    control characters (a newline in a file name; C1 ones such as U+009B, which some
    terminals obey as ESC [) as `\\xNN`, and invisible format characters (zero-width
    spaces, bidi overrides that show 'gnp.tac' as 'cat.png') as `\\uNNNN`: a strict UTF-8
    stdout cannot fail on it, one name stays on one line, and what is shown is what the
    name holds."""
    try:
        s = str(text).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate that stands for no byte ("\ud800" from JSON): \ud800
        s = str(text).encode("utf-8", "backslashreplace").decode("utf-8")
    return _UNSHOWN.sub(_escaped, s)


_JOINERS = "\u200c\u200d"  # ZWNJ, ZWJ: part of Persian and Indic spelling and of emoji sequences


def _escaped(match: re.Match[str]) -> str:
    ch = match.group()
    code = ord(ch)
    if code > 0x9F and unicodedata.category(ch) != "Cf":
        return ch
    if ch in _JOINERS and _between_non_ascii(match.string, match.start()):
        return ch  # joins two visible characters (e.g. a Persian word): shown as written
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def _between_non_ascii(text: str, at: int) -> bool:
    """Whether text[at] has a non-ASCII, non-format character on each side: a joiner there
    shapes what is shown; next to ASCII or at an end it would only hide."""
    if at == 0 or at + 1 >= len(text):
        return False
    return all(ord(c) > 0x7F and unicodedata.category(c) != "Cf" for c in (text[at - 1], text[at + 1]))


def regular_file_problem(path: str | Path) -> str | None:
    """Why `path` must not be read as a file (not there, a pipe, a device, ...), or None."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "missing"
    except OSError as err:
        return os.strerror(err.errno) if err.errno else str(err)
    except ValueError:  # a NUL byte, or a lone surrogate no file name can hold
        return "not a valid file name"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    return None


def open_regular(path: str | Path, limit: int | None = MAX_FILE_BYTES) -> BinaryIO:
    """Open a regular file for reading without ever blocking on a pipe or device.

    O_NONBLOCK makes opening a FIFO return at once; the opened descriptor is then checked
    with fstat, so a file swapped for a pipe after a stat cannot slip through.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SpecialFileError(f"{path}: not a regular file")
        if limit is not None and st.st_size > limit:
            raise SpecialFileError(f"{path}: {st.st_size:,} bytes, over the {limit:,}-byte limit")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_bounded(path: str | Path, limit: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of a regular file of at most `limit` bytes (checked again while reading,
    in case the file grows)."""
    with open_regular(path, limit) as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise SpecialFileError(f"{path}: over the {limit:,}-byte limit")
    return data


def fsync_dir(folder: str | Path) -> None:
    """Make the renames inside `folder` durable (best effort: not every filesystem allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


# The temporary files `replacing` creates (`.NAME.tmpPID`): a killed writer's are found by it.
TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.tmp(?P<pid>[0-9]+)$")
_TEMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def _create_temp(path: Path) -> tuple[int, Path]:
    """A new, empty file `.NAME.tmpPID` beside `path` (`.NAME.RANDOM.tmpPID` when that name
    is taken): O_EXCL never opens what is already there, a link planted under the name
    included. The names match `TEMP_NAME`, so a killed writer's file is recognised and cleaned up."""
    pid = os.getpid()
    for attempt in range(20):
        name = f".{path.name}.tmp{pid}" if attempt == 0 else f".{path.name[:40]}.{secrets.token_hex(4)}.tmp{pid}"
        tmp = path.with_name(name)
        try:
            return os.open(tmp, _TEMP_FLAGS, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"{path.parent}: no free temporary name for {path.name}")


@contextmanager
def replacing(path: str | Path, durable: bool = False) -> Iterator[BinaryIO]:
    """A binary file whose bytes replace `path` when the block ends without an error (and are
    discarded otherwise): readers never see half a file, and neither the temporary file nor
    the final name is ever opened through an existing link. Its folder is created if missing.

    `durable` also fsyncs the file before the rename and the folder after it (for files that
    must survive a power cut together with what they describe, like checksums)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(path)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    if durable:
        fsync_dir(path.parent)


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists (one of another user counts): its temporary files are kept."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return pid > 0
    return True


def temp_of(name: str, targets: tuple[str, ...]) -> bool:
    """Whether the file `name` is a temporary file `replacing` made for one of `targets`
    (`.NAME.tmpPID`, or `.NAME[:40].RANDOM.tmpPID` when that was taken)."""
    m = TEMP_NAME.match(name)
    if m is None:
        return False
    made_for = m["name"]
    return any(made_for == t or re.fullmatch(re.escape(t[:40]) + r"\.[0-9a-f]{8}", made_for) for t in targets)


def remove_orphan_temps(root: str | Path, targets: tuple[str, ...] | None = None, recursive: bool = True) -> list[Path]:
    """Delete the `.NAME.tmpPID` files that writers killed mid-write (SIGKILL, a power cut)
    left in `root` (and below it, if `recursive`).

    Call it holding the folder's lock (`locks.folder_lock`), so no writer of its own command
    is at work there. Only regular files named by `TEMP_NAME` (links are not followed), of one
    of `targets` when given (the files the command writes), and whose writer process is gone
    (another command writing there at the same time keeps its file) are removed. Returns what
    was removed."""
    removed = []
    for folder, dirs, files in os.walk(root, followlinks=False):
        dirs[:] = [d for d in dirs if recursive and not os.path.islink(os.path.join(folder, d))]
        for name in files:
            m = TEMP_NAME.match(name)
            if m is None or (targets is not None and not temp_of(name, targets)) or pid_alive(int(m["pid"])):
                continue
            path = Path(folder, name)
            try:
                if stat.S_ISREG(os.lstat(path).st_mode):
                    path.unlink()
                    removed.append(path)
            except OSError:
                pass
    return removed


def write_file(path: str | Path, data: bytes | str, durable: bool = False) -> Path:
    """`data` (text as UTF-8) written to `path` through `replacing`; returns `path`. A file
    name that is not UTF-8 (its bytes kept by Python as surrogates) is written as its bytes,
    as stdout writes it, so the file names the real file."""
    with replacing(path, durable) as fh:
        fh.write(data.encode("utf-8", "surrogateescape") if isinstance(data, str) else data)
    return Path(path)
