"""`python -m engine summary | mcnemar | seeds | compare` as subprocesses on the two real exports and small fixtures."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from scipy import stats as sps
from statsmodels.stats.contingency_tables import mcnemar as sm_mcnemar

from engine.stats import core as stats
from engine.tasks.importing import import_predictions

REPO = Path(__file__).resolve().parents[1]
from tests.conftest import EXAMPLES  # noqa: E402


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def export_rows(stem: str) -> dict[str, dict]:
    with open(EXAMPLES / f"{stem}_predictions.csv", newline="") as fh:
        return {row["audio_path"]: row for row in csv.DictReader(fh)}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return {"base": import_predictions(EXAMPLES / "base_predictions.csv", "base", root, seed=1),
            "lora": import_predictions(EXAMPLES / "lora_seed42_predictions.csv", "lora42", root,
                                       config_label="LoRA", seed=42)}


def test_summary_json(runs):
    result = run_cli("summary", runs["lora"], "--by", "snr_db", "--ci", "clopper-pearson", "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)  # exactly one JSON object
    assert set(out) == {"source", "summary", "power_caveat", "by", "breakdown"}
    summary = out["summary"]
    assert set(summary) >= {"n", "correct", "accuracy", "ci", "ci_method", "per_class", "balanced_accuracy",
                            "confusion", "roc_auc", "ece"}
    rows = export_rows("lora_seed42").values()
    correct = sum(r["correct"] == "True" for r in rows)
    assert (summary["n"], summary["correct"]) == (1152, correct)
    assert summary["ci"] == pytest.approx([sps.beta.ppf(0.025, correct, 1152 - correct + 1),
                                           sps.beta.ppf(0.975, correct + 1, 1152 - correct)], abs=1e-10)
    assert [row["value"] for row in out["breakdown"]] == [-10, -5, 0, 5, 10, 20]
    assert out["power_caveat"].startswith("With 1152 clips, differences under ")


def test_summary_text(runs):
    result = run_cli("summary", runs["base"])
    assert result.returncode == 0, result.stderr
    assert "accuracy 73.3% (844/1152)" in result.stdout
    assert "confusion (rows: gold, columns: predicted)" in result.stdout


def test_mcnemar_json_matches_statsmodels(runs):
    a, b = export_rows("lora_seed42"), export_rows("base")
    cells = {"both_right": 0, "only_a": 0, "only_b": 0, "both_wrong": 0}
    for clip, row in a.items():
        ca, cb = row["correct"] == "True", b[clip]["correct"] == "True"
        cells["both_right" if ca and cb else "only_a" if ca else "only_b" if cb else "both_wrong"] += 1
    table = [[cells["both_right"], cells["only_a"]], [cells["only_b"], cells["both_wrong"]]]

    result = run_cli("mcnemar", "--model_a", runs["lora"], "--model-b", runs["base"], "--name-b", "Base", "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert set(out) >= {"name_a", "name_b", "table", "n", "discordant", "method", "statistic", "p_value", "note",
                        "acc_a", "acc_b", "diff_pts", "per_class", "discordant_clips", "power_caveat"}
    assert (out["name_a"], out["name_b"]) == ("LoRA", "Base")
    assert out["table"] == cells and out["method"] == "chi2"
    assert out["p_value"] == pytest.approx(sm_mcnemar(table, exact=False, correction=True).pvalue, rel=1e-9)

    exact = json.loads(run_cli("mcnemar", "--model-a", runs["lora"], "--model-b", runs["base"], "--exact",
                               "--json").stdout)
    assert exact["method"] == "exact"
    assert exact["p_value"] == pytest.approx(sps.binomtest(cells["only_a"], out["discordant"]).pvalue, rel=1e-9)


def test_mcnemar_refuses_different_clip_sets(runs, tmp_path):
    lines = (runs["base"] / "evaluations" / "test" / "predictions.jsonl").read_text().splitlines()
    short = tmp_path / "short.jsonl"
    short.write_text("\n".join(lines[:-3]) + "\n")
    result = run_cli("mcnemar", "--model-a", runs["lora"], "--model-b", short, "--json")
    assert result.returncode == 2
    assert "only in A: 3, only in B: 0" in result.stderr and result.stdout == ""


def test_seeds_json(runs, tmp_path):
    loose = tmp_path / "extra.jsonl"
    shutil.copy(runs["lora"] / "evaluations" / "test" / "predictions.jsonl", loose)
    result = run_cli("seeds", runs["lora"], runs["base"], loose, "--n-boot", "200", "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert set(out) >= {"inputs", "seeds", "overall", "SPEECH", "NONSPEECH", "balanced"}
    assert [(i["seed"], i["seed_from"]) for i in out["inputs"]] == [(42, "config"), (1, "config"), (3, "position")]
    assert out["seeds"] == [1, 3, 42]
    lora_acc = 100 * sum(r["correct"] == "True" for r in export_rows("lora_seed42").values()) / 1152
    base_acc = 100 * sum(r["correct"] == "True" for r in export_rows("base").values()) / 1152
    assert out["overall"]["values"] == pytest.approx([base_acc, lora_acc, lora_acc], abs=1e-12)
    assert set(out["overall"]) >= {"n_seeds", "values", "mean", "sd", "t_ci", "min", "max", "bootstrap_ci"}
    assert "different configurations" in out["warning"]


def test_unusable_input_exits_2(tmp_path):
    result = run_cli("summary", tmp_path / "missing.jsonl", "--json")
    assert result.returncode == 2
    assert "missing.jsonl" in result.stderr and "Traceback" not in result.stderr


# ---------------------------------------------------------------- compare

def write_export(path: Path, right: int, n: int = 32) -> Path:
    """A CSV export of n clips (half SPEECH) with the first `right` clips predicted correctly."""
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["clip_id", "label", "pred"])
        for i in range(n):
            label = "SPEECH" if i % 2 else "NONSPEECH"
            wrong = "NONSPEECH" if label == "SPEECH" else "SPEECH"
            writer.writerow([f"clip{i:02d}", label, label if i < right else wrong])
    return path


@pytest.fixture(scope="module")
def seeded_runs(tmp_path_factory):
    """A near the ceiling (32, 32, 29 of 32: its t-interval passes 100) and B lower, seeds 1-3."""
    root = tmp_path_factory.mktemp("seeded")
    out = {}
    for side, rights in (("a", (32, 32, 29)), ("b", (20, 24, 22))):
        out[side] = [import_predictions(write_export(root / f"{side}{seed}.csv", right), f"{side}-s{seed}", root / "runs",
                                        config_label=side.upper(), seed=seed)
                     for seed, right in zip((1, 2, 3), rights)]
    return out


def intervals(obj, path=""):
    """(path, [lo, hi]) of every interval in a JSON document."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            here = f"{path}.{key}"
            if (key == "ci" or key.endswith("_ci")) and value is not None:
                yield here, value
            else:
                yield from intervals(value, here)
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            yield from intervals(value, f"{path}[{i}]")


