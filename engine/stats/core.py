"""Statistics for small SPEECH / NONSPEECH test sets: intervals, paired tests, seeds, power.

Pure numerics (numpy, scipy, statsmodels); no torch, no streamlit. Inputs are the prediction
records of engine.runs.predictions (clip_id, label, pred, p_speech, ...). Units, everywhere:
- accuracy, acc_*, ci, ci_lo/ci_hi of one evaluation: fractions in [0, 1];
- seed summaries (values, mean, sd, t_ci, bootstrap_ci): percent;
- *_pts and power_* differences: percentage points.
Every result is JSON-serialisable (NaN becomes None) and independent of the order of records
and of seeds. Methods and keys are described in docs/STATISTICS.md.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from scipy import stats as sps
from statsmodels.stats.contingency_tables import cochrans_q as _sm_cochrans_q
from statsmodels.stats.contingency_tables import mcnemar as _sm_mcnemar
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import proportion_confint

from engine.labels import CLASSES, NONSPEECH, SPEECH

CI_METHODS = {"wilson": "wilson", "clopper-pearson": "beta", "clopper_pearson": "beta", "beta": "beta"}
MCNEMAR_METHODS = ("auto", "exact", "chi2", "midp")
DIFF_CI_NEWCOMBE = "newcombe"  # Newcombe (1998) method 10, paired square-and-add of Wilson intervals
DIFF_CI_BOOTSTRAP = "bootstrap"  # clips within class (one draw shared by all evaluations) and seeds
EXACT_BELOW_DISCORDANT = 25  # auto: exact binomial under this many discordant pairs
ECE_BINS = 10
DEFAULT_N_BOOT = 10_000
# Above this many clips a seed's bootstrap draws counts instead of clip indices (same distribution).
COUNT_BOOTSTRAP_ABOVE = 20_000


class PairingError(ValueError):
    """Two evaluations cannot be paired clip by clip; the message gives counts and examples."""

    def __init__(self, message: str, only_a: Sequence[str] = (), only_b: Sequence[str] = (),
                 label_mismatch: Sequence[str] = ()):
        super().__init__(message)
        self.only_a = list(only_a)
        self.only_b = list(only_b)
        self.label_mismatch = list(label_mismatch)


# ---------------------------------------------------------------- proportions

def proportion_ci(k: int, n: int, method: str = "wilson", alpha: float = 0.05) -> tuple[float, float]:
    """Two-sided (1 - alpha) interval for k successes in n trials; (nan, nan) when n == 0."""
    try:
        sm_method = CI_METHODS[method]
    except KeyError:
        raise ValueError(f"unknown interval method {method!r}; use wilson or clopper-pearson") from None
    k, n = int(k), int(n)
    if n < 0 or not 0 <= k <= max(n, 0):
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return (math.nan, math.nan)
    lo, hi = proportion_confint(k, n, alpha=alpha, method=sm_method)
    return (max(0.0, float(lo)), min(1.0, float(hi)))


def format_count(k: int, n: int) -> str:
    """'93.8% (30/32)'; 'n/a (0/0)' for an empty group."""
    if n == 0:
        return "n/a (0/0)"
    return f"{100.0 * k / n:.1f}% ({k}/{n})"


def _fraction(k: int, n: int) -> float | None:
    return k / n if n else None


def _ci_list(k: int, n: int, method: str) -> list[float] | None:
    if n == 0:
        return None
    return list(proportion_ci(k, n, method))


# ---------------------------------------------------------------- one evaluation

def _sorted_records(records: Iterable[dict]) -> list[dict]:
    """Canonical order (by clip id) so float sums never depend on the input order."""
    return sorted(records, key=lambda r: str(r["clip_id"]))


def _is_correct(record: dict) -> bool:
    return record["pred"] == record["label"]


def _p_speech(record: dict) -> float:
    value = record.get("p_speech")
    try:
        value = float(value)
    except (TypeError, ValueError):
        return math.nan
    return value if math.isfinite(value) else math.nan


def _check_labels(records: Sequence[dict]) -> None:
    for rec in records:
        if rec["label"] not in CLASSES:
            raise ValueError(f"clip {rec['clip_id']!r}: label {rec['label']!r} is not SPEECH or NONSPEECH")


def _class_counts(records: Sequence[dict]) -> dict[str, tuple[int, int]]:
    """{class: (correct, n)} over the gold labels."""
    out = {}
    for cls in CLASSES:
        rows = [r for r in records if r["label"] == cls]
        out[cls] = (sum(_is_correct(r) for r in rows), len(rows))
    return out


def _balanced(class_counts: Mapping[str, tuple[int, int]]) -> float | None:
    """Mean recall over the classes present (sklearn's balanced_accuracy_score convention)."""
    recalls = [c / n for c, n in class_counts.values() if n]
    return sum(recalls) / len(recalls) if recalls else None


def roc_auc(records: Iterable[dict]) -> float | None:
    """AUC of p_speech for SPEECH vs NONSPEECH (Mann-Whitney U / n1 n0; ties count one half).

    Records without a finite p_speech are left out; None when either class is then empty.
    """
    scored = [(r["label"], _p_speech(r)) for r in records]
    pos = [p for label, p in scored if label == SPEECH and not math.isnan(p)]
    neg = [p for label, p in scored if label == NONSPEECH and not math.isnan(p)]
    if not pos or not neg:
        return None
    u = sps.mannwhitneyu(pos, neg, alternative="two-sided", method="asymptotic").statistic
    return float(u) / (len(pos) * len(neg))


def expected_calibration_error(records: Iterable[dict], n_bins: int = ECE_BINS) -> float | None:
    """ECE of the confidence p(predicted class), equal-width bins (lo, hi] with 0 in the first.

    ECE = sum over bins of (bin size / N) * |accuracy in bin - mean confidence in bin|
    (Guo et al. 2017). Records without a finite p_speech are left out; None if none remain.
    """
    conf, hit = [], []
    for rec in _sorted_records(records):
        p = _p_speech(rec)
        if math.isnan(p):
            continue
        conf.append(p if rec["pred"] == SPEECH else 1.0 - p)
        hit.append(1.0 if _is_correct(rec) else 0.0)
    if not conf:
        return None
    conf_arr, hit_arr = np.asarray(conf), np.asarray(hit)
    edges = np.arange(n_bins + 1) / n_bins  # exactly k/n_bins, like the bins' definition
    bins = np.clip(np.searchsorted(edges, conf_arr, side="left") - 1, 0, n_bins - 1)
    total = 0.0
    for b in range(n_bins):
        members = bins == b
        m = int(members.sum())
        if m:
            gap = abs(math.fsum(hit_arr[members]) / m - math.fsum(conf_arr[members]) / m)
            total += m / len(conf) * gap
    return float(total)


def evaluation_summary(records: Iterable[dict], ci_method: str = "wilson") -> dict[str, Any]:
    """Accuracy with interval, per-class accuracy, balanced accuracy, confusion, AUC and ECE."""
    records = _sorted_records(records)
    _check_labels(records)
    n = len(records)
    correct = sum(_is_correct(r) for r in records)
    counts = _class_counts(records)
    confusion = {gold: {pred: sum(1 for r in records if r["label"] == gold and r["pred"] == pred)
                        for pred in CLASSES} for gold in CLASSES}
    scored_n = sum(1 for r in records if not math.isnan(_p_speech(r)))
    return {
        "n": n,
        "correct": correct,
        "accuracy": _fraction(correct, n),
        "ci": _ci_list(correct, n, ci_method),
        "ci_method": ci_method,
        "per_class": {cls: {"n": cn, "correct": cc, "accuracy": _fraction(cc, cn),
                            "ci": _ci_list(cc, cn, ci_method)} for cls, (cc, cn) in counts.items()},
        "balanced_accuracy": _balanced(counts),
        "confusion": confusion,
        "scored_n": scored_n,
        "roc_auc": roc_auc(records),
        "ece": expected_calibration_error(records),
    }


def _group_key(value: Any) -> Any:
    """Missing values (None, NaN, '') form one group, shown last."""
    if value is None or value == "" or (isinstance(value, float) and math.isnan(value)):
        return None
    return value


def _as_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def breakdown(records: Iterable[dict], column: str, ci_method: str = "wilson") -> list[dict]:
    """One row per value of `column`: accuracy with interval and per-class accuracy.

    Sorted numerically when every value is a number (or a numeric string), else as text;
    clips without a value form a last row with value None.
    """
    records = _sorted_records(records)
    _check_labels(records)
    if records and not any(column in r for r in records):
        available = sorted({k for r in records for k in r})
        raise ValueError(f"no record has a column {column!r}; columns: {', '.join(available)}")
    groups: dict[Any, list[dict]] = {}
    for rec in records:
        groups.setdefault(_group_key(rec.get(column)), []).append(rec)
    present = [v for v in groups if v is not None]
    if all(_as_number(v) is not None for v in present):
        present.sort(key=lambda v: (_as_number(v), str(v)))
    else:
        present.sort(key=str)
    rows = []
    for value in present + ([None] if None in groups else []):
        members = groups[value]
        n, k = len(members), sum(_is_correct(r) for r in members)
        counts = _class_counts(members)
        lo, hi = proportion_ci(k, n, ci_method)
        (sc, sn), (nc, nn) = counts[SPEECH], counts[NONSPEECH]
        rows.append({
            "value": value, "n": n, "correct": k, "accuracy": k / n, "ci_lo": lo, "ci_hi": hi,
            "speech_n": sn, "speech_correct": sc, "speech_acc": _fraction(sc, sn),
            "nonspeech_n": nn, "nonspeech_correct": nc, "nonspeech_acc": _fraction(nc, nn),
            "balanced_accuracy": _balanced(counts),
        })
    return rows


# ---------------------------------------------------------------- seeds

def _natural_key(value: Any) -> tuple:
    number = _as_number(value)
    return (0, number, str(value)) if number is not None else (1, 0.0, str(value))


def _percentile_ci(replicates: np.ndarray) -> list[float]:
    lo, hi = np.percentile(replicates, [2.5, 97.5])
    return [float(lo), float(hi)]


def _bootstrap_seeds_only(values: Sequence[float], n_boot: int, rng_seed: int) -> list[float]:
    """Percentile interval of the mean over seeds resampled with replacement."""
    canonical = np.sort(np.asarray(values, dtype=float))
    rng = np.random.default_rng(rng_seed)
    draws = rng.integers(0, len(canonical), size=(n_boot, len(canonical)))
    return _percentile_ci(canonical[draws].mean(axis=1))


def _bootstrap_clips(seeds: list[tuple[np.ndarray, np.ndarray]], statistic: str,
                     n_boot: int, rng_seed: int, shared: bool) -> list[float]:
    """Percentile interval of the mean over seeds, resampling seeds and clips within class.

    `seeds` holds (0/1 correctness, gold labels) per seed. Each replicate draws k seeds with
    replacement and, inside each class, as many clips as the class has, with replacement.
    When every seed was scored on the same clips (`shared`) one clip draw serves all seeds,
    because the test set is common to them; otherwise each seed's clips are drawn on their own.
    `statistic` is "accuracy" (pooled) or "balanced" (mean of the per-class accuracies).
    """
    rng = np.random.default_rng(rng_seed)
    if max(len(correct) for correct, _ in seeds) > COUNT_BOOTSTRAP_ABOVE:
        return _percentile_ci(100.0 * _bootstrap_clip_counts(seeds, statistic, n_boot, rng, shared))
    k = len(seeds)
    chunk = max(1, 2_000_000 // max(1, len(seeds[0][0])))  # bounds the index arrays' memory
    replicates = []
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        seed_draw = rng.integers(0, k, size=(b, k))
        per_seed = np.empty((b, k))  # each seed's statistic under this replicate's clip draw
        draws = None
        for j, (correct, labels) in enumerate(seeds):
            if draws is None or not shared:
                draws = {}
                for cls in CLASSES:
                    idx = np.flatnonzero(labels == cls)
                    if idx.size:
                        draws[cls] = (idx, rng.integers(0, idx.size, size=(b, idx.size)))
            sums = {cls: (correct[idx][draw].sum(axis=1), idx.size) for cls, (idx, draw) in draws.items()}
            per_seed[:, j] = _combine(sums, statistic)
        replicates.append(np.take_along_axis(per_seed, seed_draw, axis=1).mean(axis=1))
    return _percentile_ci(100.0 * np.concatenate(replicates))


def _bootstrap_clip_counts(seeds: list[tuple[np.ndarray, np.ndarray]], statistic: str, n_boot: int,
                           rng: np.random.Generator, shared: bool) -> np.ndarray:
    """The replicates of `_bootstrap_clips` drawn as counts: the same distribution, other random numbers.

    Drawing n clips with replacement and summing their correctness only depends on how many
    clips of each kind were drawn: one multinomial draw over the kinds replaces n index draws.
    With shared clips a clip's kind is its pattern of correctness over the seeds (so the seeds
    stay paired, as with one index draw); otherwise each seed's class is a binomial draw.
    Used above COUNT_BOOTSTRAP_ABOVE clips, where index draws cost minutes (300,000 clips: 97 s).
    """
    k = len(seeds)
    seed_draw = rng.integers(0, k, size=(n_boot, k))
    per_seed = np.empty((n_boot, k))
    if shared:
        labels = seeds[0][1]
        correct = np.stack([c.astype(bool) for c, _ in seeds], axis=1)  # clips x seeds
        sums = {}
        for cls in CLASSES:
            in_class = correct[labels == cls]
            if not len(in_class):
                continue
            patterns, counts = np.unique(in_class, axis=0, return_counts=True)
            drawn = rng.multinomial(len(in_class), counts / counts.sum(), size=n_boot)  # n_boot x patterns
            sums[cls] = (drawn @ patterns.astype(float), len(in_class))  # n_boot x seeds
        for j in range(k):
            per_seed[:, j] = _combine({cls: (total[:, j], n) for cls, (total, n) in sums.items()}, statistic)
    else:
        for j, (correct, labels) in enumerate(seeds):
            sums = {}
            for cls in CLASSES:
                in_class = correct[labels == cls]
                if len(in_class):
                    sums[cls] = (rng.binomial(len(in_class), in_class.mean(), size=n_boot).astype(float),
                                 len(in_class))
            per_seed[:, j] = _combine(sums, statistic)
    return np.take_along_axis(per_seed, seed_draw, axis=1).mean(axis=1)


def _combine(sums: dict[str, tuple[np.ndarray, int]], statistic: str) -> np.ndarray:
    if statistic == "balanced":
        return sum(s / n for s, n in sums.values()) / len(sums)
    return sum(s for s, _ in sums.values()) / sum(n for _, n in sums.values())


def _describe_values(values: Sequence[float]) -> dict[str, Any]:
    """Mean, SD (n-1) and 95% t-interval of per-seed percentages."""
    arr = np.asarray(values, dtype=float)
    k = len(arr)
    mean = math.fsum(arr) / k
    out: dict[str, Any] = {"n_seeds": k, "values": [float(v) for v in arr], "mean": mean,
                           "sd": None, "t_ci": None, "t_half_width": None, "t_ci_clipped": False,
                           "min": float(arr.min()), "max": float(arr.max())}
    if k >= 2:
        sd = math.sqrt(math.fsum((arr - mean) ** 2) / (k - 1))
        half = float(sps.t.ppf(0.975, k - 1)) * sd / math.sqrt(k)
        lo, hi = mean - half, mean + half
        # An accuracy lies in [0, 100]: the symmetric t-interval can poke past either end with
        # few seeds near a bound; the part outside is impossible, so it is cut off (and said so).
        out.update(sd=sd, t_ci=[max(0.0, lo), min(100.0, hi)], t_half_width=half,
                   t_ci_clipped=lo < 0.0 or hi > 100.0)
    return out


def seed_summary(counts: Sequence[tuple[int, int]], n_boot: int = DEFAULT_N_BOOT, rng_seed: int = 0,
                 per_seed_records: Sequence[Sequence[dict]] | None = None) -> dict[str, Any]:
    """Spread of accuracy over seeds, in percent, from exact (correct, n) counts per seed.

    bootstrap_ci: without records, resamples seeds; with `per_seed_records` (the records each
    count came from, same order), resamples seeds and clips within class (see _bootstrap_clips).
    """
    counts = [(int(c), int(n)) for c, n in counts]
    if not counts:
        raise ValueError("seed_summary needs at least one seed")
    if any(n <= 0 or not 0 <= c <= n for c, n in counts):
        raise ValueError(f"each seed needs 0 <= correct <= n and n > 0; got {counts}")
    values = [100.0 * c / n for c, n in counts]
    if per_seed_records is not None:
        if len(per_seed_records) != len(counts):
            raise ValueError("per_seed_records needs one record list per seed")
        for (c, n), recs in zip(counts, per_seed_records):
            if (sum(_is_correct(r) for r in recs), len(recs)) != (c, n):
                raise ValueError(f"per_seed_records do not match the counts {c}/{n}")
    return _summarise(values, per_seed_records, "accuracy", n_boot, rng_seed)


def _summarise(values: Sequence[float], per_seed_records: Sequence[Sequence[dict]] | None,
               statistic: str, n_boot: int, rng_seed: int) -> dict[str, Any]:
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1, got {n_boot}")
    out = _describe_values(values)
    notes = []
    if len(values) < 2:
        notes.append("one seed: sd and t-interval need at least two seeds")
    elif out["sd"] == 0:
        notes.append("SD 0: every seed scored the same, so the t-interval has zero width; it says nothing "
                     "about clip sampling (the bootstrap interval does)")
    if out.get("t_ci_clipped"):
        notes.append(f"t-interval clipped to [0, 100] (unclipped: mean +/- {out['t_half_width']:.2f})")
    bootstrap: dict[str, Any] = {"n_boot": n_boot, "rng_seed": rng_seed, "interval": "percentile 2.5-97.5"}
    if per_seed_records is not None:
        seeds = []
        for recs in per_seed_records:
            recs = _sorted_records(recs)
            seeds.append(([str(r["clip_id"]) for r in recs],
                          np.array([_is_correct(r) for r in recs], dtype=np.int64),
                          np.array([r["label"] for r in recs])))
        shared = all(s[0] == seeds[0][0] and list(s[2]) == list(seeds[0][2]) for s in seeds)
        # Content order, so the draws never depend on the order the seeds came in.
        seeds.sort(key=lambda s: (s[0], list(s[2]), list(s[1])))
        out["bootstrap_ci"] = _bootstrap_clips([(c, lab) for _, c, lab in seeds], statistic,
                                               n_boot, rng_seed, shared)
        if shared:
            bootstrap["resampled"] = "seeds, and clips within class (one clip draw shared by all seeds)"
        else:
            bootstrap["resampled"] = "seeds, and clips within class (drawn per seed)"
            notes.append("seeds were scored on different clips; clips are resampled per seed")
    elif len(values) >= 2:
        out["bootstrap_ci"] = _bootstrap_seeds_only(values, n_boot, rng_seed)
        bootstrap["resampled"] = "seeds (per-seed accuracies)"
    else:
        out["bootstrap_ci"] = None
        bootstrap["resampled"] = None
    out["bootstrap"] = bootstrap
    out["note"] = "; ".join(notes) or None
    return out


def _ordered_seeds(evals: Mapping[Any, Sequence[dict]]) -> list[Any]:
    return sorted(evals, key=_natural_key)


def ordered_seeds(keys: Iterable[Any]) -> list[Any]:
    """Seed keys in numeric order, then text keys (the order every summary uses)."""
    return sorted(keys, key=_natural_key)


def aggregate_seeds(evals: Mapping[Any, Sequence[dict]], n_boot: int = DEFAULT_N_BOOT,
                    rng_seed: int = 0) -> dict[str, Any]:
    """Seed summaries of overall, per-class and balanced accuracy for {seed: records}."""
    if not evals:
        raise ValueError("aggregate_seeds needs at least one seed")
    seeds = _ordered_seeds(evals)
    per_seed = [_sorted_records(evals[s]) for s in seeds]
    for recs in per_seed:
        _check_labels(recs)
        if not recs:
            raise ValueError("a seed has no records")
    out: dict[str, Any] = {"seeds": list(seeds)}
    out["overall"] = seed_summary([(sum(map(_is_correct, r)), len(r)) for r in per_seed],
                                  n_boot, rng_seed, per_seed)
    for cls in CLASSES:
        subsets = [[r for r in recs if r["label"] == cls] for recs in per_seed]
        if all(subsets):
            out[cls] = seed_summary([(sum(map(_is_correct, s)), len(s)) for s in subsets],
                                    n_boot, rng_seed, subsets)
        else:
            out[cls] = None
    balanced = [_balanced(_class_counts(recs)) for recs in per_seed]
    out["balanced"] = _summarise([100.0 * b for b in balanced], per_seed, "balanced", n_boot, rng_seed)
    return out


# ---------------------------------------------------------------- paired comparison

def _examples(items: Sequence[str], limit: int = 3) -> str:
    shown = ", ".join(repr(i) for i in list(items)[:limit])
    return shown + (", ..." if len(items) > limit else "")


def _by_id(records: Iterable[dict], side: str) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for rec in records:
        cid = str(rec["clip_id"])
        if cid in out:
            raise PairingError(f"{side}: clip id {cid!r} appears more than once")
        out[cid] = rec
    return out


def pair_records(records_a: Iterable[dict], records_b: Iterable[dict]) -> list[tuple[dict, dict]]:
    """(a, b) for every clip, joined by clip_id and sorted by it; refuses differing clip sets."""
    a, b = _by_id(records_a, "A"), _by_id(records_b, "B")
    only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
    if only_a or only_b:
        raise PairingError(
            f"the two evaluations cover different clips: only in A: {len(only_a)}, only in B: "
            f"{len(only_b)}, in both: {len(set(a) & set(b))}"
            + (f"; only in A e.g. {_examples(only_a)}" if only_a else "")
            + (f"; only in B e.g. {_examples(only_b)}" if only_b else ""),
            only_a=only_a, only_b=only_b)
    mismatch = sorted(cid for cid in a if a[cid]["label"] != b[cid]["label"])
    if mismatch:
        first = mismatch[0]
        raise PairingError(
            f"gold labels differ for {len(mismatch)} of {len(a)} clips, e.g. {first!r} "
            f"(A: {a[first]['label']}, B: {b[first]['label']}): not the same test set",
            label_mismatch=mismatch)
    return [(a[cid], b[cid]) for cid in sorted(a)]


def _table(pairs: Sequence[tuple[dict, dict]]) -> dict[str, int]:
    cells = {"both_right": 0, "only_a": 0, "only_b": 0, "both_wrong": 0}
    for ra, rb in pairs:
        ca, cb = _is_correct(ra), _is_correct(rb)
        key = "both_right" if ca and cb else "only_a" if ca else "only_b" if cb else "both_wrong"
        cells[key] += 1
    return cells


def _mcnemar_test(only_a: int, only_b: int, both_right: int, both_wrong: int,
                  method: str) -> dict[str, Any]:
    if method not in MCNEMAR_METHODS:
        raise ValueError(f"unknown McNemar method {method!r}; use one of {', '.join(MCNEMAR_METHODS)}")
    discordant = only_a + only_b
    used = method
    if method == "auto":
        used = "exact" if discordant < EXACT_BELOW_DISCORDANT else "chi2"
    if discordant == 0:
        # statsmodels' corrected chi-square divides by zero here and reports p = 0.
        return {"method": used, "statistic": 0.0, "p_value": 1.0,
                "note": "no discordant pairs: both models are right or wrong on the same clips; "
                        "no evidence of a difference"}
    table = [[both_right, only_a], [only_b, both_wrong]]
    if used == "exact":
        res = _sm_mcnemar(table, exact=True)
        stat, p = float(res.statistic), float(res.pvalue)
    elif used == "chi2":
        res = _sm_mcnemar(table, exact=False, correction=True)
        stat, p = float(res.statistic), float(res.pvalue)
    else:  # mid-p (Fagerland et al. 2013): exact two-sided p minus the point probability
        low = min(only_a, only_b)
        p = 2.0 * sps.binom.cdf(low, discordant, 0.5) - sps.binom.pmf(low, discordant, 0.5)
        stat, p = float(low), float(min(1.0, p))
    return {"method": used, "statistic": stat, "p_value": min(1.0, p), "note": None}


def _accuracies(table: dict[str, int], n: int) -> dict[str, float | None]:
    """acc_a, acc_b (fractions) and diff_pts = 100 (only_a - only_b) / n, from exact counts."""
    if n == 0:
        return {"acc_a": None, "acc_b": None, "diff_pts": None}
    return {"acc_a": (table["both_right"] + table["only_a"]) / n,
            "acc_b": (table["both_right"] + table["only_b"]) / n,
            "diff_pts": 100.0 * (table["only_a"] - table["only_b"]) / n}


def paired_difference_ci(both_right: int, only_a: int, only_b: int, both_wrong: int,
                         alpha: float = 0.05) -> tuple[float, float]:
    """Interval for acc_a - acc_b (fractions) on paired clips: Newcombe (1998) method 10.

    Square-and-add of the two Wilson intervals, with the correlation of the two accuracies
    estimated from the 2x2 table: phi = C / sqrt(product of the margins), C = ad - bc - n/2
    when ad - bc > n/2, 0 when 0 <= ad - bc <= n/2, ad - bc when negative (Newcombe's
    continuity adjustment of phi; Fagerland, Lydersen and Laake 2017, section 8.5.4). Stays
    within [-1, 1]; (nan, nan) without clips.
    """
    a, b, c, d = (int(x) for x in (both_right, only_a, only_b, both_wrong))
    n = a + b + c + d
    if n == 0:
        return (math.nan, math.nan)
    p1, p2 = (a + b) / n, (a + c) / n
    l1, u1 = proportion_ci(a + b, n, "wilson", alpha)
    l2, u2 = proportion_ci(a + c, n, "wilson", alpha)
    margins = (a + b) * (c + d) * (a + c) * (b + d)
    phi = 0.0
    if margins:
        cross = a * d - b * c
        adjusted = cross - n / 2 if cross > n / 2 else (0.0 if cross >= 0 else cross)
        phi = adjusted / math.sqrt(margins)
    below = math.sqrt(max(0.0, (p1 - l1) ** 2 + (u2 - p2) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2)))
    above = math.sqrt(max(0.0, (u1 - p1) ** 2 + (p2 - l2) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2)))
    return (max(-1.0, p1 - p2 - below), min(1.0, p1 - p2 + above))


