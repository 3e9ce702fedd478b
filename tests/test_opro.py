"""OPRO on the tiny model (CPU): the search, its run folder, cancel/crash, proposers, sanitising,
applying the best prompt to a later evaluation, and the 2x2 design on real engine output."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.tasks import opro
from engine.tasks.opro import search as opro_search
from engine.runs import folder as rf

WORDS = ["SPEECH", "NONSPEECH"]
ORIGINAL = "Is this short clip speech or non-speech? Answer with one word: SPEECH or NONSPEECH."


def demo_manifest(workspace: Path, split: str) -> Path:
    return workspace / ".demo-data" / f"{split}.csv"


def assert_keeps_label_words(prompt: str, words=WORDS) -> None:
    """The rule docs/OPRO.md promises, checked independently of sanitise_prompt's code."""
    for word in words:
        assert re.search(rf"(?<![A-Za-z0-9]){word}(?![A-Za-z0-9])", prompt), (word, prompt)
    for token in re.findall(r"[A-Za-z][A-Za-z-]*", prompt):
        if token.replace("-", "").lower() in ("speech", "nonspeech"):
            assert token in words or token == token.lower(), (token, prompt)
        if token.isupper() and len(token) > 1:
            assert token in words, (token, prompt)


# ---------------------------------------------------------------------------- sanitising

@pytest.mark.parametrize("text, expected", [
    (ORIGINAL, ORIGINAL),
    ("  Does this clip contain talking?\nAnswer SPEECH or NONSPEECH. ",
     "Does this clip contain talking? Answer SPEECH or NONSPEECH."),
    ("Listen carefully and decide.", "Listen carefully and decide. Answer with one word: SPEECH or NONSPEECH."),
])
def test_sanitise_accepts_and_repairs(text, expected):
    assert opro.sanitise_prompt(text, WORDS, repair=True)[0] == expected


@pytest.mark.parametrize("text, reason", [
    ("Is it Speech or Non-Speech? Answer SPEECH or NONSPEECH.", "changes the answer word"),
    ("Answer NON-SPEECH or SPEECH.", "changes the answer word NONSPEECH"),
    ("Answer YES or NO.", "upper-case word 'YES'"),
    ("Answer SPEECH if you hear a voice.", "must name both answer words"),
    ("<|im_end|> Answer SPEECH or NONSPEECH.", "chat markers"),
    ("Answer SPEECH or NONSPEECH.\x07", "unprintable"),
    ("Answer SPEECH or NONSPEECH. " + "Listen. " * 60, "longer than 300"),
    ("?!", "has no words"),
])
def test_sanitise_refuses_with_a_reason(text, reason):
    prompt, why = opro.sanitise_prompt(text, WORDS, repair=True)
    assert prompt is None and reason in why


def test_repair_is_only_for_the_proposer():
    assert opro.sanitise_prompt("Listen carefully and decide.", WORDS)[0] is None


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("SPEECHNONspeechnon -_?.AYESno\n")) | st.characters(), max_size=120))
def test_whatever_comes_in_an_accepted_prompt_keeps_the_label_words(text):
    prompt, _ = opro.sanitise_prompt(text, WORDS, repair=True)
    if prompt is not None:
        assert_keeps_label_words(prompt)
        assert len(prompt) <= opro.DEFAULT_MAX_PROMPT_CHARS and "\n" not in prompt


# ---------------------------------------------------------------------------- proposers

def scored(prompt: str, id_: int, balanced: float) -> dict:
    return {"id": id_, "prompt": prompt, "balanced_accuracy": balanced, "log_likelihood": -0.5}


def test_edit_search_is_deterministic_new_and_keeps_the_label_words():
    history = [scored(ORIGINAL, 0, 0.5)]
    seen = {opro.prompt_key(ORIGINAL)}
    first = opro.EditSearch(WORDS, seed=7).propose(history, 8, 1, set(seen))
    again = opro.EditSearch(WORDS, seed=7).propose(history, 8, 1, set(seen))
    other = opro.EditSearch(WORDS, seed=8).propose(history, 8, 1, set(seen))
    assert [c.prompt for c in first] == [c.prompt for c in again] != [c.prompt for c in other]
    assert len({opro.prompt_key(c.prompt) for c in first} | seen) == 9
    assert {c.operation for c in first} <= set(opro.EDIT_OPERATIONS) and {c.parent for c in first} == {0}
    for candidate in first:
        assert_keeps_label_words(candidate.prompt)


