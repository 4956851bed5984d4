"""The search space of a sweep: which config keys vary, over which values.

A space file maps dotted config keys to one of

    optim.lr: {float: [1e-4, 1e-1], log: true}      # also `step: 0.01` (not with log)
    data.batch_size: {int: [32, 256], step: 32}     # also `log: true`
    model.name: {choices: [resnet18, simple_cnn]}   # or just the list: [resnet18, simple_cnn]

A grid file's `grid:` mapping (key -> list of values) is the same thing with lists only.
Every key and every value (each choice, each end of a range) is checked by building the run
config with it before anything trains, so a typo is a one-line error naming the file and key;
two choices the config reads as one value are duplicates, and a key every trial must share
(`fixed_keys`: the task, the monitored metric, the seeds, what picks or makes the validation
images, the device; a task adds those of its own section) is refused, with any key under it.
So are two swept keys of which one lies under the other (`optim` and `optim.lr`), and a grid
of more than GRID_LIMIT points. A section as a choice (`optim: [{name: sgd}, {name: adam}]`)
merges into the base config's section, as a mapping given to `--set` does.
Choices that are lists or mappings (e.g. `model.fast_cnn.widths`) are handed to Optuna as
their JSON text and turned back into values when a trial's config is built.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vislab.config import RunConfig, apply_overrides, build_config, read_yaml
from vislab.errors import VislabError
from vislab.fsguard import folder_name_problem

_METRIC = "the study compares every trial on the monitored metric"
_VALIDATION = "it changes the validation images every trial is compared on; set it in the base config"
_SEED = (
    "the best trial would be a lucky seed, not a better config (the seed also picks the validation images when the manifest "
    "has no val split); set it in the base config and repeat the winner over seeds to measure the spread"
)
_DEVICE = "each trial trains in the worker's process on one device; to use several GPUs run one worker per GPU (the same command)"
# keys every trial must share, and why: trials that differ in them cannot be ranked together
FIXED_KEYS = {
    "task": "trials of different tasks have incomparable metrics; run one sweep per task",
    "seed": _SEED,
    "model.simple_cnn.init_seed": _SEED,
    "train.monitor": _METRIC,
    "train.monitor_mode": _METRIC,
    "data.val_fraction": _VALIDATION,
    "train.limit_val_batches": _VALIDATION,
    "train.devices": _DEVICE,
    "train.strategy": _DEVICE,
    "train.num_nodes": _DEVICE,
}
SPEC_KEYS = {"float", "int", "choices", "log", "step"}
# the most points a grid (each parameter, and all of them together) may have: each is a training run
GRID_LIMIT = 10_000


@dataclass
class Param:
    """One swept key: a float or int range, or a list of choices."""

    key: str
    kind: str  # float | int | choices
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: list[Any] = field(default_factory=list)  # the values as Optuna sees them (scalars)
    decoded: dict[str, Any] = field(default_factory=dict)  # JSON text -> list/mapping choice

    def decode(self, value: Any) -> Any:
        """The config value of what Optuna suggested."""
        return self.decoded.get(value, value) if isinstance(value, str) else value

    def values_to_check(self) -> list[Any]:
        return [self.decode(c) for c in self.choices] if self.kind == "choices" else [self.low, self.high]

    def grid_values(self, source: str) -> list[Any]:
        """The points of this parameter on a grid (choices, or a range with a step)."""
        if self.kind == "choices":
            return list(self.choices)
        if self.step is None or self.log:
            raise VislabError(
                f"{source}: '{self.key}': the grid sampler needs a list of choices or a range with a step "
                f"(e.g. {{{self.kind}: [{self.low}, {self.high}], step: ...}})"
            )
        n = int(round((self.high - self.low) / self.step))
        if n + 1 > GRID_LIMIT:
            raise VislabError(
                f"{source}: '{self.key}': a step of {self.step} makes {n + 1} grid points, over the limit of {GRID_LIMIT} "
                "(each point is a training run); use a larger step, or list the values as choices"
            )
        points = [self.low + i * self.step for i in range(n + 1)]
        return [int(p) for p in points] if self.kind == "int" else [round(p, 12) for p in points]

    def suggest(self, trial: Any) -> Any:
        """Draw this parameter for an Optuna trial; returns the config value."""
        if self.kind == "float":
            return trial.suggest_float(self.key, self.low, self.high, log=self.log, step=self.step)
        if self.kind == "int":
            return trial.suggest_int(self.key, self.low, self.high, log=self.log, step=self.step or 1)
        return self.decode(trial.suggest_categorical(self.key, self.choices))

    def describe(self) -> dict[str, Any]:
        """A plain-data description; two studies match when these do."""
        d: dict[str, Any] = {"kind": self.kind}
        if self.kind == "choices":
            d["choices"] = list(self.choices)
        else:
            d.update({"low": self.low, "high": self.high, "log": self.log, "step": self.step})
        return d


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _encode(value: Any) -> tuple[Any, str | None]:
    """A scalar stays itself; a list or mapping becomes its JSON text."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value, None
    try:
        text = json.dumps(value, sort_keys=True)
    except TypeError:
        raise VislabError(f"value {value!r} is neither a number, string, boolean, list nor mapping") from None
    return text, text