def _difference_interval(table: dict[str, int]) -> list[float] | None:
    """Newcombe's interval of a McNemar table's A - B, in percentage points."""
    lo, hi = paired_difference_ci(table["both_right"], table["only_a"], table["only_b"], table["both_wrong"])
    return None if math.isnan(lo) else [100.0 * lo, 100.0 * hi]


def mcnemar(records_a: Iterable[dict], records_b: Iterable[dict], method: str = "auto") -> dict[str, Any]:
    """Paired McNemar test of two evaluations of the same clips (A vs B)."""
    pairs = pair_records(records_a, records_b)
    _check_labels([ra for ra, _ in pairs])
    table = _table(pairs)
    n = len(pairs)
    test = _mcnemar_test(table["only_a"], table["only_b"], table["both_right"], table["both_wrong"], method)
    per_class = {}
    for cls in CLASSES:
        sub = [p for p in pairs if p[0]["label"] == cls]
        t = _table(sub)
        per_class[cls] = {"n": len(sub), **t, **_accuracies(t, len(sub)), "diff_ci": _difference_interval(t)}
    return {
        "table": table, "n": n, "discordant": table["only_a"] + table["only_b"],
        "method_requested": method, **test,
        **_accuracies(table, n),
        "diff_ci": _difference_interval(table), "diff_ci_method": DIFF_CI_NEWCOMBE,
        "per_class": per_class,
        "discordant_clips": [{"clip_id": ra["clip_id"], "label": ra["label"],
                              "a_correct": _is_correct(ra), "b_correct": _is_correct(rb)}
                             for ra, rb in pairs if _is_correct(ra) != _is_correct(rb)],
    }


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the input order."""
    if len(pvalues) == 0:
        return []
    return [float(p) for p in multipletests(list(pvalues), method="holm")[1]]


def probability_of_improvement(values_a: Sequence[float], values_b: Sequence[float]) -> float:
    """P(X_a > X_b): mean over all (seed of A, seed of B) pairs of 1 if a > b, 0.5 if equal, else 0.

    The Mann-Whitney statistic normalised by n_a * n_b, as in rliable (Agarwal et al. 2021).
    """
    a = np.asarray(values_a, dtype=float)[:, None]
    b = np.asarray(values_b, dtype=float)[None, :]
    return float(((a > b) + 0.5 * (a == b)).mean())


def _paired_tests(counts_a: Sequence[tuple[int, int]], counts_b: Sequence[tuple[int, int]]) -> dict[str, Any]:
    """Paired t-test (and Wilcoxon signed-rank from 5 seeds) on matched per-seed accuracies.

    counts_*: (correct, n) per matched seed. The "every difference equal" and "all zero" guards
    compare exact fractions of the integer counts: percentages as floats differ in the last bit
    for one constant gap and would turn an undefined t into t = 1e14.
    """
    k = len(counts_a)
    exact = [Fraction(ca, na) - Fraction(cb, nb) for (ca, na), (cb, nb) in zip(counts_a, counts_b)]
    # Equal fractions give equal floats here, so ties stay ties for both tests.
    diffs = np.asarray([100.0 * float(d) for d in exact])
    mean = float(diffs.mean())
    out: dict[str, Any] = {"n_seeds": k, "mean_diff_pts": mean, "sd_diff_pts": None, "mean_diff_ci": None,
                           "mean_diff_ci_clipped": False, "t_test": None, "wilcoxon": None, "note": None}
    notes = []
    if all(d == exact[0] for d in exact):
        out["sd_diff_pts"] = 0.0
        notes.append("every seed shows the same difference: the t-test is undefined and the t-interval "
                     "of the mean difference has zero width (see the bootstrap interval)")
    else:
        res = sps.ttest_1samp(diffs, 0.0)
        out["t_test"] = {"statistic": float(res.statistic), "df": k - 1, "p_value": float(res.pvalue)}
        sd = float(diffs.std(ddof=1))
        half = float(sps.t.ppf(0.975, k - 1)) * sd / math.sqrt(k)
        # A difference of accuracies lies in [-100, 100] points.
        out.update(sd_diff_pts=sd, mean_diff_ci=[max(-100.0, mean - half), min(100.0, mean + half)],
                   mean_diff_ci_clipped=mean - half < -100.0 or mean + half > 100.0)
        if out["mean_diff_ci_clipped"]:
            notes.append("t-interval of the mean difference clipped to [-100, 100]")
    if k >= 5:
        if all(d == 0 for d in exact):
            notes.append("all per-seed differences are zero: Wilcoxon is undefined")
        else:
            res = sps.wilcoxon(diffs)
            out["wilcoxon"] = {"statistic": float(res.statistic), "p_value": float(res.pvalue)}
    else:
        notes.append("Wilcoxon signed-rank needs at least 5 matched seeds")
    out["note"] = "; ".join(notes) or None
    return out


def compare_configs(a: Mapping[Any, Sequence[dict]], b: Mapping[Any, Sequence[dict]],
                    method: str = "auto", n_boot: int = DEFAULT_N_BOOT, rng_seed: int = 0) -> dict[str, Any]:
    """Configuration A vs B over seeds: McNemar per matched seed (Holm-adjusted), paired tests
    on per-seed accuracy, probability of improvement, and each side's seed summaries."""
    matched = sorted(set(a) & set(b), key=_natural_key)
    per_seed = [dict(seed=s, **mcnemar(a[s], b[s], method)) for s in matched]
    for row, p_adj in zip(per_seed, holm([row["p_value"] for row in per_seed])):
        row["p_holm"] = p_adj
    summary_a, summary_b = aggregate_seeds(a, n_boot, rng_seed), aggregate_seeds(b, n_boot, rng_seed)
    out: dict[str, Any] = {
        "matched_seeds": matched,
        "only_a_seeds": sorted(set(a) - set(b), key=_natural_key),
        "only_b_seeds": sorted(set(b) - set(a), key=_natural_key),
        "per_seed": per_seed,
        "paired": None,
        "probability_of_improvement": probability_of_improvement(
            summary_a["overall"]["values"], summary_b["overall"]["values"]),
        "summary_a": summary_a,
        "summary_b": summary_b,
    }
    if len(matched) >= 2:
        out["paired"] = _paired_tests(
            [(row["table"]["both_right"] + row["table"]["only_a"], row["n"]) for row in per_seed],
            [(row["table"]["both_right"] + row["table"]["only_b"], row["n"]) for row in per_seed])
    return out