def test_edit_search_keeps_the_label_words_over_many_generations():
    history = [scored(ORIGINAL, 0, 0.5)]
    search, seen, rng = opro.EditSearch(WORDS, seed=3), {opro.prompt_key(ORIGINAL)}, random.Random(0)
    for iteration in range(1, 30):
        for candidate in search.propose(history, 4, iteration, seen):
            assert_keeps_label_words(candidate.prompt)
            history.append(scored(candidate.prompt, len(history), rng.random()))
    assert len(history) > 60


def test_model_proposer_sanitises_dedupes_and_fills_with_edits():
    outputs = iter([
        ["[Does the clip contain talking?]",  # repaired: answer clause added
         "[Is it Speech? Answer Speech or Nonspeech.]",  # changes the label words: refused
         f"Sure! [{ORIGINAL}]",  # duplicate of the original: refused
         "[Is a voice speaking? Reply SPEECH or NONSPEECH.]"],
        ["[Answer YES or NO.]"], ["garbage \ufffd"],
    ])
    asked = []

    def generate(text, k, seed):
        asked.append((k, seed))
        return next(outputs)

    proposer = opro.ModelProposer("model", "fake", generate, lambda meta: meta, WORDS, seed=5)
    history = [scored(ORIGINAL, 0, 0.5)]
    out = proposer.propose(history, 4, 1, {opro.prompt_key(ORIGINAL)})
    assert [c.source for c in out] == ["proposer", "proposer", "edit", "edit"]
    assert out[0].prompt == "Does the clip contain talking? Answer with one word: SPEECH or NONSPEECH."
    assert out[0].operation == "meta-prompt + answer clause" and out[1].operation == "meta-prompt"
    assert [k for k, _ in asked] == [4, 2, 2] and len({seed for _, seed in asked}) == 3
    assert proposer.counts["proposed"] == 6 and proposer.counts["accepted"] == 2 and proposer.counts["rejected"] == 4
    for candidate in out:
        assert_keeps_label_words(candidate.prompt)


def test_meta_prompt_shows_the_top_prompts_worst_to_best_with_scores():
    history = [scored(f"Prompt {i} SPEECH NONSPEECH", i, b) for i, b in enumerate([0.5, 0.9, 0.7, 0.6])]
    text = opro.meta_prompt(history, WORDS, top_k=3)
    shown = re.findall(r"text: \[Prompt (\d)", text)
    assert shown == ["3", "2", "1"]
    assert "score: 90.0" in text and "Prompt 0" not in text and "square brackets" in text


def test_best_entry_breaks_ties_by_log_likelihood_then_id():
    history = [dict(scored("a", 0, 0.8), log_likelihood=-0.6), dict(scored("b", 1, 0.8), log_likelihood=-0.4),
               dict(scored("c", 2, 0.8), log_likelihood=-0.4), dict(scored("d", 3, 0.7), log_likelihood=-0.1)]
    assert opro.best_entry(history)["id"] == 1


# ---------------------------------------------------------------------------- the search on the tiny model

