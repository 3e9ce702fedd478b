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
import streamlit as st
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
    outcome = sorted(set(clip_frames[0]["outcome"]))[0]  # whichever kind of mistake these seeds made
    at.multiselect(key="clip_outcomes").set_value([outcome]).run()
    clip_frames = [d.value for d in at.dataframe if "outcome" in d.value.columns]
    assert len(clip_frames[0]) and set(clip_frames[0]["outcome"]) == {outcome}
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
    (train_loss,) = [trace for trace in loss.data if trace.meta["series"] == "train_loss"]  # one run
    assert len(train_loss.y) == len(rf.read_metrics(copied_workspace / "demo-attention-s42"))
    (val_loss,) = [trace for trace in loss.data if trace.meta["series"] == "val_loss"]  # the demo trains with val
    assert len(val_loss.y) == len(rf.read_validation_metrics(copied_workspace / "demo-attention-s42"))
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
    (folder,) = [p for p in (copied_workspace / "_reports").iterdir() if p.is_dir()]  # beside the shared plotly.js
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


# ---------------------------------------------------------------- live training curves, status lines

def test_results_loss_curve_grows_with_metrics_jsonl_while_the_run_trains(empty_workspace, no_worker):
    from tests.test_app_ops import grow_metrics, loss_chart, training_run

    run_dir = training_run(empty_workspace, "live-run", steps=3)
    at = page("pages/results.py", run="live-run")
    assert_clean(at)
    assert "No evaluation" in at.info[0].value
    assert list(loss_chart(at)["train_loss"].y) == [1.0, 0.5, pytest.approx(1 / 3)]
    assert "Updating while training runs." in [c.value for c in at.caption]

    grow_metrics(run_dir, 3, 12, val_epochs=2)
    at.run()
    traces = loss_chart(at)
    assert list(traces["train_loss"].x) == list(range(1, 13))
    assert list(traces["val_loss"].x) == [6, 12] and list(traces["val_loss"].y) == [pytest.approx(0.6), 0.3]
    assert list(traces["val_accuracy"].y) == [pytest.approx(62.5), 75.0]
    figure = chart(at, "loss")
    assert figure.layout.yaxis2.title.text == "validation log loss (two-class)"
    assert [shape.x0 for shape in figure.layout.shapes] == [6]  # the end of epoch 1 (epoch 2 ends the run)
    accuracy = chart(at, "validation_accuracy")
    assert [shape.x0 for shape in accuracy.layout.shapes] == [6] and accuracy.layout.xaxis.range == figure.layout.xaxis.range


@pytest.mark.parametrize(("log", "shown"), [
    ("step 3/12 loss 0.5\n/venv/lib/python3.11/site-packages/torch/x.py:12: UserWarning: slow path\n"
     "  warnings.warn(\n", "step 3/12 loss 0.5"),
    ("loading\n/a/b.py:7: FutureWarning: `x` is deprecated\n  return f(\n\n", "loading"),
    ("/a/b.py:7: FutureWarning: `x` is deprecated\n  warnings.warn(\n", "/a/b.py:7: FutureWarning: `x` is deprecated"),
    ("Traceback (most recent call last):\n  File \"x.py\", line 1\nValueError: bad\n", "ValueError: bad"),
    ("", ""),
])
def test_status_line_is_the_last_meaningful_log_line(log, shown):
    assert review.last_log_line(log) == shown


def test_overview_job_line_skips_the_echoed_warning_source(empty_workspace, no_worker):
    from engine import jobs
    from tests.test_app_ops import running_job

    job_id = running_job(empty_workspace, ["demo", "--runs-dir", str(empty_workspace)], None)
    (jobs.store.job_dir(empty_workspace, job_id) / jobs.store.JOB_LOG).write_text(
        "synthesising demo audio ...\n/venv/lib/site-packages/transformers/x.py:40: FutureWarning: old\n"
        "  warnings.warn(\n", encoding="utf-8")
    at = page("pages/overview.py")
    assert_clean(at)
    (line,) = [c.value for c in at.caption if c.value.startswith(f"Job {job_id}")]
    assert line.endswith("synthesising demo audio ...") and "warnings.warn(" not in line


