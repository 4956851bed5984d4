"""Per-channel statistics follow the channel count the model is fed: one rule, read by the
model's DataSpec (models/registry.py), the data pipeline (data/transforms.py) and the export's
metadata, so a grey model is described by one mean and one std everywhere."""

from __future__ import annotations

from typing import Sequence


def channel_stats(values: Sequence[float], channels: int) -> list[float]:
    """Mean/std for the channel count fed to the model (grey = the average of RGB stats)."""
    vals = [float(v) for v in values]
    if len(vals) == channels:
        return vals
    if channels == 1:
        return [sum(vals) / len(vals)]
    return [vals[0]] * channels if len(vals) == 1 else vals[:channels]
