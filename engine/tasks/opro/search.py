"""The OPRO search loop: score the original prompt, then each round's candidates, on the dev set.

Each scored candidate is appended to the run's history as it is scored (a cancelled or crashed
search keeps what it found). Only when the search finishes is the best dev prompt evaluated,
once, on the held-out test set, next to the original prompt on the same clips. `optimise()` is
the whole run inside the run lifecycle.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from engine.runs import folder as rf
from engine.config import DEFAULT_LABELS, DEFAULT_PROMPT, DEFAULT_SYSTEM_PROMPT, ConfigError
from engine.runs.lifecycle import StopSignal, run_lifecycle
from engine.runs.opro_history import best_entry
from engine.tasks.opro.proposers import PROPOSER_MODEL, Candidate, make_proposer, prompt_key, proposer_kind
from engine.tasks.opro.settings import OproSettings

log = logging.getLogger("engine.tasks.opro")  # one logger name for the whole search, as before the split

TEST_NAME = "test"  # evaluations/test: the best dev prompt on the test set
ORIGINAL_SUFFIX = "-original-prompt"  # evaluations/test-original-prompt: the original prompt, same clips
ORIGINAL_TEST_NAME = TEST_NAME + ORIGINAL_SUFFIX


# ----------------------------------------------------------------------------- scoring on dev

@dataclass
class DevSet:
    """The development clips, decoded once and kept in memory for every candidate."""

    clips: list
    audios: list[np.ndarray]
    prefixes: dict = field(default_factory=dict, repr=False)
    """(system prompt, batch size) -> each batch's cached chat through its audio (evaluate's
    `audio_prefixes`): candidates differ only after the audio, so only that part runs per candidate"""


def score_prompt(loaded, dev: DevSet, system_prompt: str, prompt: str, label_words: Sequence[str],
                 batch_size: int) -> dict[str, Any]:
    """Dev scores of one prompt: counts, accuracy, balanced accuracy, per class, log-likelihood."""
    from engine.stats import core as stats
    from engine.runs.predictions import SPEECH, make_record
    from engine.tasks.evaluate import audio_prefixes, p_speech_from_scores, score_on_audio_prefixes

    key = (system_prompt, batch_size)
    if key not in dev.prefixes:
        dev.prefixes.clear()  # one system prompt per search; never hold two sets of keys and values
        dev.prefixes[key] = audio_prefixes(loaded, dev.audios, system_prompt, batch_size)
    scores = score_on_audio_prefixes(loaded, dev.prefixes[key], dev.audios, system_prompt, prompt, label_words)
    p_speech = p_speech_from_scores(scores)
    records = [make_record(c.clip_id, c.path, c.label, float(p), float(s[0] - s[1]),
                           len(a) / loaded.family.sample_rate)
               for c, p, s, a in zip(dev.clips, p_speech, scores, dev.audios)]
    summary = stats.evaluation_summary(records)
    log_probs = scores - np.logaddexp(scores[:, 0], scores[:, 1])[:, None]
    correct_column = np.array([0 if c.label == SPEECH else 1 for c in dev.clips])
    log_likelihood = float(log_probs[np.arange(len(dev.clips)), correct_column].mean())
    return {"n": summary["n"], "correct": summary["correct"], "accuracy": summary["accuracy"],
            "balanced_accuracy": summary["balanced_accuracy"], "log_likelihood": log_likelihood,
            "per_class": {cls: {k: part[k] for k in ("n", "correct", "accuracy")}
                          for cls, part in summary["per_class"].items()}}


# ----------------------------------------------------------------------------- the search

def resolve_target(settings: OproSettings, runs_root: Path) -> dict[str, Any]:
    """Model, adapter, prompts and label words of the frozen model to optimise for."""
    from engine.tasks.evaluate import find_run

    if settings.run:
        run_dir = find_run(settings.run, runs_root)
        cfg = rf.read_json(run_dir / rf.CONFIG)
        if cfg.get("kind") != rf.KIND_TRAIN:
            raise rf.RunFolderError(f"{run_dir} is a {cfg.get('kind')!r} run, not a training run")
        adapter = run_dir / rf.ADAPTER_DIR
        if not all((adapter / name).is_file() for name in rf.ADAPTER_FILES):
            raise rf.RunFolderError(f"{run_dir} has no finished adapter ({rf.ADAPTER_DIR}/ incomplete)")
        target = {"kind": "run", "run": run_dir.name, "run_dir": str(run_dir.resolve()),
                  "config_label": str(cfg.get("label") or run_dir.name), "seed": cfg.get("seed")}
    else:
        cfg, adapter = {}, None
        target = {"kind": "base", "run": None, "run_dir": None, "config_label": "Base model", "seed": None}
    model = settings.model or cfg.get("model") or "tiny"
    words = settings.label_words or cfg.get("label_words") or list(DEFAULT_LABELS)
    if len(words) != 2 or words[0] == words[1]:
        raise ConfigError("label_words", f"need two different answer words (got {words})")
    return {"target": target, "model": model, "adapter": adapter,
            "quantization": settings.quantization or cfg.get("quantization", "4bit"),
            "prompt": settings.prompt or cfg.get("prompt") or DEFAULT_PROMPT,
            "system_prompt": cfg.get("system_prompt") or DEFAULT_SYSTEM_PROMPT, "label_words": list(words)}


def run_config(settings: OproSettings, resolved: dict, search_seed: int) -> dict[str, Any]:
    target = resolved["target"]
    label = (f"OPRO · {target['config_label']}" if target["kind"] == "run"
             else f"OPRO · base {Path(str(resolved['model'])).name}")
    kind = proposer_kind(settings.proposer)
    return {
        "schema_version": rf.SCHEMA_VERSION, "kind": rf.KIND_OPRO, "label": label, "target": target,
        "model": resolved["model"], "quantization": resolved["quantization"],
        "adapter": str(resolved["adapter"]) if resolved["adapter"] else None,
        "system_prompt": resolved["system_prompt"], "prompt": resolved["prompt"],
        "label_words": resolved["label_words"], "dev_data": str(settings.dev_data),
        "test_data": str(settings.test_data) if settings.test_data else None, "test_name": TEST_NAME,
        "iterations": settings.iterations, "candidates": settings.candidates,
        "proposer": {"kind": kind, "model": settings.proposer if kind == PROPOSER_MODEL else None},
        "seed": target["seed"] if target["kind"] == "run" and target["seed"] is not None else search_seed,
        "search_seed": search_seed, "batch_size": settings.batch_size,
        "max_prompt_chars": settings.max_prompt_chars, "top_k": settings.top_k,
    }


class Search:
    """One OPRO search writing into its run folder; `run()` returns the opro.json content."""

    def __init__(self, settings: OproSettings, run_dir: Path, resolved: dict, stop,
                 progress: Callable[..., Any] | None = None):
        self.settings, self.run_dir, self.resolved, self.stop = settings, run_dir, resolved, stop
        # the run's progress writer (Run.progress); without a lifecycle, straight into status.json
        self.progress = progress or (lambda force=False, **fields: rf.update_status(run_dir, progress=fields))
        self.history: list[dict] = []
        self.seen: set[str] = set()
        self.total = 1 + settings.iterations * settings.candidates
        self.started = time.time()
        self.scoring_s = 0.0

    def _record(self, candidate: Candidate, iteration: int, index: int, loaded, dev: DevSet) -> dict:
        started = time.time()
        dev_scores = score_prompt(loaded, dev, self.resolved["system_prompt"], candidate.prompt,
                                  self.resolved["label_words"], self.settings.batch_size)
        elapsed = time.time() - started
        self.scoring_s += elapsed
        entry = {"id": len(self.history), "iteration": iteration, "candidate": index, "prompt": candidate.prompt,
                 "parent": candidate.parent, "source": candidate.source, "operation": candidate.operation,
                 **dev_scores}
        best = best_entry([*self.history, entry])
        entry.update(best_id=best["id"], best_balanced_accuracy=best["balanced_accuracy"],
                     time_s=round(elapsed, 4), at=rf.now_iso())
        rf.append_jsonl(self.run_dir / rf.OPRO_HISTORY, entry)
        self.history.append(entry)
        self.seen.add(prompt_key(candidate.prompt))
        done = len(self.history)
        rate = (time.time() - self.started) / done
        self.progress(step=done, total_steps=self.total, iteration=iteration, iterations=self.settings.iterations,
                      best_balanced_accuracy=best["balanced_accuracy"], eta_s=round(rate * (self.total - done), 1),
                      force=done == self.total)
        log.info("iteration %d candidate %d: balanced accuracy %.1f%% (best %.1f%%, #%d): %s", iteration, index,
                 100 * entry["balanced_accuracy"], 100 * best["balanced_accuracy"], best["id"], candidate.prompt)
        return entry

    def run(self, loaded, dev: DevSet, proposer, test=None) -> dict | None:
        """Score the original, then iterate; None when stopped (history kept, no test evaluation)."""
        original = Candidate(self.resolved["prompt"], None, "original", "original")
        self._record(original, 0, 0, loaded, dev)
        iterations_done = 0
        for iteration in range(1, self.settings.iterations + 1):
            if self.stop:
                return None
            candidates = proposer.propose(self.history, self.settings.candidates, iteration, set(self.seen))
            if not candidates:
                log.warning("iteration %d: no new candidate could be made; stopping the search early", iteration)
                break
            for index, candidate in enumerate(candidates):
                if self.stop:
                    return None
                self._record(candidate, iteration, index, loaded, dev)
            iterations_done = iteration
        if self.stop:
            return None
        return self._finish(loaded, proposer, test, iterations_done)

    def _finish(self, loaded, proposer, test, iterations_done: int) -> dict:
        from engine.tasks.evaluate import evaluate_clips

        best, original = best_entry(self.history), self.history[0]
        result: dict[str, Any] = {
            "schema_version": rf.SCHEMA_VERSION, "original": original, "best": best,
            "improved": best["id"] != original["id"], "candidates_scored": len(self.history),
            "iterations_completed": iterations_done,
            "seconds_per_candidate": round(self.scoring_s / len(self.history), 4),
            "proposer": {"kind": proposer.kind, "model": getattr(proposer, "name", None),
                         **getattr(proposer, "counts", {})},
            "test": None, "dev_to_test": None}
        if test is not None:
            clips, report, audio = test
            producer = {"kind": "opro", "opro_run": self.run_dir.name, "target": self.resolved["target"],
                        "adapter": str(self.resolved["adapter"]) if self.resolved["adapter"] else None}
            summaries = {}
            for name, entry in ((ORIGINAL_TEST_NAME, original), (TEST_NAME, best)):
                if self.stop:  # a cancelled search leaves no test evaluation behind (docs/OPRO.md)
                    for written in summaries:
                        shutil.rmtree(rf.evaluation_dir(self.run_dir, written), ignore_errors=True)
                    return None
                out, _ = evaluate_clips(loaded, clips, report, self.run_dir, name, self.resolved["system_prompt"],
                                        entry["prompt"], self.resolved["label_words"],
                                        {**producer, "prompt_id": entry["id"]}, audio=audio,
                                        batch_size=self.settings.batch_size)
                summaries[name] = rf.read_json(out / rf.EVALUATION)["summary"]
            result["test"] = {"evaluation": TEST_NAME, "original_evaluation": ORIGINAL_TEST_NAME,
                              "best": summaries[TEST_NAME], "original": summaries[ORIGINAL_TEST_NAME]}
            result["dev_to_test"] = {
                key: {"dev_balanced_accuracy": entry["balanced_accuracy"],
                      "test_balanced_accuracy": summaries[name]["balanced_accuracy"],
                      "drop_pts": round(100 * (entry["balanced_accuracy"] - summaries[name]["balanced_accuracy"]), 4)}
                for key, entry, name in (("best", best, TEST_NAME), ("original", original, ORIGINAL_TEST_NAME))}
        result["time_taken_s"] = round(time.time() - self.started, 3)
        result["peak_gpu_memory_gb"] = peak_gpu_memory_gb(loaded.device)
        rf.atomic_write_json(self.run_dir / rf.OPRO_RESULT, result)
        return result


def peak_gpu_memory_gb(device) -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated(device) / 1e9, 3) if device.type == "cuda" else None


def check_held_out(dev_clips, test_clips, test_data: str) -> None:
    """Refuse a test set that shares audio files with the dev set: the best prompt was chosen on
    those clips, so its test score would not be held out."""
    dev_files = {str(Path(c.path).resolve()) for c in dev_clips}
    shared = [c.path for c in test_clips if str(Path(c.path).resolve()) in dev_files]
    if shared:
        raise ValueError(f"test data {test_data}: {len(shared)} of its {len(test_clips)} clips are also in the dev "
                         f"set (e.g. {shared[0]}); the best prompt must be tested on clips it was not chosen on")


def load_dev_set(dev_data: str, label_words: Sequence[str], audio) -> DevSet:
    from engine.data.manifests import load_clips

    clips, report = load_clips(dev_data, label_words=label_words, skip_bad=True)
    for bad in report.bad_files:
        log.warning("dev data: skipped unreadable clip %s: %s", bad["path"], bad["reason"])
    if not clips:
        raise ValueError(f"dev data {dev_data}: no readable clips")
    if len({c.label for c in clips}) < 2:
        raise ValueError(f"dev data {dev_data}: needs clips of both classes for balanced accuracy")
    return DevSet(clips, [audio.load(c) for c in clips])


def optimise(settings: OproSettings, run_dir: Path, runs_root: Path,
             stop: StopSignal | None = None) -> dict | None:
    """Run one OPRO search into `run_dir`; returns opro.json's content, or None when cancelled.

    The terminal state (succeeded, cancelled, failed with the error) is always written.
    """
    from engine.data.manifests import AudioCache, load_clips
    from engine.models import family_for

    settings.check()
    resolved = resolve_target(settings, runs_root)
    search_seed = settings.seed if settings.seed is not None else int(resolved["target"]["seed"] or 0)
    config = run_config(settings, resolved, search_seed)
    if stop is None:
        stop = StopSignal("finishing this candidate, keeping the history, then stopping")
    stop.install()
    try:
        with run_lifecycle(run_dir, rf.KIND_OPRO, config=config, stop=stop) as run:
            run.progress(step=0, total_steps=1 + settings.iterations * settings.candidates, force=True)
            audio = AudioCache()
            dev = load_dev_set(settings.dev_data, resolved["label_words"], audio)
            test = None
            if settings.test_data:
                clips, report = load_clips(settings.test_data, label_words=resolved["label_words"], skip_bad=True)
                if not clips:
                    raise ValueError(f"test data {settings.test_data}: no readable clips")
                check_held_out(dev.clips, clips, settings.test_data)
                test = (clips, report, audio)
            log.info("OPRO on %s: %d dev clips, %d iterations x %d candidates, proposer %s, seed %d",
                     config["label"], len(dev.clips), settings.iterations, settings.candidates,
                     config["proposer"]["model"] or "edit search", search_seed)
            m = family_for(resolved["model"]).runtime()
            loaded = m.load_model(resolved["model"], resolved["quantization"], settings.device, settings.dtype)
            if resolved["adapter"] is not None:
                m.load_adapter(loaded, resolved["adapter"])
            from engine.tasks.evaluate import use_base_cache

            use_base_cache(loaded)
            m.seed_everything(search_seed)
            proposer = make_proposer(settings.proposer, loaded, resolved["label_words"], search_seed,
                                     settings.max_prompt_chars, settings.top_k)
            result = Search(settings, run.run_dir, resolved, stop, run.progress).run(loaded, dev, proposer, test)
            if result is None:
                run.set_result(rf.CANCELLED)
        return result
    finally:
        stop.restore()
