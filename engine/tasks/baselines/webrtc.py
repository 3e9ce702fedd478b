"""WebRTC VAD as a baseline detector.

`webrtcvad` (Google's WebRTC GMM detector) decides per 30 ms frame of 16-bit PCM, at
aggressiveness 3 by default. Clip score = the fraction of frames it calls voiced.
"""

from __future__ import annotations

import numpy as np

from engine.data.audio import SAMPLE_RATE
from engine.tasks.baselines.registry import Detector, Option, register, version

DEFAULT_AGGRESSIVENESS = 3
WEBRTC_FRAME_MS = 30


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


WEBRTC = register(Detector(
    name="webrtc", label="WebRTC VAD", reduction="fraction of 30 ms frames WebRTC VAD calls voiced",
    clip_score=lambda samples, settings: webrtc_clip_score(samples, settings["aggressiveness"]),
    backend=lambda: f"webrtcvad {version('webrtcvad-wheels')}",
    options=(Option("aggressiveness", int, DEFAULT_AGGRESSIVENESS, choices=(0, 1, 2, 3),
                    help="0 (least) to 3 (most aggressive at rejecting non-speech)"),),
    constants={"frame_ms": WEBRTC_FRAME_MS}, packages=("webrtcvad-wheels",)))
