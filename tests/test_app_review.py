"""AppTest smoke tests of the review pages (Overview, Results, Compare) against the demo workspace:
no exception, the key elements present, and their numbers equal to engine.stats.core's."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import pytest
from streamlit.testing.v1 import AppTest

from engine.dashboard import review
from engine.stats import core as stats
from engine.runs import folder as rf
from engine.runs.predictions import SPEECH, read_predictions

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "app.py"
ATTENTION, MLP = "Attention-Only (demo)", "Attention+MLP (demo)"
TIMEOUT = 60


@pytest.fixture
def workspace(demo_workspace, monkeypatch):
    monkeypatch.setenv(rf.RUNS_ROOT_ENV, str(demo_workspace))
    return demo_workspace


@pytest.fixture
def copied_workspace(demo_workspace, tmp_path, monkeypatch):
    """The demo runs copied (the audio stays where it is), so a test may add broken folders or reports."""
    for run in rf.iter_run_dirs(demo_workspace):
        shutil.copytree(run, tmp_path / run.name)
    monkeypatch.setenv(rf.RUNS_ROOT_ENV, str(tmp_path))
    return tmp_path


def page(path: str, **query) -> AppTest:
    at = AppTest.from_file(str(REPO / path), default_timeout=TIMEOUT)
    at.query_params.update(query)
    return at.run()


def assert_clean(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def records(root: Path, run_id: str) -> list[dict]:
    return read_predictions(root / run_id, "test")


def decoded(value):
    """Plotly 6 sends numeric arrays as {"bdata": base64, "dtype": ...}; give them back as lists."""
    if isinstance(value, dict) and "bdata" in value:
        return np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"]).tolist()
    if isinstance(value, dict):
        return {k: decoded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decoded(v) for v in value]
    return value


def chart(at: AppTest, name: str) -> go.Figure:
    """The plotly figure on the page whose layout.meta names it (see engine.dashboard.charts)."""
    for element in at.get("plotly_chart"):
        figure = go.Figure(decoded(json.loads(element.proto.spec)))
        if (figure.layout.meta or {}).get("chart") == name:
            return figure
    raise AssertionError(f"no {name} chart on the page")


def test_overview_lists_every_run_with_its_numbers(workspace):
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()  # Overview is the default page
    assert_clean(at)
    assert at.title[0].value == "Runs"
    table = at.dataframe[0].value.set_index("name")
    assert {"demo-attention-s42", "demo-attention-mlp-s123", "demo-silero-vad", "example-base",
            "example-lora-s42"} <= set(table.index)
    summary = stats.evaluation_summary(records(workspace, "demo-attention-mlp-s42"))
    assert table.loc["demo-attention-mlp-s42", "overall"] == pytest.approx(100 * summary["accuracy"])
    assert table.loc["demo-attention-mlp-s42", SPEECH] == pytest.approx(100 * summary["per_class"][SPEECH]["accuracy"])
    assert table.loc["example-base", "clips"] == 1152
    assert (table["size MB"] > 0).all()
    at.multiselect(key="overview_kinds").set_value(["baseline"]).run()
    assert list(at.dataframe[0].value["name"]) == ["demo-silero-vad"]


def test_overview_shows_unreadable_runs_and_still_renders(copied_workspace):
    (copied_workspace / "broken-run").mkdir()
    (copied_workspace / "broken-run" / rf.CONFIG).write_text('{"kind": "train", ')
    (copied_workspace / "no-status").mkdir()
    rf.atomic_write_json(copied_workspace / "no-status" / rf.CONFIG, {"kind": "train", "label": "half-written"})
    at = page("app.py")
    assert_clean(at)
    table = at.dataframe[0].value.set_index("name")
    assert table.loc["broken-run", "status"].startswith("unreadable: corrupt JSON")
    assert table.loc["no-status", "status"] == "unreadable: missing status.json"
    assert table.loc["demo-attention-s42", "status"] == "succeeded"
    assert any("could not be read" in w.value for w in at.warning)
    # The other review pages skip the broken folders.
    compare = page("pages/compare.py", configs=[ATTENTION, MLP])
    assert_clean(compare)
    assert not compare.error


def test_overview_of_an_empty_workspace_offers_the_demo(tmp_path, monkeypatch, no_worker):
    from engine import jobs

    root = tmp_path / "empty"
    monkeypatch.setenv(rf.RUNS_ROOT_ENV, str(root))
    started = no_worker  # no real demo
    at = page("pages/overview.py")
    assert_clean(at)
    assert "No runs in" in at.info[0].value
    at.button(key="make_demo").click().run()
    assert_clean(at)
    (job,) = jobs.read_jobs(root)
    assert (job["argv"], job["resource"], job["state"]) == (["demo", "--runs-dir", str(root)], "cpu", rf.QUEUED)
    assert started == [root]
    assert not at.button, "the button is replaced by the job's progress"
    assert any("being made" in s.value for s in at.success)


def test_overview_shows_live_progress_of_a_running_run(copied_workspace):
    run = copied_workspace / "demo-attention-s42"
    rf.write_status(run, rf.RUNNING, **rf.mark_process(run),  # this test process: alive
                    progress={"step": 12, "total_steps": 48, "loss": 5.25, "eta_s": 75})
    at = page("pages/overview.py")
    assert_clean(at)
    (bar,) = at.get("progress")
    assert bar.proto.value == 25
    assert "step 12/48" in bar.proto.text and "loss 5.2500" in bar.proto.text and "ETA 1 min 15 s" in bar.proto.text


def test_results_of_a_configuration(workspace):
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()
    at.switch_page("pages/results.py")
    at.query_params["config"] = MLP
    at.run()
    assert_clean(at)
    assert at.selectbox(key="results_config").value == MLP
    seeds = stats.aggregate_seeds({42: records(workspace, "demo-attention-mlp-s42"),
                                   123: records(workspace, "demo-attention-mlp-s123")}, n_boot=100)
    assert at.metric[0].value == f"{seeds['overall']['mean']:.1f}%"
    # Every headline figure is a mean over the same seeds (ROC AUC and ECE once were seed 42's alone).
    assert [m.label for m in at.metric] == ["Mean accuracy, 2 seeds", "Mean balanced, 2 seeds",
                                            "Mean ROC AUC, 2 seeds", "Mean ECE, 2 seeds", "Clips"]
    aucs = [stats.roc_auc(records(workspace, run)) for run in ("demo-attention-mlp-s42", "demo-attention-mlp-s123")]
    assert at.metric[2].value == f"{sum(aucs) / 2:.3f}"
    assert any("mean over the 2 seeds" in c.value for c in at.caption)
    strip = chart(at, "seed_distribution")
    points = [t for t in strip.data if t.mode == "markers" and len(t.y) == 2]
    assert sorted(points[0].y) == sorted(seeds["overall"]["values"])
    for name in ("class_accuracy", "confusion", "roc", "loss", "breakdown"):
        chart(at, name)
    assert at.query_params["config"] == MLP  # mirrored back into the URL
    # Clip browser: false positives and negatives of both seeds, least confident first.
    wrong = sum(r["pred"] != r["label"] for run in ("demo-attention-mlp-s42", "demo-attention-mlp-s123")
                for r in records(workspace, run))
    clip_frames = [d.value for d in at.dataframe if "outcome" in d.value.columns]
    assert len(clip_frames[0]) == wrong
    at.multiselect(key="clip_outcomes").set_value(["false positive"]).run()
    clip_frames = [d.value for d in at.dataframe if "outcome" in d.value.columns]
    assert set(clip_frames[0]["outcome"]) == {"false positive"}
    assert at.get("audio"), "the demo clips exist, so the player is shown"


def test_results_of_one_evaluation(workspace):
    at = page("pages/results.py", run="example-lora-s42", evaluation="test")
    assert_clean(at)
    summary = stats.evaluation_summary(records(workspace, "example-lora-s42"))
    assert at.metric[0].value == review.pct(summary["accuracy"])
    assert at.metric[4].value == "1,152"
    table = at.table[0].value
    assert table.iloc[0][SPEECH] == review.format_accuracy(summary["per_class"][SPEECH]["correct"], 576,
                                                           summary["per_class"][SPEECH]["ci"])
    assert any("Audio not found" in c.value for c in at.caption)  # imported paths point elsewhere


def test_results_of_a_run_without_evaluation_and_a_corrupt_one(copied_workspace):
    shutil.rmtree(copied_workspace / "demo-attention-s42" / "evaluations")
    at = page("pages/results.py", run="demo-attention-s42")
    assert_clean(at)
    assert "No evaluation" in at.info[0].value
    loss = chart(at, "loss")
    assert len(loss.data) == 1 and len(loss.data[0].y) == len(rf.read_metrics(copied_workspace / "demo-attention-s42"))
    predictions = copied_workspace / "demo-attention-mlp-s42" / "evaluations" / "test" / rf.PREDICTIONS
    predictions.write_text("not json\n" + predictions.read_text())
    at = page("pages/results.py", run="demo-attention-mlp-s42")
    assert_clean(at)
    assert "line 1 is not valid JSON" in at.error[0].value
    at = page("pages/compare.py", configs=[ATTENTION, MLP])
    assert_clean(at)
    assert "cannot be read" in at.error[0].value


def test_compare_two_configurations(workspace):
    at = page("pages/compare.py", configs=[ATTENTION, MLP])
    assert_clean(at)
    assert not at.error
    assert at.multiselect(key="compare_picks").value == [ATTENTION, MLP]
    assert at.query_params["configs"] == [ATTENTION, MLP] and at.query_params["evaluation"] == "test"
    table = at.table[0].value
    for run_id, label in (("demo-attention-mlp-s42", f"{MLP} · seed 42"), ("demo-silero-vad", "Silero VAD (baseline)")):
        summary = stats.evaluation_summary(records(workspace, run_id))
        assert table.loc[label, "Overall"] == review.format_accuracy(summary["correct"], summary["n"], summary["ci"])
    expected = stats.compare_configs({42: records(workspace, "demo-attention-s42"),
                                      123: records(workspace, "demo-attention-s123")},
                                     {42: records(workspace, "demo-attention-mlp-s42"),
                                      123: records(workspace, "demo-attention-mlp-s123")}, n_boot=1)
    mcnemar = at.table[1].value
    for seed_row in expected["per_seed"]:
        row = mcnemar.loc[f"seed {seed_row['seed']}"]
        assert (row["Only A right"], row["Only B right"]) == (seed_row["table"]["only_a"], seed_row["table"]["only_b"])
        assert row["Method"] == seed_row["method"]
        assert row["p"] == review.format_p(seed_row["p_value"])
        assert row["p (Holm)"] == review.format_p(seed_row["p_holm"])
    assert any(stats.power_caveat(32) == i.value for i in at.info)
    # One power sentence for the pair, naming the best case that the caveat above states.
    power = [c.value for c in at.caption if c.value.startswith("Power: ")]
    assert len(power) == 1 and "at the observed discordance" in power[0] and "is the floor" in power[0]
    assert any("95% intervals: bootstrap over clips (within class) and seeds" in m.value for m in at.markdown)
    (classes,) = [d.value for d in at.dataframe if "Class" in d.value.columns]
    assert len(classes) == 2 * len(expected["per_seed"]) and classes["A - B 95% CI (Newcombe)"].str.startswith("[").all()
    strip = chart(at, "seed_distribution")
    means = {t.x[0].split("<br>")[0]: t.y[0] for t in strip.data if t.name.endswith(" mean")}
    seeds_mlp = stats.aggregate_seeds({42: records(workspace, "demo-attention-mlp-s42"),
                                       123: records(workspace, "demo-attention-mlp-s123")}, n_boot=100)
    assert means[MLP] == pytest.approx(seeds_mlp["overall"]["mean"])
    assert any("pts overall" in m.value for m in at.markdown)
    assert at.get("audio")
    diff = [d.value for d in at.dataframe if "targets" in getattr(d.value, "index", [])]
    assert diff and diff[0].loc["targets", MLP] == "attention+mlp"


def test_compare_three_picks_shows_cochran(workspace):
    at = page("pages/compare.py", configs=[ATTENTION, MLP, "demo-silero-vad/test"])
    assert_clean(at)
    (table,) = [d.value for d in at.dataframe if "Q" in d.value.columns]
    assert list(table["Seed"]) == ["seed 42", "seed 123"]
    silero = records(workspace, "demo-silero-vad")
    expected = stats.cochran_q([records(workspace, "demo-attention-s42"), records(workspace, "demo-attention-mlp-s42"),
                                silero])
    assert table.iloc[0]["p"] == review.format_p(expected["p_value"])
    assert any(m.value.startswith("Cochran's Q that all 3 configurations") for m in at.markdown)
    # Silero is one run against two seeds: the rows say so.
    assert any("A seed 42 vs B demo-silero-vad" in str(t.value.index.tolist()) for t in at.table)


def test_compare_refuses_different_clip_sets(workspace):
    at = page("pages/compare.py", configs=[ATTENTION, "Base (example)"])
    assert_clean(at)
    assert "cannot be compared clip by clip" in at.error[0].value
    assert "only in" in at.error[0].value


def test_compare_exports_the_report(copied_workspace):
    at = page("pages/compare.py", configs=["Base (example)", "LoRA (example)"])
    assert_clean(at)
    at.button(key="export_report").click().run()
    assert_clean(at)
    (folder,) = (copied_workspace / "_reports").iterdir()
    assert (folder / "report.md").is_file() and (folder / "comparison.csv").is_file()
    assert any(str(folder) in s.value for s in at.success)
    assert at.download_button(key="download_md").label == "Download report.md"
    assert at.download_button(key="download_csv").label == "Download comparison.csv"


def test_pages_never_import_model_libraries(demo_workspace):
    code = f"""
import os, sys
os.environ[{rf.RUNS_ROOT_ENV!r}] = {str(demo_workspace)!r}
from streamlit.testing.v1 import AppTest
for path, query in (("app.py", {{}}), ("pages/results.py", {{"config": {MLP!r}}}),
                    ("pages/compare.py", {{"configs": [{ATTENTION!r}, {MLP!r}]}})):
    at = AppTest.from_file({str(REPO)!r} + "/" + path, default_timeout=60)
    at.query_params.update(query)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
print([m for m in ("torch", "transformers", "peft", "bitsandbytes") if m in sys.modules])
"""
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"