def fixed_keys(task: str) -> dict[str, str]:
    """The keys every trial of a sweep of `task` must share, and why: `FIXED_KEYS` and the
    task's own (`Task.sweep_fixed_keys`, e.g. the seed of the crops evaluation samples)."""
    from vislab.tasks.registry import get_task

    return {**FIXED_KEYS, **get_task(task).sweep_fixed_keys}


def _fixed_at(key: str, fixed: dict[str, str]) -> str | None:
    """The fixed key that `key` is or lies under (`crops.stress.vignette` under `crops.stress`)."""
    return next((f for f in fixed if key == f or key.startswith(f + ".")), None)


def parse_param(key: Any, spec: Any, source: str, fixed: dict[str, str] = FIXED_KEYS) -> Param:
    """One `key: spec` entry of a space (or grid) mapping, checked for shape and against the
    keys every trial must share (`fixed`), not yet for the config."""
    where = f"{source}: '{key}'"
    if not isinstance(key, str) or not key.strip():
        raise VislabError(f"{source}: keys must be dotted config keys such as optim.lr (got {key!r})")
    at = _fixed_at(key.strip(), fixed)  # stripped as the override that sets it will be
    if at is not None:
        raise VislabError(f"{source}: '{key.strip()}' cannot be swept: {fixed[at]}")
    if isinstance(spec, list):
        spec = {"choices": spec}
    if not isinstance(spec, dict):
        raise VislabError(f"{where}: expected {{float: [LOW, HIGH]}}, {{int: [LOW, HIGH]}}, {{choices: [...]}} or a list of values")
    unknown = sorted(set(spec) - SPEC_KEYS)
    kinds = [k for k in ("float", "int", "choices") if k in spec]
    if unknown:
        raise VislabError(f"{where}: unknown field(s) {', '.join(map(str, unknown))}; use float, int or choices, with log and step")
    if len(kinds) != 1:
        raise VislabError(f"{where}: give exactly one of float: [LOW, HIGH], int: [LOW, HIGH] or choices: [...]")
    kind = kinds[0]
    if kind == "choices":
        choices = spec["choices"]
        if set(spec) != {"choices"}:
            raise VislabError(f"{where}: log and step apply to float and int ranges, not to choices")
        if not isinstance(choices, list) or not choices:
            raise VislabError(f"{where}: choices must be a non-empty list of values")
        p = Param(key, "choices")
        for c in choices:
            try:
                shown, text = _encode(c)
            except VislabError as err:
                raise VislabError(f"{where}: {err}") from None
            if shown in p.choices:
                raise VislabError(f"{where}: choice {c!r} is listed twice")
            p.choices.append(shown)
            if text is not None:
                p.decoded[text] = c
        return p
    bounds = spec[kind]
    if not (isinstance(bounds, list) and len(bounds) == 2 and all(_is_number(b) for b in bounds)):
        raise VislabError(f"{where}: {kind} must be [LOW, HIGH] with two numbers (got {bounds!r})")
    low, high = bounds
    log, step = spec.get("log", False), spec.get("step")
    if not isinstance(log, bool):
        raise VislabError(f"{where}: log must be true or false (got {log!r})")
    if kind == "int" and not all(isinstance(b, int) for b in bounds):
        raise VislabError(f"{where}: int bounds must be whole numbers (got {bounds!r}); use float: for real numbers")
    if not low < high:
        raise VislabError(f"{where}: LOW must be below HIGH (got [{low}, {high}]); a single value belongs in the config")
    if log and low <= 0:
        raise VislabError(f"{where}: a log range needs LOW > 0 (got {low})")
    if step is not None:
        if log:
            raise VislabError(f"{where}: step and log: true cannot be combined")
        if not _is_number(step) or step <= 0 or (kind == "int" and not isinstance(step, int)):
            raise VislabError(f"{where}: step must be a positive {'whole ' if kind == 'int' else ''}number (got {step!r})")
        n = (high - low) / step
        if abs(n - round(n)) > 1e-9 * max(1.0, abs(n)):
            raise VislabError(f"{where}: HIGH - LOW ({high - low}) must be a multiple of step {step}")
    if kind == "int":
        return Param(key, "int", int(low), int(high), log, step)
    return Param(key, "float", float(low), float(high), log, float(step) if step is not None else None)


