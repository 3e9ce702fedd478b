"""engine.stats.core against independently computed values (scipy/statsmodels called here, formulas
written out, published numbers), never against itself."""

from __future__ import annotations

import csv
import json
import math
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps
from statsmodels.stats.contingency_tables import mcnemar as sm_mcnemar
from statsmodels.stats.multitest import multipletests

from engine.stats import core as stats

from tests.conftest import EXAMPLES  # noqa: E402
Z = sps.norm.ppf(0.975)


def load_example(stem: str) -> list[dict]:
    """Records straight from the exported CSV (not through engine.tasks.importing)."""
    with open(EXAMPLES / f"{stem}_predictions.csv", newline="") as fh:
        return [{"clip_id": row["audio_path"], "label": row["ground_truth"], "pred": row["prediction"],
                 "p_speech": float(row["p_first_token"]), "correct": row["correct"] == "True",
                 "duration_ms": int(row["duration_ms"]), "snr_db": int(row["snr_db"])}
                for row in csv.DictReader(fh)]


@pytest.fixture(scope="module")
def lora():
    return load_example("lora_seed42")


@pytest.fixture(scope="module")
def base():
    return load_example("base")


def rec(clip_id, label, pred, p=math.nan, **extra):
    return {"clip_id": clip_id, "label": label, "pred": pred, "p_speech": p, "correct": label == pred, **extra}


# ---------------------------------------------------------------- intervals

