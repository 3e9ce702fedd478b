"""engine.dashboard.opro_review, charts.opro_curve and the OPRO launch helpers on small fake OPRO run folders
(laid out as docs/OPRO.md describes). Statistics are checked against values computed here by hand
and by statsmodels/scipy, never against engine.stats.core itself."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import plotly.graph_objects as go
import pytest
from scipy import stats as sps
from statsmodels.stats.contingency_tables import mcnemar as sm_mcnemar
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import proportion_confint

from engine.dashboard import charts
from engine import jobs
from engine.dashboard import launch
from engine.dashboard import opro_review
from engine.dashboard import review
from engine.runs import folder as rf
from engine.stats import core as stats
from engine.runs.predictions import NONSPEECH, SPEECH, make_record, read_predictions, write_evaluation

# ---------------------------------------------------------------- fake OPRO runs (docs/OPRO.md)

N_CLIPS = 12  # clip-00 .. clip-05 are SPEECH, clip-06 .. clip-11 NONSPEECH
LABELS = [SPEECH] * 6 + [NONSPEECH] * 6
ORIGINAL_PROMPT = "Is this short clip speech or non-speech? Answer with one word: SPEECH or NONSPEECH."
# Which test clips each cell gets right ("1" = correct), clip by clip.
TEST_MASKS = {
    "base": ("111000111000", "111100111100"),  # (original prompt, OPRO prompt)
    1: ("111110111110", "111111111111"),
    2: ("110110110110", "111111111110"),
}


def clip_records(mask: str, clip_ids: list[str] | None = None) -> list[dict]:
    """Prediction records of the 12 test clips, right where mask has a 1."""
    ids = clip_ids or [f"clip-{i:02d}" for i in range(N_CLIPS)]
    out = []
    for clip_id, label, right in zip(ids, LABELS, mask):
        pred = label if right == "1" else (NONSPEECH if label == SPEECH else SPEECH)
        p_speech = 0.8 if pred == SPEECH else 0.2
        out.append(make_record(clip_id, f"/audio/{clip_id}.wav", label, p_speech, math.log(p_speech / (1 - p_speech)),
                               1.0))
    return out


def history_record(prompt_id: int, iteration: int, candidate: int, prompt: str, speech: int, nonspeech: int,
                   log_likelihood: float, n: int = 8, source: str = "edit", operation: str = "reorder",
                   parent: int | None = 0) -> dict:
    """One history.jsonl line: dev counts of `n` clips per class (best_* left to `with_best`)."""
    return {"id": prompt_id, "iteration": iteration, "candidate": candidate, "prompt": prompt,
            "parent": None if prompt_id == 0 else parent, "source": "original" if prompt_id == 0 else source,
            "operation": "original" if prompt_id == 0 else operation, "n": 2 * n, "correct": speech + nonspeech,
            "accuracy": (speech + nonspeech) / (2 * n), "balanced_accuracy": (speech / n + nonspeech / n) / 2,
            "log_likelihood": log_likelihood,
            "per_class": {SPEECH: {"n": n, "correct": speech, "accuracy": speech / n},
                          NONSPEECH: {"n": n, "correct": nonspeech, "accuracy": nonspeech / n}},
            "time_s": 0.5, "at": "2026-01-01T00:00:00+0000"}


def search_history() -> list[dict]:
    """Original (id 0, 50%) and two iterations of two candidates; prompt 3 is the best (87.5%)."""
    return [
        history_record(0, 0, 0, ORIGINAL_PROMPT, 4, 4, -0.69),
        history_record(1, 1, 0, "Listen. Is it speech? Answer with one word: SPEECH or NONSPEECH.", 6, 5, -0.60),
        history_record(2, 1, 1, "Speech or not? Answer SPEECH or NONSPEECH.", 5, 5, -0.65, source="proposer",
                       operation="meta-prompt"),
        history_record(3, 2, 0, "Does a person talk in this clip? Answer SPEECH or NONSPEECH.", 7, 7, -0.40,
                       source="proposer", operation="meta-prompt", parent=1),
        history_record(4, 2, 1, "Is anyone speaking? Reply SPEECH or NONSPEECH <now>.", 7, 7, -0.45, parent=1),
    ]


def make_opro_run(root: Path, name: str, target_kind: str, config_label: str, seed: int | None,
                  history: list[dict], state: str = rf.SUCCEEDED, finished: bool = True,
                  test_masks: tuple[str, str] | None = None, partial_line: bool = False,
                  clip_ids: list[str] | None = None, created_at: str = "2026-01-01T00:00:00+0000",
                  label_words: tuple[str, str] = (SPEECH, NONSPEECH)) -> Path:
    """An OPRO run folder: config.json, status.json, history.jsonl (optionally with a partial last
    line), opro.json when `finished`, and the two test evaluations when `test_masks` is given."""
    run_dir = root / name
    run_dir.mkdir(parents=True)
    target = {"kind": target_kind, "run": None if target_kind == "base" else f"cfg-s{seed}",
              "run_dir": None if target_kind == "base" else str(root / f"cfg-s{seed}"),
              "config_label": "Base model" if target_kind == "base" else config_label, "seed": seed}
    rf.atomic_write_json(run_dir / rf.CONFIG, {
        "schema_version": 1, "kind": rf.KIND_OPRO,
        "label": "OPRO · base tiny" if target_kind == "base" else f"OPRO · {config_label}", "target": target,
        "model": "tiny", "quantization": "4bit", "adapter": None, "system_prompt": "You are a helpful assistant.",
        "prompt": ORIGINAL_PROMPT, "label_words": list(label_words), "dev_data": "/data/dev.csv",
        "test_data": "/data/test.csv", "test_name": "test", "iterations": 2, "candidates": 2,
        "proposer": {"kind": "edit", "model": None}, "seed": seed if seed is not None else 3, "search_seed": 3,
        "batch_size": 8, "max_prompt_chars": 300, "top_k": 10})
    rf.write_status(run_dir, state, created_at=created_at,
                    progress={"step": len(history), "total_steps": 5, "iteration": history[-1]["iteration"],
                              "iterations": 2, "best_balanced_accuracy": 0.875, "eta_s": 3.0})
    best = opro_review.best_entry([])
    for record in history:
        best = opro_review.best_entry([r for r in (best, record) if r])
        rf.append_jsonl(run_dir / rf.OPRO_HISTORY, dict(record, best_id=best["id"],
                                                        best_balanced_accuracy=best["balanced_accuracy"]))
    if partial_line:
        with open(run_dir / rf.OPRO_HISTORY, "a", encoding="utf-8") as fh:
            fh.write('{"id": 99, "iteration": 3, "prompt": "Half writ')
    if test_masks:
        for evaluation, mask, prompt in (("test-original-prompt", test_masks[0], ORIGINAL_PROMPT),
                                         ("test", test_masks[1], best["prompt"])):
            write_evaluation(run_dir, evaluation, clip_records(mask, clip_ids),
                             {"model": "tiny", "prompt": prompt, "label_words": list(label_words)})
    if finished:
        rf.atomic_write_json(run_dir / rf.OPRO_RESULT, {
            "schema_version": 1, "original": history[0], "best": best, "improved": best["id"] != 0,
            "candidates_scored": len(history), "iterations_completed": 2, "seconds_per_candidate": 0.5,
            "proposer": {"kind": "edit", "model": None, "proposed": 4, "accepted": 4, "rejected": 0, "time_s": 0.0},
            "time_taken_s": 3.0, "test": None, "dev_to_test": None})
    return run_dir


def make_workspace(root: Path) -> Path:
    """Finished searches on the base model and on seeds 1 and 2 of "Cfg" (all with test evaluations),
    a running search with a partial history line and a cancelled search without opro.json."""
    make_opro_run(root, "opro-base-tiny", "base", "Base model", None, search_history(), test_masks=TEST_MASKS["base"],
                  created_at="2026-01-01T10:00:00+0000")
    for seed in (1, 2):
        make_opro_run(root, f"opro-cfg-s{seed}", "run", "Cfg", seed, search_history(), test_masks=TEST_MASKS[seed],
                      created_at=f"2026-01-01T1{seed}:00:00+0000")
    make_opro_run(root, "opro-cfg-s3", "run", "Cfg", 3, search_history()[:3], state=rf.RUNNING, finished=False,
                  partial_line=True, created_at="2026-01-01T13:00:00+0000")
    make_opro_run(root, "opro-other-s1", "run", "Other", 1, search_history()[:4], state=rf.CANCELLED, finished=False,
                  created_at="2026-01-01T14:00:00+0000", label_words=("yes", "no"))
    return root


@pytest.fixture()
def workspace(tmp_path) -> Path:
    return make_workspace(tmp_path / "ws")


@pytest.fixture()
def runs(workspace) -> list[rf.RunInfo]:
    return rf.list_runs(workspace)


def by_id(opro_runs) -> dict[str, opro_review.OproRun]:
    return {run.run_id: run for run in opro_runs}


# ---------------------------------------------------------------- reading runs

def test_read_history_ignores_a_partial_last_line_and_refuses_a_broken_middle(workspace, tmp_path):
    history = opro_review.read_history(workspace / "opro-cfg-s3")
    assert [r["id"] for r in history] == [0, 1, 2]  # the half-written id 99 is not there
    assert opro_review.read_history(tmp_path / "nowhere") == []
    broken = workspace / "opro-cfg-s1" / rf.OPRO_HISTORY
    lines = broken.read_text().splitlines()
    broken.write_text("\n".join([lines[0], "{not json", *lines[1:]]) + "\n")
    with pytest.raises(rf.RunFolderError, match="line 2 is not valid JSON"):
        opro_review.read_history(workspace / "opro-cfg-s1")
    damaged = opro_review.read_opro_run(rf.read_run(workspace / "opro-cfg-s1"))
    assert damaged.error and "line 2" in damaged.error


def test_best_entry_rule_balanced_then_log_likelihood_then_lowest_id():
    a = history_record(0, 0, 0, "a", 4, 4, -0.5)
    b = history_record(1, 1, 0, "b", 6, 6, -0.9)
    c = history_record(2, 1, 1, "c", 7, 5, -0.3)  # same balanced accuracy as b, higher log-likelihood
    d = history_record(3, 1, 2, "d", 5, 7, -0.3)  # ties c on both: the lower id (c) wins
    assert opro_review.best_entry([]) is None
    assert opro_review.best_entry([a, b])["id"] == 1
    assert opro_review.best_entry([a, b, c])["id"] == 2
    assert opro_review.best_entry([d, c, b, a])["id"] == 2
    unscored = dict(history_record(4, 2, 0, "e", 8, 8, -0.1), balanced_accuracy=None)
    assert opro_review.best_entry([a, unscored])["id"] == 0  # a missing score ranks below any real one


def test_list_opro_runs_final_and_best_so_far(runs):
    found = by_id(opro_review.list_opro_runs(runs))
    assert list(found) == ["opro-other-s1", "opro-cfg-s3", "opro-cfg-s2", "opro-cfg-s1", "opro-base-tiny"]
    finished, running, cancelled = found["opro-cfg-s1"], found["opro-cfg-s3"], found["opro-other-s1"]
    assert finished.final and finished.best["id"] == 3 and finished.best_label == "best prompt"
    assert (finished.target_kind, finished.target_label, finished.target_seed) == ("run", "Cfg", 1)
    assert finished.has_test_pair and finished.original["id"] == 0
    assert not running.final and running.info.state == rf.RUNNING and running.best["id"] == 1
    assert running.best_label == "best prompt so far" and not running.has_test_pair
    assert cancelled.info.state == rf.CANCELLED and cancelled.best["id"] == 3 and not cancelled.final
    assert found["opro-base-tiny"].target_label == "Base model" and found["opro-base-tiny"].target_seed is None
    assert "dev balanced 87.5%" in finished.choice_text()
    assert {r.run_id for r in opro_review.prompt_sources(runs)} == set(found)
    assert opro_review.label_words_mismatch(finished, ["SPEECH", "NONSPEECH"]) is None
    warning = opro_review.label_words_mismatch(cancelled, ["SPEECH", "NONSPEECH"])
    assert warning.startswith("opro-other-s1 optimised its prompt for the answer words yes, no")


# ---------------------------------------------------------------- curve and tables

def test_curve_best_so_far_and_history_frames():
    history = search_history()
    points = opro_review.curve_frame(history)
    assert list(points["id"]) == [0, 1, 2, 3, 4]
    assert list(points["balanced_accuracy"]) == pytest.approx([50.0, 68.75, 62.5, 87.5, 87.5])
    assert list(points["speech_accuracy"]) == pytest.approx([50.0, 75.0, 62.5, 87.5, 87.5])
    assert list(points["position"]) == pytest.approx([0.0, 0.7, 1.3, 1.7, 2.3])
    assert list(points["is_best"]) == [False, False, False, True, False]  # 3 and 4 tie; 3 has the higher LL

    best = opro_review.best_so_far_frame(history)
    assert list(best["iteration"]) == [0, 1, 2]
    assert list(best["balanced_accuracy"]) == pytest.approx([50.0, 68.75, 87.5])
    assert list(best["id"]) == [0, 1, 3]

    table = opro_review.history_table(history)
    assert list(table.columns) == list(opro_review.HISTORY_COLUMNS)
    row = table.set_index("id").loc[3]
    assert (row["iteration"], row["source"], row["operation"], row["parent"]) == (2, "proposer", "meta-prompt", 1)
    assert row["balanced accuracy (%)"] == pytest.approx(87.5) and row["NONSPEECH (%)"] == pytest.approx(87.5)
    assert bool(row["best"]) and table["best"].sum() == 1
    assert table["parent"].isna().tolist() == [True, False, False, False, False]
    assert opro_review.curve_frame([]).empty and opro_review.history_table([]).empty


def test_dev_scores_and_dev_to_test_drop(runs):
    found = by_id(opro_review.list_opro_runs(runs))
    scores = opro_review.dev_scores_table(found["opro-cfg-s1"])
    assert list(scores.columns) == ["original prompt (id 0)", "best prompt (id 3)"]
    lo, hi = proportion_confint(7, 8, method="wilson")
    assert scores.loc["SPEECH", "best prompt (id 3)"] == f"87.5% (7/8) [{100 * lo:.1f}, {100 * hi:.1f}]"
    assert scores.loc["balanced accuracy", "original prompt (id 0)"] == "50.0%"

    drop = opro_review.dev_to_test_frame(found["opro-cfg-s1"]).set_index("prompt")
    # test balanced accuracy by hand: seed 1's OPRO prompt is right on every test clip, its original on 5/6 + 5/6
    assert drop.loc["best prompt", "test balanced accuracy (%)"] == pytest.approx(100.0)
    assert drop.loc["best prompt", "drop (pts)"] == pytest.approx(87.5 - 100.0)
    assert drop.loc["original prompt", "test balanced accuracy (%)"] == pytest.approx(100 * 5 / 6)
    assert drop.loc["original prompt", "drop (pts)"] == pytest.approx(50.0 - 100 * 5 / 6)
    assert drop.loc["original prompt", "test evaluation"] == "test-original-prompt"

    unfinished = opro_review.dev_to_test_frame(found["opro-cfg-s3"]).set_index("prompt")
    assert list(unfinished.index) == ["best prompt so far", "original prompt"]
    assert unfinished["test balanced accuracy (%)"].isna().all() and unfinished["drop (pts)"].isna().all()


# ---------------------------------------------------------------- the 2x2 design

def by_hand(mask_a: str, mask_b: str) -> dict[str, int]:
    """The McNemar 2x2 counts of two correctness masks, counted here (A first)."""
    pairs = list(zip(mask_a, mask_b))
    return {"both_right": pairs.count(("1", "1")), "only_a": pairs.count(("1", "0")),
            "only_b": pairs.count(("0", "1")), "both_wrong": pairs.count(("0", "0"))}


def exact_p(table: dict[str, int]) -> float:
    if table["only_a"] + table["only_b"] == 0:
        return 1.0
    return float(sm_mcnemar([[table["both_right"], table["only_a"]], [table["only_b"], table["both_wrong"]]],
                            exact=True).pvalue)


CELL_MASKS = {  # cell -> {key: mask}
    opro_review.BASE_ORIGINAL: {"base": TEST_MASKS["base"][0]},
    opro_review.BASE_OPRO: {"base": TEST_MASKS["base"][1]},
    opro_review.TUNED_ORIGINAL: {1: TEST_MASKS[1][0], 2: TEST_MASKS[2][0]},
    opro_review.TUNED_OPRO: {1: TEST_MASKS[1][1], 2: TEST_MASKS[2][1]},
}


def test_design_has_four_cells_and_six_mcnemar_pairs(runs):
    result = opro_review.design(runs, "Cfg", n_boot=200)
    assert [side.name for side in result.sides] == list(opro_review.CELLS)
    assert result.missing == {}
    assert result.sides[0].records.keys() == {"base"} and result.sides[2].records.keys() == {1, 2}
    assert result.sides[2].runs[1].run_id == "opro-cfg-s1" and result.sides[3].evaluation == "test"
    assert result.n_clips == N_CLIPS

    assert [(p["a"], p["b"]) for p in result.pairs] == [
        (a, b) for i, a in enumerate(opro_review.CELLS) for b in opro_review.CELLS[i + 1:]]
    for paired in result.pairs:
        masks_a, masks_b = CELL_MASKS[paired["a"]], CELL_MASKS[paired["b"]]
        expected_rows = []
        for row in paired["rows"]:
            table = by_hand(masks_a[row["key_a"]], masks_b[row["key_b"]])
            assert row["table"] == table, (paired["a"], paired["b"], row["pair"])
            assert row["p_value"] == pytest.approx(exact_p(table))
            expected_rows.append((row["key_a"], row["key_b"]))
        if "Base" in paired["a"] and "Fine-tuned" in paired["b"]:
            assert expected_rows == [("base", 1), ("base", 2)]  # the single base evaluation meets every seed
        elif paired["a"].startswith("Fine-tuned"):
            assert expected_rows == [(1, 1), (2, 2)]  # matched seeds
        else:
            assert expected_rows == [("base", "base")]
        if len(paired["rows"]) > 1:
            holm = multipletests([exact_p(by_hand(masks_a[r["key_a"]], masks_b[r["key_b"]])) for r in paired["rows"]],
                                 method="holm")[1]
            assert [row["p_holm"] for row in paired["rows"]] == pytest.approx(list(holm))
        for row in paired["rows"]:
            assert row["power_caveat"].startswith(f"With {N_CLIPS} clips")

    # per-class accuracy with Wilson intervals per cell, seed means with bootstrap intervals
    table = result.table.set_index("Configuration")
    lo, hi = proportion_confint(3, 6, method="wilson")
    assert table.loc[opro_review.BASE_ORIGINAL, SPEECH] == f"50.0% (3/6) [{100 * lo:.1f}, {100 * hi:.1f}]"
    seed_accuracies = [100 * TEST_MASKS[s][0].count("1") / N_CLIPS for s in (1, 2)]
    mean = sum(seed_accuracies) / 2
    sd = math.sqrt(sum((v - mean) ** 2 for v in seed_accuracies))
    half = sps.t.ppf(0.975, 1) * sd / math.sqrt(2)
    mean_row = table.loc[f"{opro_review.TUNED_ORIGINAL} · mean of 2 seeds", "Overall"]
    # The t-interval of two seeds leaves [0, 100] here, so the mean row gives the bootstrap interval instead.
    assert mean - half < 0 and mean + half > 100
    boot = result.seed_stats[opro_review.TUNED_ORIGINAL]["overall"]["bootstrap_ci"]
    assert 0 <= boot[0] <= mean <= boot[1] <= 100
    assert mean_row == f"{mean:.1f}% mean of 2 seeds, SD {sd:.1f}, bootstrap 95% [{boot[0]:.1f}, {boot[1]:.1f}]"
    assert f"{opro_review.TUNED_OPRO} · seed 2" in table.index
    assert "Trainable %" not in result.table.columns

    grid = result.grid
    assert list(grid.columns) == ["original prompt", "OPRO prompt"] and list(grid.index) == ["Base model", "Fine-tuned"]
    assert grid.loc["Base model", "original prompt"] == "50.0% overall · 50.0% balanced"
    assert grid.loc["Fine-tuned", "OPRO prompt"].endswith("(mean of 2 seeds)")
    assert result.power_caveat == stats.power_caveat(N_CLIPS)
    signature = opro_review.design_signature(runs)
    assert len(signature) == 6  # two test evaluations of each of the three finished searches
    assert set(opro_review.class_summaries(result)) == {
        opro_review.BASE_ORIGINAL, opro_review.BASE_OPRO, *(f"{cell} · seed {s}" for cell in opro_review.CELLS[2:]
                                                             for s in (1, 2))}


def test_design_refuses_cells_on_other_clips(workspace):
    other_ids = [f"other-{i:02d}" for i in range(N_CLIPS)]
    make_opro_run(workspace, "opro-base-other-clips", "base", "Base model", None, search_history(),
                  test_masks=TEST_MASKS["base"], clip_ids=other_ids, created_at="2026-01-02T00:00:00+0000")
    runs = rf.list_runs(workspace)
    with pytest.raises(stats.PairingError, match="is not on the same clips as"):
        opro_review.design(runs, "Cfg", n_boot=50)  # the newest base search is on other clips
    result = opro_review.design(runs, "Cfg", base_run="opro-base-tiny", n_boot=50)
    assert len(result.pairs) == 6 and result.sides[0].runs["base"].run_id == "opro-base-tiny"
    assert not any("OPRO runs on the base model" in note for note in result.notes)  # chosen, not defaulted
    with pytest.raises(review.SelectionError, match="'opro-cfg-s1' is not an OPRO run on the base model"):
        opro_review.design(runs, "Cfg", base_run="opro-cfg-s1")


def test_design_with_missing_cells_says_why(tmp_path):
    root = tmp_path / "ws"
    make_opro_run(root, "opro-cfg-s1", "run", "Cfg", 1, search_history(), test_masks=TEST_MASKS[1])
    make_opro_run(root, "opro-cfg-s1-again", "run", "Cfg", 1, search_history(), test_masks=TEST_MASKS[2],
                  created_at="2026-01-03T00:00:00+0000")
    runs = rf.list_runs(root)
    result = opro_review.design(runs, "Cfg", n_boot=50)
    assert [side.name for side in result.sides] == [opro_review.TUNED_ORIGINAL, opro_review.TUNED_OPRO]
    assert set(result.missing) == {opro_review.BASE_ORIGINAL, opro_review.BASE_OPRO}
    assert "no OPRO run on the base model" in result.missing[opro_review.BASE_ORIGINAL]
    assert len(result.pairs) == 1 and result.sides[0].runs[1].run_id == "opro-cfg-s1-again"  # the newest of seed 1
    assert any("opro-cfg-s1 left out" in note for note in result.notes)
    assert result.grid.loc["Base model", "original prompt"] == "—"
    assert opro_review.fine_tuned_labels(runs) == ["Cfg"] and opro_review.base_runs(runs) == []
    with pytest.raises(review.SelectionError, match="no cell of the 2x2 design has test evaluations yet"):
        opro_review.design(runs, "Nothing")


# ---------------------------------------------------------------- the chart

def test_opro_curve_figure(runs):
    history = search_history()
    fig = charts.opro_curve(opro_review.curve_frame(history), opro_review.best_so_far_frame(history), final=False)
    assert isinstance(fig, go.Figure) and fig.layout.meta["chart"] == "opro_curve"
    names = [trace.name for trace in fig.data]
    assert names == ["original", "edit", "proposer", "best so far", "best prompt so far"]
    edit = fig.data[1]
    assert list(edit.y) == pytest.approx([68.75, 87.5])
    hover = edit.customdata[1][5]
    assert "Is anyone speaking? Reply SPEECH or NONSPEECH &lt;now&gt;." in hover  # escaped, not markup
    assert list(fig.data[3].y) == pytest.approx([50.0, 68.75, 87.5]) and fig.data[3].line.shape == "hv"
    assert list(fig.data[4].x) == pytest.approx([1.7])
    final = charts.opro_curve(opro_review.curve_frame(history), opro_review.best_so_far_frame(history))
    assert final.data[-1].name == "best prompt"
    empty = charts.opro_curve(opro_review.curve_frame([]), opro_review.best_so_far_frame([]))
    assert empty.layout.annotations[0].text == "no prompt scored yet"


# ---------------------------------------------------------------- launching

def trained(root: Path, name: str, label: str, seed: int) -> rf.RunInfo:
    run_dir = root / name
    (run_dir / rf.ADAPTER_DIR).mkdir(parents=True)
    for file_name in rf.ADAPTER_FILES:
        (run_dir / rf.ADAPTER_DIR / file_name).write_text("{}")
    rf.atomic_write_json(run_dir / rf.CONFIG, {"kind": "train", "label": label, "seed": seed, "model": "tiny",
                                                "quantization": "4bit", "label_words": ["SPEECH", "NONSPEECH"]})
    rf.write_status(run_dir, rf.SUCCEEDED)
    return rf.read_run(run_dir)


def test_opro_argv_lists_the_documented_flags(tmp_path):
    argv = launch.opro_argv("/d/dev.csv", tmp_path / "opro-x", run="/ws/cfg-s1", test_data="/d/test.csv",
                            iterations=5, candidates=2, proposer="model", proposer_model="Qwen/Qwen2-0.5B", seed=7,
                            batch_size=4)
    assert argv == ["opro", "--run", "/ws/cfg-s1", "--dev-csv", "/d/dev.csv", "--test-csv", "/d/test.csv",
                    "--iterations", "5", "--candidates", "2", "--proposer", "Qwen/Qwen2-0.5B", "--seed", "7",
                    "--run-dir", str(tmp_path / "opro-x"), "--batch-size", "4"]
    base = launch.opro_argv("/d/dev.csv", "/ws/opro-base", base_model="tiny", proposer="self", quantization="none")
    assert base == ["opro", "--base", "--model", "tiny", "--dev-csv", "/d/dev.csv", "--iterations", "3",
                    "--candidates", "4", "--proposer", "self", "--run-dir", "/ws/opro-base", "--batch-size", "8",
                    "--quantization", "none"]
    with pytest.raises(ValueError, match="exactly one of run and base_model"):
        launch.opro_argv("/d/dev.csv", "/ws/x")
    with pytest.raises(ValueError, match="needs proposer_model"):
        launch.opro_argv("/d/dev.csv", "/ws/x", base_model="tiny", proposer="model")
    # the engine's own parser reads them back (engine.tasks.opro imports no torch at module level)
    from engine.tasks.opro import opro_arguments

    parser = argparse.ArgumentParser()
    opro_arguments(parser)
    args = parser.parse_args(argv[1:])
    assert (args.run, args.dev_data, args.test_data, args.iterations, args.candidates, args.proposer, args.seed,
            args.run_dir, args.batch_size) == ("/ws/cfg-s1", "/d/dev.csv", "/d/test.csv", 5, 2, "Qwen/Qwen2-0.5B", 7,
                                               tmp_path / "opro-x", 4)
    args = parser.parse_args(base[1:])
    assert (args.base, args.model, args.proposer, args.quantization, args.test_data) == (True, "tiny", "self", "none",
                                                                                         None)


def test_plan_opro_one_job_per_seed_with_queued_configs(tmp_path, manifests):
    root = tmp_path / "ws"
    runs = [trained(root, f"cfg-s{seed}", "Cfg", seed) for seed in (1, 2)]
    (root / "opro-cfg-s2").mkdir()  # taken: the plan uses the next free name
    planned, problems = launch.plan_opro(root, runs, str(manifests["dev"]), str(manifests["test"]))
    assert problems == []
    assert [job.target for job in planned] == ["cfg-s1", "cfg-s2"]
    assert [job.run_dir.name for job in planned] == ["opro-cfg-s1", "opro-cfg-s2-2"]
    first = planned[0]
    assert first.argv == ["opro", "--run", str(runs[0].path), "--dev-csv", str(manifests["dev"]), "--test-csv",
                          str(manifests["test"]), "--iterations", "3", "--candidates", "4", "--run-dir",
                          str(root / "opro-cfg-s1"), "--batch-size", "8"]
    assert first.command.startswith("python -m engine opro --run ")
    config = first.config
    assert config["kind"] == rf.KIND_OPRO and config["label"] == "OPRO · Cfg"
    assert config["target"] == {"kind": "run", "run": "cfg-s1", "run_dir": str(runs[0].path), "config_label": "Cfg",
                                "seed": 1}
    assert (config["seed"], config["search_seed"], config["test_name"]) == (1, 1, "test")
    assert config["proposer"] == {"kind": "edit", "model": None} and config["label_words"] == ["SPEECH", "NONSPEECH"]
    assert not (root / "opro-cfg-s1").exists()  # planning creates nothing

    (root / "opro-cfg-s1").mkdir()  # taken between planning and queueing
    job_ids = launch.queue_opro(root, planned)
    queued = {job["job_id"]: job for job in jobs.read_jobs(root)}
    assert [queued[job_id]["resource"] for job_id in job_ids] == ["gpu", "gpu"]
    first_job = queued[job_ids[0]]
    assert first_job["run_dir"] == str((root / "opro-cfg-s1-2").resolve())
    assert first_job["argv"][first_job["argv"].index("--run-dir") + 1] == str(root / "opro-cfg-s1-2")
    info = rf.read_run(root / "opro-cfg-s1-2")
    assert (info.kind, info.state, info.config["target"]["seed"]) == (rf.KIND_OPRO, rf.QUEUED, 1)
    assert launch.opro_bytes(planned) > 0


def test_plan_opro_base_model_seed_and_proposer(tmp_path, manifests):
    root = tmp_path / "ws"
    planned, problems = launch.plan_opro(root, [], str(manifests["dev"]), "", iterations=2, candidates=3,
                                         proposer="self", seed="11", base_model="tiny", quantization="none",
                                         run_name="search")
    assert problems == []
    (job,) = planned
    assert job.run_dir == root / "search-base-tiny" and job.target == "base model tiny"
    assert job.argv == ["opro", "--base", "--model", "tiny", "--dev-csv", str(manifests["dev"]), "--iterations", "2",
                        "--candidates", "3", "--proposer", "self", "--seed", "11", "--run-dir",
                        str(root / "search-base-tiny"), "--batch-size", "8", "--quantization", "none"]
    assert job.config["label"] == "OPRO · base tiny" and job.config["test_data"] is None
    assert job.config["target"]["kind"] == "base" and job.config["seed"] == job.config["search_seed"] == 11


@pytest.mark.parametrize("changes, message", [
    ({"dev_data": ""}, "dev data: give a manifest (CSV/JSONL) or a folder"),
    ({"dev_data": "MISSING"}, "dev data: not found: {missing}"),
    ({"test_data": "MISSING"}, "test data: not found: {missing}"),
    ({"test_data": "DEV"}, "test data: the same as the dev data; the best prompt must be tested on clips it was "
                           "not chosen on (give another set, or none)"),
    ({"iterations": 0}, "iterations: must be a whole number >= 1 (got 0)"),
    ({"candidates": "many"}, "candidates per iteration: must be a whole number >= 1 (got 'many')"),
    ({"seed": "1.5"}, "seed: must be a whole number >= 0, or blank for the target's seed (got '1.5')"),
    ({"seed": "-3"}, "seed: must be a whole number >= 0, or blank for the target's seed (got '-3')"),
    ({"batch_size": 2.5}, "batch size: must be a whole number >= 1 (got 2.5)"),
    ({"proposer": "model"}, "proposer model: give a local causal LM folder or a Hugging Face hub id in the cache"),
    ({"proposer": "model", "proposer_model": "/no/such/model"}, "proposer model: folder not found: /no/such/model"),
    ({"proposer": "magic"}, "proposer: must be one of edit, self, model (got 'magic')"),
    ({"runs": []}, "target: choose a run or a configuration with finished runs"),
    ({"run_name": "../escape"}, "run name: invalid run name '../escape': use 1-128 letters, digits, '.', '_', '+' "
                                "or '-', starting with a letter or digit (no '/', no '..')"),
])
def test_plan_opro_problems_name_their_input(tmp_path, manifests, changes, message):
    root = tmp_path / "ws"
    missing = tmp_path / "missing.csv"
    kwargs = {"runs": [trained(root, "cfg-s1", "Cfg", 1)], "dev_data": str(manifests["dev"]), "test_data": str(manifests["test"])}
    kwargs.update(changes)
    for key in ("dev_data", "test_data"):
        kwargs[key] = {"MISSING": str(missing), "DEV": str(manifests["dev"])}.get(kwargs[key], kwargs[key])
    planned, problems = launch.plan_opro(root, **kwargs)
    assert planned == [] and problems == [message.format(missing=missing)]


def test_run_names_never_leave_the_workspace(tmp_path, manifests):
    root = tmp_path / "ws"
    long_name = "x" * 125
    run = trained(root, "cfg-s1", "Cfg", 1)
    planned, problems = launch.plan_opro(root, [run], str(manifests["dev"]), run_name=long_name)
    assert planned == [] and problems[0].startswith(f"run name: invalid run name '{long_name}-cfg-s1'")
    planned, problems = launch.plan_opro(root, [], str(manifests["dev"]), base_model="../../etc", quantization="4bit")
    assert problems == [] and planned[0].run_dir.parent == root and planned[0].run_dir.name == "opro-base-etc"


def test_opro_progress_and_eval_prompt(tmp_path):
    run_dir = tmp_path / "opro-run"
    run_dir.mkdir()
    rf.write_status(run_dir, rf.RUNNING, progress={"step": 3, "total_steps": 9, "iteration": 1, "iterations": 2,
                                                    "best_balanced_accuracy": 0.75, "eta_s": 12.0})
    assert launch.opro_progress({"run_dir": str(run_dir)}) == {
        "step": 3, "total_steps": 9, "fraction": pytest.approx(1 / 3), "iteration": 1, "iterations": 2,
        "best_balanced_accuracy": 0.75, "eta_s": 12.0}
    assert launch.opro_progress({"run_dir": None}) is None

    (tmp_path / "test.csv").write_text("path,label\n", encoding="utf-8")
    run = trained(tmp_path / "ws", "cfg-s1", "Cfg", 1)
    planned, problems = launch.plan_evaluations(tmp_path, [run], str(tmp_path / "test.csv"), name="test-opro",
                                                prompt="Speech? Answer SPEECH or NONSPEECH.")
    assert problems == []
    assert planned[0].argv[-2:] == ["--prompt", "Speech? Answer SPEECH or NONSPEECH."]
    from engine.tasks.evaluate import eval_arguments

    parser = argparse.ArgumentParser()
    eval_arguments(parser)
    assert parser.parse_args(planned[0].argv[1:]).prompt == "Speech? Answer SPEECH or NONSPEECH."
    _planned, problems = launch.plan_evaluations(tmp_path, [run], str(tmp_path / "test.csv"), prompt="  ")
    assert problems == ["prompt: the prompt is empty (choose the run's own prompt, or write one)"]
    assert "--prompt" not in launch.plan_evaluations(tmp_path, [run], str(tmp_path / "test.csv"))[0][0].argv


def test_history_line_format_round_trips(workspace):
    """The fixture's history lines carry every key docs/OPRO.md lists, so the readers are tested on them."""
    line = json.loads((workspace / "opro-cfg-s1" / rf.OPRO_HISTORY).read_text().splitlines()[3])
    assert {"id", "iteration", "candidate", "prompt", "parent", "source", "operation", "n", "correct", "accuracy",
            "balanced_accuracy", "log_likelihood", "per_class", "best_id", "best_balanced_accuracy", "time_s",
            "at"} <= set(line)
    assert (line["best_id"], line["best_balanced_accuracy"]) == (3, 0.875)


def test_opro_runs_are_configurations_of_their_targets(runs, workspace):
    """Compare lists OPRO searches as configurations: the seeds' searches of one training
    configuration together, keyed by the adapters' seeds, named without paths."""
    configs = {c.name: c for c in review.configurations(runs)}
    assert {"OPRO of Cfg", "OPRO of Other", "OPRO of the base model (tiny)"} <= set(configs)
    cfg = configs["OPRO of Cfg"]
    assert [r.run_id for r in cfg.runs] == ["opro-cfg-s1", "opro-cfg-s2", "opro-cfg-s3"]
    assert [r.run_id for r in cfg.runs_with("test")] == ["opro-cfg-s1", "opro-cfg-s2"]  # s3 is still running
    assert not any(str(workspace) in name for name in configs)
    (side,) = review.resolve_picks(runs, ["OPRO of Cfg"], "test", read_predictions)
    assert list(side.records) == [1, 2]
