"""Hyper-parameter sweeps: an Optuna study over any config keys, each trial an ordinary run.

- `space.py`: the search space file (and a grid file's `grid:`), checked against the config.
- `study.py`: the study, its storage and heartbeats, the trial objective, the worker loop
  (`run_sweep`).
- `results.py`: results.csv, best.yaml and the sweep.html page.

Nothing is imported here, so reading a grid file (space.py) does not load Optuna or Lightning.
"""