def wilson_by_hand(k, n):
    p = k / n
    centre = (p + Z * Z / (2 * n)) / (1 + Z * Z / n)
    half = Z / (1 + Z * Z / n) * math.sqrt(p * (1 - p) / n + Z * Z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def clopper_pearson_by_hand(k, n):
    lo = 0.0 if k == 0 else sps.beta.ppf(0.025, k, n - k + 1)
    hi = 1.0 if k == n else sps.beta.ppf(0.975, k + 1, n - k)
    return lo, hi


@pytest.mark.parametrize("k,n", [(30, 32), (31, 32), (16, 16), (15, 16)])
def test_wilson_matches_formula(k, n):
    assert stats.proportion_ci(k, n, "wilson") == pytest.approx(wilson_by_hand(k, n), abs=1e-12)


@pytest.mark.parametrize("k,n", [(30, 32), (31, 32), (16, 16), (15, 16)])
def test_clopper_pearson_matches_beta_quantiles(k, n):
    assert stats.proportion_ci(k, n, "clopper-pearson") == pytest.approx(clopper_pearson_by_hand(k, n), abs=1e-10)


@pytest.mark.parametrize("k,n,wilson,exact", [
    # Newcombe (1998), Stat Med 17:857, Table I: score (Wilson) and exact (Clopper-Pearson) methods.
    (81, 263, (0.2553, 0.3662), (0.2527, 0.3676)),
    (15, 148, (0.0624, 0.1605), (0.0578, 0.1617)),
    (0, 20, (0.0, 0.1611), (0.0, 0.1684)),
    (1, 29, (0.0061, 0.1718), (0.0009, 0.1776)),
])
def test_intervals_match_newcombe_1998(k, n, wilson, exact):
    assert stats.proportion_ci(k, n, "wilson") == pytest.approx(wilson, abs=5e-5)
    assert stats.proportion_ci(k, n, "clopper-pearson") == pytest.approx(exact, abs=5e-5)


def test_interval_edge_cases():
    assert stats.proportion_ci(16, 16)[1] == 1.0
    assert all(math.isnan(x) for x in stats.proportion_ci(0, 0))
    with pytest.raises(ValueError, match="method"):
        stats.proportion_ci(1, 2, "agresti")
    with pytest.raises(ValueError):
        stats.proportion_ci(3, 2)


def test_format_count():
    assert stats.format_count(30, 32) == "93.8% (30/32)"
    assert stats.format_count(16, 16) == "100.0% (16/16)"
    assert stats.format_count(0, 0) == "n/a (0/0)"


# ---------------------------------------------------------------- one evaluation

def test_evaluation_summary_on_export(lora):
    metrics = json.loads((EXAMPLES / "lora_seed42_metrics.json").read_text())
    s = stats.evaluation_summary(lora)
    json.dumps(s, allow_nan=False)  # strict JSON
    assert s["n"] == 1152 and s["correct"] == sum(r["correct"] for r in lora)
    assert s["accuracy"] == pytest.approx(metrics["overall_acc"], abs=1e-12)
    assert s["per_class"]["SPEECH"]["accuracy"] == pytest.approx(metrics["speech_acc"], abs=1e-12)
    assert s["per_class"]["NONSPEECH"]["accuracy"] == pytest.approx(metrics["nonspeech_acc"], abs=1e-12)
    assert s["balanced_accuracy"] == pytest.approx(metrics["ba_clip"], abs=1e-12)
    assert s["ci"] == pytest.approx(wilson_by_hand(s["correct"], 1152), abs=1e-12)
    # Confusion: outer key gold, inner key predicted.
    for gold in ("SPEECH", "NONSPEECH"):
        for pred in ("SPEECH", "NONSPEECH"):
            expected = sum(1 for r in lora if r["label"] == gold and r["pred"] == pred)
            assert s["confusion"][gold][pred] == expected
    assert s["confusion"]["SPEECH"]["SPEECH"] == s["per_class"]["SPEECH"]["correct"]
    # AUC as the share of (speech, nonspeech) pairs ranked right, ties one half.
    pos = np.array([r["p_speech"] for r in lora if r["label"] == "SPEECH"])
    neg = np.array([r["p_speech"] for r in lora if r["label"] == "NONSPEECH"])
    auc = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (pos.size * neg.size)
    assert s["roc_auc"] == pytest.approx(auc, abs=1e-12)
    assert s["ece"] == pytest.approx(ece_by_hand(lora), abs=1e-12)


def ece_by_hand(records, bins=10):
    buckets = [[] for _ in range(bins)]
    for r in records:
        conf = r["p_speech"] if r["pred"] == "SPEECH" else 1 - r["p_speech"]
        b = 0
        while b < bins - 1 and conf > (b + 1) / bins:  # bin b holds ((b)/10, (b+1)/10]
            b += 1
        buckets[b].append((conf, r["label"] == r["pred"]))
    n = len(records)
    return sum(len(bk) / n * abs(sum(h for _, h in bk) / len(bk) - sum(c for c, _ in bk) / len(bk))
               for bk in buckets if bk)


def test_ece_bins_include_their_upper_edge():
    # Confidence 0.7 belongs to (0.6, 0.7] with 0.65: one bin, accuracy 0.5, mean confidence 0.675.
    records = [rec("a", "SPEECH", "SPEECH", 0.7), rec("b", "NONSPEECH", "SPEECH", 0.65)]
    assert stats.evaluation_summary(records)["ece"] == pytest.approx(0.175, abs=1e-12)


def test_summary_accepts_nan_p_speech():
    records = [rec("a", "SPEECH", "SPEECH", 0.9), rec("b", "NONSPEECH", "NONSPEECH", 0.2),
               rec("c", "SPEECH", "NONSPEECH", math.nan), rec("d", "NONSPEECH", "SPEECH", 0.7)]
    s = stats.evaluation_summary(records)
    assert s["scored_n"] == 3
    assert s["roc_auc"] == 1.0  # a (0.9) beats b (0.2) and d (0.7); c has no score
    assert s["ece"] == pytest.approx(ece_by_hand([records[0], records[1], records[3]]), abs=1e-12)
    no_scores = stats.evaluation_summary([{**r, "p_speech": math.nan} for r in records])
    assert no_scores["roc_auc"] is None and no_scores["ece"] is None
    one_class = stats.evaluation_summary([records[0]])
    assert one_class["roc_auc"] is None and one_class["per_class"]["NONSPEECH"]["ci"] is None
    json.dumps(s, allow_nan=False)


def test_breakdown_reproduces_exported_metrics(lora):
    metrics = json.loads((EXAMPLES / "lora_seed42_metrics.json").read_text())
    for column, key in (("duration_ms", "duration_metrics"), ("snr_db", "snr_metrics")):
        rows = stats.breakdown(lora, column)
        assert [r["value"] for r in rows] == sorted(int(v) for v in metrics[key])
        for row in rows:
            ref = metrics[key][str(row["value"])]
            assert row["n"] == ref["n_samples"]
            assert row["speech_acc"] == pytest.approx(ref["speech_acc"], abs=1e-9)
            assert row["nonspeech_acc"] == pytest.approx(ref["nonspeech_acc"], abs=1e-9)
            assert row["balanced_accuracy"] == pytest.approx(ref["ba"], abs=1e-9)
            assert (row["ci_lo"], row["ci_hi"]) == pytest.approx(wilson_by_hand(row["correct"], row["n"]), abs=1e-12)


def test_breakdown_sorts_numeric_strings_numerically_and_missing_last():
    records = [rec(str(i), "SPEECH", "SPEECH", snr=v) for i, v in enumerate(["20", "100", "-5", None, "5"])]
    assert [r["value"] for r in stats.breakdown(records, "snr")] == ["-5", "5", "20", "100", None]
    with pytest.raises(ValueError, match="no record has a column"):
        stats.breakdown(records, "nope")


# ---------------------------------------------------------------- seeds

def test_four_seed_example():
    s = stats.seed_summary([(30, 32), (30, 32), (31, 32), (30, 32)], n_boot=2000)
    assert s["n_seeds"] == 4
    assert s["values"] == [93.75, 93.75, 96.875, 93.75]
    assert s["mean"] == 94.53125 and s["sd"] == 1.5625
    lo, hi = sps.t.interval(0.95, 3, loc=94.53125, scale=1.5625 / 2)
    assert s["t_ci"] == pytest.approx([lo, hi], abs=1e-9)
    assert [round(x, 2) for x in s["t_ci"]] == [92.04, 97.02]
    assert (s["min"], s["max"]) == (93.75, 96.875)
    assert s["bootstrap_ci"][0] >= 93.75 and s["bootstrap_ci"][1] <= 96.875


def test_one_seed_has_no_spread():
    s = stats.seed_summary([(30, 32)])
    assert s["sd"] is None and s["t_ci"] is None and "one seed" in s["note"]
    assert s["mean"] == 93.75


def test_seed_bootstrap_matches_scipy_percentile_bootstrap():
    values = [70.0, 72.5, 71.0, 75.0, 73.0, 69.5]
    counts = [(int(v * 2), 200) for v in values]
    ours = stats.seed_summary(counts, n_boot=20000)["bootstrap_ci"]
    ref = sps.bootstrap(([v for v in values],), np.mean, n_resamples=20000, method="percentile",
                        random_state=np.random.default_rng(1)).confidence_interval
    assert ours == pytest.approx([ref.low, ref.high], abs=0.3)


def test_clip_bootstrap_of_one_seed_matches_stratified_normal_approximation(lora):
    n = len(lora)
    counts = [(sum(r["correct"] for r in lora), n)]
    s = stats.seed_summary(counts, n_boot=20000, per_seed_records=[lora])
    # Stratified sampling variance of the pooled accuracy: sum over classes n_c p_c (1 - p_c) / N^2.
    var = sum(len(g) * p * (1 - p) for g in ([r for r in lora if r["label"] == c] for c in ("SPEECH", "NONSPEECH"))
              for p in [sum(r["correct"] for r in g) / len(g)]) / n ** 2
    mean = 100 * counts[0][0] / n
    assert s["bootstrap_ci"] == pytest.approx([mean - 100 * Z * math.sqrt(var), mean + 100 * Z * math.sqrt(var)], abs=0.3)
    assert "clips within class" in s["bootstrap"]["resampled"]


def test_aggregate_seeds_computes_from_counts(lora, base):
    out = stats.aggregate_seeds({7: lora, 3: base}, n_boot=500)
    acc = lambda rs: 100 * sum(r["correct"] for r in rs) / len(rs)  # noqa: E731
    assert out["seeds"] == [3, 7]
    assert out["overall"]["values"] == [acc(base), acc(lora)]
    speech = [acc([r for r in rs if r["label"] == "SPEECH"]) for rs in (base, lora)]
    assert out["SPEECH"]["values"] == pytest.approx(speech, abs=1e-12)
    metrics = [json.loads((EXAMPLES / f"{s}_metrics.json").read_text())["ba_clip"] for s in ("base", "lora_seed42")]
    assert out["balanced"]["values"] == pytest.approx([100 * m for m in metrics], abs=1e-9)
    assert out["overall"]["sd"] == pytest.approx(np.std([acc(base), acc(lora)], ddof=1), abs=1e-12)
    json.dumps(out, allow_nan=False)


# ---------------------------------------------------------------- McNemar

def cells(a, b):
    both_right = sum(1 for x, y in zip(a, b) if x["correct"] and y["correct"])
    only_a = sum(1 for x, y in zip(a, b) if x["correct"] and not y["correct"])
    only_b = sum(1 for x, y in zip(a, b) if not x["correct"] and y["correct"])
    both_wrong = sum(1 for x, y in zip(a, b) if not x["correct"] and not y["correct"])
    return both_right, only_a, only_b, both_wrong


def test_mcnemar_on_the_two_exports(lora, base):
    by_id = {r["clip_id"]: r for r in base}
    aligned_base = [by_id[r["clip_id"]] for r in lora]
    br, oa, ob, bw = cells(lora, aligned_base)
    table = [[br, oa], [ob, bw]]

    exact = stats.mcnemar(lora, base, method="exact")
    assert exact["n"] == 1152 and exact["discordant"] == oa + ob
    assert exact["table"] == {"both_right": br, "only_a": oa, "only_b": ob, "both_wrong": bw}
    assert exact["p_value"] == pytest.approx(sps.binomtest(oa, oa + ob, 0.5).pvalue, rel=1e-9)
    assert exact["p_value"] == pytest.approx(sm_mcnemar(table, exact=True).pvalue, rel=1e-9)

    chi2 = stats.mcnemar(lora, base, method="chi2")
    assert chi2["statistic"] == pytest.approx((abs(oa - ob) - 1) ** 2 / (oa + ob), rel=1e-12)
    assert chi2["p_value"] == pytest.approx(sm_mcnemar(table, exact=False, correction=True).pvalue, rel=1e-9)
    assert chi2["p_value"] == pytest.approx(sps.chi2.sf((abs(oa - ob) - 1) ** 2 / (oa + ob), 1), rel=1e-9)

    auto = stats.mcnemar(lora, base)
    assert auto["method"] == "chi2"  # 243 discordant pairs >= 25
    assert auto["acc_a"] == pytest.approx(0.7439236111111112, abs=1e-12)
    assert auto["acc_b"] == pytest.approx(0.7326388888888888, abs=1e-12)
    assert auto["diff_pts"] == pytest.approx(100 * (oa - ob) / 1152, abs=1e-12)
    speech = [(x, by_id[x["clip_id"]]) for x in lora if x["label"] == "SPEECH"]
    _, s_oa, s_ob, _ = cells([x for x, _ in speech], [y for _, y in speech])
    assert (auto["per_class"]["SPEECH"]["only_a"], auto["per_class"]["SPEECH"]["only_b"]) == (s_oa, s_ob)
    assert len(auto["discordant_clips"]) == oa + ob
    assert all(d["a_correct"] != d["b_correct"] for d in auto["discordant_clips"])
    json.dumps(auto, allow_nan=False)


def test_mid_p_and_auto_switch():
    def pair(only_a, only_b, both_right=10):
        a, b, i = [], [], 0
        for ca, cb, count in ((True, False, only_a), (False, True, only_b), (True, True, both_right)):
            for _ in range(count):
                a.append(rec(f"c{i:03d}", "SPEECH", "SPEECH" if ca else "NONSPEECH"))
                b.append(rec(f"c{i:03d}", "SPEECH", "SPEECH" if cb else "NONSPEECH"))
                i += 1
        return a, b

    a, b = pair(9, 3)
    mid = stats.mcnemar(a, b, method="midp")
    expected = 2 * sps.binom.cdf(3, 12, 0.5) - sps.binom.pmf(3, 12, 0.5)
    assert mid["p_value"] == pytest.approx(expected, rel=1e-12)
    assert stats.mcnemar(*pair(16, 8))["method"] == "exact"  # 24 discordant
    assert stats.mcnemar(*pair(17, 8))["method"] == "chi2"  # 25 discordant


def test_zero_discordant_pairs_give_p_one():
    a = [rec("x", "SPEECH", "SPEECH"), rec("y", "NONSPEECH", "SPEECH"), rec("z", "NONSPEECH", "NONSPEECH")]
    with np.errstate(divide="ignore"):
        assert sm_mcnemar([[2, 0], [0, 1]], exact=False, correction=True).pvalue == 0.0  # the trap guarded
    for method in stats.MCNEMAR_METHODS:
        out = stats.mcnemar(a, [dict(r) for r in a], method=method)
        assert out["p_value"] == 1.0 and out["discordant"] == 0
        assert "no discordant" in out["note"]


def test_mismatched_clip_sets_are_refused():
    a = [rec("x", "SPEECH", "SPEECH"), rec("y", "SPEECH", "SPEECH")]
    b = [rec("y", "SPEECH", "SPEECH"), rec("z", "SPEECH", "SPEECH"), rec("w", "SPEECH", "SPEECH")]
    with pytest.raises(stats.PairingError, match=r"only in A: 1, only in B: 2") as err:
        stats.mcnemar(a, b)
    assert err.value.only_a == ["x"] and err.value.only_b == ["w", "z"]
    assert isinstance(err.value, ValueError)


def test_differing_gold_label_is_refused():
    a = [rec("x", "SPEECH", "SPEECH"), rec("y", "SPEECH", "SPEECH")]
    b = [rec("x", "SPEECH", "SPEECH"), rec("y", "NONSPEECH", "SPEECH")]
    with pytest.raises(stats.PairingError, match="gold labels differ for 1 of 2 clips.*'y'"):
        stats.pair_records(a, b)


def test_holm_by_hand_and_statsmodels():
    # Sorted 0.01, 0.03, 0.04 -> 3 * 0.01, max(0.03, 2 * 0.03), max(0.06, 1 * 0.04).
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06], abs=1e-15)
    assert stats.holm([0.2, 0.6]) == pytest.approx(multipletests([0.2, 0.6], method="holm")[1].tolist())
    assert stats.holm([]) == []