def mean_difference(minuend: Mapping[Any, Sequence[dict]], subtrahend: Mapping[Any, Sequence[dict]],
                    n_boot: int = DEFAULT_N_BOOT, rng_seed: int = 0) -> dict[str, Any]:
    """Mean accuracy over the seeds of `minuend` minus that of `subtrahend`, in points, with a
    95% interval, overall and per class. Every evaluation must be on the same clips.

    One evaluation a side: Newcombe's paired interval (paired_difference_ci). Otherwise a
    percentile bootstrap: each replicate draws the clips within class with replacement, one
    draw shared by every evaluation of both sides (the test set is common, so its sampling
    error must not cancel), and the seeds with replacement: matched seed pairs together when
    both sides have the same seeds, else each side's seeds on their own.
    """
    if not minuend or not subtrahend:
        raise ValueError("mean_difference needs at least one evaluation a side")
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1, got {n_boot}")
    seeds_m, seeds_s = _ordered_seeds(minuend), _ordered_seeds(subtrahend)
    reference = minuend[seeds_m[0]]
    columns, labels = [], None
    for side, seeds in ((minuend, seeds_m), (subtrahend, seeds_s)):
        for seed in seeds:
            pairs = pair_records(reference, side[seed])
            if labels is None:
                _check_labels([ra for ra, _ in pairs])
                labels = np.array([ra["label"] for ra, _ in pairs])
            columns.append([_is_correct(rb) for _, rb in pairs])
    correct = np.array(columns, dtype=np.int64).T  # clips x evaluations (minuend's first)
    km = len(seeds_m)
    metrics = {"overall": np.ones(len(labels), dtype=bool), **{cls: labels == cls for cls in CLASSES}}

    def point(mask: np.ndarray) -> float:
        acc = 100.0 * correct[mask].mean(axis=0)
        return float(acc[:km].mean() - acc[km:].mean())

    out: dict[str, Any] = {"n_minuend": km, "n_subtrahend": len(seeds_s), "n_clips": int(len(labels))}
    if km == 1 and len(seeds_s) == 1:
        for key, mask in metrics.items():
            if not mask.any():
                out[key] = None
                continue
            pairs = list(zip(correct[mask, 0], correct[mask, 1]))
            table = {"both_right": sum(1 for x, y in pairs if x and y), "only_a": sum(1 for x, y in pairs if x and not y),
                     "only_b": sum(1 for x, y in pairs if y and not x), "both_wrong": sum(1 for x, y in pairs if not (x or y))}
            out[key] = {"diff_pts": point(mask), "ci": _difference_interval(table)}
        out.update(method=DIFF_CI_NEWCOMBE, bootstrap=None,
                   note="one evaluation a side: Newcombe's paired interval covers clip sampling only")
        return out
    rng = np.random.default_rng(rng_seed)
    paired_seeds = seeds_m == seeds_s
    if paired_seeds:
        draw = rng.integers(0, km, size=(n_boot, km))
        draw_m, draw_s = draw, draw + km
    else:
        draw_m = rng.integers(0, km, size=(n_boot, km))
        draw_s = km + rng.integers(0, len(seeds_s), size=(n_boot, len(seeds_s)))
    sums, sizes = {}, {}
    for cls in CLASSES:
        in_class = correct[labels == cls]
        if len(in_class):
            # Drawing n clips only matters through how many of each correctness pattern were drawn.
            patterns, counts = np.unique(in_class, axis=0, return_counts=True)
            drawn = rng.multinomial(len(in_class), counts / counts.sum(), size=n_boot)
            sums[cls], sizes[cls] = drawn @ patterns.astype(float), len(in_class)  # n_boot x evaluations

    def replicates(accuracy: np.ndarray) -> np.ndarray:
        return (np.take_along_axis(accuracy, draw_m, axis=1).mean(axis=1)
                - np.take_along_axis(accuracy, draw_s, axis=1).mean(axis=1))

    overall = 100.0 * sum(sums.values()) / sum(sizes.values())
    out["overall"] = {"diff_pts": point(metrics["overall"]), "ci": _percentile_ci(replicates(overall))}
    for cls in CLASSES:
        out[cls] = (None if cls not in sums else
                    {"diff_pts": point(metrics[cls]), "ci": _percentile_ci(replicates(100.0 * sums[cls] / sizes[cls]))})
    out.update(method=DIFF_CI_BOOTSTRAP,
               bootstrap={"n_boot": n_boot, "rng_seed": rng_seed, "interval": "percentile 2.5-97.5",
                          "resampled": "clips within class (one draw shared by every evaluation) and "
                                       + ("matched seed pairs" if paired_seeds else "each side's seeds separately")},
               note=None if paired_seeds else "the sides have different seeds: each side's seeds are resampled on their own")
    return out


