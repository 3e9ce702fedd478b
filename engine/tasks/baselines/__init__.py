"""Classic voice-activity detectors as baseline runs beside the fine-tuned models.

    python -m engine baseline --method silero|webrtc --test-csv MANIFEST --name NAME
                              [--val-csv MANIFEST | --threshold T] [--runs-dir DIR] [--aggressiveness 0-3]

Detectors judge short frames; a clip needs one score, so each detector documents its rules
(reductions of frame scores to a clip score). Each detector is one module of this package that
registers itself (registry.py): silero.py, webrtc.py. The --method choices and the
detector-specific flags come from the registry.

With a validation split (--val-csv) the rule and the threshold are chosen on it: the pair with
the highest balanced accuracy on the validation clips (ties: the earlier rule, then the lower
threshold); thresholds are midpoints between neighbouring validation scores. Without one the
detector's first rule is used with --threshold (default 0.5), and the run says so. config.json
and the evaluation record "rule", "reduction", "threshold", "rule_choice" (how they were chosen),
"val_data" and, when chosen, "rule_candidates" (each rule's best threshold and validation
balanced accuracy).

SPEECH when score >= threshold; margin = score - threshold; p_speech = score (so ROC AUC is the
clip score's, computed as for adapters).
Clips that cannot be decoded are skipped, listed in meta["skipped"] and on stderr; the rest
still count.
"""

from __future__ import annotations

import argparse
import platform
import sys
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np

from engine.runs import folder as rf
from engine.data.audio import DEFAULT_MAX_SECONDS, AudioError, load_audio
from engine.data.manifests import DataError, load_clips
from engine.labels import SPEECH
from engine.runs.lifecycle import StopRequested, run_lifecycle
from engine.runs.predictions import make_record, write_evaluation
from engine.tasks.baselines import registry
from engine.tasks.baselines.registry import ClipRule, Detector, Option, register  # noqa: F401 (the API a detector uses)

# Each import registers one detector; the order is the --method order.
from engine.tasks.baselines import silero, webrtc  # noqa: F401
from engine.tasks.baselines.silero import (  # noqa: F401
    SILERO_FRAME_SAMPLES, silero_clip_score, silero_frame_probabilities)
from engine.tasks.baselines.webrtc import DEFAULT_AGGRESSIVENESS, WEBRTC_FRAME_MS, webrtc_clip_score  # noqa: F401

DEFAULT_THRESHOLD = 0.5
EVALUATION_NAME = "test"
ENVIRONMENT_PACKAGES = ("numpy", "soundfile", "soxr")  # besides each detector's own


def __getattr__(name: str) -> Any:
    """METHODS, METHOD_LABELS and REDUCTIONS, read from the registry when asked (a detector may
    register after this module is imported)."""
    views: dict[str, Callable[[], Any]] = {
        "METHODS": lambda: tuple(registry.detectors()),
        "METHOD_LABELS": lambda: {d.name: d.label for d in registry.detectors().values()},
        "REDUCTIONS": lambda: {d.name: d.reduction for d in registry.detectors().values()},
    }
    if name in views:
        return views[name]()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ---------------------------------------------------------------------- a baseline run

def run_baseline(method: str, test_data: str | Path, run_dir: str | Path, threshold: float | None = None,
                 max_seconds: float = DEFAULT_MAX_SECONDS, label_words: list[str] | None = None,
                 val_data: str | Path | None = None, **options: Any) -> Path:
    """Score every clip of `test_data` with the detector `method` into the new run folder `run_dir`.

    `val_data`: a validation split on which the clip rule and threshold are chosen (then
    `threshold` must be None); without it the detector's first rule and `threshold` (default
    0.5) are used. `options` are detector settings (webrtc: aggressiveness); those of other
    detectors are ignored, names no detector declares are refused. Refuses an existing folder.
    Writes config.json, status.json (running, then succeeded or failed with the error),
    environment.json and evaluations/test/. Returns run_dir.
    """
    detector = registry.detector(method)
    if val_data is not None and threshold is not None:
        raise ValueError("give either a validation split (which chooses the threshold) or a threshold, not both")
    threshold = DEFAULT_THRESHOLD if threshold is None else threshold
    if not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"threshold must be in [0, 1] (got {threshold})")
    values = _option_values(detector, options)
    run_dir = Path(run_dir)
    rf.check_run_name(run_dir.name)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    try:
        run_dir.mkdir()
    except FileExistsError:
        raise rf.RunFolderError(
            f"run {run_dir.name!r} already exists in {run_dir.parent}; choose another name") from None

    resolved_val = None if val_data is None else str(Path(val_data).expanduser().resolve())
    settings: dict[str, Any] = {"method": method, "threshold": float(threshold), "reduction": detector.reduction,
                                "test_data": str(Path(test_data).expanduser().resolve()),
                                "max_clip_seconds": max_seconds, **values, **detector.constants,
                                "rule": detector.rules[0].name if detector.rules else None,
                                "rule_choice": _FIXED_RULE if val_data is None else _RULE_PENDING,
                                "val_data": resolved_val}
    config = {"schema_version": rf.SCHEMA_VERSION, "kind": rf.KIND_BASELINE, "label": detector.label, **settings}
    with run_lifecycle(run_dir, rf.KIND_BASELINE, config=config, log=False, interruptible=True) as run:
        if val_data is not None:
            choice = choose_rule(detector, values, val_data, max_seconds, label_words)
            settings.update(choice)
            config.update(choice)
            rf.atomic_write_json(run_dir / rf.CONFIG, config)  # what was chosen, before the test set is scored
        rule = _rule_named(detector, settings["rule"])
        score = ((lambda samples: rule.reduce(detector.frame_scores(samples, values))) if rule is not None
                 else (lambda samples: detector.clip_score(samples, values)))
        records, skipped, report = _score_clips(test_data, score, settings["threshold"], max_seconds, label_words)
        backend = detector.backend()
        run.write_environment(_environment(backend))
        meta = {"kind": rf.KIND_BASELINE, "label": detector.label, **settings, "backend": backend,
                "skipped": skipped, "data": report}
        write_evaluation(run_dir, EVALUATION_NAME, records, meta)
        run.set_result(clip_count=len(records), skipped_count=len(skipped))
    if run.state == rf.CANCELLED:
        raise StopRequested(f"baseline {run_dir.name} cancelled before it finished")
    return run_dir