def make_seed_records(n_clips, accuracies, rng):
    labels = ["SPEECH" if i % 2 else "NONSPEECH" for i in range(n_clips)]
    out = {}
    for seed, acc in accuracies.items():
        right = rng.random(n_clips) < acc
        out[seed] = [rec(f"clip{i:03d}", lab, lab if ok else ("NONSPEECH" if lab == "SPEECH" else "SPEECH"))
                     for i, (lab, ok) in enumerate(zip(labels, right))]
    return out


def test_compare_configs_against_scipy():
    rng = np.random.default_rng(5)
    a = make_seed_records(60, {1: 0.9, 2: 0.85, 3: 0.8, 4: 0.9, 5: 0.88, 9: 0.7}, rng)
    b = make_seed_records(60, {1: 0.7, 2: 0.75, 3: 0.8, 4: 0.6, 5: 0.72, 8: 0.8}, rng)
    out = stats.compare_configs(a, b, n_boot=200)
    matched = [1, 2, 3, 4, 5]
    assert out["matched_seeds"] == matched and out["only_a_seeds"] == [9] and out["only_b_seeds"] == [8]
    acc = {name: [100 * sum(r["correct"] for r in side[s]) / 60 for s in matched] for name, side in (("a", a), ("b", b))}
    p_values = [row["p_value"] for row in out["per_seed"]]
    assert [row["p_holm"] for row in out["per_seed"]] == pytest.approx(multipletests(p_values, method="holm")[1])
    t = sps.ttest_rel(acc["a"], acc["b"])
    assert out["paired"]["t_test"]["p_value"] == pytest.approx(t.pvalue, rel=1e-9)
    assert out["paired"]["wilcoxon"]["p_value"] == pytest.approx(sps.wilcoxon(acc["a"], acc["b"]).pvalue, rel=1e-9)
    all_a = [100 * sum(r["correct"] for r in a[s]) / 60 for s in sorted(a)]
    all_b = [100 * sum(r["correct"] for r in b[s]) / 60 for s in sorted(b)]
    u = sps.mannwhitneyu(all_a, all_b).statistic
    assert out["probability_of_improvement"] == pytest.approx(u / (len(all_a) * len(all_b)), abs=1e-12)
    json.dumps(out, allow_nan=False)


