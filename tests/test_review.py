"""engine.dashboard.review, engine.dashboard.charts and engine.dashboard.report on the demo workspace: the numbers they show are
the statistics module's numbers, and the exported report matches the engine's --json commands."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from engine.dashboard import charts
from engine.dashboard import report
from engine.dashboard import review
from engine.stats import core as stats
from engine.runs import folder as rf
from engine.runs.predictions import NONSPEECH, SPEECH, read_predictions

REPO = Path(__file__).resolve().parents[1]
ATTENTION, MLP = "Attention-Only (demo)", "Attention+MLP (demo)"
BASE, LORA = "Base (example)", "LoRA (example)"


@pytest.fixture(scope="module")
def runs(demo_workspace):
    return rf.list_runs(demo_workspace)


@pytest.fixture(scope="module")
def demo_comparison(runs):
    return review.compare(runs, [ATTENTION, MLP], n_boot=500)


@pytest.fixture(scope="module")
def example_report(demo_workspace, runs, tmp_path_factory):
    """The report for the two example imports, written into a copy of their run folders."""
    root = tmp_path_factory.mktemp("report-ws")
    for name in ("example-base", "example-lora-s42"):
        shutil.copytree(demo_workspace / name, root / name)
    paths = report.write_report(root, [BASE, LORA])
    return root, paths


def records_of(root: Path, run_id: str) -> list[dict]:
    return read_predictions(root / run_id, "test")


def run_cli(*args) -> dict:
    result = subprocess.run([sys.executable, "-m", "engine", *map(str, args), "--json"], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


# ---------------------------------------------------------------- formatting

def test_formats():
    assert review.format_accuracy(30, 32, stats.proportion_ci(30, 32)) == "93.8% (30/32) [79.9, 98.3]"
    assert review.format_accuracy(0, 0, None) == "n/a (0/0)"
    assert review.difference_line({"Overall": 3.125, SPEECH: 12.5, NONSPEECH: -6.25}) == \
        "+3.1 pts overall (+12.5 SPEECH, -6.2 NONSPEECH)"
    assert review.difference_line({"Overall": -0.01, SPEECH: None, NONSPEECH: 0.0}) == \
        "+0.0 pts overall (n/a SPEECH, +0.0 NONSPEECH)"
    assert review.format_p(0.4412) == "0.441" and review.format_p(2.746e-4) == "2.75e-04"
    assert review.format_eta(75) == "1 min 15 s" and review.format_eta(None) == "unknown"


# ---------------------------------------------------------------- overview and configurations

def test_overview_table_matches_evaluation_files(runs, demo_workspace):
    table = review.overview_table(runs).set_index("name")
    assert set(table.index) >= {"demo-attention-s42", "demo-attention-mlp-s123", "demo-silero-vad",
                                "example-base", "example-lora-s42"}
    for run_id in ("demo-attention-mlp-s42", "example-lora-s42", "demo-silero-vad"):
        summary = stats.evaluation_summary(records_of(demo_workspace, run_id))
        assert table.loc[run_id, "overall"] == pytest.approx(100 * summary["accuracy"])
        assert table.loc[run_id, SPEECH] == pytest.approx(100 * summary["per_class"][SPEECH]["accuracy"])
        assert table.loc[run_id, "clips"] == summary["n"]
    row = table.loc["demo-attention-s42"]
    assert (row["configuration"], row["seed"], row["kind"], row["status"]) == (ATTENTION, 42, "train", "succeeded")
    summary = rf.read_json(demo_workspace / "demo-attention-s42" / rf.SUMMARY)
    assert row["trainable %"] == pytest.approx(summary["trainable_percent"])
    assert row["adapter MB"] == pytest.approx(summary["adapter_mb"])
    assert table.loc["example-base", "kind"] == "imported" and table.loc["demo-silero-vad", "kind"] == "baseline"


def test_unreadable_runs_are_rows_not_errors(demo_workspace, tmp_path):
    shutil.copytree(demo_workspace / "demo-silero-vad", tmp_path / "fine")
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / rf.CONFIG).write_text("{not json")
    (tmp_path / "half").mkdir()
    rf.atomic_write_json(tmp_path / "half" / rf.CONFIG, {"kind": "train", "label": "x"})
    shutil.copytree(demo_workspace / "demo-silero-vad", tmp_path / "bad-eval")
    (tmp_path / "bad-eval" / "evaluations" / "test" / rf.EVALUATION).write_text("{")
    (tmp_path / "_reports").mkdir()  # report folders are never runs
    table = review.overview_table(rf.list_runs(tmp_path)).set_index("name")
    assert sorted(table.index) == ["bad-eval", "corrupt", "fine", "half"]
    assert table.loc["corrupt", "status"].startswith("unreadable: corrupt JSON")
    assert table.loc["half", "status"] == "unreadable: missing status.json"
    assert table.loc["bad-eval", "status"].startswith("unreadable: evaluations/test/evaluation.json: corrupt JSON")
    assert table.loc["fine", "status"] == "succeeded"
    only_broken = review.filter_overview(table.reset_index(), statuses=["unreadable"])
    assert sorted(only_broken["name"]) == ["bad-eval", "corrupt", "half"]
    assert list(review.filter_overview(table.reset_index(), text="FIN")["name"]) == ["fine"]


def test_workspace_signature_follows_status_writes(demo_workspace, tmp_path):
    shutil.copytree(demo_workspace / "demo-silero-vad", tmp_path / "run")
    before = review.workspace_signature(tmp_path)
    assert review.workspace_signature(tmp_path) == before
    rf.write_status(tmp_path / "run", rf.SUCCEEDED, note="touched")
    assert review.workspace_signature(tmp_path) != before
    assert review.workspace_signature(tmp_path / "missing") == "missing"


def test_selection_signature_ignores_unrelated_runs(demo_workspace, tmp_path):
    for name in ("demo-attention-s42", "demo-attention-mlp-s42", "example-base"):
        shutil.copytree(demo_workspace / name, tmp_path / name)

    def signature():
        runs = rf.list_runs(tmp_path)
        return review.selection_signature(review.configurations(runs), runs, [ATTENTION, "demo-attention-mlp-s42/test"],
                                          "test")

    before = signature()
    rf.write_status(tmp_path / "example-base", rf.SUCCEEDED, note="unrelated")
    assert signature() == before
    evaluation = tmp_path / "demo-attention-mlp-s42" / "evaluations" / "test" / rf.EVALUATION
    rf.atomic_write_json(evaluation, rf.read_json(evaluation))
    assert signature() != before


def test_configurations_group_seeds_and_split_same_label(runs):
    configs = {c.name: c for c in review.configurations(runs)}
    assert [r.run_id for r in configs[ATTENTION].runs] == ["demo-attention-s42", "demo-attention-s123"]
    assert [r.run_id for r in configs[MLP].runs] == ["demo-attention-mlp-s42", "demo-attention-mlp-s123"]
    assert [r.run_id for r in configs[BASE].runs] == ["example-base"]
    # Two recipes that share a label are not pooled: the differing field is named.
    one = next(r for r in runs if r.run_id == "demo-attention-s42")
    other = rf.RunInfo("rank8-s42", one.path, one.kind, one.state, dict(one.config, lora_r=8), one.status)
    names = sorted(c.name for c in review.configurations([one, other]))
    assert names == [f"{ATTENTION} · lora_r=16", f"{ATTENTION} · lora_r=8"]


# ---------------------------------------------------------------- comparison

def test_comparison_rows_equal_evaluation_summary(demo_comparison, demo_workspace):
    rows = {r["run"]: r for r in demo_comparison.rows}
    assert set(rows) == {"demo-attention-s42", "demo-attention-s123", "demo-attention-mlp-s42",
                         "demo-attention-mlp-s123", "demo-silero-vad"}  # the baseline is on the same clips
    table = demo_comparison.table.set_index("Configuration")
    for run_id, row in rows.items():
        expected = stats.evaluation_summary(records_of(demo_workspace, run_id))
        assert (row["n"], row["overall_correct"]) == (expected["n"], expected["correct"])
        assert row["speech_accuracy"] == expected["per_class"][SPEECH]["accuracy"]
        assert [row["nonspeech_ci_lo"], row["nonspeech_ci_hi"]] == expected["per_class"][NONSPEECH]["ci"]
        seed = "" if row["seed"] is None else f" · seed {row['seed']}"
        cells = table.loc[row["configuration"] + seed]
        for column, part in (("Overall", expected), (SPEECH, expected["per_class"][SPEECH]),
                             (NONSPEECH, expected["per_class"][NONSPEECH])):
            assert cells[column] == review.format_accuracy(part["correct"], part["n"], part["ci"])
    assert table.loc["Silero VAD (baseline)", "Trainable %"] == "—"


def test_difference_line_and_seed_table(demo_comparison, demo_workspace):
    def mean_accuracy(run_ids, cls=None):
        values = []
        for run_id in run_ids:
            summary = stats.evaluation_summary(records_of(demo_workspace, run_id))
            values.append(100 * (summary["accuracy"] if cls is None else summary["per_class"][cls]["accuracy"]))
        return sum(values) / len(values)

    a, b = ["demo-attention-s42", "demo-attention-s123"], ["demo-attention-mlp-s42", "demo-attention-mlp-s123"]
    expected = {"Overall": mean_accuracy(b) - mean_accuracy(a),
                SPEECH: mean_accuracy(b, SPEECH) - mean_accuracy(a, SPEECH),
                NONSPEECH: mean_accuracy(b, NONSPEECH) - mean_accuracy(a, NONSPEECH)}
    (diff,) = demo_comparison.differences
    assert (diff["a"], diff["b"]) == (ATTENTION, MLP)
    assert diff["points"] == pytest.approx(expected)
    # The line carries each difference's 95% interval (clip+seed bootstrap of B - A) and names the method.
    interval = stats.mean_difference({42: records_of(demo_workspace, b[0]), 123: records_of(demo_workspace, b[1])},
                                     {42: records_of(demo_workspace, a[0]), 123: records_of(demo_workspace, a[1])},
                                     n_boot=500)
    assert diff["interval"] == interval
    ci = {k: review.format_interval(interval[k]["ci"], 1.0) for k in ("overall", SPEECH, NONSPEECH)}
    assert diff["line"] == (f"{expected['Overall']:+.1f} {ci['overall']} pts overall ({expected[SPEECH]:+.1f} "
                            f"{ci[SPEECH]} SPEECH, {expected[NONSPEECH]:+.1f} {ci[NONSPEECH]} NONSPEECH); "
                            "95% intervals: bootstrap over clips (within class) and seeds")
    seeds = stats.aggregate_seeds({42: records_of(demo_workspace, b[0]), 123: records_of(demo_workspace, b[1])},
                                  n_boot=500)
    row = demo_comparison.seed_table.set_index(["Configuration", "Metric"]).loc[(MLP, "Overall")]
    assert row["Mean"] == f"{seeds['overall']['mean']:.2f}%"
    # The demo's two seeds (a tiny random model) give a t-interval that passes 100: clipped and marked.
    assert seeds["overall"]["t_ci_clipped"] and 0 <= seeds["overall"]["t_ci"][0] <= seeds["overall"]["t_ci"][1] <= 100
    assert row["t 95% interval"] == review.format_interval(seeds["overall"]["t_ci"], 1.0) + " (clipped)"
    assert row["Bootstrap 95% interval"] == review.format_interval(seeds["overall"]["bootstrap_ci"], 1.0)
    assert row["n seeds"] == 2


def test_mcnemar_per_matched_seed(demo_comparison, demo_workspace):
    (paired,) = demo_comparison.paired
    assert [row["seed"] for row in paired["rows"]] == [42, 123]
    for row, (run_a, run_b) in zip(paired["rows"], [("demo-attention-s42", "demo-attention-mlp-s42"),
                                                    ("demo-attention-s123", "demo-attention-mlp-s123")]):
        expected = stats.mcnemar(records_of(demo_workspace, run_a), records_of(demo_workspace, run_b))
        assert row["table"] == expected["table"]
        assert (row["method"], row["p_value"]) == (expected["method"], expected["p_value"])
        frame = review.contingency_frame(row, "A", "B")
        assert frame.loc["A right", "B wrong"] == expected["table"]["only_a"]
        assert frame.loc["A wrong", "B right"] == expected["table"]["only_b"]
        clips = review.discordant_frame(row, records_of(demo_workspace, run_a), records_of(demo_workspace, run_b),
                                        "A", "B")
        assert len(clips) == expected["discordant"]
        assert (clips["outcome"] == "A right, B wrong").sum() == expected["table"]["only_a"]
    table = review.mcnemar_table(paired)
    assert list(table["p"]) == [review.format_p(r["p_value"]) for r in paired["rows"]]
    assert demo_comparison.power_caveat == stats.power_caveat(32)


def test_single_evaluation_against_configuration(runs):
    comparison = review.compare(runs, ["demo-silero-vad/test", MLP], n_boot=200, include_baselines=False)
    (paired,) = comparison.paired
    # The single run is not "seed 42" of A: the rows say what is paired with what.
    assert [row["pair"] for row in paired["rows"]] == ["A demo-silero-vad vs B seed 42",
                                                       "A demo-silero-vad vs B seed 123"]
    assert all("p_holm" in row for row in paired["rows"])
    assert "single run (demo-silero-vad) is reused" in paired["note"]


def test_different_clip_sets_are_refused(runs):
    with pytest.raises(stats.PairingError, match="not on the same clips"):
        review.compare(runs, [ATTENTION, BASE], n_boot=100)
    with pytest.raises(review.SelectionError, match="neither a configuration"):
        review.compare(runs, [ATTENTION, "no-such-run/test"])


def test_config_diff_shows_only_differing_fields(demo_comparison):
    diff = demo_comparison.config_diff
    assert set(diff.index) == {"label", "targets", "target_modules"}
    assert diff.loc["targets", ATTENTION] == "attention" and diff.loc["targets", MLP] == "attention+mlp"


def test_clip_browser_filters(demo_workspace):
    side = {42: records_of(demo_workspace, "demo-attention-mlp-s42"),
            123: records_of(demo_workspace, "demo-attention-mlp-s123")}
    clips = review.clip_table(side)
    assert len(clips) == 64
    wrong = review.filter_clips(clips, ["false positive", "false negative"])
    expected_wrong = sum(r["pred"] != r["label"] for recs in side.values() for r in recs)
    assert len(wrong) == expected_wrong
    assert list(wrong["confidence"]) == sorted(wrong["confidence"])
    fp = review.filter_clips(clips, ["false positive"])
    assert set(fp["label"]) <= {NONSPEECH} and set(fp["pred"]) <= {SPEECH}
    disagree = review.filter_clips(clips, seeds_disagree=True)
    by_clip = {}
    for recs in side.values():
        for r in recs:
            by_clip.setdefault(r["clip_id"], set()).add(r["pred"])
    assert set(disagree["clip_id"]) == {c for c, preds in by_clip.items() if len(preds) > 1}


# ---------------------------------------------------------------- charts

def test_charts_carry_the_numbers(demo_comparison, demo_workspace):
    figures = report.figures(demo_comparison)
    assert {k: f.layout.meta["chart"] for k, f in figures.items()} == {
        "class_accuracy": "class_accuracy", "seed_distribution": "seed_distribution", "loss": "loss"}
    strip = figures["seed_distribution"]
    points = {t.x[0].split("<br>")[0]: sorted(t.y) for t in strip.data if t.mode == "markers" and len(t.y) > 1}
    assert points[MLP] == sorted(demo_comparison.seed_stats[MLP]["overall"]["values"])
    assert any("n = 2" in str(t.x[0]) for t in strip.data)
    bars = figures["class_accuracy"]
    assert {t.name for t in bars.data} >= {f"{MLP} · seed 42", "Silero VAD (baseline)"}
    loss = figures["loss"]
    assert len(loss.data) == 4 and loss.layout.shapes  # four runs, epoch marks
    records = records_of(demo_workspace, "demo-attention-mlp-s42")
    fpr, tpr = charts.roc_points(records)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert all(x <= y for x, y in zip(fpr, fpr[1:])) and all(x <= y for x, y in zip(tpr, tpr[1:]))
    # The area under these points is stats.roc_auc (trapezoids handle ties as one half).
    area = sum((x1 - x0) * (y0 + y1) / 2 for x0, x1, y0, y1 in zip(fpr, fpr[1:], tpr, tpr[1:]))
    assert area == pytest.approx(stats.roc_auc(records))
    frame = review.breakdown_frame({"lora": records_of(demo_workspace, "example-lora-s42")}, "snr_db")
    chart = charts.breakdown_chart(frame, "snr_db")
    assert list(chart.data[1].x) == [-10, -5, 0, 5, 10, 20]
    assert charts.confusion_heatmap(stats.evaluation_summary(records)["confusion"]).data[0].z[0][0] == \
        sum(r["label"] == SPEECH and r["pred"] == SPEECH for r in records)


# ---------------------------------------------------------------- report export

def test_report_files(example_report):
    root, paths = example_report
    folder = paths["folder"]
    assert folder.parent == root / report.REPORTS_DIR
    assert paths["markdown"].is_file() and paths["csv"].is_file()
    assert {p.name for p in paths["figures"]} == {"class_accuracy.html", "seed_distribution.html", "loss.html"}
    assert (folder / "figures" / "plotly.min.js").is_file()  # one shared copy: opens offline
    assert all("cdn.plot.ly" not in p.read_text() for p in paths["figures"])
    assert sorted(r.run_id for r in rf.list_runs(root)) == ["example-base", "example-lora-s42"]
    markdown = paths["markdown"].read_text()
    for heading in ("## Setup", "## Results", "## Training loss", "## Multi-seed statistics", "## Paired test",
                    "## Caveats"):
        assert heading in markdown


def test_report_matches_engine_json_commands(example_report):
    root, paths = example_report
    markdown = paths["markdown"].read_text()
    results = markdown.split("## Results")[1].split("##")[0]
    for run_id, name in (("example-base", BASE), ("example-lora-s42", LORA)):
        summary = run_cli("summary", root / run_id)["summary"]
        row = next(line for line in results.splitlines() if line.startswith(f"| {name} · seed 42 |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[1] == review.format_accuracy(summary["correct"], summary["n"], summary["ci"])
        for cell, cls in zip(cells[2:4], (SPEECH, NONSPEECH)):
            part = summary["per_class"][cls]
            assert cell == review.format_accuracy(part["correct"], part["n"], part["ci"])
            numbers = re.match(r"([\d.]+)% \((\d+)/(\d+)\) \[([\d.]+), ([\d.]+)\]", cell).groups()
            assert float(numbers[0]) == pytest.approx(100 * part["accuracy"], abs=0.05)
            assert (int(numbers[1]), int(numbers[2])) == (part["correct"], part["n"])

    cli = run_cli("mcnemar", "--model-a", root / "example-base", "--model-b", root / "example-lora-s42")
    paired = markdown.split("## Paired test")[1].split("## Caveats")[0]
    row = next(line for line in paired.splitlines() if line.startswith("| seed 42 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    table = cli["table"]
    assert [int(c) for c in cells[1:6]] == [table["both_right"], table["only_a"], table["only_b"],
                                           table["both_wrong"], cli["n"]]
    assert cells[6] == cli["method"]
    assert float(cells[7]) == pytest.approx(cli["statistic"], abs=1e-4)
    assert float(cells[8]) == pytest.approx(cli["p_value"], rel=5e-3)
    assert cells[8] == review.format_p(cli["p_value"])


def test_report_csv_is_numeric(example_report):
    import pandas as pd

    _, paths = example_report
    frame = pd.read_csv(paths["csv"]).set_index("run")
    assert frame.loc["example-lora-s42", "speech_correct"] == 500
    assert frame.loc["example-base", "overall_accuracy"] == pytest.approx(844 / 1152)


def test_review_modules_stay_light():
    code = ("import sys, engine.dashboard.review, engine.dashboard.charts, engine.dashboard.report\n"
            "heavy = [m for m in ('torch', 'transformers', 'peft', 'bitsandbytes', 'streamlit') if m in sys.modules]\n"
            "engine = sorted(m for m in sys.modules if m.startswith('engine.'))\n"
            "print(heavy, engine)")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    heavy, engine_modules = result.stdout.strip().split("] ", 1)
    assert heavy == "[", result.stdout + result.stderr
    allowed = {"engine.dashboard.review", "engine.dashboard.charts", "engine.dashboard.report", "engine.runs.folder", "engine.stats.core",
               "engine.runs.predictions", "engine.config", "engine.labels",
               "engine.runs", "engine.dashboard", "engine.stats"}  # package __init__s: docstrings only
    assert set(eval(engine_modules)) <= allowed


def test_report_and_compare_page_print_the_same_paired_findings():
    """Both print review.paired_findings; the report once showed a Wilcoxon line the page did not."""
    paired = {"a": "A", "b": "B", "rows": [], "probability_of_improvement": 0.75,
              "paired": {"n_seeds": 3, "mean_diff_pts": 2.5, "note": "few seeds",
                         "t_test": {"df": 2, "statistic": 1.5, "p_value": 0.27},
                         "wilcoxon": {"statistic": 0.0, "p_value": 0.25}}}
    findings = review.paired_findings(paired)
    assert [line.split(":")[0] for line in findings] == [
        "Paired t-test over 3 matched seeds", "Wilcoxon signed-rank", "Probability of improvement P(A > B) over seeds"]
    section = report._paired_section(paired)
    assert all(f"- {line}" in section for line in findings) and "- Note: few seeds" in section
    page = (Path(__file__).resolve().parents[1] / "pages" / "compare.py").read_text()
    assert "review.paired_findings(paired)" in page and "review.paired_notes(paired)" in page


# ---------------------------------------------------------------- statistics on hand-made sides

def hand_side(name, rights, n=32, seeds=None):
    """A side whose seed i gets the first rights[i] of n clips (alternating SPEECH/NONSPEECH) right."""
    def records(right):
        out = []
        for i in range(n):
            label = SPEECH if i % 2 else NONSPEECH
            other = NONSPEECH if label == SPEECH else SPEECH
            out.append({"clip_id": f"c{i:02d}", "label": label, "pred": label if i < right else other,
                        "p_speech": (0.9 if i < right else 0.2) if label == SPEECH else (0.1 if i < right else 0.7)})
        return out

    seeds = seeds or list(range(1, len(rights) + 1))
    runs = {s: rf.RunInfo(run_id=f"{name}-s{s}", path=Path("/nonexistent") / f"{name}-s{s}", kind=rf.KIND_TRAIN,
                          config={"label": name, "seed": s}) for s in seeds}
    return review.Side(name, rf.KIND_TRAIN, "test", runs, {s: records(r) for s, r in zip(seeds, rights)}, {})


def test_unmatched_seeds_are_named_and_the_reuse_is_said():
    a, b = hand_side("A", [20], seeds=[7]), hand_side("B", [25, 26, 27], seeds=[42, 123, 456])
    paired = review.paired_comparison(a, b)
    assert [r["pair"] for r in paired["rows"]] == ["A seed 7 vs B seed 42", "A seed 7 vs B seed 123",
                                                   "A seed 7 vs B seed 456"]
    assert "A's single run (seed 7) is reused against each of the 3 seeds of B" in paired["note"]
    assert list(review.mcnemar_table(paired)["Seed"]) == [r["pair"] for r in paired["rows"]]


def test_one_power_statement_per_pair_agrees_with_the_page_caveat():
    a, b = hand_side("A", [20, 21]), hand_side("B", [26, 27])
    paired = review.paired_comparison(a, b)
    power = [n for n in review.paired_notes(paired) if n.startswith("Power")]
    assert power == [f"Power: {paired['power']}"]
    discordant = sum(r["discordant"] for r in paired["rows"]) / sum(r["n"] for r in paired["rows"])
    assert paired["power"] == stats.power_statement(32, discordant)
    best = math.floor(stats.power_min_detectable_diff(32))
    assert f"{best} points is the floor" in paired["power"] and f"under {best} points" in stats.power_caveat(32)


def test_every_shown_difference_has_an_interval():
    a, b = hand_side("A", [20, 22]), hand_side("B", [26, 27])
    result = review.build_comparison([a, b], n_boot=300)
    (diff,) = result.differences
    assert diff["interval"]["method"] == "bootstrap"
    assert all(diff["interval"][k]["ci"] for k in ("overall", SPEECH, NONSPEECH))
    paired = result.paired[0]
    assert paired["paired"]["mean_diff_ci"] and "95% t-interval over seeds" in review.paired_findings(paired)[0]
    table = review.mcnemar_table(paired)
    assert list(table["A - B 95% CI (Newcombe)"]) == [review.format_interval(r["diff_ci"], 1.0) for r in paired["rows"]]
    classes = review.class_difference_table(paired)
    assert len(classes) == 4 and all(c.startswith("[") for c in classes["A - B 95% CI (Newcombe)"])
    single = review.build_comparison([hand_side("A", [20]), hand_side("B", [26])], n_boot=50)
    assert "Newcombe's paired score interval" in single.differences[0]["line"]


def test_seed_means_stay_inside_0_100_and_sd_0_is_noted():
    ceiling = hand_side("ceiling", [32, 32, 29])
    flat = hand_side("flat", [30, 30, 30])
    result = review.build_comparison([ceiling, flat], n_boot=300)
    t_ci = result.seed_stats["ceiling"]["overall"]["t_ci"]
    assert t_ci[1] == 100.0 and result.seed_stats["ceiling"]["overall"]["t_ci_clipped"]
    cells = result.table.set_index("Configuration")
    mean_cell = cells.loc["ceiling · mean of 3 seeds", "Overall"]
    boot = result.seed_stats["ceiling"]["overall"]["bootstrap_ci"]
    assert f"bootstrap 95% {review.format_interval(boot, 1.0)}" in mean_cell and "t-interval" not in mean_cell
    assert "SD 0" in cells.loc["flat · mean of 3 seeds", "Overall"]
    seeds = result.seed_table.set_index(["Configuration", "Metric"])
    assert seeds.loc[("ceiling", "Overall"), "t 95% interval"].endswith("(clipped)")
    assert "SD 0" in seeds.loc[("flat", "Overall"), "Note"]
    whiskers = review.seed_intervals(result.seed_stats)
    assert ((whiskers["lo"] >= 0) & (whiskers["hi"] <= 100)).all()
    assert set(whiskers["interval"]) == {"bootstrap 95%"}


def test_cochran_q_for_three_picks_matches_statsmodels():
    from statsmodels.stats.contingency_tables import cochrans_q

    sides = [hand_side("A", [20, 22]), hand_side("B", [26, 25]), hand_side("C", [14, 30])]
    result = review.build_comparison(sides, n_boot=50)
    rows = result.cochran["rows"]
    assert [r["pair"] for r in rows] == ["seed 1", "seed 2"]
    for row, seed in zip(rows, (1, 2)):
        x = [[r["pred"] == r["label"] for r in sorted(s.records[seed], key=lambda r: r["clip_id"])] for s in sides]
        expected = cochrans_q(list(zip(*x)))
        assert row["statistic"] == pytest.approx(expected.statistic) and row["p_value"] == pytest.approx(expected.pvalue)
    assert [r["p_holm"] for r in rows] == pytest.approx(stats.holm([r["p_value"] for r in rows]))
    assert review.cochran_line(result.cochran).startswith("Cochran's Q that all 3 configurations (A, B, C)")
    markdown = report.build_report(result)
    assert "### Cochran's Q (all picks)" in markdown and review.cochran_line(result.cochran) in markdown
    assert review.build_comparison(sides[:2], n_boot=50).cochran is None
    unshared = review.cochran([hand_side("A", [20, 22]), hand_side("B", [26, 25], seeds=[3, 4]), hand_side("C", [1])])
    assert unshared["rows"] == [] and "no seed is shared" in unshared["note"]


def test_headline_metrics_are_all_means_over_seeds():
    side = hand_side("A", [20, 24, 28])
    aggregate = review.seed_stats_for(side, n_boot=100)
    summaries = {review.seed_text(k): stats.evaluation_summary(r) for k, r in side.records.items()}
    metrics, caption = review.headline_metrics(aggregate, summaries)
    labels = [m["label"] for m in metrics]
    assert labels == ["Mean accuracy, 3 seeds", "Mean balanced, 3 seeds", "Mean ROC AUC, 3 seeds",
                      "Mean ECE, 3 seeds", "Clips"]
    aucs = [s["roc_auc"] for s in summaries.values()]
    assert metrics[2]["value"] == f"{sum(aucs) / 3:.3f}"
    assert metrics[3]["value"] == f"{sum(s['ece'] for s in summaries.values()) / 3:.3f}"
    assert "mean over the 3 seeds" in caption
    assert review.format_interval(aggregate["overall"]["bootstrap_ci"], 1.0) in caption
    one = hand_side("B", [20], seeds=[42])
    metrics, caption = review.headline_metrics(review.seed_stats_for(one, n_boot=50),
                                               {"seed 42": stats.evaluation_summary(one.records[42])})
    assert [m["label"] for m in metrics][:4] == ["Accuracy", "Balanced accuracy", "ROC AUC", "ECE"]
    assert caption.startswith("One evaluation (seed 42)")