# ---------------------------------------------------------------- overview views, grid, OPRO in Compare (no training)

@pytest.fixture
def grid_workspace(tmp_path, monkeypatch):
    from tests.test_review import make_grid_workspace

    root = make_grid_workspace(tmp_path / "grid")
    monkeypatch.setenv(rf.RUNS_ROOT_ENV, str(root))
    return root


def column_labels(element) -> dict[str, str]:
    """Column key -> header shown, from a dataframe element's column configuration."""
    return {key: value.get("label") for key, value in json.loads(element.proto.columns).items()}


def click_row(at: AppTest, key: str, row: int) -> AppTest:
    """What a click on a row of st.dataframe(on_select="rerun", key=key) sends back."""
    at.session_state[key] = {"selection": {"rows": [row], "columns": [], "cells": []}}
    return at.run()


def test_overview_columns_name_their_evaluation_and_a_click_opens_the_run(grid_workspace):
    from tests.test_review import GRID_CLIPS, grid_counts

    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()
    assert_clean(at)
    assert at.selectbox(key="overview_evaluation").options == ["test", "val"]
    frame = at.dataframe[0].value.set_index("name")
    assert len(frame) == 16 and frame.loc["My-sweep-attn-r8-a16-s1", "attempts"] == 2  # the attempt is folded
    speech, nonspeech = grid_counts(16, 32, "attention+mlp", 2)
    assert frame.loc["My-sweep-attn+mlp-r16-a32-s2", "overall"] == pytest.approx(100 * (speech + nonspeech) / GRID_CLIPS)
    labels = column_labels(at.dataframe[0])
    assert labels["overall"] == "test accuracy" and labels[SPEECH] == SPEECH and labels["clips"] == "Clips"
    assert at.dataframe[0].proto.placeholder == "—"
    at.selectbox(key="overview_evaluation").set_value("val").run()
    assert column_labels(at.dataframe[0])["overall"] == "val accuracy"
    assert (at.dataframe[0].value["overall"] == 50.0).all() and at.query_params["evaluation"] == "val"
    # The column picker: fewer columns, the run name stays pinned.
    at.multiselect(key="overview_run_columns").set_value(["overall"]).run()
    assert list(at.dataframe[0].proto.column_order) == ["name", "overall"]
    row = list(at.dataframe[0].value["name"]).index("My-sweep-attn+mlp-r16-a32-s2")
    at.session_state["overview_runs_table"] = {"selection": {"rows": [], "columns": [], "cells": [(row, "overall")]}}
    at.run()  # a click on any cell of the row, not only on its box
    assert_clean(at)
    assert at.title[0].value == "Results"
    assert at.query_params["run"] == "My-sweep-attn+mlp-r16-a32-s2" and at.query_params["evaluation"] == "val"


def test_overview_configuration_rows_give_seeds_mean_and_interval(grid_workspace):
    from tests.test_review import GRID_CLIPS, GRID_SEEDS, grid_counts

    at = page("app.py", view="configurations")
    assert_clean(at)
    assert at.segmented_control(key="overview_view").value == "Configurations"
    table = at.dataframe[0].value.set_index("configuration")
    name = "My sweep · r16 · α32 · attention+MLP"
    expected = [100 * sum(grid_counts(16, 32, "attention+mlp", s)) / GRID_CLIPS for s in GRID_SEEDS]
    assert table.loc[name, "mean"] == pytest.approx(sum(expected) / 2) and table.loc[name, "seeds"] == 2
    assert 0 <= table.loc[name, "ci low"] <= table.loc[name, "mean"] <= table.loc[name, "ci high"] <= 100
    assert list(table.index)[:2] == ["My sweep · r8 · α16 · attention", "My sweep · r8 · α16 · attention+MLP"]
    assert column_labels(at.dataframe[0])["interval"] == "95% bootstrap interval"
    assert review.INTERVAL_NAME in json.loads(at.dataframe[0].proto.columns)["interval"]["help"]
    click_row(at, "overview_configurations_table", list(table.index).index(name))
    assert_clean(at)
    assert at.title[0].value == "Results" and at.query_params["config"] == name
    assert at.selectbox(key="results_config").value == name