_FIXED_RULE = "fixed: the detector's default rule and the given threshold (no validation split given)"
_RULE_PENDING = "to be chosen on the validation split"
_CHOSEN_RULE = "chosen on the validation split: highest balanced accuracy over rules and thresholds"


def choose_rule(detector: Detector, values: dict[str, Any], val_data: str | Path, max_seconds: float,
                label_words: list[str] | None = None) -> dict[str, Any]:
    """The clip rule and threshold with the highest balanced accuracy on `val_data`.

    Returns the settings to record: rule, reduction, threshold, rule_choice, rule_candidates
    (every rule with its best threshold and validation balanced accuracy). A detector without
    frame scores has one rule (its clip score); only its threshold is chosen.
    """
    rules = list(detector.rules) or [None]
    frames_of = ((lambda samples: detector.frame_scores(samples, values)) if detector.rules
                 else (lambda samples: np.array([detector.clip_score(samples, values)])))
    clips, _ = load_clips(val_data, label_words=label_words, max_seconds=max_seconds, skip_bad=True,
                          check_audio=False)
    frames, is_speech = [], []
    for clip in clips:
        try:
            samples, _info = load_audio(clip.path, max_seconds)
        except AudioError as exc:
            print(f"validation: skipped {clip.clip_id} ({clip.path}): {exc.reason}", file=sys.stderr)
            continue
        frames.append(frames_of(samples))
        is_speech.append(clip.label == SPEECH)
    labels = np.array(is_speech)
    if labels.all() or not labels.any():
        raise DataError(f"{val_data}: the validation split needs clips of both classes to choose a rule "
                        f"({labels.size} readable clips, {int(labels.sum())} {SPEECH})")
    candidates, best = [], None
    for rule in rules:
        scores = np.array([rule.reduce(f) if rule is not None else float(f[0]) for f in frames])
        threshold, balanced = best_threshold(scores, labels)
        candidates.append({"rule": rule.name if rule is not None else None, "threshold": threshold,
                           "val_balanced_accuracy": balanced})
        if best is None or balanced > best[2] + 1e-12:
            best = (rule, threshold, balanced)
    rule, threshold, _ = best
    return {"rule": rule.name if rule is not None else None,
            "reduction": rule.description if rule is not None else detector.reduction,
            "threshold": threshold, "rule_choice": _CHOSEN_RULE, "rule_candidates": candidates}


def best_threshold(scores: np.ndarray, is_speech: np.ndarray) -> tuple[float, float]:
    """(threshold, balanced accuracy) of the cut `score >= threshold` that classifies best.

    Cuts lie midway between neighbouring distinct scores (and at the lowest score, all SPEECH),
    so a new clip scoring like a validation clip is not decided by a hair; ties keep the lower cut.
    """
    distinct = np.unique(scores)
    cuts = np.concatenate([distinct[:1], (distinct[:-1] + distinct[1:]) / 2])
    best_cut, best_balanced = float(cuts[0]), -1.0
    for cut in cuts:
        pred = scores >= cut
        balanced = (np.mean(pred[is_speech]) + np.mean(~pred[~is_speech])) / 2
        if balanced > best_balanced + 1e-12:
            best_cut, best_balanced = float(cut), float(balanced)
    return best_cut, best_balanced