def test_cochran_q_written_out_and_equal_to_mcnemar_for_two(lora, base):
    out = stats.cochran_q([lora, base])
    by_id = {r["clip_id"]: r for r in base}
    _, oa, ob, _ = cells(lora, [by_id[r["clip_id"]] for r in lora])
    assert out["statistic"] == pytest.approx((oa - ob) ** 2 / (oa + ob), rel=1e-12)  # Q = uncorrected McNemar
    rng = np.random.default_rng(3)
    x = rng.random((40, 3)) < 0.7
    lists = [[rec(f"c{i}", "SPEECH", "SPEECH" if x[i, j] else "NONSPEECH") for i in range(40)] for j in range(3)]
    k, col, row = 3, x.sum(axis=0), x.sum(axis=1)
    q = (k - 1) * (k * (col ** 2).sum() - col.sum() ** 2) / (k * row.sum() - (row ** 2).sum())
    res = stats.cochran_q(lists)
    assert res["statistic"] == pytest.approx(q, rel=1e-12) and res["df"] == 2
    assert res["p_value"] == pytest.approx(sps.chi2.sf(q, 2), rel=1e-9)


# ---------------------------------------------------------------- power

def connor_by_hand(delta, psi, alpha=0.05, power=0.8):
    za, zb = sps.norm.ppf(1 - alpha / 2), sps.norm.ppf(power)
    return (za * math.sqrt(psi) + zb * math.sqrt(psi - delta ** 2)) ** 2 / delta ** 2


