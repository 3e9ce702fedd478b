"""How a baseline run labels clips, where its evaluation is shown: the clip rule, the threshold, how
they were chosen (a validation split or the fixed default) and the ROC AUC, on Results and in
Compare's baseline rows. ROC AUC is checked against scipy's Mann-Whitney U (AUC = U / (n1 n0))."""

from __future__ import annotations

from pathlib import Path

import pytest
from scipy.stats import mannwhitneyu
from streamlit.testing.v1 import AppTest

from engine.dashboard import review
from engine.runs import folder as rf
from engine.runs.predictions import make_record, write_evaluation

PAGES = Path(__file__).resolve().parents[1] / "pages"
LABELS = ["SPEECH"] * 4 + ["NONSPEECH"] * 4
VAD_SCORES = [0.99, 0.97, 0.40, 0.95, 0.10, 0.96, 0.20, 0.05]  # one SPEECH clip low, one NONSPEECH high
MAX_RULE = "max over 32 ms frames of the Silero speech probability"
CHOSEN = "chosen on the validation split: highest balanced accuracy over rules and thresholds"
CANDIDATES = [{"rule": "max", "threshold": 0.9, "val_balanced_accuracy": 0.875},
              {"rule": "mean", "threshold": 0.4, "val_balanced_accuracy": 0.75}]


def records(scores: list[float], threshold: float) -> list[dict]:
    return [make_record(f"c{i}", f"/data/c{i}.wav", label, p, p - threshold, 1.0, threshold=threshold)
            for i, (label, p) in enumerate(zip(LABELS, scores))]


def run_folder(root: Path, name: str, config: dict, scores: list[float], threshold: float = 0.5,
               meta: dict | None = None) -> Path:
    run_dir = root / name
    run_dir.mkdir(parents=True)
    rf.atomic_write_json(run_dir / rf.CONFIG, {"schema_version": 1, **config})
    rf.write_status(run_dir, rf.SUCCEEDED)
    write_evaluation(run_dir, "test", records(scores, threshold), {**config, **(meta or {})})
    return run_dir


def vad_chosen_on_val() -> dict:
    return {"kind": "baseline", "label": "Silero VAD", "method": "silero", "threshold": 0.9, "reduction": MAX_RULE,
            "rule": "max", "rule_choice": CHOSEN, "val_data": "/data/val.csv", "rule_candidates": CANDIDATES}


@pytest.fixture()
def workspace(empty_workspace) -> Path:
    """Two one-seed configurations and three baselines on the same eight clips: Silero with its rule
    chosen on val, WebRTC at the fixed rule, and a baseline from before rules were recorded."""
    root = empty_workspace
    for name, label, scores in (("a-s1", "A", [0.9, 0.8, 0.7, 0.2, 0.1, 0.3, 0.6, 0.2]),
                                ("b-s1", "B", [0.9, 0.8, 0.7, 0.6, 0.1, 0.3, 0.2, 0.2])):
        run_folder(root, name, {"kind": "train", "label": label, "seed": 1, "model": "tiny"}, scores)
    run_folder(root, "vad-val", vad_chosen_on_val(), VAD_SCORES, threshold=0.9)
    run_folder(root, "vad-fixed", {"kind": "baseline", "label": "WebRTC VAD", "method": "webrtc", "threshold": 0.5,
                                   "reduction": "fraction of 30 ms frames WebRTC VAD calls voiced",
                                   "rule": "fraction", "rule_choice": "fixed: ...", "val_data": None},
               [0.7, 0.6, 0.8, 0.9, 0.6, 0.7, 0.2, 0.1])
    run_folder(root, "vad-old", {"kind": "baseline", "label": "Old VAD", "method": "silero", "threshold": 0.5,
                                 "reduction": MAX_RULE}, VAD_SCORES)
    return root


def auc(scores: list[float]) -> float:
    speech = [s for s, label in zip(scores, LABELS) if label == "SPEECH"]
    other = [s for s, label in zip(scores, LABELS) if label == "NONSPEECH"]
    return mannwhitneyu(speech, other).statistic / (len(speech) * len(other))


