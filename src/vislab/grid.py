"""A grid of config variants (e.g. the simple-CNN family): one YAML, one run per variant.

A grid file is an ordinary run config plus a `grid:` mapping of dotted keys to lists of
values; the variants are the cartesian product:

    model: {name: simple_cnn}
    grid:
      model.simple_cnn.layers: [2, 3, 4]
      model.simple_cnn.filters: [32, 64]

`vislab grid FILE --data D --out DIR` is `vislab sweep FILE --sampler grid --pruner none`:
the same study (DIR/study.db), each variant trained into DIR/<name> (name from the values,
e.g. `layers3-filters32`), finished variants skipped and interrupted ones resumed when the
command runs again, DIR/results.csv ranked by the best validation score. Selection is on
validation only; evaluate the winner on test afterwards.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from vislab.config import RunConfig, apply_overrides, build_config, read_yaml
from vislab.errors import VislabError
from vislab.sweep.space import fixed_keys, grid_points, override, parse_space, trial_config, variant_name

if TYPE_CHECKING:
    from vislab.sweep.study import SweepResult


def is_grid(path: str | Path) -> bool:
    """Whether a config file (or packaged recipe name) holds a `grid:` of variants."""
    return "grid" in read_yaml(path)


def grid_variants(path: str | Path, overrides: Sequence[str] = ()) -> list[tuple[str, list[str], RunConfig]]:
    """(name, the variant's `key=value` overrides, validated config) for every grid point."""
    raw = read_yaml(path)
    grid = raw.pop("grid", None)
    if grid is None:
        raise VislabError(f"{path}: no 'grid' mapping; add grid: with dotted keys -> lists of values, e.g. model.simple_cnn.layers: [2, 3]")
    source = f"{path}: grid"
    cfg = build_config(apply_overrides(raw, list(overrides)), str(path))
    base = cfg.model_dump(mode="json")
    params = parse_space(grid, source, fixed_keys(cfg.task))
    variants = []
    for i, combo in enumerate(itertools.product(*grid_points(params, source).values())):
        values = {p.key: p.decode(v) for p, v in zip(params, combo)}
        name = variant_name(params, values) or f"#{i}"
        variants.append((name, [override(k, v) for k, v in values.items()], trial_config(base, values, f"{path} [{name}]")))
    return variants


def run_grid(
    path: str | Path,
    data: str | Path,
    out: str | Path,
    overrides: Sequence[str] = (),
    epochs: int | None = None,
    max_time: str | None = None,
) -> "SweepResult":
    """Train every variant into out/<name> (the grid sampler of `vislab sweep`, no pruning);
    `.table` of the result ranks them, best first. `max_time` is each variant's training budget."""
    from vislab.sweep.study import SweepOptions, run_sweep

    opts = SweepOptions(sampler="grid", pruner="none", overrides=list(overrides), epochs=epochs, trial_max_time=max_time)
    return run_sweep(path, data, out, opts)
