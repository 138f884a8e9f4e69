"""What several seeds say, the one way every study says it: the mean, the
sample standard deviation (ddof=1) and a 95 % interval of the mean
(Student's t); and for two variants trained on the same seeds, the paired
difference with its interval. A difference is called real only when its
interval excludes 0; otherwise it is "no difference at this precision".
"""

import math

import numpy as np

# Student's t, the 0.975 quantile, by degrees of freedom (a two-sided 95 %
# interval). Between two listed counts the smaller one's (wider) value is used.
T_975 = {
    1: 12.706,
    2: 4.303,
    3: 3.182,
    4: 2.776,
    5: 2.571,
    6: 2.447,
    7: 2.365,
    8: 2.306,
    9: 2.262,
    10: 2.228,
    11: 2.201,
    12: 2.179,
    13: 2.160,
    14: 2.145,
    15: 2.131,
    16: 2.120,
    17: 2.110,
    18: 2.101,
    19: 2.093,
    20: 2.086,
    25: 2.060,
    30: 2.042,
    40: 2.021,
    60: 2.000,
    120: 1.980,
}
FEWEST_SEEDS_TO_COMPARE = 5  # comparisons of variants use at least this many seeds


def t_975(degrees):
    """The 0.975 quantile of Student's t with `degrees` degrees of freedom."""
    listed = [df for df in T_975 if df <= degrees]
    return T_975[max(listed)] if degrees <= 120 else 1.960


def summary(values):
    """{n, mean, sd, low, high}: the mean of `values` with its 95 % interval
    (sd is the sample standard deviation; with one value sd and the interval
    are undefined: None)."""
    values = np.asarray(values, dtype=float)
    n, mean = len(values), float(np.mean(values))
    if n < 2:
        return {"n": n, "mean": mean, "sd": None, "low": None, "high": None}
    sd = float(np.std(values, ddof=1))
    half = t_975(n - 1) * sd / math.sqrt(n)
    return {"n": n, "mean": mean, "sd": sd, "low": mean - half, "high": mean + half}


def paired_difference(a, b):
    """a - b paired by seed (a[i] and b[i] from the same seed): its summary,
    and whether it is real (the interval excludes 0)."""
    if len(a) != len(b):
        raise ValueError(f"paired values need one of each per seed; got {len(a)} and {len(b)}")
    difference = summary(np.asarray(a, dtype=float) - np.asarray(b, dtype=float))
    real = difference["low"] is not None and (difference["low"] > 0 or difference["high"] < 0)
    return {**difference, "real": bool(real)}


def spread_text(values, digits=4):
    """'0.9402 +- 0.0031 (95 % interval 0.9363 to 0.9441, n=5)'."""
    s = summary(values)
    if s["sd"] is None:
        return f"{s['mean']:.{digits}f} (one seed: no spread)"
    return (
        f"{s['mean']:.{digits}f} +- {s['sd']:.{digits}f} sd (95 % interval {s['low']:.{digits}f} to "
        f"{s['high']:.{digits}f}, n={s['n']})"
    )


def difference_words(d, digits=4):
    """A paired_difference in words: real, or no difference at this precision."""
    if d["low"] is None:
        return f"{d['mean']:+.{digits}f} from one seed: not enough to tell"
    interval = f"{d['mean']:+.{digits}f} (95 % interval {d['low']:+.{digits}f} to {d['high']:+.{digits}f}, n={d['n']})"
    return interval if d["real"] else f"no difference at this precision: {interval}"


def band_curves(curves, keys):
    """Per network, each of `keys`' series' mean over the seeds and its 95 %
    interval (the mean where one seed gives no interval), step by step:
    {name: {"step": steps, key: (mean, low, high)}} from {name: [one dict of
    lists per seed, "step" among them]}."""
    banded = {}
    for name, runs in curves.items():
        banded[name] = {"step": runs[0]["step"]}
        for key in keys:
            per_step = [summary(values) for values in zip(*(run[key] for run in runs))]
            banded[name][key] = tuple(
                [s[part] if s[part] is not None else s["mean"] for s in per_step] for part in ("mean", "low", "high")
            )
    return banded


# ---------------------------------------------------------------- on the log scale
# Measures that are positive and span decades (a landscape's smoothness, a
# gradient's change) are averaged as logarithms: a geometric mean with its
# interval, and for two networks on the same seeds the ratio paired by seed.


def geometric_summary(values):
    """{n, mean, low, high}: the geometric mean of positive `values` and its
    95 % interval (the interval of the mean of their logarithms, mapped back)."""
    logs = summary(np.log(np.asarray(values, dtype=float)))
    back = {part: None if logs[part] is None else float(np.exp(logs[part])) for part in ("mean", "low", "high")}
    return {"n": logs["n"], **back}


def paired_ratio(a, b):
    """a / b paired by seed: the geometric mean of the per-seed ratios, its
    95 % interval, and whether it is real (the interval excludes 1)."""
    difference = paired_difference(np.log(np.asarray(a, dtype=float)), np.log(np.asarray(b, dtype=float)))
    back = {
        part: None if difference[part] is None else float(np.exp(difference[part])) for part in ("mean", "low", "high")
    }
    return {"n": difference["n"], **back, "real": difference["real"]}


def geometric_text(s, digits=3):
    if not s.get("n"):
        return "none"
    if s["low"] is None:
        return f"{s['mean']:.{digits}g}"
    return f"{s['mean']:.{digits}g} ({s['low']:.{digits}g} to {s['high']:.{digits}g})"


def ratio_words(r, digits=3):
    """A paired_ratio in words: real, or no difference at this precision."""
    if r is None or r["low"] is None:
        return "too few seeds to tell"
    text = f"{r['mean']:.{digits}g}x (95 % interval {r['low']:.{digits}g} to {r['high']:.{digits}g}, n={r['n']})"
    return text if r["real"] else f"no difference at this precision: {text}"
