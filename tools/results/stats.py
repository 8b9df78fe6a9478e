"""Statistics over seeds, without scipy: mean, sample std, 95% t-interval, and the
harmonic mean of Base and New."""

import math
import statistics
from dataclasses import dataclass

# Two-sided 95% Student t quantiles t_{0.975}(df); between rows the table is
# interpolated linearly in 1/df, the usual rule for printed t tables.
# fmt: off
_T975 = {
    1: 12.7062, 2: 4.3027, 3: 3.1824, 4: 2.7764, 5: 2.5706, 6: 2.4469, 7: 2.3646,
    8: 2.3060, 9: 2.2622, 10: 2.2281, 11: 2.2010, 12: 2.1788, 13: 2.1604, 14: 2.1448,
    15: 2.1314, 16: 2.1199, 17: 2.1098, 18: 2.1009, 19: 2.0930, 20: 2.0860, 21: 2.0796,
    22: 2.0739, 23: 2.0687, 24: 2.0639, 25: 2.0595, 26: 2.0555, 27: 2.0518, 28: 2.0484,
    29: 2.0452, 30: 2.0423, 40: 2.0211, 60: 2.0003, 120: 1.9799, math.inf: 1.9600,
}
# fmt: on


def t975(df):
    if df < 1:
        raise ValueError(f"t quantile needs df >= 1, got {df}")
    if df in _T975:
        return _T975[df]
    lo = max(k for k in _T975 if k < df)
    hi = min(k for k in _T975 if k > df)

    def inv(k):
        return 0.0 if k == math.inf else 1.0 / k

    frac = (inv(df) - inv(hi)) / (inv(lo) - inv(hi))
    return _T975[hi] + frac * (_T975[lo] - _T975[hi])


def harmonic(base, new):
    return 2 * base * new / (base + new) if base + new else 0.0


@dataclass(frozen=True)
class Summary:
    """Values over seeds: mean, sample std (n - 1) and the 95% t-interval of the mean."""

    values: tuple

    @property
    def n(self):
        return len(self.values)

    @property
    def mean(self):
        return statistics.fmean(self.values)

    @property
    def std(self):
        return statistics.stdev(self.values) if self.n > 1 else None

    @property
    def ci(self):
        if self.n < 2:
            return None
        half = t975(self.n - 1) * self.std / math.sqrt(self.n)
        return self.mean - half, self.mean + half


def summarize(values):
    return Summary(tuple(values)) if values else None