def test_clips_needed_is_connor_1987():
    assert stats.clips_needed(10, discordant_rate=0.2) == math.ceil(connor_by_hand(0.10, 0.2))
    assert stats.clips_needed(5, discordant_rate=0.1) == math.ceil(connor_by_hand(0.05, 0.1))
    assert stats.clips_needed(10) == math.ceil(connor_by_hand(0.10, 0.10))  # best case: rate = diff


def test_min_detectable_diff_inverts_connor_and_has_the_promised_power():
    diff = stats.power_min_detectable_diff(400, discordant_rate=0.2)
    assert connor_by_hand(diff / 100, 0.2) == pytest.approx(400, rel=1e-6)
    # Monte Carlo: at that difference the corrected chi-square test rejects about 80% of the time.
    rng = np.random.default_rng(0)
    p10, p01 = (0.2 + diff / 100) / 2, (0.2 - diff / 100) / 2
    draws = rng.multinomial(400, [p10, p01, 1 - p10 - p01], size=4000)
    b, c = draws[:, 0], draws[:, 1]
    p = sps.chi2.sf((np.abs(b - c) - 1) ** 2 / np.maximum(b + c, 1), 1)
    assert (p < 0.05).mean() == pytest.approx(0.8, abs=0.04)
    assert stats.power_min_detectable_diff(64) < stats.power_min_detectable_diff(32)
    assert stats.power_min_detectable_diff(32, discordant_rate=0.2) is None  # 20% discordance caps the difference


def test_power_caveat_sentence():
    diff = stats.power_min_detectable_diff(32)
    assert connor_by_hand(diff / 100, diff / 100) == pytest.approx(32, rel=1e-6)
    text = stats.power_caveat(32)
    assert text == (f"With 32 clips, differences under {math.floor(diff)} points are not detectable at 80% "
                    "power (McNemar, alpha 0.05, best case: every discordant clip favours the same model; "
                    "Connor 1987).")


# ---------------------------------------------------------------- order never matters

LABELS = st.sampled_from(["SPEECH", "NONSPEECH"])
P_SPEECH = st.one_of(st.floats(0, 1), st.just(math.nan))


@st.composite
def seed_sets(draw):
    n = draw(st.integers(2, 25))
    labels = draw(st.lists(LABELS, min_size=n, max_size=n))
    seeds = draw(st.lists(st.integers(0, 99), min_size=1, max_size=5, unique=True))
    evals = {}
    for seed in seeds:
        preds = draw(st.lists(LABELS, min_size=n, max_size=n))
        probs = draw(st.lists(P_SPEECH, min_size=n, max_size=n))
        evals[seed] = [rec(f"clip{i}", lab, pred, p, snr=i % 3)
                       for i, (lab, pred, p) in enumerate(zip(labels, preds, probs))]
    return evals


def shuffled(evals, rnd):
    keys = list(evals)
    rnd.shuffle(keys)
    out = {}
    for k in keys:
        records = [dict(r) for r in evals[k]]
        rnd.shuffle(records)
        out[k] = records
    return out


@settings(max_examples=30, deadline=None, derandomize=True)  # same examples every run
@given(evals=seed_sets(), other=seed_sets(), order=st.randoms(use_true_random=False))
def test_record_and_seed_order_never_change_results(evals, other, order):
    again = shuffled(evals, order)
    first = next(iter(evals))
    assert stats.evaluation_summary(evals[first]) == stats.evaluation_summary(again[first])
    assert stats.breakdown(evals[first], "snr") == stats.breakdown(again[first], "snr")
    assert stats.aggregate_seeds(evals, n_boot=100) == stats.aggregate_seeds(again, n_boot=100)
    counts = [(sum(r["correct"] for r in evals[s]), len(evals[s])) for s in evals]
    one, two = stats.seed_summary(counts, n_boot=100), stats.seed_summary(counts[::-1], n_boot=100)
    assert sorted(one.pop("values")) == sorted(two.pop("values")) and one == two
    if len(evals) >= 2:
        seeds = list(evals)
        assert stats.mcnemar(evals[seeds[0]], evals[seeds[1]]) == stats.mcnemar(again[seeds[0]], again[seeds[1]])
        assert stats.cochran_q(list(evals.values())) == stats.cochran_q([again[s] for s in evals])
    same_clips = {s: [dict(r, label=evals[first][i]["label"]) for i, r in enumerate(recs)]
                  for s, recs in other.items() if len(recs) == len(evals[first])}
    if same_clips:
        assert (stats.compare_configs(evals, same_clips, n_boot=50)
                == stats.compare_configs(again, shuffled(same_clips, order), n_boot=50))