def cochran_q(record_lists: Sequence[Sequence[dict]]) -> dict[str, Any]:
    """Cochran's Q test that k evaluations of the same clips have equal accuracy."""
    if len(record_lists) < 2:
        raise ValueError("Cochran's Q needs at least two evaluations")
    first = record_lists[0]
    columns = [[_is_correct(a) for a, _ in pair_records(first, first)]]
    for other in record_lists[1:]:
        columns.append([_is_correct(b) for _, b in pair_records(first, other)])
    x = np.array(columns, dtype=np.int64).T
    n, k = x.shape
    if not np.any((x.sum(axis=1) > 0) & (x.sum(axis=1) < k)):
        return {"statistic": 0.0, "df": k - 1, "p_value": 1.0, "n": n, "k": k,
                "note": "no clip has mixed outcomes: the evaluations agree everywhere"}
    res = _sm_cochrans_q(x)
    return {"statistic": float(res.statistic), "df": int(res.df), "p_value": float(res.pvalue),
            "n": n, "k": k, "note": None}


# ---------------------------------------------------------------- power (Connor 1987)

def _connor_n(delta: float, psi: float, alpha: float, power: float) -> float:
    """Clips needed by McNemar's test for accuracy difference delta with discordant share psi.

    Connor (1987): n = (z_{1-alpha/2} sqrt(psi) + z_{power} sqrt(psi - delta^2))^2 / delta^2.
    """
    za, zb = sps.norm.ppf(1 - alpha / 2), sps.norm.ppf(power)
    return (za * math.sqrt(psi) + zb * math.sqrt(max(psi - delta * delta, 0.0))) ** 2 / (delta * delta)