def test_the_decision_of_each_kind_of_baseline(workspace):
    assert review.baseline_decision(workspace / "vad-val", "test") == {
        "detector": "Silero VAD", "rule": "max", "reduction": MAX_RULE, "threshold": 0.9, "val_data": "/data/val.csv",
        "val_balanced_accuracy": 0.875, "n_rules": 2}
    fixed = review.baseline_decision(workspace / "vad-fixed", "test")
    assert (fixed["rule"], fixed["threshold"], fixed["val_data"], fixed["n_rules"]) == ("fraction", 0.5, None, 0)
    old = review.baseline_decision(workspace / "vad-old", "test")
    assert (old["rule"], old["reduction"], old["val_data"]) == (None, MAX_RULE, None)
    assert review.baseline_decision(workspace / "a-s1", "test") is None  # not a baseline
    assert review.baseline_decision(workspace / "vad-val", "missing") == {
        **review.baseline_decision(workspace / "vad-val", "test")}  # config.json when the evaluation is gone


def test_the_decision_line_and_table(workspace):
    chosen = review.baseline_decision(workspace / "vad-val", "test")
    assert review.baseline_decision_line(chosen, 0.8125) == (
        f"**Silero VAD**: SPEECH when the {MAX_RULE} (rule `max`) is at least 0.900; chosen on the validation split "
        "/data/val.csv (balanced accuracy 87.5% there, best of 2 rules). ROC AUC 0.812 (of the clip score, over "
        "every threshold).")
    old = review.baseline_decision(workspace / "vad-old", "test")
    assert review.baseline_decision_line(old, None) == (
        f"**Old VAD**: SPEECH when the {MAX_RULE} is at least 0.500; fixed: the detector's default rule and "
        "threshold (no validation split). ROC AUC n/a (of the clip score, over every threshold).")
    table = review.baseline_decision_table([("Old VAD", old, 0.5), ("Silero VAD", chosen, 0.8125)])
    assert table.to_dict("records") == [
        {"Baseline": "Old VAD", "Clip rule": MAX_RULE, "Threshold": "0.500",
         "How chosen": "fixed: the default rule and threshold", "Validation split": "—",
         "Val balanced accuracy": "—", "ROC AUC": "0.500"},
        {"Baseline": "Silero VAD", "Clip rule": "max", "Threshold": "0.900", "How chosen": "on the validation split",
         "Validation split": "/data/val.csv", "Val balanced accuracy": "87.5% (best of 2 rules)", "ROC AUC": "0.812"}]


def test_results_of_a_baseline_run_say_how_it_decided(workspace):
    at = AppTest.from_file(str(PAGES / "results.py"), default_timeout=60)
    at.query_params["run"] = "vad-val"
    at.run()
    assert not at.exception
    expected = f"{auc(VAD_SCORES):.3f}"
    assert expected == "0.875"  # by hand: 14 of the 16 SPEECH x NONSPEECH pairs ordered right
    lines = [m.value for m in at.markdown if "is at least" in m.value]
    assert lines == [review.baseline_decision_line(review.baseline_decision(workspace / "vad-val", "test"),
                                                   auc(VAD_SCORES))]
    assert f"ROC AUC {expected} " in lines[0] and "chosen on the validation split /data/val.csv" in lines[0]
    assert [m.value for m in at.metric if m.label == "ROC AUC"] == [expected]

    at = AppTest.from_file(str(PAGES / "results.py"), default_timeout=60)
    at.query_params["run"] = "a-s1"
    at.run()
    assert not at.exception and not [m for m in at.markdown if "is at least" in m.value]


