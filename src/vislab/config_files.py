"""Config files on disk: the recipes shipped with the package, finding the file a name means,
and reading YAML the way every config, search space and `--set` value is read.

Kept apart from the pydantic models so each concern stays small; `vislab.config` re-exports
these names."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from vislab.errors import VislabError, closest_name

RECIPES_DIR = Path(__file__).parent / "recipes"


def recipe_names() -> list[str]:
    """Names of the packaged recipes (`vislab configs`), e.g. 'digits-cnn'."""
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def recipe_description(path: str | Path) -> str:
    """The first comment line of a recipe: its one-line description."""
    for line in Path(path).read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("#").strip()
        if line.strip():
            break
    return ""


def recipe_path(name: str) -> Path | None:
    """The packaged recipe called `name` (with or without .yaml), or None."""
    stem = name.removesuffix(".yaml")
    path = RECIPES_DIR / f"{stem}.yaml"
    return path if "/" not in stem and path.is_file() else None


def local_copy(path: str | Path) -> Path | None:
    """./NAME.yaml (or .yml) for a bare NAME: after `vislab configs copy NAME` the user edits
    that file and trains with NAME again, so the edited copy must not lose to the recipe."""
    p = Path(path)
    if p.parent != Path(".") or p.suffix in (".yaml", ".yml") or not p.name:
        return None
    found = [c for c in (p.with_name(p.name + ".yaml"), p.with_name(p.name + ".yml")) if c.is_file()]
    if len(found) > 1:
        raise VislabError(f"{p}: both ./{found[0]} and ./{found[1]} exist; pass the file to train with")
    return found[0] if found else None


def config_note(path: str | Path) -> str | None:
    """The line the CLI prints when a bare name means a local file rather than the recipe."""
    p = Path(path)
    local = None if p.is_file() else local_copy(path)
    if local is None:
        return None
    recipe = f" (a local copy of the recipe {p.name})" if recipe_path(p.name) is not None else ""
    return f"using ./{local}{recipe}"


def config_path(path: str | Path) -> Path:
    """A config file, or what a bare name means: a file of that name, else ./NAME.yaml or
    ./NAME.yml (the edited copy `configs copy` writes), else the packaged recipe."""
    p = Path(path)
    if p.is_file():
        return p
    local = local_copy(path)
    if local is not None:
        return local
    recipe = recipe_path(str(path)) if p.parent == Path(".") else None
    if recipe is not None:
        return recipe
    close = closest_name(p.name.removesuffix(".yaml"), recipe_names(), cutoff=0.6)
    hint = f"did you mean the recipe {close}?" if close else f"pass a YAML file or a recipe name ({', '.join(recipe_names())})"
    raise VislabError(f"{p}: config file not found; {hint}")


def copy_recipe(name: str, dest: str | Path | None = None) -> Path:
    """Write the packaged recipe `name` to `dest` (a file, a folder, or ./NAME.yaml) to edit;
    an existing file is never overwritten."""
    src = recipe_path(name)
    if src is None:
        close = closest_name(name, recipe_names(), cutoff=0.6)
        hint = f"did you mean {close}?" if close else f"choose one of {', '.join(recipe_names())}"
        raise VislabError(f"configs copy: no recipe '{name}'; {hint}")
    target = Path(dest) if dest is not None else Path(src.name)
    if target.is_dir():
        target = target / src.name
    try:
        with open(target, "x", encoding="utf-8") as fh:
            fh.write(src.read_text())
    except FileExistsError:
        raise VislabError(f"{target}: already exists; refused to overwrite it (pass another DEST)") from None
    except OSError as err:
        raise VislabError(f"{target}: cannot write ({err.strerror})") from None
    return target


# an aliased YAML value counts once per use: past this many, nested aliases are a YAML bomb
# (9 levels of ten uses are a billion values), not a config
MAX_ALIASED_VALUES = 100_000


class RefusedYaml(yaml.constructor.ConstructorError):
    """Valid YAML that vislab refuses to read (a key written twice, aliases expanding too far)."""


class _Loader(yaml.SafeLoader):
    """YAML as people write it, which is not always as YAML 1.1 reads it:

    - `1e-4` is a float (PyYAML's YAML 1.1 rules need `1.0e-4`, so a search space's
      `float: [1e-4, 1e-1]` arrived as two strings);
    - `1:30` stays text (YAML 1.1's base-60 number 90; see below);
    - `010` is ten, as YAML 1.2 reads it (YAML 1.1's octal made `epochs: 010` eight epochs);
      `0x10` and `0b10` keep their explicit hex and binary prefixes;
    - a key written twice in one mapping is an error naming both lines (YAML keeps the last,
      silently dropping the first block);
    - aliases (`*name`) are allowed, but not past `MAX_ALIASED_VALUES` values once expanded."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent) and not hasattr(self, "_first_alias"):
            self._first_alias = self.peek_event().start_mark
        return super().compose_node(parent, index)

    def construct_document(self, node: yaml.Node) -> Any:
        if hasattr(self, "_first_alias"):
            _check_expansion(node, self._first_alias)
        return super().construct_document(node)

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, yaml.Node] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node)
                except TypeError:  # an unhashable key: the base constructor says so
                    continue
                if first is not key_node:
                    raise RefusedYaml(None, None, f"key '{key}' written twice in one mapping (first on line {first.start_mark.line + 1}); "
                                      "YAML would keep only the last, so merge them into one", key_node.start_mark)
        return super().construct_mapping(node, deep)

    def construct_yaml_int(self, node: yaml.Node) -> int:
        text = str(self.construct_scalar(node)).replace("_", "").lstrip("+-")
        if len(text) > 1 and text[0] == "0" and text.isdigit():  # YAML 1.1 octal: read as decimal
            return int(str(self.construct_scalar(node)).replace("_", ""), 10)
        return super().construct_yaml_int(node)