def _check_rate(discordant_rate: float | None) -> None:
    if discordant_rate is not None and not 0 < discordant_rate <= 1:
        raise ValueError(f"discordant_rate is a proportion in (0, 1], got {discordant_rate}")


def clips_needed(diff: float, discordant_rate: float | None = None, alpha: float = 0.05,
                 power: float = 0.8) -> int:
    """Paired clips McNemar needs to detect an accuracy difference of `diff` percentage points.

    discordant_rate: expected share of clips on which the two models disagree in correctness;
    None assumes the best case, every discordant clip favouring the same model (rate = diff).
    """
    _check_rate(discordant_rate)
    delta = diff / 100.0
    if not 0 < delta <= 1:
        raise ValueError(f"diff is in percentage points, 0 < diff <= 100; got {diff}")
    psi = delta if discordant_rate is None else discordant_rate
    if delta > psi:
        raise ValueError(f"a {diff}-point difference needs at least {diff}% discordant clips")
    return int(math.ceil(_connor_n(delta, psi, alpha, power) - 1e-9))


def power_min_detectable_diff(n_clips: int, discordant_rate: float | None = None, alpha: float = 0.05,
                              power: float = 0.8) -> float | None:
    """Smallest accuracy difference (percentage points) McNemar detects with `n_clips` pairs.

    Same assumption as clips_needed. None when no difference up to the largest possible one
    (the discordant rate, or 100 points) is detectable.
    """
    _check_rate(discordant_rate)
    if n_clips <= 0:
        return None
    top = 1.0 if discordant_rate is None else discordant_rate

    def excess(delta: float) -> float:
        psi = delta if discordant_rate is None else discordant_rate
        return _connor_n(delta, psi, alpha, power) - n_clips

    if excess(top) > 0:
        return None
    from scipy.optimize import brentq

    return 100.0 * brentq(excess, 1e-9, top, xtol=1e-12)