def parse_space(mapping: Any, source: str, fixed: dict[str, str] = FIXED_KEYS) -> list[Param]:
    """A space (or grid) mapping; `fixed`: the keys it may not name (`fixed_keys` of the task)."""
    if not isinstance(mapping, dict) or not mapping:
        raise VislabError(f"{source}: expected a mapping of dotted config keys to ranges or choices, e.g. optim.lr: {{float: [1e-4, 1e-1], log: true}}")
    params = [parse_param(k, v, source, fixed) for k, v in mapping.items()]
    _refuse_nested(params, source)
    return params


def _refuse_nested(params: list[Param], source: str) -> None:
    """Two keys of which one is or lies under the other (`optim` and `optim.lr`): whichever
    the trial's config sets last overwrites the other, so the study would record values that
    never trained."""
    for i, p in enumerate(params):
        for q in params[:i]:
            if varies(p, q.key.strip()):
                outer, inner = sorted((q.key.strip(), p.key.strip()), key=len)
                if outer == inner:
                    raise VislabError(f"{source}: '{outer}' is listed twice; give it once")
                raise VislabError(
                    f"{source}: '{inner}' lies under '{outer}', which is also swept, so one would overwrite the other; "
                    f"sweep only one of them (e.g. put {inner.removeprefix(outer + '.')} in each choice of '{outer}')"
                )


def grid_points(params: list[Param], source: str) -> dict[str, list[Any]]:
    """Every parameter's grid points (as Optuna sees them), counted before any list is made:
    a grid over GRID_LIMIT points in all is refused."""
    points: dict[str, list[Any]] = {}
    for p in params:
        points[p.key] = p.grid_values(source)
    size = math.prod(len(v) for v in points.values())
    if size > GRID_LIMIT:
        shape = " x ".join(str(len(v)) for v in points.values())
        raise VislabError(
            f"{source}: the grid has {size} points ({shape}), over the limit of {GRID_LIMIT} (each point is a training run); "
            "use fewer values (or `vislab sweep --sampler tpe --trials N`, which samples the ranges)"
        )
    return points


def read_space(path: str | Path, fixed: dict[str, str] = FIXED_KEYS) -> list[Param]:
    """A space YAML file, parsed (not yet checked against the config)."""
    return parse_space(read_yaml(path), str(path), fixed)