def test_compare_lists_every_baseline_rule_beside_its_row(workspace):
    at = AppTest.from_file(str(PAGES / "compare.py"), default_timeout=60)
    at.query_params["configs"] = ["A", "B"]
    at.run()
    assert not at.exception and not at.error
    (rules,) = [d.value for d in at.dataframe if "How chosen" in d.value.columns]
    by_name = rules.set_index("Baseline")
    baseline_rows = [name for name in at.table[0].value.index if name.endswith("(baseline)")]
    assert sorted(baseline_rows) == ["Old VAD (baseline)", "Silero VAD (baseline)", "WebRTC VAD (baseline)"]
    assert list(by_name.index) == baseline_rows  # in the order of the comparison table
    assert by_name.loc["Silero VAD (baseline)"].to_dict() == {
        "Clip rule": "max", "Threshold": "0.900", "How chosen": "on the validation split",
        "Validation split": "/data/val.csv", "Val balanced accuracy": "87.5% (best of 2 rules)",
        "ROC AUC": f"{auc(VAD_SCORES):.3f}"}
    webrtc = by_name.loc["WebRTC VAD (baseline)"]
    assert webrtc.to_dict() == {"Clip rule": "fraction", "Threshold": "0.500",
                                "How chosen": "fixed: the default rule and threshold", "Validation split": "—",
                                "Val balanced accuracy": "—",
                                "ROC AUC": f"{auc([0.7, 0.6, 0.8, 0.9, 0.6, 0.7, 0.2, 0.1]):.3f}"}
    assert by_name.loc["Old VAD (baseline)", "Clip rule"] == MAX_RULE  # no rule name: what the score is

    # without baselines, and with no baseline picked, there is no rule table
    at.checkbox(key="compare_baselines").uncheck().run()
    assert not [d for d in at.dataframe if "How chosen" in d.value.columns]
    # a baseline picked as a side gets its line too
    at.multiselect(key="compare_picks").set_value(["A", "vad-val/test"]).run()
    (rules,) = [d.value for d in at.dataframe if "How chosen" in d.value.columns]
    assert list(rules["Baseline"]) == ["vad-val/test"]


def test_two_runs_of_one_detector_stay_two_rows(workspace):
    """WebRTC at the fixed rule and again chosen on val (what the Evaluate page makes easy) are two
    baselines, each with its own rule: not one configuration with a mean over two 'seeds'."""
    run_folder(workspace, "vad-fixed-on-val", {**vad_chosen_on_val(), "label": "WebRTC VAD", "method": "webrtc"},
               VAD_SCORES, threshold=0.9)
    at = AppTest.from_file(str(PAGES / "compare.py"), default_timeout=60)
    at.query_params["configs"] = ["A", "B"]
    at.run()
    assert not at.exception and not at.error
    rows = list(at.table[0].value.index)
    assert {"WebRTC VAD · vad-fixed (baseline)", "WebRTC VAD · vad-fixed-on-val (baseline)"} <= set(rows)
    assert not [row for row in rows if "WebRTC" in row and "mean of" in row]
    by_name = next(d.value for d in at.dataframe if "How chosen" in d.value.columns).set_index("Baseline")
    assert by_name.loc["WebRTC VAD · vad-fixed (baseline)", "Threshold"] == "0.500"
    assert by_name.loc["WebRTC VAD · vad-fixed-on-val (baseline)", "Threshold"] == "0.900"
    assert "Silero VAD (baseline)" in by_name.index  # a detector run once keeps its plain name


def test_the_report_lists_how_each_baseline_labels_clips(workspace):
    from engine.dashboard import report

    comparison = review.compare(rf.list_runs(workspace), ["A", "B"], "test", None, True)
    markdown = report.build_report(comparison, workspace)
    section = markdown.split("### How the baselines label clips", 1)[1].split("## Training loss", 1)[0]
    table = review.comparison_baselines(comparison)
    assert sorted(table["Baseline"]) == ["Old VAD (baseline)", "Silero VAD (baseline)", "WebRTC VAD (baseline)"]
    for name in table["Baseline"]:
        assert name in section
    assert "on the validation split" in section and "fixed: the default rule and threshold" in section
    without = report.build_report(review.compare(rf.list_runs(workspace), ["A", "B"], "test", None, False), workspace)
    assert "How the baselines label clips" not in without
