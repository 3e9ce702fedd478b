"""Audio decoding: any file soundfile reads (wav, flac, ogg, mp3) -> float32 mono 16 kHz.

The model family's feature extractor expects 16 kHz mono and its encoder sees at most 30 s, so
every path into the model goes through `load_audio` (files) or `decode_bytes` (uploads).
Longer clips are truncated and say so in `AudioInfo.truncated`; a file that cannot be used
raises `AudioError` naming the file and the reason. numpy, soundfile and soxr only.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import soundfile as sf
import soxr

from engine.models import DEFAULT_FAMILY

SAMPLE_RATE = DEFAULT_FAMILY.sample_rate
DEFAULT_MAX_SECONDS = DEFAULT_FAMILY.max_audio_seconds
# The fewest samples the encoder turns into one audio token (321 at 16 kHz: 3 mel frames); shorter
# clips give no token and scoring then fails, so they are refused after resampling.
MIN_SAMPLES = next(n for n in range(1, DEFAULT_FAMILY.max_audio_samples) if DEFAULT_FAMILY.audio_tokens(n) >= 1)
# Extensions treated as audio when a folder is scanned (soundfile decodes all of them).
AUDIO_EXTENSIONS = frozenset({".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".au"})


class AudioError(ValueError):
    """An audio file or upload that cannot be used; the message names it and says why."""

    def __init__(self, source: str | Path, reason: str):
        self.source = str(source)
        self.reason = reason
        super().__init__(f"{source}: {reason}")


@dataclass(frozen=True)
class AudioInfo:
    """What the decoder found before converting to 16 kHz mono."""

    original_sr: int
    channels: int
    original_seconds: float
    truncated: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_audio(path: str | Path, max_seconds: float | None = DEFAULT_MAX_SECONDS) -> tuple[np.ndarray, AudioInfo]:
    """Decode a file to float32 mono 16 kHz, truncated to `max_seconds` (None: no limit)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise AudioError(path, "file not found")
    if path.is_dir():
        raise AudioError(path, "is a folder, not an audio file")
    if path.stat().st_size == 0:
        raise AudioError(path, "file is empty (0 bytes)")
    with open(path, "rb") as fh:
        return _decode(fh, path, max_seconds)


def decode_bytes(data: bytes, name: str = "upload",
                 max_seconds: float | None = DEFAULT_MAX_SECONDS) -> tuple[np.ndarray, AudioInfo]:
    """Decode an uploaded file's bytes; `name` (the file name) only appears in errors."""
    if not data:
        raise AudioError(name, "file is empty (0 bytes)")
    return _decode(io.BytesIO(data), name, max_seconds)


def _decode(fileobj: BinaryIO, source: str | Path, max_seconds: float | None) -> tuple[np.ndarray, AudioInfo]:
    if max_seconds is not None and not max_seconds > 0:
        raise ValueError(f"max_seconds must be > 0 (got {max_seconds})")
    try:
        with sf.SoundFile(fileobj) as handle:
            original_sr, channels, frames = handle.samplerate, handle.channels, handle.frames
            # Read no more than we keep: a 2-hour file must not be decoded to use 30 s of it.
            limit = frames if max_seconds is None else min(frames, int(np.ceil(max_seconds * original_sr)))
            samples = handle.read(frames=limit, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, sf.SoundFileError, RuntimeError, TypeError) as exc:
        detail = getattr(exc, "error_string", None) or str(exc)  # libsndfile's own words, no file repr
        raise AudioError(source, f"not an audio file soundfile can decode ({detail})") from None
    if samples.size == 0 or original_sr <= 0:
        raise AudioError(source, "contains no audio samples")
    if not np.isfinite(samples).all():
        raise AudioError(source, "contains NaN or infinite samples")
    mono = samples.mean(axis=1) if channels > 1 else samples[:, 0]
    if original_sr != SAMPLE_RATE:
        mono = soxr.resample(mono, original_sr, SAMPLE_RATE, quality="HQ")
    if mono.size < MIN_SAMPLES:  # checked after resampling: 1 sample at 44.1 kHz becomes none at 16 kHz
        raise AudioError(source, f"too short: {frames} sample(s) at {original_sr} Hz give {mono.size} at "
                                 f"{SAMPLE_RATE} Hz; the model needs at least {MIN_SAMPLES} "
                                 f"({1000 * MIN_SAMPLES / SAMPLE_RATE:g} ms)")
    original_seconds = frames / original_sr
    truncated = max_seconds is not None and original_seconds > max_seconds
    if max_seconds is not None:
        mono = mono[: int(round(max_seconds * SAMPLE_RATE))]
    info = AudioInfo(original_sr=int(original_sr), channels=int(channels),
                     original_seconds=float(original_seconds), truncated=bool(truncated))
    return np.ascontiguousarray(mono, dtype=np.float32), info