def test_shuffle_helper_really_shuffles():
    evals = {s: [rec(f"c{i}", "SPEECH", "SPEECH") for i in range(20)] for s in range(5)}
    again = shuffled(evals, random.Random(1))
    assert list(again) != list(evals) or [r["clip_id"] for r in again[0]] != [r["clip_id"] for r in evals[0]]


# ---------------------------------------------------------------- guards on exact counts

def seeds_with_correct_counts(n_clips, correct_by_seed):
    """{seed: records} where seed s gets exactly correct_by_seed[s] clips right."""
    labels = ["SPEECH" if i % 2 else "NONSPEECH" for i in range(n_clips)]
    wrong = {"SPEECH": "NONSPEECH", "NONSPEECH": "SPEECH"}
    return {seed: [rec(f"clip{i:04d}", lab, lab if i < k else wrong[lab]) for i, lab in enumerate(labels)]
            for seed, k in correct_by_seed.items()}


def test_a_constant_gap_in_counts_leaves_the_t_test_undefined():
    # A is 12 clips of 1152 ahead on every seed; as percentages the gaps differ in the last bit.
    base = {1: 900, 2: 950, 3: 1000, 4: 1100}
    gaps = {100 * (k + 12) / 1152 - 100 * k / 1152 for k in base.values()}
    assert len(gaps) > 1  # the float trap this test is about
    a = seeds_with_correct_counts(1152, {s: k + 12 for s, k in base.items()})
    b = seeds_with_correct_counts(1152, base)
    paired = stats.compare_configs(a, b, n_boot=50)["paired"]
    assert paired["t_test"] is None
    assert "same difference" in paired["note"]
    assert paired["mean_diff_pts"] == pytest.approx(100 * 12 / 1152, rel=1e-12)


def test_zero_gaps_in_counts_leave_wilcoxon_undefined():
    base = {s: 700 + 37 * s for s in range(1, 6)}
    a = seeds_with_correct_counts(1152, base)
    b = seeds_with_correct_counts(1152, base)
    paired = stats.compare_configs(a, b, n_boot=50)["paired"]
    assert paired["t_test"] is None and paired["wilcoxon"] is None
    assert "all per-seed differences are zero" in paired["note"]


# ---------------------------------------------------------------- exact power of the test used

def best_case_power_by_enumeration(n, delta, alpha, p_value):
    """Best case: every discordant clip favours A, so d ~ Binomial(n, delta) and the split is (d, 0)."""
    return sum(sps.binom.pmf(d, n, delta) for d in range(1, n + 1) if p_value(d) <= alpha)


def test_mid_p_power_sentence_matches_a_direct_enumeration():
    def mid_p(d):  # two-sided mid-p with the split (d, 0): 2 * 0.5^d - 0.5^d
        return 0.5 ** d

    threshold = brentq_threshold(lambda x: best_case_power_by_enumeration(32, x, 0.05, mid_p) - 0.8)
    assert threshold == pytest.approx(0.2011, abs=1e-4)  # mid-p reaches 80% at 20.1 points, not Connor's 22
    assert stats.mcnemar_power(32, 100 * threshold, method="midp") == pytest.approx(0.8, abs=1e-9)
    text = stats.power_caveat(32, method="midp")
    assert text.startswith("With 32 clips, differences under 20 points are not detectable at 80% power")
    assert "mid-p" in text
    assert "under 22 points" in stats.power_caveat(32)  # Connor's planning figure, unchanged without a method


def test_exact_power_with_a_discordant_rate_matches_a_direct_enumeration():
    n, psi, delta = 60, 0.3, 0.2
    p_a, p_b = (psi + delta) / 2, (psi - delta) / 2
    by_hand = 0.0
    for a in range(n + 1):
        for b in range(n + 1 - a):
            prob = sps.multinomial.pmf([a, b, n - a - b], n, [p_a, p_b, 1 - p_a - p_b])
            exact_p = min(1.0, 2 * sps.binom.cdf(min(a, b), a + b, 0.5)) if a + b else 1.0
            by_hand += prob * (exact_p <= 0.05)
    assert stats.mcnemar_power(n, 100 * delta, discordant_rate=psi, method="exact") == pytest.approx(by_hand, rel=1e-9)


