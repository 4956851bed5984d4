"""How quantities are written for people, one format each, shared by the terminal lines, the
report and `vislab compare` so a number reads the same everywhere.
"""

from __future__ import annotations

import math
from typing import Any


def format_rate(value: Any) -> str:
    """A throughput such as images/s with three significant digits at most and thousands
    separators: 0.83, 11.9, 812, 1,234, 102,470; '' for a missing value."""
    if value is None or isinstance(value, bool):
        return ""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return ""
    if not math.isfinite(v):
        return ""
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"