def test_grid_page_shows_the_sweep_and_opens_a_cell(grid_workspace, monkeypatch):
    from tests.test_review import GRID_CLIPS, GRID_SEEDS, grid_counts

    # The page alone (AppTest loses button clicks on a page reached by at.switch_page): its own
    # switch to Results is recorded instead of followed.
    opened = []
    monkeypatch.setattr(st, "switch_page", lambda page, query_params=None: opened.append((page, query_params)))
    at = page("pages/grid.py")
    assert_clean(at)
    assert at.title[0].value == "Grid"
    assert (at.selectbox(key="grid_x").value, at.selectbox(key="grid_y").value,
            at.selectbox(key="grid_panel").value) == ("lora_r", "lora_alpha", "targets")
    heatmap = chart(at, "grid")
    mlp = next(t for t in heatmap.data if t.name == "attention+mlp")
    expected = [100 * sum(grid_counts(8, 32, "attention+mlp", s)) / GRID_CLIPS for s in GRID_SEEDS]
    assert mlp.z[1][0] == pytest.approx(sum(expected) / 2)  # alpha 32 (row 2), rank 8 (column 1)
    assert mlp.customdata[1][0][0] == "My sweep · r8 · α32 · attention+MLP"
    assert not at.warning
    # Two fields: the target set becomes a fixed setting with its own picker.
    at.selectbox(key="grid_panel").set_value("(none)").run()
    assert_clean(at)
    assert at.selectbox(key="grid_fixed_targets").value == "attention"
    at.selectbox(key="grid_fixed_targets").set_value("attention+mlp").run()
    assert len(chart(at, "grid").data) == 2 and at.query_params["x"] == "lora_r" and "panel" not in at.query_params
    cell = next(o for o in at.selectbox(key="grid_cell").options if o.endswith("My sweep · r16 · α16 · attention+MLP"))
    at.selectbox(key="grid_cell").set_value(cell).run()
    at.button(key="grid_open").click().run()
    assert_clean(at)
    assert opened == [("pages/results.py", {"config": "My sweep · r16 · α16 · attention+MLP", "evaluation": "test"})]


def test_compare_pairs_a_configuration_with_its_opro_searches(grid_workspace):
    from tests.test_opro_review import make_opro_run, search_history
    from tests.test_review import GRID_SEEDS, fake_records
    from engine.runs.predictions import write_evaluation

    target = "My sweep · r16 · α32 · attention+MLP"
    for seed in GRID_SEEDS:
        run_dir = make_opro_run(grid_workspace, f"opro-s{seed}", "run", target, seed, search_history())
        config = rf.read_json(run_dir / rf.CONFIG)
        config["target"].update(run=f"My-sweep-attn+mlp-r16-a32-s{seed}",
                                run_dir=str(grid_workspace / f"My-sweep-attn+mlp-r16-a32-s{seed}"))
        config["adapter"] = str(grid_workspace / f"My-sweep-attn+mlp-r16-a32-s{seed}" / "adapter")
        rf.atomic_write_json(run_dir / rf.CONFIG, config)
        write_evaluation(run_dir, "test", fake_records(10, 10), {"model": "tiny"})
    at = page("pages/compare.py", configs=[target, f"OPRO of {target}"])
    assert_clean(at)
    assert not at.error
    picker = at.multiselect(key="compare_picks")
    assert picker.value == [target, f"OPRO of {target}"]
    assert f"OPRO of {target} · 2 seeds" in picker.options  # one configuration, not one pick per search
    assert not any(str(grid_workspace) in o for o in picker.options)  # no paths in the labels
    mcnemar = at.table[1].value
    assert list(mcnemar.index) == ["seed 1", "seed 2"]