def brentq_threshold(f):
    from scipy.optimize import brentq

    return brentq(f, 0.01, 0.9, xtol=1e-12)


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("statistic", ["accuracy", "balanced"])
def test_large_sets_bootstrap_counts_with_the_same_distribution_as_index_draws(monkeypatch, shared, statistic):
    """Above COUNT_BOOTSTRAP_ABOVE clips the bootstrap draws counts; its interval must match the
    index-draw interval within Monte Carlo error (both 20,000 replicates here)."""
    rng = np.random.default_rng(5)
    n = 3000
    labels = np.where(np.arange(n) < 1800, stats.SPEECH, stats.NONSPEECH)
    difficulty = rng.random(n)  # the seeds agree on which clips are hard: pairing matters when shared
    seeds = [((difficulty < p).astype(int), labels) for p in (0.825, 0.83, 0.835)]  # clip noise dominates the seed spread
    monkeypatch.setattr(stats, "COUNT_BOOTSTRAP_ABOVE", 10 ** 9)
    by_index = stats._bootstrap_clips(seeds, statistic, 20_000, 1, shared)
    monkeypatch.setattr(stats, "COUNT_BOOTSTRAP_ABOVE", 0)
    by_count = stats._bootstrap_clips(seeds, statistic, 20_000, 2, shared)
    assert by_count == pytest.approx(by_index, abs=0.25)
    assert by_count[1] - by_count[0] > 1.0  # a real interval, not a degenerate one


# ---------------------------------------------------------------- intervals inside their range

def records_from_table(both_right, only_a, only_b, both_wrong, label="SPEECH"):
    """Two evaluations of the same clips whose McNemar table is the given one."""
    other = "NONSPEECH" if label == "SPEECH" else "SPEECH"
    cells = [(True, True)] * both_right + [(True, False)] * only_a + [(False, True)] * only_b + \
        [(False, False)] * both_wrong
    a = [rec(f"c{i:04d}", label, label if ca else other) for i, (ca, _) in enumerate(cells)]
    b = [rec(f"c{i:04d}", label, label if cb else other) for i, (_, cb) in enumerate(cells)]
    return a, b


def test_paired_difference_matches_published_example():
    # Fagerland, Lydersen and Laake (2017), Statistical Analysis of Contingency Tables, ch. 8:
    # Cavo et al. (2012), table [[59, 6], [16, 80]]: Newcombe square-and-add -0.0621 (-0.1186 to -0.0046).
    lo, hi = stats.paired_difference_ci(59, 6, 16, 80)
    assert (round(lo, 4), round(hi, 4)) == (-0.1186, -0.0046)
    a, b = records_from_table(59, 6, 16, 80)
    out = stats.mcnemar(a, b)
    assert out["diff_ci_method"] == "newcombe"
    assert out["diff_ci"] == pytest.approx([100 * lo, 100 * hi])
    assert out["per_class"]["SPEECH"]["diff_ci"] == pytest.approx(out["diff_ci"])
    assert out["per_class"]["NONSPEECH"]["diff_ci"] is None  # no NONSPEECH clips


def test_paired_difference_by_hand_and_in_range_for_every_small_table():
    z = sps.norm.ppf(0.975)

    def wilson(k, n):
        centre, half = (k + z * z / 2) / (n + z * z), z * math.sqrt(k * (n - k) / n + z * z / 4) / (n + z * z)
        return centre - half, centre + half

    for n in range(1, 9):
        for a in range(n + 1):
            for b in range(n + 1 - a):
                for c in range(n + 1 - a - b):
                    d = n - a - b - c
                    lo, hi = stats.paired_difference_ci(a, b, c, d)
                    theta = (b - c) / n
                    assert -1 <= lo <= theta <= hi <= 1, (a, b, c, d)
                    # Newcombe's formula written out independently (phi with his continuity adjustment).
                    p1, p2 = (a + b) / n, (a + c) / n
                    (l1, u1), (l2, u2) = wilson(a + b, n), wilson(a + c, n)
                    margins = (a + b) * (c + d) * (a + c) * (b + d)
                    cross = a * d - b * c
                    phi = 0 if not margins else (max(cross - n / 2, 0) if cross >= 0 else cross) / math.sqrt(margins)
                    low = theta - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2))
                    high = theta + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2))
                    assert (lo, hi) == pytest.approx((max(-1, low), min(1, high)), abs=1e-9), (a, b, c, d)


def test_t_interval_is_clipped_to_100_with_a_note():
    # 32/32, 32/32, 29/32: the t-interval mean +/- t(0.975, 2) SD / sqrt(3) passes 100.
    s = stats.seed_summary([(32, 32), (32, 32), (29, 32)], n_boot=200)
    lo, hi = sps.t.interval(0.95, 2, loc=np.mean([100, 100, 90.625]), scale=sps.sem([100, 100, 90.625]))
    assert hi > 100
    assert s["t_ci"] == pytest.approx([lo, 100.0])
    assert s["t_ci_clipped"] and s["t_half_width"] == pytest.approx((hi - lo) / 2)
    assert "clipped to [0, 100]" in s["note"]
    assert 0 <= s["bootstrap_ci"][0] <= s["bootstrap_ci"][1] <= 100
    low = stats.seed_summary([(0, 32), (0, 32), (3, 32)], n_boot=50)
    assert low["t_ci"][0] == 0.0 and low["t_ci_clipped"]
    inside = stats.seed_summary([(30, 32), (30, 32), (31, 32), (30, 32)], n_boot=50)
    assert not inside["t_ci_clipped"] and inside["note"] is None


def test_sd_zero_gets_a_note():
    s = stats.seed_summary([(30, 32)] * 3, n_boot=50)
    assert s["sd"] == 0 and s["t_ci"] == [93.75, 93.75]
    assert "SD 0" in s["note"] and "zero width" in s["note"]


