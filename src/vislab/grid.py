"""A grid of config variants (e.g. the simple-CNN family): one YAML, one run per variant.

A grid file is an ordinary run config plus a `grid:` mapping of dotted keys to lists of
values; the variants are the cartesian product, in file order:

    model: {name: simple_cnn}
    grid:
      model.simple_cnn.layers: [2, 3, 4]
      model.simple_cnn.filters: [32, 64]

`vislab grid FILE --data D --out DIR` trains each variant into DIR/<name> (name from the
values, e.g. `layers3-filters32`), skips finished ones, resumes interrupted ones, and
writes DIR/grid.csv ranked by the best validation score. Selection is on validation only;
evaluate the winner on test afterwards.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
import yaml

from vislab.config import RunConfig, apply_overrides, build_config, read_yaml
from vislab.errors import VislabError


def is_grid(path: str | Path) -> bool:
    """Whether a config file (or packaged recipe name) holds a `grid:` of variants."""
    return "grid" in read_yaml(path)


def _short(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def _value_text(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return "x".join(_value_text(x) for x in v)
    return str(v).replace("/", "_").replace(" ", "")


def grid_variants(path: str | Path, overrides: Sequence[str] = ()) -> list[tuple[str, list[str], RunConfig]]:
    """(name, the variant's `key=value` overrides, validated config) for every grid point."""
    raw = read_yaml(path)
    grid = raw.pop("grid", None)
    if not isinstance(grid, dict) or not grid:
        raise VislabError(f"{path}: 'grid' must map dotted keys to lists of values, e.g. model.simple_cnn.layers: [2, 3]")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise VislabError(f"{path}: grid.{key} must be a non-empty list of values")
    keys = list(grid)
    variants = []
    for combo in itertools.product(*(grid[k] for k in keys)):
        sets = [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}" for k, v in zip(keys, combo)]
        name = "-".join(f"{_short(k)}{_value_text(v)}" for k, v in zip(keys, combo))
        base = yaml.safe_load(yaml.safe_dump(raw))  # a fresh copy per variant
        cfg = build_config(apply_overrides(apply_overrides(base, sets), list(overrides)), f"{path} [{name}]", list(overrides))
        variants.append((name, sets, cfg))
    return variants


def run_grid(
    path: str | Path,
    data: str | Path,
    out: str | Path,
    overrides: Sequence[str] = (),
    only: Sequence[str] | None = None,
    epochs: int | None = None,
    max_time: str | None = None,
) -> pd.DataFrame:
    """Train every (or every `only`-named) variant into out/<name>; returns and writes grid.csv."""
    from vislab.runs import read_json, run_paths
    from vislab.train import train

    variants = grid_variants(path, overrides)
    names = [v[0] for v in variants]
    if only:
        unknown = [n for n in only if n not in names]
        if unknown:
            raise VislabError(f"--only: unknown variant(s) {', '.join(unknown)}; the grid has {', '.join(names)}")
        variants = [v for v in variants if v[0] in only]
    out = Path(out)
    for i, (name, sets, cfg) in enumerate(variants, 1):
        run_dir = out / name
        paths = run_paths(run_dir)
        print(f"[{i}/{len(variants)}] {name}: {' '.join(sets)}", flush=True)
        if paths.summary.is_file():
            summary = read_json(paths.summary)
            if summary.get("stopped_reason") in ("completed", "early_stopping"):
                print(f"  done before ({summary['stopped_reason']}); skipped", flush=True)
                continue
        train(cfg, data, run_dir, resume=paths.last.is_file(), epochs=epochs, max_time=max_time)
    table = grid_table(out, [v[0] for v in variants], [v[1] for v in variants])
    table.to_csv(out / "grid.csv", index=False)
    return table


def grid_table(out: str | Path, names: Sequence[str], sets: Sequence[Sequence[str]]) -> pd.DataFrame:
    """One row per variant from its summary.json, best validation score first."""
    from vislab.runs import read_json, run_paths

    rows = []
    for name, s in zip(names, sets):
        p = run_paths(Path(out) / name).summary
        row: dict[str, Any] = {"variant": name, "overrides": " ".join(s)}
        if p.is_file():
            summ = read_json(p)
            best = summ.get("best_val") or {}
            row.update(
                {
                    "val/acc": best.get("val/acc"),
                    "val/loss": best.get("val/loss"),
                    "best_epoch": summ.get("best_epoch"),
                    "epochs": summ.get("epochs_completed"),
                    "stopped": summ.get("stopped_reason"),
                    "wall_time_s": summ.get("wall_time_s"),
                    "train_images_per_s": summ.get("train_images_per_s"),
                    "params": (summ.get("params") or {}).get("total"),
                }
            )
        rows.append(row)
    table = pd.DataFrame(rows)
    if "val/acc" in table.columns:
        table = table.sort_values("val/acc", ascending=False, na_position="last").reset_index(drop=True)
    return table