def _mcnemar_p(k: np.ndarray, d: np.ndarray, method: str) -> np.ndarray:
    """Two-sided McNemar p-value with `d` discordant pairs of which the smaller side has `k`."""
    if method == "auto":
        return np.where(d < EXACT_BELOW_DISCORDANT, _mcnemar_p(k, d, "exact"), _mcnemar_p(k, d, "chi2"))
    if method == "exact":
        return np.minimum(1.0, 2.0 * sps.binom.cdf(k, d, 0.5))
    if method == "midp":
        return np.minimum(1.0, 2.0 * sps.binom.cdf(k, d, 0.5) - sps.binom.pmf(k, d, 0.5))
    with np.errstate(divide="ignore", invalid="ignore"):  # d = 0 never rejects
        statistic = (np.abs(d - 2 * k) - 1.0) ** 2 / d
    return np.where(d > 0, sps.chi2.sf(statistic, 1), 1.0)


def _largest_rejected_k(d: np.ndarray, alpha: float, method: str) -> np.ndarray:
    """Per discordant count d, the largest smaller-side count the test rejects at (-1: none).

    Every method's p-value rises with k up to d/2, so a bisection per d finds the boundary.
    """
    lo = np.full(d.shape, -1, dtype=np.int64)  # invariant: rejects at lo (or lo = -1)
    hi = d // 2 + 1  # invariant: does not reject at hi (p = 1 at and past d/2)
    while np.any(hi - lo > 1):
        mid = (lo + hi) // 2
        rejects = _mcnemar_p(mid, d, method) <= alpha
        lo = np.where(rejects & (hi - lo > 1), mid, lo)
        hi = np.where(~rejects & (hi - lo > 1), mid, hi)
    return lo