def override(key: str, value: Any) -> str:
    """`key=value` with the value written as YAML, so apply_overrides reads back the same type."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    return f"{key}={text.removesuffix('...').strip()}"


def trial_config(base: dict[str, Any], values: dict[str, Any], source: str) -> RunConfig:
    """The base config (a plain dict, untouched) with the swept values set."""
    raw = apply_overrides(copy.deepcopy(base), [override(k, v) for k, v in values.items()])
    return build_config(raw, source)


def check_space(base: dict[str, Any], params: list[Param], source: str) -> None:
    """Build the config with every choice and both ends of every range (the other keys at their
    first value), so a wrong key or value fails now, not in trial 17; and refuse choices the
    config reads as one value, and section choices that change a key every trial must share."""
    first = {p.key: p.values_to_check()[0] for p in params}
    fixed = fixed_keys(base["task"])
    for p in params:
        meant: dict[str, Any] = {}  # what the config made of each choice (as JSON) -> the choice
        for n, value in enumerate(p.values_to_check(), 1):
            where = f"{source}: {p.key}={value!r}"
            cfg = trial_config(base, {**first, p.key: value}, where)
            if sets_model(p):  # any string is a valid config; the registry knows the names
                problem = model_problem(cfg)
                if problem:
                    raise VislabError(f"{where}: {problem}")
            built = cfg.model_dump(mode="json")
            _refuse_fixed_change(base, built, p, n, fixed, source)
            if p.kind == "choices":
                _refuse_same_value(meant, p.key, value, _at(built, p.key), source)


def sets_model(p: Param) -> bool:
    """Whether the parameter chooses the model (model.name, or the whole model section)."""
    return p.key.strip() in ("model", "model.name")


def varies(p: Param, key: str) -> bool:
    """Whether the parameter sets the config key `key`: the key itself, a section holding it
    (`data` for data.cache) or a key inside it."""
    mine = p.key.strip()
    return mine == key or key.startswith(mine + ".") or mine.startswith(key + ".")


def model_problem(cfg: RunConfig) -> str | None:
    """Why the config's task cannot train its model (an unknown name, another task's model)."""
    from vislab.tasks.registry import get_task

    try:
        return get_task(cfg.task).accepts_model(cfg.model.name)
    except VislabError as err:
        return str(err)


def _at(tree: dict[str, Any], key: str) -> Any:
    """The value at a dotted key of a dumped config (None where it holds none)."""
    node: Any = tree
    for part in key.strip().split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _refuse_fixed_change(base: dict[str, Any], built: dict[str, Any], p: Param, n: int, shared: dict[str, str], source: str) -> None:
    """A whole section as a choice (`train: [{...}, {...}]`) may not change a key every trial
    must share, such as train.monitor (its own key is refused when the space is read)."""
    for fixed, why in shared.items():
        if fixed.startswith(p.key.strip() + ".") and _at(built, fixed) != _at(base, fixed):
            raise VislabError(
                f"{source}: '{p.key}': choice {n} sets {fixed} to {_at(built, fixed)!r} (the base config: "
                f"{_at(base, fixed)!r}), and '{fixed}' cannot be swept: {why}"
            )


def _refuse_same_value(meant: dict[str, Any], key: str, value: Any, config_value: Any, source: str) -> None:
    """Two choices the config validates to one value ([0.1, "0.1"]) would train the same
    config twice as different trials (and, on a grid, into one run directory)."""
    text = json.dumps(config_value, sort_keys=True)
    if text in meant:
        raise VislabError(
            f"{source}: '{key}': choices {meant[text]!r} and {value!r} are the same value to the config "
            f"({config_value!r}); list each value once"
        )
    meant[text] = value


def _short(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def _value_text(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return "x".join(_value_text(x) for x in v)
    return str(v).replace("/", "_").replace(" ", "")


def variant_name(params: list[Param], values: dict[str, Any]) -> str | None:
    """A readable folder name for a grid point (`layers3-filters32`), or None if it cannot be one."""
    name = "-".join(f"{_short(p.key)}{_value_text(values[p.key])}" for p in params)
    return None if folder_name_problem(name) else name
