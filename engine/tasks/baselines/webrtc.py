"""WebRTC VAD as a baseline detector.

`webrtcvad` (Google's WebRTC GMM detector) decides per 30 ms frame of 16-bit PCM, at
aggressiveness 3 by default. Without a validation split the clip score is the fraction of frames
it calls voiced; with one, that rule or "any voiced frame" and the threshold are chosen on it.
"""

from __future__ import annotations

import numpy as np

from engine.data.audio import SAMPLE_RATE
from engine.tasks.baselines.registry import ClipRule, Detector, Option, register, version

DEFAULT_AGGRESSIVENESS = 3
WEBRTC_FRAME_MS = 30


WEBRTC_RULES = (
    ClipRule("fraction", "fraction of 30 ms frames WebRTC VAD calls voiced", lambda frames: float(np.mean(frames))),
    ClipRule("any", "1 when WebRTC VAD calls any 30 ms frame voiced, else 0", lambda frames: float(np.max(frames))),
)


def webrtc_clip_score(samples: np.ndarray, aggressiveness: int = DEFAULT_AGGRESSIVENESS) -> float:
    """Fraction of 30 ms frames WebRTC VAD calls voiced (a clip shorter than one frame is padded)."""
    return WEBRTC_RULES[0].reduce(webrtc_frame_decisions(samples, aggressiveness))


def webrtc_frame_decisions(samples: np.ndarray, aggressiveness: int = DEFAULT_AGGRESSIVENESS) -> np.ndarray:
    """1.0 for each 30 ms frame WebRTC VAD calls voiced, else 0.0."""
    import webrtcvad

    vad = webrtcvad.Vad(int(aggressiveness))
    frame = SAMPLE_RATE * WEBRTC_FRAME_MS // 1000
    pcm = (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2")
    if pcm.size < frame:
        pcm = np.pad(pcm, (0, frame - pcm.size))
    n_frames = pcm.size // frame  # a partial last frame is dropped: webrtcvad takes whole frames only
    return np.array([vad.is_speech(pcm[i * frame:(i + 1) * frame].tobytes(), SAMPLE_RATE) for i in range(n_frames)],
                    dtype=np.float64)


WEBRTC = register(Detector(
    name="webrtc", label="WebRTC VAD", reduction=WEBRTC_RULES[0].description,
    clip_score=lambda samples, settings: webrtc_clip_score(samples, settings["aggressiveness"]),
    frame_scores=lambda samples, settings: webrtc_frame_decisions(samples, settings["aggressiveness"]),
    rules=WEBRTC_RULES,
    backend=lambda: f"webrtcvad {version('webrtcvad-wheels')}",
    options=(Option("aggressiveness", int, DEFAULT_AGGRESSIVENESS, choices=(0, 1, 2, 3),
                    help="0 (least) to 3 (most aggressive at rejecting non-speech)"),),
    constants={"frame_ms": WEBRTC_FRAME_MS}, packages=("webrtcvad-wheels",)))
