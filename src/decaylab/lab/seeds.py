"""Mean and sample standard deviation over seeds: the one summary every lab table uses."""

from __future__ import annotations

import math


def mean_sd(xs) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation of the values that are not None (sd None for one
    value, both None for none).

    >>> mean_sd([1.0, 3.0, None])
    (2.0, 1.4142135623730951)
    >>> mean_sd([None])
    (None, None)
    """
    xs = [x for x in xs if x is not None]
    if not xs:
        return None, None
    m = sum(xs) / len(xs)
    return m, (math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else None)