_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_yaml_int)


def _check_expansion(root: yaml.Node, mark: Any) -> None:
    """Refuse a document whose aliases expand past `MAX_ALIASED_VALUES` values (or into
    themselves), before anything walks the expanded values."""
    sizes: dict[int, int] = {}

    def size(node: yaml.Node) -> int:
        if id(node) in sizes:
            if sizes[id(node)] < 0:
                raise RefusedYaml(None, None, "an alias refers to the value that holds it; write the value out", mark)
            return sizes[id(node)]
        sizes[id(node)] = -1
        children = [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else node.value if isinstance(node, yaml.SequenceNode) else []
        total = 1
        for child in children:
            total += size(child)
            if total > MAX_ALIASED_VALUES:
                raise RefusedYaml(None, None, f"aliases expand to more than {MAX_ALIASED_VALUES} values; write the values out", mark)
        sizes[id(node)] = total
        return total

    size(root)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$"), list("-+0123456789")
)


# YAML 1.1 reads `1:30` as the base-60 number 90; as a duration people mean 1 h 30 min as
# often as 1 min 30 s, so such a value stays text (YAML 1.2's rule) and is judged as text.
for _first, _resolvers in _Loader.yaml_implicit_resolvers.items():
    _Loader.yaml_implicit_resolvers[_first] = [
        (tag, re.compile(r"(?!.*:)" + rx.pattern, rx.flags) if tag in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float") else rx)
        for tag, rx in _resolvers
    ]


def load_yaml(text: str) -> Any:
    """`yaml.safe_load` with `_Loader`'s rules: every config, space and override is read so."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def read_text(p: Path) -> str:
    """A config file's text: UTF-8 (a byte-order mark is fine), else one line saying how to fix it."""
    data = p.read_bytes()
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise VislabError(f"{p}: saved as UTF-16; save it as UTF-8 (in Notepad: Save as, Encoding UTF-8)")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise VislabError(f"{p}: not UTF-8 text (byte 0x{data[err.start]:02x} on line {line}); save it as UTF-8") from None


def yaml_problem(err: yaml.YAMLError) -> str:
    """A YAML error as 'line L, column C: problem' (1-based, as editors count), with the fix for tabs."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    if "'\\t'" in problem:  # PyYAML shows the tab escaped
        problem += " (YAML indents with spaces, not tabs)"
    return where + problem


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A config file's (or named recipe's) top-level mapping, or a one-line error naming the file."""
    p = config_path(path)
    try:
        raw = load_yaml(read_text(p)) or {}
    except RefusedYaml as err:
        raise VislabError(f"{p}: {yaml_problem(err)}") from None
    except yaml.YAMLError as err:
        raise VislabError(f"{p}: not valid YAML at {yaml_problem(err)}") from None
    if not isinstance(raw, dict):
        raise VislabError(f"{p}: expected a mapping of sections at the top level")
    return raw