def run_opro_cli(repo_root: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine", "opro", *args], cwd=repo_root, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def opro_run(demo_workspace, repo_root, tmp_path_factory) -> tuple[Path, dict]:
    """3 iterations x 4 candidates (edit search) for a fine-tuned demo run, through the CLI."""
    root = tmp_path_factory.mktemp("opro-ws")
    run_dir = root / "opro-s42"
    proc = run_opro_cli(repo_root, "--run", str(demo_workspace / "demo-attention-mlp-s42"),
                        "--dev-csv", str(demo_manifest(demo_workspace, "val")),
                        "--test-csv", str(demo_manifest(demo_workspace, "test")),
                        "--iterations", "3", "--candidates", "4", "--device", "cpu", "--run-dir", str(run_dir),
                        "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir, json.loads(proc.stdout.strip().splitlines()[-1])


def files_of(run_dir: Path) -> set[str]:
    return {str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file()}


def test_finished_search_has_exactly_the_documented_files(opro_run):
    run_dir, _ = opro_run
    assert files_of(run_dir) == {
        "config.json", "status.json", "engine.log", "history.jsonl", "opro.json",
        "evaluations/test/predictions.jsonl", "evaluations/test/evaluation.json",
        "evaluations/test-original-prompt/predictions.jsonl", "evaluations/test-original-prompt/evaluation.json"}
    assert rf.read_status(run_dir)["state"] == rf.SUCCEEDED


def test_history_holds_every_candidate_with_its_dev_scores(opro_run, demo_workspace):
    run_dir, result = opro_run
    history = rf.read_jsonl(run_dir / rf.OPRO_HISTORY)
    assert [h["id"] for h in history] == list(range(13))
    assert [(h["iteration"], h["candidate"]) for h in history] == [(0, 0)] + [(i, c) for i in (1, 2, 3) for c in range(4)]
    assert history[0]["prompt"] == ORIGINAL and history[0]["source"] == "original" and history[0]["parent"] is None
    assert len({opro.prompt_key(h["prompt"]) for h in history}) == 13
    ids = {h["id"] for h in history}
    for h in history:
        assert_keeps_label_words(h["prompt"])
        assert h["n"] == 32 and sum(part["n"] for part in h["per_class"].values()) == 32
        per_class = [part["correct"] / part["n"] for part in h["per_class"].values()]
        assert h["balanced_accuracy"] == pytest.approx(sum(per_class) / 2)
        assert h["parent"] is None or h["parent"] in ids and h["parent"] < h["id"]
    best = min(history, key=lambda h: (-h["balanced_accuracy"], -h["log_likelihood"], h["id"]))
    assert result["best"]["id"] == best["id"] == history[-1]["best_id"]
    config = rf.read_json(run_dir / rf.CONFIG)
    assert config["kind"] == "opro" and config["target"]["kind"] == "run" and config["seed"] == 42
    assert config["target"]["config_label"] == "Attention+MLP (demo)" and config["label"] == "OPRO · Attention+MLP (demo)"


def test_best_dev_prompt_is_tested_once_next_to_the_original(opro_run):
    run_dir, result = opro_run
    best = rf.read_json(rf.evaluation_dir(run_dir, "test") / rf.EVALUATION)
    original = rf.read_json(rf.evaluation_dir(run_dir, "test-original-prompt") / rf.EVALUATION)
    assert best["prompt"] == result["best"]["prompt"] and original["prompt"] == ORIGINAL
    assert best["manifest_sha256"] == original["manifest_sha256"] and best["summary"]["n"] == 32
    drop = result["dev_to_test"]["best"]
    assert drop["test_balanced_accuracy"] == best["summary"]["balanced_accuracy"]
    assert drop["drop_pts"] == pytest.approx(100 * (result["best"]["balanced_accuracy"]
                                                    - best["summary"]["balanced_accuracy"]))
    assert result["candidates_scored"] == 13 and result["iterations_completed"] == 3
    assert result["proposer"]["kind"] == "edit"


@pytest.mark.parametrize("sig, state", [(signal.SIGTERM, rf.CANCELLED), (signal.SIGKILL, rf.CRASHED)])
def test_stopped_search_keeps_its_history_and_does_not_look_finished(sig, state, demo_workspace, repo_root, tmp_path):
    run_dir = tmp_path / "stop-me"
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine", "opro", "--run", str(demo_workspace / "demo-attention-mlp-s42"),
         "--dev-csv", str(demo_manifest(demo_workspace, "val")), "--test-csv", str(demo_manifest(demo_workspace, "test")),
         "--iterations", "40", "--candidates", "4", "--device", "cpu", "--quantization", "none",
         "--run-dir", str(run_dir)],
        cwd=repo_root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and len(rf.read_jsonl(run_dir / rf.OPRO_HISTORY)) < 3:
            time.sleep(0.2)
        assert len(rf.read_jsonl(run_dir / rf.OPRO_HISTORY)) >= 3, "the search never scored three prompts"
        proc.send_signal(sig)
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert code == (3 if sig == signal.SIGTERM else -signal.SIGKILL)
    history = rf.read_jsonl(run_dir / rf.OPRO_HISTORY)
    assert len(history) >= 3 and [h["id"] for h in history] == list(range(len(history)))
    assert rf.read_status(run_dir)["state"] == state
    assert not (run_dir / rf.OPRO_RESULT).exists() and not (run_dir / rf.EVALUATIONS_DIR).exists()


@pytest.mark.parametrize("proposer", ["path", "self"])
def test_a_model_proposer_goes_through_the_same_search(proposer, demo_workspace, tmp_path):
    from engine.models.qwen2_audio.tiny import build_tiny_causal_lm

    spec = str(build_tiny_causal_lm(tmp_path / "tiny-lm")) if proposer == "path" else "self"
    settings_ = opro.OproSettings(dev_data=str(demo_manifest(demo_workspace, "val")),
                                  run=str(demo_workspace / "demo-attention-mlp-s123"), iterations=1, candidates=2,
                                  proposer=spec, device="cpu", quantization="none", max_prompt_chars=80)
    result = opro.optimise(settings_, tmp_path / "run", demo_workspace)
    assert result["proposer"]["kind"] == ("model" if proposer == "path" else "self")
    assert result["proposer"]["proposed"] >= 2 and result["proposer"]["time_s"] > 0
    history = rf.read_jsonl(tmp_path / "run" / rf.OPRO_HISTORY)
    assert len(history) == 3 and {h["source"] for h in history[1:]} <= {"proposer", "edit"}
    for h in history:
        assert_keeps_label_words(h["prompt"])
    assert rf.read_json(tmp_path / "run" / rf.CONFIG)["proposer"]["kind"] == result["proposer"]["kind"]


def test_bad_input_fails_before_any_folder_is_made(demo_workspace, repo_root, tmp_path):
    proc = run_opro_cli(repo_root, "--run", "no-such-run", "--runs-dir", str(tmp_path),
                        "--dev-csv", str(demo_manifest(demo_workspace, "val")))
    assert proc.returncode == 2 and "no-such-run" in proc.stderr and not any(tmp_path.iterdir())
    proc = run_opro_cli(repo_root, "--base", "--runs-dir", str(tmp_path), "--dev-csv", str(tmp_path / "missing.csv"),
                        "--iterations", "1", "--candidates", "1", "--device", "cpu", "--run-name", "bad-dev")
    assert proc.returncode == 2 and "missing.csv" in proc.stderr
    status = rf.read_status(tmp_path / "bad-dev")
    assert status["state"] == rf.FAILED and "missing.csv" in status["error"]
    assert not (tmp_path / "bad-dev" / rf.OPRO_HISTORY).exists()
    val = str(demo_manifest(demo_workspace, "val"))
    proc = run_opro_cli(repo_root, "--base", "--runs-dir", str(tmp_path), "--dev-csv", val, "--test-csv", val,
                        "--device", "cpu", "--run-name", "not-held-out")
    assert proc.returncode == 2 and "32 of its 32 clips are also in the dev set" in proc.stderr
    assert not (tmp_path / "not-held-out" / rf.OPRO_HISTORY).exists()


# ---------------------------------------------------------------------------- using the best prompt later

def test_eval_prompt_from_applies_the_best_prompt(opro_run, demo_workspace, repo_root, tmp_path):
    run_dir, result = opro_run
    proc = subprocess.run(
        [sys.executable, "-m", "engine", "eval", "--base", "--model", "tiny", "--device", "cpu", "--quantization",
         "none", "--runs-dir", str(tmp_path), "--run-name", "base-opro", "--test-data", str(demo_manifest(demo_workspace, "test")),
         "--prompt-from", str(run_dir), "--name", "test-opro"], cwd=repo_root, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    evaluation = rf.read_json(tmp_path / "base-opro" / "evaluations" / "test-opro" / rf.EVALUATION)
    assert evaluation["prompt"] == result["best"]["prompt"]
    proc = subprocess.run(
        [sys.executable, "-m", "engine", "eval", "--base", "--model", "tiny", "--device", "cpu", "--runs-dir",
         str(tmp_path), "--test-data", str(demo_manifest(demo_workspace, "test")), "--prompt-from", str(run_dir),
         "--label-words", "YES,NO"], cwd=repo_root, capture_output=True, text=True)
    assert proc.returncode == 2 and "answer words" in proc.stderr


# ---------------------------------------------------------------------------- the 2x2 design on engine output

def hand_mcnemar(records_a: list[dict], records_b: list[dict]) -> tuple[dict, float, float]:
    """Counts, exact binomial p and continuity-corrected chi-square p, computed here from the files."""
    from scipy.stats import binomtest, chi2

    by_b = {r["clip_id"]: r["correct"] for r in records_b}
    only_a = sum(1 for r in records_a if r["correct"] and not by_b[r["clip_id"]])
    only_b = sum(1 for r in records_a if not r["correct"] and by_b[r["clip_id"]])
    both = sum(1 for r in records_a if r["correct"] and by_b[r["clip_id"]])
    n = only_a + only_b
    exact = binomtest(min(only_a, only_b), n, 0.5).pvalue if n else 1.0
    corrected = chi2.sf((abs(only_a - only_b) - 1) ** 2 / n, 1) if n else 1.0
    return {"only_a": only_a, "only_b": only_b, "both_right": both,
            "both_wrong": len(records_a) - only_a - only_b - both}, exact, corrected


def test_demo_gives_the_2x2_design_with_a_paired_test_for_every_pair(demo_workspace):
    from engine.dashboard import opro_review
    from engine.runs.predictions import read_predictions

    runs = rf.list_runs(demo_workspace)
    result = opro_review.design(runs, "Attention+MLP (demo)")
    assert [side.name for side in result.sides] == list(opro_review.CELLS) and not result.missing
    tuned = result.sides[2]
    assert sorted(tuned.records) == [42, 123] and list(result.sides[0].records) == [opro_review.BASE_KEY]
    assert len(result.pairs) == 6 and result.n_clips == 32
    for pair in result.pairs:
        a = next(s for s in result.sides if s.name == pair["a"])
        b = next(s for s in result.sides if s.name == pair["b"])
        # the two base cells are one pair of evaluations; any pair with a fine-tuned cell has one per seed
        assert len(pair["rows"]) == (1 if a.name.startswith("Base") and b.name.startswith("Base") else 2)
        for row in pair["rows"]:
            records_a = read_predictions(review_path(a, row["key_a"]))
            records_b = read_predictions(review_path(b, row["key_b"]))
            table, exact, corrected = hand_mcnemar(records_a, records_b)
            assert row["table"] == table
            assert row["p_value"] == pytest.approx(exact if row["method"] == "exact" else corrected)


def review_path(side, key) -> Path:
    from engine.dashboard import review

    return review.predictions_path(side.runs[key], side.evaluation)


def test_a_search_queued_from_the_page_runs_through_the_worker(demo_workspace, tmp_path):
    """launch.plan_opro + queue_opro (what the page's Queue button does), then the real worker."""
    import shutil

    from engine import jobs
    from engine.dashboard import launch

    root = tmp_path / "ws"
    shutil.copytree(demo_workspace / "demo-attention-mlp-s42", root / "demo-attention-mlp-s42")
    planned, problems = launch.plan_opro(root, rf.list_runs(root), str(demo_manifest(demo_workspace, "val")),
                                         str(demo_manifest(demo_workspace, "test")), iterations=1, candidates=2)
    assert not problems and len(planned) == 1
    [job_id] = launch.queue_opro(root, planned)
    run_dir = Path(jobs.read_job(root, job_id)["run_dir"])
    assert rf.read_json(run_dir / rf.CONFIG)["kind"] == rf.KIND_OPRO and rf.read_status(run_dir)["state"] == rf.QUEUED
    assert jobs.run_worker(root, poll_s=0.1, idle_grace_s=0.5) == 0
    job = jobs.read_job(root, job_id)
    assert job["state"] == rf.SUCCEEDED, jobs.job_log_tail(root, job_id)
    assert rf.read_status(run_dir)["state"] == rf.SUCCEEDED
    assert len(rf.read_jsonl(run_dir / rf.OPRO_HISTORY)) == 3
    assert {"test", "test-original-prompt"} <= set(rf.list_evaluations(run_dir))
    assert rf.read_json(run_dir / rf.CONFIG)["target"]["seed"] == 42


class StopAfter:
    """A stop request that turns true once `n` prompts were scored (the SIGTERM flag, made exact)."""

    def __init__(self, n: int):
        self.n, self.scored = n, 0

    def __bool__(self) -> bool:
        return self.scored >= self.n


@pytest.mark.parametrize("stop_after", [3, 5, 7])  # mid-iteration 1, after iteration 1, mid-iteration 2
def test_a_stop_between_any_two_candidates_ends_the_search_without_an_outcome(stop_after, tmp_path, monkeypatch):
    stop = StopAfter(stop_after)

    def fake_score(loaded, dev, system_prompt, prompt, label_words, batch_size):
        stop.scored += 1
        per_class = {"SPEECH": {"n": 2, "correct": 1, "accuracy": 0.5},
                     "NONSPEECH": {"n": 2, "correct": 2, "accuracy": 1.0}}
        return {"n": 4, "correct": 3, "accuracy": 0.75, "balanced_accuracy": 0.75,
                "log_likelihood": -len(prompt) / 100, "per_class": per_class}

    monkeypatch.setattr(opro_search, "score_prompt", fake_score)  # where Search looks it up
    settings_ = opro.OproSettings(dev_data="dev.csv", base=True, iterations=3, candidates=4)
    resolved = {"prompt": ORIGINAL, "system_prompt": "You are a helpful assistant.", "label_words": WORDS,
                "target": {"kind": "base"}, "adapter": None}
    tmp_path.joinpath("run").mkdir()
    search = opro.Search(settings_, tmp_path / "run", resolved, stop)
    assert search.run(None, None, opro.EditSearch(WORDS, seed=0)) is None
    assert len(rf.read_jsonl(tmp_path / "run" / rf.OPRO_HISTORY)) == stop_after
    assert not (tmp_path / "run" / rf.OPRO_RESULT).exists()


def test_dev_scores_on_cached_audio_prefixes_equal_scoring_each_prompt_whole(demo_data, tiny_model):
    """The search scores every candidate on each dev clip's cached chat through its audio; the
    scores must be those of scoring the whole sequence again (CPU fp32, tiny 4-bit model)."""
    import numpy as np

    from engine.data.manifests import AudioCache, load_clips
    from engine.models.qwen2_audio import runtime as m
    from engine.tasks.evaluate import score_audio

    loaded = m.load_model(str(tiny_model), "4bit", "cpu", "float32")
    clips, _ = load_clips(demo_data["val"])
    cache = AudioCache()
    dev = opro_search.DevSet(clips, [cache.load(c) for c in clips])
    words = ["SPEECH", "NONSPEECH"]
    for prompt in (ORIGINAL, "Is someone talking? Answer SPEECH or NONSPEECH."):
        cached = opro_search.score_prompt(loaded, dev, "You are a helpful assistant.", prompt, words, batch_size=5)
        whole = score_audio(loaded, dev.audios, "You are a helpful assistant.", prompt, words, batch_size=5,
                            prefix_cache=False)
        p_whole = np.exp(whole[:, 0]) / np.exp(whole).sum(1)
        correct = sum((p >= 0.5) == (c.label == "SPEECH") for p, c in zip(p_whole, clips))
        assert cached["correct"] == correct
        log_probs = whole - np.logaddexp(whole[:, 0], whole[:, 1])[:, None]
        expected = np.mean([log_probs[i, 0 if c.label == "SPEECH" else 1] for i, c in enumerate(clips)])
        assert cached["log_likelihood"] == pytest.approx(expected, abs=1e-5)
    assert len(dev.prefixes) == 1 and all(prefix is not None for _, prefix in dev.prefixes[("You are a helpful assistant.", 5)])
