"""engine.dashboard.review, engine.dashboard.charts and engine.dashboard.report on the demo workspace: the numbers they show are
the statistics module's numbers, and the exported report matches the engine's --json commands."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import shutil
import stat
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engine import jobs
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
    # Two seeds that differ give a t-interval (t(1) = 12.7) that passes 100: clipped and marked.
    # Which configuration's seeds differ depends on the demo's data and model, so both are checked.
    clipped = 0
    for label, runs in ((ATTENTION, a), (MLP, b)):
        seeds = stats.aggregate_seeds({42: records_of(demo_workspace, runs[0]),
                                       123: records_of(demo_workspace, runs[1])}, n_boot=500)
        row = demo_comparison.seed_table.set_index(["Configuration", "Metric"]).loc[(label, "Overall")]
        assert row["Mean"] == f"{seeds['overall']['mean']:.2f}%"
        assert 0 <= seeds["overall"]["t_ci"][0] <= seeds["overall"]["t_ci"][1] <= 100
        marker = " (clipped)" if seeds["overall"]["t_ci_clipped"] else ""
        assert row["t 95% interval"] == review.format_interval(seeds["overall"]["t_ci"], 1.0) + marker
        assert row["Bootstrap 95% interval"] == review.format_interval(seeds["overall"]["bootstrap_ci"], 1.0)
        clipped += seeds["overall"]["t_ci_clipped"]
    assert clipped >= 1
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
    # one plotly.js for every report of the workspace, loaded by relative path: opens offline
    assert paths["plotly_js"] == root / report.REPORTS_DIR / report.PLOTLY_JS and paths["plotly_js"].is_file()
    assert not list(folder.rglob("*.js"))
    for page in paths["figures"]:
        html = page.read_text()
        assert "cdn.plot.ly" not in html and f'src="../../{report.PLOTLY_JS}"' in html
        assert (page.parent / "../.." / report.PLOTLY_JS).resolve() == paths["plotly_js"].resolve()
    assert sorted(r.run_id for r in rf.list_runs(root)) == ["example-base", "example-lora-s42"]
    markdown = paths["markdown"].read_text()
    for heading in ("## Setup", "## Results", "## Training loss", "## Multi-seed statistics", "## Paired test",
                    "## Caveats"):
        assert heading in markdown


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    return struct.unpack(">II", data[16:24])


@pytest.mark.skipif(importlib.util.find_spec("kaleido") is None, reason="kaleido is not installed")
def test_report_figures_as_png_beside_html(example_report):
    root, paths = example_report
    if paths["images_skipped"] and "Chrome" in paths["images_skipped"]:
        pytest.skip(f"no usable browser here: {paths['images_skipped']}")
    assert paths["images_skipped"] == ""
    assert [p.name for p in paths["images"]] == ["class_accuracy.png", "seed_distribution.png", "loss.png"]
    for image in paths["images"]:
        assert png_size(image) == (report.IMAGE_WIDTH * report.IMAGE_SCALE, report.IMAGE_HEIGHT * report.IMAGE_SCALE)
    markdown = paths["markdown"].read_text()
    figures = markdown.split("## Figures")[1]
    for stem in ("class_accuracy", "seed_distribution", "loss"):
        assert f"](figures/{stem}.png)" in figures and f"](figures/{stem}.html)" in figures
    assert not [p for p in (paths["folder"] / "figures").iterdir() if p.name.startswith(".")]  # scratch removed


def test_report_files_are_readable_by_others_and_share_one_plotly_js(example_report):
    root, first = example_report
    old = os.umask(0o022)
    try:
        second = report.write_report(root, [BASE, LORA])
    finally:
        os.umask(old)
    assert second["plotly_js"] == first["plotly_js"]
    assert [p.name for p in (root / report.REPORTS_DIR).iterdir() if p.is_file()] == [report.PLOTLY_JS]
    folder = second["folder"]
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755
    for path in [second["markdown"], second["csv"], second["plotly_js"], *second["figures"], *second["images"]]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


def test_atomic_writes_are_shareable_unless_private(tmp_path):
    old = os.umask(0o027)
    try:
        rf.atomic_write_text(tmp_path / "shared.txt", "x")
        rf.atomic_write_json(tmp_path / "key.json", {"authkey": "00"}, private=True)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "shared.txt").stat().st_mode) == 0o640  # 0666 less the umask
    assert stat.S_IMODE((tmp_path / "key.json").stat().st_mode) == 0o600


def test_report_without_static_images_says_why_and_keeps_the_rest(demo_workspace, tmp_path, monkeypatch):
    root = tmp_path / "ws"
    for name in ("example-base", "example-lora-s42"):
        shutil.copytree(demo_workspace / name, root / name)
    monkeypatch.setattr(report, "static_export_problem", lambda: "the kaleido package is not installed")
    paths = report.write_report(root, [BASE, LORA])
    assert paths["images"] == [] and paths["images_skipped"] == "the kaleido package is not installed"
    assert not list(paths["folder"].rglob("*.png")) and len(paths["figures"]) == 3
    markdown = paths["markdown"].read_text()
    assert "_Static images were skipped: the kaleido package is not installed." in markdown
    assert "](figures/loss.html)" in markdown and "## Caveats" in markdown


@pytest.mark.skipif(importlib.util.find_spec("kaleido") is None, reason="kaleido is not installed")
def test_static_export_that_hangs_is_stopped(tmp_path):
    import plotly.graph_objects as go

    images, skipped = report.write_images({"bar": go.Figure(go.Bar(y=[1, 2]))}, tmp_path, timeout_s=0.01)
    assert images == [] and skipped.startswith("making the images took longer than 0.01 s")
    assert list(tmp_path.iterdir()) == []  # no half-made image, no scratch folder


def test_static_export_retries_an_image_kaleido_did_not_make(tmp_path, monkeypatch):
    import plotly.graph_objects as go

    monkeypatch.setattr(report, "static_export_problem", lambda: None)
    calls = []

    def child(work: Path, timeout_s: float) -> None:  # makes "a" at once, "b" only on the second try
        calls.append(sorted(p.stem for p in work.glob("*.json")))
        for spec in work.glob("*.json"):
            if spec.stem == "a" or len(calls) > 1:
                spec.with_suffix(".png").write_bytes(b"png")

    monkeypatch.setattr(report, "_run_image_child", child)
    figs = {"a": go.Figure(), "b": go.Figure()}
    images, skipped = report.write_images(figs, tmp_path)
    assert calls == [["a", "b"], ["b"]] and skipped is None
    assert [p.name for p in images] == ["a.png", "b.png"]

    monkeypatch.setattr(report, "_run_image_child", lambda work, timeout_s: None)  # exits well, makes nothing
    (tmp_path / "none").mkdir()
    images, skipped = report.write_images(figs, tmp_path / "none")
    assert images == [] and skipped == "kaleido made no image of a, b (tried 2 times)"
    assert list((tmp_path / "none").iterdir()) == []


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


# ---------------------------------------------------------------- fake training runs (grid, overview, OPRO groups)

GRID_CLIPS = 20  # clip-00 .. clip-09 SPEECH, clip-10 .. clip-19 NONSPEECH


def fake_records(speech_right: int, nonspeech_right: int) -> list[dict]:
    """Prediction records of the 20 grid clips: the first `speech_right` SPEECH clips and the first
    `nonspeech_right` NONSPEECH clips right, the rest wrong."""
    from engine.runs.predictions import make_record

    out = []
    for i in range(GRID_CLIPS):
        label = SPEECH if i < GRID_CLIPS // 2 else NONSPEECH
        right = (i < speech_right) if label == SPEECH else (i - GRID_CLIPS // 2 < nonspeech_right)
        p_speech = 0.9 if (label == SPEECH) == right else 0.1
        out.append(make_record(f"clip-{i:02d}", f"/audio/clip-{i:02d}.wav", label, p_speech, 0.0, 1.0))
    return out


def make_train_run(root: Path, name: str, label: str, seed: int, evaluations: dict[str, tuple[int, int]],
                   created_at: str = "2026-01-01T00:00:00+0000", state: str = rf.SUCCEEDED, **fields) -> Path:
    """A finished-looking training run folder (config, status, summary, evaluations) without training:
    evaluations maps a name to (SPEECH right, NONSPEECH right) of fake_records."""
    from engine.runs.predictions import write_evaluation

    run_dir = root / name
    run_dir.mkdir(parents=True)
    config = {"schema_version": 1, "kind": rf.KIND_TRAIN, "label": label, "model": "tiny", "seed": seed,
              "lora_r": 16, "lora_alpha": 32.0, "targets": "attention", "learning_rate": 2e-4, **fields}
    rf.atomic_write_json(run_dir / rf.CONFIG, config)
    rf.write_status(run_dir, state, created_at=created_at)
    rf.atomic_write_json(run_dir / rf.SUMMARY, {"trainable_percent": 0.5 * config["lora_r"] / 16,
                                                "adapter_mb": 0.01 * config["lora_r"]})
    for evaluation, (speech, nonspeech) in evaluations.items():
        write_evaluation(run_dir, evaluation, fake_records(speech, nonspeech), {"model": "tiny"})
    return run_dir


GRID_RANKS, GRID_ALPHAS, GRID_TARGETS = (8, 16), (16, 32), ("attention", "attention+mlp")
GRID_SEEDS = (1, 2)


def grid_counts(rank: int, alpha: int, targets: str, seed: int) -> tuple[int, int]:
    """(SPEECH right, NONSPEECH right) of one grid run: better with rank, alpha, MLP; seeds differ."""
    speech = 4 + (rank // 8) + (alpha // 16) + (targets == "attention+mlp") + (seed - 1)
    return min(speech, 10), 6 + (seed - 1)


def make_grid_workspace(root: Path) -> Path:
    """A rank {8, 16} x alpha {16, 32} x targets sweep over seeds 1 and 2, as expand_sweep labels it,
    each run with a test and a val evaluation; plus one failed earlier attempt of a cell."""
    for rank in GRID_RANKS:
        for alpha in GRID_ALPHAS:
            for targets in GRID_TARGETS:
                label = jobs.expand_sweep({"label": "My sweep", "lora_r": rank, "lora_alpha": alpha, "seed": 1},
                                          {"lora_r": [rank, 99], "lora_alpha": [alpha], "targets": [targets]}
                                          )[0]["config"]["label"]
                for seed in GRID_SEEDS:
                    short = "attn+mlp" if targets == "attention+mlp" else "attn"
                    make_train_run(root, f"My-sweep-{short}-r{rank}-a{alpha}-s{seed}", label, seed,
                                   {"test": grid_counts(rank, alpha, targets, seed), "val": (5, 5)},
                                   lora_r=rank, lora_alpha=float(alpha), targets=targets)
    failed = make_train_run(root, "My-sweep-attn-r8-a16-s1.attempt1", "My sweep · r8 · α16 · attention", 1, {},
                            state=rf.FAILED, lora_r=8, lora_alpha=16.0, targets="attention")
    (failed / "padding.bin").write_bytes(b"x" * 1000)
    return root


@pytest.fixture()
def grid_runs(tmp_path) -> list[rf.RunInfo]:
    return rf.list_runs(make_grid_workspace(tmp_path / "grid"))


def test_overview_shows_one_evaluation_and_folds_attempts(grid_runs):
    sizes = {info.run_id: 2000 for info in grid_runs}
    table = review.overview_table(grid_runs, sizes, evaluation="val").set_index("name")
    assert "My-sweep-attn-r8-a16-s1.attempt1" not in table.index and len(table) == 16
    row = table.loc["My-sweep-attn-r8-a16-s1"]
    assert row["attempts"] == 2 and row["size MB"] == pytest.approx(0.004)  # the attempt's bytes count too
    assert table.loc["My-sweep-attn-r16-a32-s2", "attempts"] == 1
    assert set(table["evaluation"]) == {"val"} and (table["overall"] == 50.0).all()
    test = review.overview_table(grid_runs, evaluation="test").set_index("name")
    speech, nonspeech = grid_counts(16, 32, "attention+mlp", 2)
    assert test.loc["My-sweep-attn+mlp-r16-a32-s2", "overall"] == pytest.approx(100 * (speech + nonspeech) / GRID_CLIPS)
    assert test.loc["My-sweep-attn+mlp-r16-a32-s2", SPEECH] == pytest.approx(10 * speech)
    # A run without that evaluation has empty cells, not another evaluation's numbers.
    missing = review.overview_table(grid_runs, evaluation="dev").set_index("name")
    assert missing["overall"].isna().all() and missing["evaluation"].isna().all()
    assert review.evaluation_names(grid_runs) == ["test", "val"]
    assert review.attempt_of("a-s1.attempt12") == ("a-s1", 12) and review.attempt_of("a-s1") is None


def test_configuration_overview_means_and_bootstrap_intervals(grid_runs):
    configs = review.configurations(grid_runs)
    assert len(configs) == 8 and all(len(c.runs) == 2 for c in configs)  # the failed attempt is left out
    aggregates = review.seed_aggregates(configs, "test", read_predictions, n_boot=400)
    table = review.configuration_overview(aggregates).set_index("configuration")
    name = "My sweep · r16 · α32 · attention+MLP"
    row = table.loc[name]
    per_seed = [100 * sum(grid_counts(16, 32, "attention+mlp", s)) / GRID_CLIPS for s in GRID_SEEDS]
    assert (row["seeds"], row["seed list"], row["runs"]) == (2, "1, 2", 2)
    assert row["mean"] == pytest.approx(sum(per_seed) / 2)
    # The clip+seed bootstrap, recomputed here by hand: resample seeds, then clips within class.
    rng = np.random.default_rng(7)
    correct = {s: np.array([r["correct"] for r in fake_records(*grid_counts(16, 32, "attention+mlp", s))])
               for s in GRID_SEEDS}
    draws = []
    for _ in range(4000):
        seeds = rng.choice(GRID_SEEDS, size=2)
        clips = np.concatenate([rng.integers(0, 10, 10), 10 + rng.integers(0, 10, 10)])
        draws.append(np.mean([100 * correct[s][clips].mean() for s in seeds]))
    low, high = np.percentile(draws, [2.5, 97.5])
    assert row["ci low"] == pytest.approx(low, abs=3.0) and row["ci high"] == pytest.approx(high, abs=3.0)
    assert 0 <= row["ci low"] <= row["mean"] <= row["ci high"] <= 100
    assert row["interval"] == review.format_interval([row["ci low"], row["ci high"]], 1.0)
    assert row[f"{SPEECH} mean"] == pytest.approx(10 * (grid_counts(16, 32, "attention+mlp", 1)[0] +
                                                      grid_counts(16, 32, "attention+mlp", 2)[0]) / 2)
    assert row["trainable %"] == pytest.approx(0.5) and row["adapter MB"] == pytest.approx(0.16)
    none = review.configuration_overview(review.seed_aggregates(configs, "dev", read_predictions, n_boot=10))
    assert none["mean"].isna().all() and set(none["note"]) == {"no dev evaluation"}


def test_grid_lays_a_rank_alpha_targets_sweep_out_with_seed_means(grid_runs):
    from engine.dashboard import grid

    configs = grid.training_configurations(review.configurations(grid_runs), "test")
    fields = grid.swept_fields(configs)
    assert fields == ["lora_r", "lora_alpha", "targets"]
    assert grid.default_axes(fields) == ("lora_r", "lora_alpha", "targets")
    aggregates = review.seed_aggregates(configs, "test", read_predictions, n_boot=200)
    layout = grid.build_grid(aggregates, "lora_r", "lora_alpha", "targets")
    assert (layout.x_values, layout.y_values, layout.panel_values) == ([8, 16], [16, 32], ["attention", "attention+mlp"])
    assert len(layout.cells) == 8 and not layout.clashes and not layout.left_out
    for rank in GRID_RANKS:
        for alpha in GRID_ALPHAS:
            for targets in GRID_TARGETS:
                name = layout.configuration_at(rank, alpha, targets)
                cell = layout.cells.set_index("configuration").loc[name]
                expected = [100 * sum(grid_counts(rank, alpha, targets, s)) / GRID_CLIPS for s in GRID_SEEDS]
                assert cell["mean"] == pytest.approx(sum(expected) / 2)
                assert cell["ci low"] <= cell["mean"] <= cell["ci high"] and cell["seeds"] == 2
                assert name == f"My sweep · r{rank} · α{alpha} · {'attention+MLP' if '+' in targets else 'attention'}"
    # Two fields only: the third is fixed at one value; the others are left out, named.
    flat = grid.build_grid(aggregates, "lora_alpha", "lora_r", fixed={"targets": "attention+mlp"}, metric=SPEECH)
    assert len(flat.cells) == 4 and len(flat.left_out) == 4 and flat.configuration_at(16, 8).endswith("attention+MLP")
    assert flat.cells.set_index("configuration").loc[flat.configuration_at(32, 16), "mean"] == pytest.approx(
        10 * (grid_counts(16, 32, "attention+mlp", 1)[0] + grid_counts(16, 32, "attention+mlp", 2)[0]) / 2)
    # Without fixing it, two configurations share each cell: shown once, and said.
    clashing = grid.build_grid(aggregates, "lora_r", "lora_alpha")
    assert len(clashing.cells) == 4 and len(clashing.clashes) == 4 and "2 configurations" in clashing.clashes[0]
    with pytest.raises(ValueError, match="its own field"):
        grid.build_grid(aggregates, "lora_r", "lora_r")
    choices = grid.cell_choices(layout)
    assert len(choices) == 8 and set(choices.values()) == set(layout.cells["configuration"])

    figure = charts.grid_heatmap(layout.cells, layout.x_values, layout.y_values, layout.panel_values,
                                 "rank r", "alpha α", "accuracy", review.INTERVAL_NAME)
    assert figure.layout.meta["chart"] == "grid" and len(figure.data) == 4  # a heatmap and its click layer per panel
    mlp = next(t for t in figure.data if t.name == "attention+mlp")
    clicks = next(t for t in figure.data if t.name == "attention+mlp cells")
    assert {(x, y, c[0]) for x, y, c in zip(clicks.x, clicks.y, clicks.customdata)} == {
        (str(r), str(a), layout.configuration_at(r, a, "attention+mlp")) for r in GRID_RANKS for a in GRID_ALPHAS}
    assert list(mlp.x) == ["8", "16"] and list(mlp.y) == ["16", "32"]
    name = layout.configuration_at(16, 32, "attention+mlp")
    assert mlp.customdata[1][1][0] == name  # row alpha 32, column rank 16
    assert mlp.z[1][1] == pytest.approx(layout.cells.set_index("configuration").loc[name, "mean"])
    assert "seeds" in clicks.hovertemplate and review.INTERVAL_NAME in clicks.hovertemplate


def test_opro_runs_group_by_the_configuration_they_searched(grid_runs, tmp_path):
    """OPRO searches of seeds 1 and 2 of one sweep cell are one configuration, named without paths,
    whose seeds pair with the training runs' seeds in Compare."""
    from tests.test_opro_review import make_opro_run, search_history

    root = grid_runs[0].path.parent
    target = "My sweep · r16 · α32 · attention+MLP"
    for seed in GRID_SEEDS:
        run_dir = make_opro_run(root, f"opro-s{seed}", "run", target, seed, search_history(), test_masks=None)
        config = rf.read_json(run_dir / rf.CONFIG)
        target_run = f"My-sweep-attn+mlp-r16-a32-s{seed}"
        config["target"].update(run=target_run, run_dir=str(root / target_run))
        config.update(adapter=str(root / target_run / "adapter"), search_seed=seed)
        rf.atomic_write_json(run_dir / rf.CONFIG, config)
        from engine.runs.predictions import write_evaluation
        write_evaluation(run_dir, "test", fake_records(10, 9 - seed), {"model": "tiny"})
    make_opro_run(root, "opro-base", "base", "Base model", None, search_history(), test_masks=None)
    runs = rf.list_runs(root)
    configs = {c.name: c for c in review.configurations(runs)}
    opro = configs[f"OPRO of {target}"]
    assert [r.run_id for r in opro.runs] == ["opro-s1", "opro-s2"] and opro.kind == rf.KIND_OPRO
    assert "OPRO of the base model (tiny)" in configs
    assert not any(str(root) in name or "adapter" in name for name in configs)
    (side_a, side_b) = review.resolve_picks(runs, [target, f"OPRO of {target}"], "test", read_predictions)
    assert list(side_b.records) == [1, 2] == list(side_a.records)
    paired = review.paired_comparison(side_a, side_b)
    assert [row["pair"] for row in paired["rows"]] == ["seed 1", "seed 2"]
    # Searches with other settings stay apart, told apart by the setting, not by a path.
    other = make_opro_run(root, "opro-long-s1", "run", target, 1, search_history(), test_masks=None)
    config = rf.read_json(other / rf.CONFIG)
    config["target"].update(run="My-sweep-attn+mlp-r16-a32-s1")
    config.update(iterations=5, adapter=str(root / "x" / "adapter"), dev_data=str(root / "dev-long.csv"))
    rf.atomic_write_json(other / rf.CONFIG, config)
    names = sorted(c.name for c in review.configurations(rf.list_runs(root)) if c.name.startswith(f"OPRO of {target}"))
    assert names == [f"OPRO of {target} · dev_data=dev-long.csv, iterations=5",
                     f"OPRO of {target} · dev_data=dev.csv, iterations=2"]


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
