"""`python -m engine summary | mcnemar | seeds` as subprocesses on the two real exports."""

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
