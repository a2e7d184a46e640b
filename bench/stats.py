"""The order statistic the benches print besides the median (statistics.median): numpy's nearest-rank 95th
percentile, one definition for every figure."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def p95(values: Sequence[float]) -> float:
    return float(np.percentile(values, 95, method="nearest"))