def _rule_named(detector: Detector, name: str | None):
    return next((rule for rule in detector.rules if rule.name == name), None)


def _option_values(detector: Detector, given: dict[str, Any]) -> dict[str, Any]:
    """The detector's option values (defaults filled in, each checked), in declaration order."""
    declared = {option.name for other in registry.detectors().values() for option in other.options}
    unknown = sorted(set(given) - declared)
    if unknown:
        raise ValueError(f"unknown baseline option(s) {', '.join(unknown)}; the detectors declare "
                         f"{', '.join(sorted(declared)) or 'none'}")
    return {option.name: option.parse(given.get(option.name, option.default)) for option in detector.options}


def _score_clips(test_data: str | Path, score: Callable[[np.ndarray], float], threshold: float,
                 max_seconds: float, label_words: list[str] | None) -> tuple[list[dict], list[dict], dict]:
    # The manifest is checked here; the audio is decoded once below, where a bad clip is skipped.
    clips, report = load_clips(test_data, label_words=label_words, max_seconds=max_seconds,
                               skip_bad=True, check_audio=False)
    skipped = [dict(bad) for bad in report.bad_files]
    records, truncated = [], []
    for clip in clips:
        try:
            samples, info = load_audio(clip.path, max_seconds)
        except AudioError as exc:
            skipped.append({"clip_id": clip.clip_id, "path": clip.path, "reason": exc.reason})
            continue
        if info.truncated:
            truncated.append(clip.clip_id)
        p_speech = score(samples)
        duration = clip.duration_s if clip.duration_s is not None else info.original_seconds
        records.append(make_record(clip.clip_id, clip.path, clip.label, p_speech, p_speech - threshold,
                                   duration, clip.metadata, threshold))
    for bad in skipped:
        print(f"skipped {bad['clip_id']} ({bad['path']}): {bad['reason']}", file=sys.stderr)
    if not records:
        raise DataError(f"{test_data}: no clip could be decoded ({len(skipped)} skipped)")
    data = report.to_dict()
    data.update(n_clips=len(records), per_class={c: sum(r["label"] == c for r in records) for c in report.per_class},
                bad_files=skipped, skipped=bool(skipped), truncated=truncated, audio_checked=True)
    return records, skipped, data


def _environment(backend: str | None) -> dict[str, Any]:
    packages = dict.fromkeys(ENVIRONMENT_PACKAGES)
    for detector in registry.detectors().values():
        packages.update(dict.fromkeys(detector.packages))
    return {"schema_version": rf.SCHEMA_VERSION, "python": platform.python_version(),
            "platform": platform.platform(), "backend": backend,
            "packages": {name: registry.version(name) for name in packages}}


# ---------------------------------------------------------------------- CLI

def baseline_arguments(parser: argparse.ArgumentParser) -> None:
    names = list(registry.detectors())
    parser.add_argument("--method", required=True, choices=names,
                        help=" or ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names))
    parser.add_argument("--test-csv", required=True,
                        help="test data: manifest CSV/JSONL, class folders or an audiofolder")
    parser.add_argument("--name", required=True, help="run name (a new folder in the runs directory)")
    parser.add_argument("--runs-dir", default=None, help=f"workspace (default: ${rf.RUNS_ROOT_ENV} or ./runs)")
    parser.add_argument("--val-csv", "--val-data", dest="val_data", default=None,
                        help="validation data on which the clip rule and threshold are chosen "
                             "(max balanced accuracy); without it the detector's default rule is used")
    parser.add_argument("--threshold", type=float, default=None,
                        help="SPEECH when the clip score >= this (default 0.5; not with --val-csv, which chooses it)")
    for detector in registry.detectors().values():
        for option in detector.options:
            parser.add_argument(option.flag, dest=option.name, type=option.type, default=option.default,
                                choices=option.choices, help=f"{detector.name} only: {option.help}")
    parser.add_argument("--max-seconds", type=float, default=DEFAULT_MAX_SECONDS,
                        help="score only the first this many seconds of each clip (default 30)")


def baseline_main(args: argparse.Namespace) -> int:
    try:
        run_dir = rf.resolve_in_root(rf.runs_root(args.runs_dir), args.name)
    except rf.RunFolderError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    options = {option.name: getattr(args, option.name) for option in registry.detector(args.method).options}
    try:
        run_baseline(args.method, args.test_csv, run_dir, threshold=args.threshold, max_seconds=args.max_seconds,
                     val_data=args.val_data, **options)
    except (rf.RunFolderError, ValueError) as exc:  # DataError and AudioError are ValueErrors
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except StopRequested as exc:
        print(f"cancelled: {exc}", file=sys.stderr)
        return 3  # as `train`: the run did not succeed
    except Exception:  # noqa: BLE001 - the failure is in status.json; show the trace to the log
        traceback.print_exc()
        return 1
    print(f"baseline {args.method} written to {run_dir}")
    return 0