def mcnemar_power(n_clips: int, diff: float, discordant_rate: float | None = None, alpha: float = 0.05,
                  method: str = "exact") -> float:
    """Exact power of McNemar's test `method` for an accuracy difference of `diff` points.

    Model: each clip independently favours A with probability (psi + delta) / 2 and B with
    (psi - delta) / 2 (psi: discordant_rate; None: psi = delta, the best case). The power sums,
    over the discordant count d ~ Binomial(n, psi), the chance that the split of d lands in the
    test's rejection region; nothing is approximated.
    """
    if method not in MCNEMAR_METHODS:
        raise ValueError(f"unknown McNemar method {method!r}; use one of {', '.join(MCNEMAR_METHODS)}")
    _check_rate(discordant_rate)
    delta = diff / 100.0
    psi = delta if discordant_rate is None else discordant_rate
    if not 0 < delta <= psi:
        raise ValueError(f"diff must be in (0, {100 * psi:g}] points, got {diff}")
    # Only discordant counts with a non-negligible probability contribute.
    first = int(max(0, sps.binom.ppf(1e-15, n_clips, psi) - 1))
    last = int(min(n_clips, sps.binom.isf(1e-15, n_clips, psi) + 1))
    d = np.arange(first, last + 1)
    k = _largest_rejected_k(d, alpha, method)
    favour_a = (psi + delta) / (2 * psi)
    # Reject when A's count is <= k or >= d - k; k < d / 2, so the two tails never overlap.
    reject = np.where(k >= 0, sps.binom.cdf(k, d, favour_a) + sps.binom.sf(d - k - 1, d, favour_a), 0.0)
    return float(np.sum(sps.binom.pmf(d, n_clips, psi) * reject))


