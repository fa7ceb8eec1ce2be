"""The population stability index (PSI) of a served distribution against a model's reference.

For the bins ``i`` of a reference histogram (:class:`models.reference.Distribution`), with ``e_i``
the reference's share of items in bin ``i`` and ``a_i`` the served share::

    PSI = sum_i (a_i - e_i) * ln(a_i / e_i)

Each share is floored at :data:`EPSILON` before the sum, so that an empty bin on either side adds a
large but finite term instead of dividing by zero.  PSI is 0 for identical shares and grows with
the shift; the usual reading (Siddiqi, *Credit Risk Scorecards*, 2006): below 0.1 stable, 0.1-0.25 a
moderate shift, above 0.25 a significant one (``monitoring.score_psi_alert`` and
``monitoring.input_psi_alert`` default to 0.25).

The bins are the reference's: scores on :data:`models.reference.SCORE_EDGES` (ten bins of width
0.1 over [0, 1]); input features on the reference's deciles with open outer edges.
"""
from __future__ import annotations

import math
from typing import Sequence

from models.reference import Distribution, histogram

#: Floor of a bin's share before the logarithm.
EPSILON = 1e-4


def shares(counts: Sequence[int]) -> list[float]:
    """Each bin's share of the total, floored at :data:`EPSILON` (all :data:`EPSILON` when empty)."""
    total = sum(counts)
    if any(c < 0 for c in counts):
        raise ValueError(f"`counts` must not be negative, {list(counts)} is given.")
    return [max(c / total if total else 0.0, EPSILON) for c in counts]


def psi(expected: Sequence[int], actual: Sequence[int]) -> float:
    """PSI of the histogram ``actual`` against ``expected`` (counts in the same bins)."""
    if len(expected) != len(actual) or not expected:
        raise ValueError(f"`expected` and `actual` must count the same bins, {len(expected)} and "
                         f"{len(actual)} bins are given.")
    return float(sum((a - e) * math.log(a / e) for e, a in zip(shares(expected), shares(actual))))


def psi_of_values(reference: Distribution, values: Sequence[float]) -> float | None:
    """PSI of ``values`` binned on ``reference``'s edges; None when there are none."""
    if not values:
        return None
    return psi(reference.counts, histogram(values, reference.edges))
