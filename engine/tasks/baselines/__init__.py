"""Classic voice-activity detectors as baseline runs beside the fine-tuned models.

    python -m engine baseline --method silero|webrtc --test-csv MANIFEST --name NAME
                              [--runs-dir DIR] [--threshold T] [--aggressiveness 0-3]

Detectors judge short frames; a clip needs one score, so each detector documents its reduction
(stored in config.json and in the evaluation's meta). Each detector is one module of this
package that registers itself (registry.py): silero.py (max frame probability), webrtc.py
(fraction of voiced frames). The --method choices and the detector-specific flags come from
the registry.

SPEECH when score >= threshold (default 0.5); margin = score - threshold; p_speech = score.
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
from engine.runs.lifecycle import StopRequested, run_lifecycle
from engine.runs.predictions import make_record, write_evaluation
from engine.tasks.baselines import registry
from engine.tasks.baselines.registry import Detector, Option, register  # noqa: F401 (the API a detector uses)

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

def run_baseline(method: str, test_data: str | Path, run_dir: str | Path, threshold: float = DEFAULT_THRESHOLD,
                 max_seconds: float = DEFAULT_MAX_SECONDS, label_words: list[str] | None = None,
                 **options: Any) -> Path:
    """Score every clip of `test_data` with the detector `method` into the new run folder `run_dir`.

    `options` are detector settings (webrtc: aggressiveness); those of other detectors are
    ignored, names no detector declares are refused. Refuses an existing folder. Writes
    config.json, status.json (running, then succeeded or failed with the error),
    environment.json and evaluations/test/. Returns run_dir.
    """
    detector = registry.detector(method)
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

    settings: dict[str, Any] = {"method": method, "threshold": float(threshold), "reduction": detector.reduction,
                                "test_data": str(Path(test_data).expanduser().resolve()),
                                "max_clip_seconds": max_seconds, **values, **detector.constants}
    config = {"schema_version": rf.SCHEMA_VERSION, "kind": rf.KIND_BASELINE, "label": detector.label, **settings}
    with run_lifecycle(run_dir, rf.KIND_BASELINE, config=config, log=False, interruptible=True) as run:
        records, skipped, report = _score_clips(test_data, lambda samples: detector.clip_score(samples, values),
                                                float(threshold), max_seconds, label_words)
        backend = detector.backend()
        run.write_environment(_environment(backend))
        meta = {"kind": rf.KIND_BASELINE, "label": detector.label, **settings, "backend": backend,
                "skipped": skipped, "data": report}
        write_evaluation(run_dir, EVALUATION_NAME, records, meta)
        run.set_result(clip_count=len(records), skipped_count=len(skipped))
    if run.state == rf.CANCELLED:
        raise StopRequested(f"baseline {run_dir.name} cancelled before it finished")
    return run_dir


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
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                        help="SPEECH when the clip score >= this (default 0.5)")
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
                     **options)
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