def _exact_min_detectable_diff(n_clips: int, discordant_rate: float | None, alpha: float, power: float,
                               method: str) -> float | None:
    """Largest difference (points, to 0.001) below which no difference reaches `power`."""
    top = 100.0 if discordant_rate is None else 100.0 * discordant_rate
    if mcnemar_power(n_clips, top, discordant_rate, alpha, method) < power:
        return None
    lo, hi = 0.0, top  # power(hi) >= power; bisection assumes power grows with the difference
    while hi - lo > 1e-3:
        mid = (lo + hi) / 2
        if mcnemar_power(n_clips, mid, discordant_rate, alpha, method) >= power:
            hi = mid
        else:
            lo = mid
    return lo


def power_caveat(n_clips: int, discordant_rate: float | None = None, alpha: float = 0.05,
                 power: float = 0.8, method: str | None = None) -> str:
    """One sentence on the smallest difference this many paired clips can detect.

    method None: Connor's (1987) normal approximation, a planning figure. A McNemar method
    ("exact", "chi2", "midp", "auto"): the exact power of that test, which differs (mid-p is
    more powerful than Connor's figure, so his sentence would be false for it).
    """
    if method is None:
        diff = power_min_detectable_diff(n_clips, discordant_rate, alpha, power)
        test, source = "McNemar", "; Connor 1987"
    else:
        diff = _exact_min_detectable_diff(n_clips, discordant_rate, alpha, power, method)
        test, source = f"McNemar {_METHOD_NAMES[method]}", "; exact power"
    assumption = ("best case: every discordant clip favours the same model" if discordant_rate is None
                  else f"assuming {100 * discordant_rate:.1f}% discordant clips")
    terms = f"({test}, alpha {alpha:g}, {assumption}{source})"
    pct = f"{100 * power:g}%"
    if diff is None:
        return f"With {n_clips} clips, no difference is detectable at {pct} power {terms}."
    # Rounded down, so the sentence stays true.
    shown = f"{math.floor(diff)}" if diff >= 10 else f"{math.floor(diff * 10) / 10:g}"
    return (f"With {n_clips} clips, differences under {shown} points are not detectable "
            f"at {pct} power {terms}.")


def _floor_points(diff: float) -> str:
    """Rounded down (one decimal below 10), so "not detectable under N points" stays true."""
    return f"{math.floor(diff)}" if diff >= 10 else f"{math.floor(diff * 10) / 10:g}"


def power_statement(n_clips: int, discordant_rate: float | None, alpha: float = 0.05, power: float = 0.8) -> str:
    """One sentence on McNemar's power for one comparison that names both assumptions.

    Connor's (1987) figure at the observed discordant rate, then the best case (psi = delta,
    the figure power_caveat(n_clips) gives), which is a floor for any discordance. Two numbers
    in one sentence, each with its assumption, so they never read as a contradiction.
    """
    best = power_min_detectable_diff(n_clips, None, alpha, power)
    pct = f"{100 * power:g}%"
    terms = f"McNemar, alpha {alpha:g}, {pct} power, Connor 1987"
    best_text = ("no difference is detectable even in the best case" if best is None else
                 f"{_floor_points(best)} points is the floor whatever the discordance (best case: every discordant "
                 "clip favours the same model)")
    if not discordant_rate:
        return f"With {n_clips} clips and no discordant clip observed ({terms}): {best_text}."
    observed = power_min_detectable_diff(n_clips, discordant_rate, alpha, power)
    observed_text = ("no difference is detectable" if observed is None else
                     f"differences under {_floor_points(observed)} points are not detectable")
    return (f"With {n_clips} clips at the observed discordance ({100 * discordant_rate:.1f}% of clips have exactly "
            f"one model right), {observed_text} ({terms}); {best_text}.")


_METHOD_NAMES = {"auto": "(exact under 25 discordant pairs, else chi-square)", "exact": "exact",
                 "chi2": "chi-square", "midp": "mid-p"}