def test_mean_difference_interval_over_matched_seeds_matches_scipy():
    rng = random.Random(5)
    a = {seed: [rec(f"c{i:03d}", "SPEECH" if i < 20 else "NONSPEECH",
                    rng.choice(["SPEECH", "NONSPEECH"])) for i in range(40)] for seed in (1, 2, 3)}
    b = {seed: [rec(f"c{i:03d}", "SPEECH" if i < 20 else "NONSPEECH",
                    rng.choice(["SPEECH", "NONSPEECH"])) for i in range(40)] for seed in (1, 2, 3)}
    paired = stats.compare_configs(a, b, n_boot=20)["paired"]
    acc = lambda recs: 100 * sum(r["pred"] == r["label"] for r in recs) / len(recs)  # noqa: E731
    diffs = [acc(a[s]) - acc(b[s]) for s in (1, 2, 3)]
    ci = sps.ttest_1samp(diffs, 0.0).confidence_interval(0.95)
    assert paired["mean_diff_ci"] == pytest.approx([ci.low, ci.high])
    assert paired["sd_diff_pts"] == pytest.approx(np.std(diffs, ddof=1))


def test_mean_difference_one_evaluation_a_side_is_newcombe():
    a, b = records_from_table(59, 6, 16, 80)
    out = stats.mean_difference({1: a}, {1: b})
    assert out["method"] == "newcombe"
    assert out["overall"]["diff_pts"] == pytest.approx(100 * (6 - 16) / 161)
    assert out["overall"]["ci"] == pytest.approx([100 * x for x in stats.paired_difference_ci(59, 6, 16, 80)])
    assert out["NONSPEECH"] is None


def independent_difference_bootstrap(minuend, subtrahend, n_boot, seed):
    """Clip indices drawn within class (one draw for every evaluation), seeds drawn independently."""
    rng = np.random.default_rng(seed)
    clips = sorted(next(iter(minuend.values())), key=lambda r: r["clip_id"])
    by_class = {cls: [i for i, r in enumerate(clips) if r["label"] == cls] for cls in ("SPEECH", "NONSPEECH")}

    def matrix(side):
        return np.array([[r["pred"] == r["label"] for r in sorted(side[s], key=lambda r: r["clip_id"])]
                         for s in sorted(side)], dtype=float)

    ma, mb = matrix(minuend), matrix(subtrahend)
    out = []
    for _ in range(n_boot):
        idx = np.concatenate([rng.choice(ids, size=len(ids)) for ids in by_class.values() if ids])
        acc_a, acc_b = ma[:, idx].mean(axis=1), mb[:, idx].mean(axis=1)
        out.append(100 * (rng.choice(acc_a, size=len(acc_a)).mean() - rng.choice(acc_b, size=len(acc_b)).mean()))
    return np.percentile(out, [2.5, 97.5])


def test_mean_difference_bootstrap_agrees_with_an_independent_one():
    rng = random.Random(11)

    def side(seeds, skill):
        return {s: [rec(f"c{i:03d}", "SPEECH" if i < 30 else "NONSPEECH",
                        ("SPEECH" if i < 30 else "NONSPEECH") if rng.random() < skill else
                        ("NONSPEECH" if i < 30 else "SPEECH")) for i in range(60)] for s in seeds}

    minuend, subtrahend = side((1, 2, 3), 0.9), side((7,), 0.6)
    out = stats.mean_difference(minuend, subtrahend, n_boot=4000)
    assert out["method"] == "bootstrap" and "separately" in out["bootstrap"]["resampled"]
    reference = independent_difference_bootstrap(minuend, subtrahend, 4000, 1)
    assert out["overall"]["ci"] == pytest.approx(list(reference), abs=2.0)  # Monte Carlo error only
    lo, hi = out["overall"]["ci"]
    assert lo <= out["overall"]["diff_pts"] <= hi
    for cls in ("SPEECH", "NONSPEECH"):
        assert -100 <= out[cls]["ci"][0] <= out[cls]["diff_pts"] <= out[cls]["ci"][1] <= 100
    # Deterministic, independent of record and seed order.
    again = stats.mean_difference({s: list(reversed(r)) for s, r in reversed(list(minuend.items()))}, subtrahend,
                                  n_boot=4000)
    assert again == out
    same = stats.mean_difference(minuend, dict(minuend), n_boot=300)
    assert same["overall"]["ci"] == [0.0, 0.0] and "matched seed pairs" in same["bootstrap"]["resampled"]


def test_mean_difference_refuses_other_clips():
    a, b = records_from_table(3, 1, 1, 3)
    with pytest.raises(stats.PairingError):
        stats.mean_difference({1: a}, {1: b[:-1]})


def test_power_statement_names_both_assumptions():
    text = stats.power_statement(32, 13 / 32)
    observed = stats.power_min_detectable_diff(32, 13 / 32)
    best = stats.power_min_detectable_diff(32)
    assert f"under {math.floor(observed)} points are not detectable" in text
    assert f"{math.floor(best)} points is the floor whatever the discordance (best case" in text
    assert f"under {math.floor(best)} points" in stats.power_caveat(32)  # the page-level caveat's number
    assert "40.6% of clips" in text
    assert "no discordant clip" in stats.power_statement(32, None)