def test_compare_json_every_interval_in_range(seeded_runs):
    result = run_cli("compare", "--a", *seeded_runs["a"], "--b", *seeded_runs["b"], "--n-boot", "500", "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert set(out) >= {"sides", "n_clips", "seed_stats", "differences", "paired", "cochran", "power_caveat"}
    (diff,) = out["differences"]
    assert (diff["a"], diff["b"]) == ("A", "B")
    assert diff["points"]["Overall"] == pytest.approx(100 * (22 - 31) / 32)
    assert diff["interval"]["method"] == "bootstrap"
    lo, hi = diff["interval"]["overall"]["ci"]
    assert lo <= diff["points"]["Overall"] <= hi and "[" in diff["line"]
    assert out["seed_stats"]["A"]["overall"]["t_ci_clipped"]  # raw t-interval passes 100
    found = list(intervals(out))
    assert len(found) > 20
    for where, (lo, hi) in found:
        difference = where.endswith(("diff_ci", "mean_diff_ci")) or where.startswith(".differences")
        bound = (-100.0, 100.0) if difference else (0.0, 100.0)
        assert bound[0] <= lo <= hi <= bound[1], (where, lo, hi)
    (paired,) = out["paired"]
    assert [row["pair"] for row in paired["rows"]] == ["seed 1", "seed 2", "seed 3"]
    assert paired["paired"]["mean_diff_ci"] is not None and paired["findings"][0].startswith("Paired t-test")
    assert paired["power"].startswith("With 32 clips at the observed discordance")
    assert out["cochran"] is None  # two sides


def test_compare_reads_other_tools_exports_like_import_predictions():
    base, lora = EXAMPLES / "base_predictions.csv", EXAMPLES / "lora_seed42_predictions.csv"
    result = run_cli("compare", "--a", base, "--b", lora, "--name-a", "base", "--name-b", "lora", "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    (row,) = out["paired"][0]["rows"]
    t = row["table"]
    rows_a, rows_b = export_rows("base"), export_rows("lora_seed42")
    assert t["only_a"] == sum(rows_a[k]["correct"] == "True" and rows_b[k]["correct"] == "False" for k in rows_a)
    lo, hi = stats.paired_difference_ci(t["both_right"], t["only_a"], t["only_b"], t["both_wrong"])
    assert row["diff_ci"] == pytest.approx([100 * lo, 100 * hi])
    assert out["differences"][0]["interval"]["method"] == "newcombe"
    assert out["differences"][0]["interval"]["overall"]["ci"] == pytest.approx([-100 * hi, -100 * lo])  # B - A
    # mcnemar once refused these files ("record 1 lacks clip_id, label, pred").
    result = run_cli("mcnemar", "--model-a", base, "--model-b", lora, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["table"] == t
    text = run_cli("compare", "--a", base, "--b", lora, "--n-boot", "50")
    assert text.returncode == 0 and "Newcombe" in text.stdout and "Power:" in text.stdout


def test_compare_three_sides_adds_cochran(seeded_runs, tmp_path):
    third = [write_export(tmp_path / f"c{i}.csv", right) for i, right in enumerate((26, 27, 28), start=1)]
    # Plain files carry no seed: they are keyed 'input N' and so meet no seed of A and B.
    result = run_cli("compare", "--a", *seeded_runs["a"], "--b", *seeded_runs["b"], "--c", *third,
                     "--n-boot", "50", "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["cochran"]["rows"] == [] and "no seed is shared" in out["cochran"]["note"]
    result = run_cli("compare", "--a", seeded_runs["a"][0], "--b", seeded_runs["b"][0], "--c", third[0],
                     "--n-boot", "50", "--json")
    out = json.loads(result.stdout)
    (row,) = out["cochran"]["rows"]
    assert (row["k"], row["n"]) == (3, 32)


def test_compare_refuses_unreadable_input(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("x\n1\n")
    result = run_cli("compare", "--a", bad, "--b", bad, "--json")
    assert result.returncode == 2 and "no label column" in result.stderr and "Traceback" not in result.stderr
