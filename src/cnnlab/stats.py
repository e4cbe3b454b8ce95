"""The statistics of many runs: is variant A better than B, and by how much?

- Each variant: n, mean, sample standard deviation and a 95% interval for its mean (Student's t).
- Each variant against a baseline: the difference of means with a 95% interval by Welch's t (unequal
  variances, Welch-Satterthwaite degrees of freedom) and by a seeded percentile bootstrap; the verdict is
  "better" or "worse" when Welch's interval excludes zero, else "no detectable difference", with the
  seeds per variant that would detect a difference of the observed size (80% power, two-sided 5%).
No SciPy at run time: Student's t quantile comes from its CDF, the regularised incomplete beta function
(a continued fraction), solved by bisection.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

Z_975, Z_80 = 1.959964, 0.841621  # normal quantiles: two-sided 5%, and 80% power


def _incomplete_beta(x: float, a: float, b: float) -> float:
    """The regularised incomplete beta function I_x(a, b), by Lentz's continued fraction."""
    if x <= 0 or x >= 1:
        return 0.0 if x <= 0 else 1.0
    if x > (a + 1) / (a + b + 2):  # the fraction converges fast only on this side
        return 1.0 - _incomplete_beta(1 - x, b, a)
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)) / a
    # 1 / (1 + d1 / (1 + d2 / (1 + ...))), evaluated front to back (modified Lentz: f = c = tiny, d = 0).
    tiny = 1e-300
    f = c = tiny
    d = 0.0
    for i in range(400):
        if i == 0:
            numerator = 1.0
        elif i % 2:  # d_(2m+1)
            m = (i - 1) // 2
            numerator = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        else:  # d_(2m)
            m = i // 2
            numerator = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        d = 1.0 + numerator * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + numerator / (c if abs(c) > tiny else tiny)
        f *= c * d
        if i and abs(c * d - 1.0) < 1e-15:
            break
    return front * f


def t_cdf(t: float, df: float) -> float:
    tail = 0.5 * _incomplete_beta(df / (df + t * t), df / 2, 0.5)
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The p-quantile of Student's t with `df` degrees of freedom (df may be fractional, as Welch's is)."""
    low, high = -1e4, 1e4
    for _ in range(200):
        mid = (low + high) / 2
        low, high = (mid, high) if t_cdf(mid, df) < p else (low, mid)
    return (low + high) / 2


@dataclass
class Summary:
    n: int
    mean: float
    std: float  # sample standard deviation (n - 1); 0 for one value
    low: float  # the 95% interval of the mean (Student's t); the mean itself for one value
    high: float


def summarise(values: list[float]) -> Summary:
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return Summary(n, mean, 0.0, mean, mean)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_quantile(0.975, n - 1) * std / math.sqrt(n)
    return Summary(n, mean, std, mean - half, mean + half)


@dataclass
class Comparison:
    difference: float  # mean of the variant minus mean of the baseline, in points
    welch_low: float
    welch_high: float
    bootstrap_low: float
    bootstrap_high: float
    verdict: str  # "better", "worse" or "no detectable difference"
    seeds_needed: int | None  # per variant, to detect a difference of this size (None: not computable)

    def words(self, n_variant: int, n_baseline: int) -> str:
        interval = f"{self.difference:+.2f} points (95% interval {self.welch_low:+.2f} to {self.welch_high:+.2f})"
        if self.verdict != "no detectable difference":
            return f"{self.verdict}: {interval}"
        n = f"n = {n_variant}" if n_variant == n_baseline else f"n = {n_variant} and {n_baseline}"
        needed = (
            f"; about {self.seeds_needed} seeds each would resolve {abs(self.difference):.2f} points"
            if self.seeds_needed
            else ""
        )
        return f"no detectable difference at {n}: {interval}{needed}"


def compare(variant: list[float], baseline: list[float], resamples: int = 10_000, seed: int = 0) -> Comparison:
    """`variant` against `baseline`: Welch's and a bootstrap 95% interval of the difference of means."""
    a, b = summarise(variant), summarise(baseline)
    difference = a.mean - b.mean
    if a.n < 2 or b.n < 2:
        return Comparison(difference, -math.inf, math.inf, -math.inf, math.inf, "no detectable difference", None)
    va, vb = a.std**2 / a.n, b.std**2 / b.n
    spread = math.sqrt(va + vb)
    if spread == 0:
        low = high = difference
    else:
        df = (va + vb) ** 2 / (va**2 / (a.n - 1) + vb**2 / (b.n - 1))
        half = t_quantile(0.975, df) * spread
        low, high = difference - half, difference + half
    draw = random.Random(seed)
    differences = sorted(
        sum(draw.choices(variant, k=a.n)) / a.n - sum(draw.choices(baseline, k=b.n)) / b.n for _ in range(resamples)
    )
    boot_low, boot_high = differences[int(0.025 * resamples)], differences[int(0.975 * resamples) - 1]
    verdict = "better" if low > 0 else "worse" if high < 0 else "no detectable difference"
    pooled = math.sqrt((a.std**2 + b.std**2) / 2)
    return Comparison(difference, low, high, boot_low, boot_high, verdict, seeds_to_detect(abs(difference), pooled))


def seeds_to_detect(difference: float, std: float) -> int | None:
    """Seeds per variant for a two-sided 5% test to detect `difference` with 80% power, given the seed-to-seed
    standard deviation `std` (the normal approximation, rounded up, at least 2)."""
    if difference <= 0 or std <= 0:
        return None
    return max(2, math.ceil(2 * ((Z_975 + Z_80) * std / difference) ** 2))
