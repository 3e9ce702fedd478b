"""Offline audio synthesis: espeak-ng speech, non-speech generators and the demo dataset.

Speech comes from the libespeak-ng that the `espeakng-loader` wheel ships (with its voice
data), driven through ctypes, so nothing is downloaded. espeak-ng keeps some synthesis state
(pitch flutter, wave phase) in C statics for the life of the process, so `speak` can differ
slightly (a few samples longer or shorter) between two calls with the same text;
`make_dataset` therefore synthesises each split's speech in a fresh subprocess, which makes
a dataset bit-for-bit reproducible from its seed.
Everything random goes through numpy.random.default_rng. numpy, soundfile and soxr only.

espeak-ng is GPL-3; it is used as a separate library, and the generated data is synthetic.
"""

from __future__ import annotations

import csv
import ctypes
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import soxr

from engine.data.audio import SAMPLE_RATE
from engine.labels import NONSPEECH, SPEECH

# Two styles of data set. "plain" (the default; the tests' pinned losses were measured on it):
# espeak voices in silence or coloured noise vs noise, tones, chirps, clicks, hum. "varied" (the
# demo): more voices, rates and pitches, speech over everyday backgrounds, music and environmental
# sounds, and one recording chain (channel, room, level, noise floor) drawn alike for both classes.
STYLES = ("plain", "varied")

# Voices of the plain set: languages and variants, so "speech" is not one speaker's timbre.
SPEECH_VOICES = ("en-us", "en+m3", "en-us+f3", "en+f2", "de", "fr", "es", "it")
SPEECH_RATES = (140, 160, 175, 190, 210)
SPEECH_SNRS_DB = (0, 5, 10, 20)
NOISY_SPEECH_FRACTION = 0.4
# Just-intonation major, minor, open-fifth and major-seventh chords.
_CHORD_RATIOS = ((1, 5 / 4, 3 / 2), (1, 6 / 5, 3 / 2), (1, 3 / 2, 2), (1, 5 / 4, 3 / 2, 15 / 8))
NONSPEECH_KINDS = ("white_noise", "pink_noise", "brown_noise", "tone", "chord", "chirp", "clicks", "hum")

# The varied set: espeak-ng variants (male, female, Klatt, old voices) in five languages; every
# voice appears in a split of 32 or more speech clips.
VARIED_SPEECH_VOICES = SPEECH_VOICES + ("en-us+m1", "en+f4", "en-us+klatt4", "en+grandpa", "de+f1", "fr+m4",
                                        "es+f5", "it+klatt2")
VARIED_RATE_RANGE = (120, 250)  # words per minute, drawn uniformly
VARIED_PITCH_RANGE = (20, 80)
VARIED_SNRS_DB = (0, 5, 10, 15, 20)
VARIED_NOISY_SPEECH_FRACTION = 0.5
# What noisy speech is mixed with: noise, and the non-speech of real rooms and streets.
SPEECH_BACKGROUNDS = ("white_noise", "pink_noise", "brown_noise", "hum", "music", "rain", "wind", "traffic")
VARIED_NONSPEECH_KINDS = NONSPEECH_KINDS + ("music", "drums", "noise_bursts", "rain", "wind", "traffic")
# The recording channel, drawn alike for both classes so that it never gives the class away:
# full band, a telephone line (300-3400 Hz, a little saturation) or a 4-6 kHz low-pass.
CHANNELS = ("full", "telephone", "lowpass")
_CHANNEL_WEIGHTS = (0.55, 0.25, 0.2)
REVERB_FRACTION = 0.3
LEVEL_CHANGE_FRACTION = 0.3
LEVEL_RANGE_DBFS = (-40.0, -14.0)  # clip RMS
NOISE_FLOOR_DBFS = (-75.0, -55.0)  # RMS of the room-noise floor
NOISE_FLOOR_COLOURS = ("white", "pink", "brown")
LAYERED_NONSPEECH_FRACTION = 0.25  # a second sound underneath, as in real scenes

SENTENCES = {
    "en": ["The train leaves at seven.", "Please close the window.", "My sister plays the cello.",
           "It rained all night long.", "Where did you park the car?", "The soup is still warm.",
           "We walked along the river.", "Turn left at the bakery.", "Nobody answered the phone.",
           "The meeting starts soon."],
    "de": ["Der Zug fährt um sieben.", "Bitte mach das Fenster zu.", "Es hat die ganze Nacht geregnet.",
           "Wo ist der Bahnhof?", "Die Suppe ist noch warm.", "Wir gehen am Fluss spazieren."],
    "fr": ["Le train part à sept heures.", "Ferme la fenêtre, s'il te plaît.", "Il a plu toute la nuit.",
           "Où est la gare?", "La soupe est encore chaude.", "Nous marchons le long de la rivière."],
    "es": ["El tren sale a las siete.", "Cierra la ventana, por favor.", "Llovió toda la noche.",
           "¿Dónde está la estación?", "La sopa todavía está caliente.", "Caminamos junto al río."],
    "it": ["Il treno parte alle sette.", "Chiudi la finestra, per favore.", "Ha piovuto tutta la notte.",
           "Dov'è la stazione?", "La zuppa è ancora calda.", "Camminiamo lungo il fiume."],
}

MANIFEST_COLUMNS = ("path", "label", "duration_ms", "snr_db", "condition", "voice", "channel")
README_NAME = "README.txt"
_README_MARKER = "Synthetic demo data"
_README = {
    "plain": f"""{_README_MARKER} for the Qwen2-Audio SPEECH / NONSPEECH dashboard.

Made offline by engine.data.synth.make_dataset: speech is espeak-ng text-to-speech in several
voices and languages (some mixed with noise at the SNR in snr_db); non-speech is generated
noise (white, pink, brown), tones, chords, chirps, click trains and mains hum. It exists to
try the tools end to end; it says nothing about real recordings. Regenerating with the same
seed gives the same files bit for bit.

Manifests: train.csv, test.csv (and val.csv), columns {", ".join(MANIFEST_COLUMNS)}.
""",
    "varied": f"""{_README_MARKER} for the Qwen2-Audio SPEECH / NONSPEECH dashboard.

Made offline by engine.data.synth.make_dataset(style="varied"): speech is espeak-ng text-to-speech
in 16 voices and 5 languages at varied rates and pitches (half of it mixed at the SNR in snr_db
with noise, hum, music, rain, wind or traffic); non-speech is generated noise (white, pink,
brown), tones, chords, chirps, click trains, mains hum, music (melodies, chords, drums), noise
bursts, rain, wind and traffic. Both classes pass through the same channels (full band,
telephone, low-pass; column channel), some rooms' reverberation, loudness from -40 to -14 dBFS
with changes within a clip, and a room-noise floor. It exists to try the tools end to end; it
says little about real recordings. Regenerating with the same seed gives the same files bit for bit.

Manifests: train.csv, test.csv (and val.csv), columns {", ".join(MANIFEST_COLUMNS)}.
""",
}

_REPO_ROOT = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------- espeak-ng speech

class _Espeak:
    """The process-wide espeak-ng library, initialised once; every call holds the lock."""

    _AUDIO_OUTPUT_SYNCHRONOUS = 2
    _INITIALIZE_DONT_EXIT = 0x8000
    _POS_CHARACTER = 1
    _CHARS_UTF8 = 1
    _PARAM_RATE, _PARAM_PITCH = 1, 3

    def __init__(self) -> None:
        import espeakng_loader

        self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
        self.lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        self.lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        self.lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        self.lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        self.lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                          ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        data_path = espeakng_loader.get_data_path().encode()
        self.sample_rate = self.lib.espeak_Initialize(
            self._AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path, self._INITIALIZE_DONT_EXIT)
        if self.sample_rate <= 0:
            raise RuntimeError(f"espeak-ng failed to initialise with data at {data_path.decode()}")
        self._chunks: list[np.ndarray] = []
        callback_type = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
        self._callback = callback_type(self._collect)  # kept referenced: C holds only a pointer
        self.lib.espeak_SetSynthCallback(self._callback)

    def _collect(self, wav, n_samples, _events) -> int:
        if n_samples > 0 and wav:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n_samples,)).copy())
        return 0  # 0 = continue synthesis

    def synthesize(self, text: str, voice: str, rate: int, pitch: int, seed: int | None) -> np.ndarray:
        """int16 samples at self.sample_rate."""
        if seed is not None:  # breathy voices (f2, f3, ...) add noise; espeak seeds it from the clock
            self.lib.espeak_ng_SetRandSeed(int(seed) % (2**31))
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise ValueError(f"espeak-ng has no voice {voice!r} (e.g. {', '.join(SPEECH_VOICES)})")
        self.lib.espeak_SetParameter(self._PARAM_RATE, int(rate), 0)
        self.lib.espeak_SetParameter(self._PARAM_PITCH, int(pitch), 0)
        encoded = text.encode("utf-8") + b"\0"
        self._chunks = []
        status = self.lib.espeak_Synth(encoded, len(encoded), 0, self._POS_CHARACTER, 0,
                                       self._CHARS_UTF8, None, None)
        self.lib.espeak_Synchronize()
        if status != 0:
            raise RuntimeError(f"espeak-ng could not synthesise {text!r} (error {status})")
        return np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)


_ESPEAK: _Espeak | None = None
_ESPEAK_LOCK = threading.Lock()


def speak(text: str, voice: str = "en-us", rate: int = 175, pitch: int = 50, seed: int | None = None) -> np.ndarray:
    """Text to float32 mono 16 kHz speech with espeak-ng (rate in words/min, pitch 0-99).

    `seed` fixes espeak-ng's own noise generator (breath noise of some voices), which it
    otherwise seeds from the clock at start-up.
    """
    global _ESPEAK
    if not str(text).strip():
        raise ValueError("speak() needs some text")
    if not 80 <= int(rate) <= 450:
        raise ValueError(f"rate must be 80-450 words per minute (got {rate})")
    if not 0 <= int(pitch) <= 99:
        raise ValueError(f"pitch must be 0-99 (got {pitch})")
    with _ESPEAK_LOCK:
        if _ESPEAK is None:
            _ESPEAK = _Espeak()
        pcm = _ESPEAK.synthesize(str(text), voice, rate, pitch, seed)
        source_rate = _ESPEAK.sample_rate
    samples = pcm.astype(np.float32) / 32768.0
    return soxr.resample(samples, source_rate, SAMPLE_RATE, quality="HQ").astype(np.float32)


def speak_in_fresh_process(requests: list[dict[str, Any]]) -> list[np.ndarray]:
    """`speak(**request)` for each request, in a new interpreter: reproducible bit for bit."""
    with tempfile.TemporaryDirectory(prefix="synth-") as tmp:
        request_file, output_file = Path(tmp) / "requests.json", Path(tmp) / "speech.npz"
        request_file.write_text(json.dumps(requests), encoding="utf-8")
        python_path = os.pathsep.join(filter(None, [str(_REPO_ROOT), os.environ.get("PYTHONPATH")]))
        env = dict(os.environ, PYTHONPATH=python_path)
        # -P: the current folder must not shadow this engine package.
        command = [sys.executable, "-P", "-c",
                   "import sys; from engine.data.synth import _speech_worker; _speech_worker(sys.argv[1], sys.argv[2])",
                   str(request_file), str(output_file)]
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
        if done.returncode != 0:
            raise RuntimeError(f"speech synthesis subprocess failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
        with np.load(output_file) as arrays:
            return [arrays[f"clip{i}"] for i in range(len(requests))]


def _synthesize_in_fresh_process(plan: list[dict[str, Any]]) -> list[np.ndarray]:
    """synthesize_clips(plan) in a new interpreter (as speak_in_fresh_process does for speech)."""
    with tempfile.TemporaryDirectory(prefix="synth-") as tmp:
        plan_file, output_file = Path(tmp) / "plan.json", Path(tmp) / "clips.npz"
        plan_file.write_text(json.dumps(plan), encoding="utf-8")
        python_path = os.pathsep.join(filter(None, [str(_REPO_ROOT), os.environ.get("PYTHONPATH")]))
        command = [sys.executable, "-P", "-c",
                   "import sys; from engine.data.synth import _clips_worker; _clips_worker(sys.argv[1], sys.argv[2])",
                   str(plan_file), str(output_file)]
        done = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=python_path),
                              timeout=600)
        if done.returncode != 0:
            raise RuntimeError(f"synthesis subprocess failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
        with np.load(output_file) as arrays:
            return [arrays[f"clip{i}"] for i in range(len(plan))]


def _clips_worker(plan_file: str, output_file: str) -> None:
    plan = json.loads(Path(plan_file).read_text(encoding="utf-8"))
    np.savez(output_file, **{f"clip{i}": clip for i, clip in enumerate(synthesize_clips(plan))})


def _speech_worker(request_file: str, output_file: str) -> None:
    requests = json.loads(Path(request_file).read_text(encoding="utf-8"))
    np.savez(output_file, **{f"clip{i}": speak(**request) for i, request in enumerate(requests)})


# ---------------------------------------------------------------------- non-speech generators

def coloured_noise(seconds: float, colour: str, rng: np.random.Generator, sr: int = SAMPLE_RATE) -> np.ndarray:
    """White, pink (1/f power) or brown (1/f^2 power) noise, peak-normalised."""
    exponents = {"white": 0.0, "pink": 1.0, "brown": 2.0}
    if colour not in exponents:
        raise ValueError(f"unknown noise colour {colour!r}; use {', '.join(exponents)}")
    n = _n_samples(seconds, sr)
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, d=1.0 / sr)
    freqs[0] = freqs[1] if n > 2 else 1.0  # no infinite gain at DC
    spectrum *= freqs ** (-exponents[colour] / 2.0)
    return _peak_normalise(np.fft.irfft(spectrum, n))


def tone(seconds: float, frequencies: list[float] | tuple[float, ...], rng: np.random.Generator,
         sr: int = SAMPLE_RATE, tremolo_hz: float = 0.0) -> np.ndarray:
    """A tone (one frequency) or chord (several), random phases, optional tremolo, soft edges."""
    t = np.arange(_n_samples(seconds, sr)) / sr
    phases = rng.uniform(0, 2 * np.pi, size=len(frequencies))
    signal = sum(np.sin(2 * np.pi * f * t + p) for f, p in zip(frequencies, phases))
    if tremolo_hz > 0:
        signal = signal * (0.75 + 0.25 * np.sin(2 * np.pi * tremolo_hz * t))
    return _peak_normalise(_fade(np.asarray(signal, dtype=np.float64), sr))


def chirp(seconds: float, start_hz: float, end_hz: float, sr: int = SAMPLE_RATE,
          logarithmic: bool = False) -> np.ndarray:
    """A frequency sweep from start_hz to end_hz (linear or logarithmic in frequency)."""
    n = _n_samples(seconds, sr)
    t = np.arange(n) / sr
    duration = n / sr
    if logarithmic:
        ratio = end_hz / start_hz
        phase = 2 * np.pi * start_hz * duration / np.log(ratio) * (ratio ** (t / duration) - 1)
    else:
        phase = 2 * np.pi * (start_hz * t + (end_hz - start_hz) * t ** 2 / (2 * duration))
    return _peak_normalise(_fade(np.sin(phase), sr))


def click_train(seconds: float, clicks_per_second: float, rng: np.random.Generator,
                sr: int = SAMPLE_RATE) -> np.ndarray:
    """Short decaying noise bursts at a jittered regular rate (a clock, a keyboard, a Geiger counter)."""
    n = _n_samples(seconds, sr)
    signal = np.zeros(n)
    burst_length = max(8, int(0.004 * sr))
    burst_envelope = np.exp(-np.arange(burst_length) / (burst_length / 5))
    period = sr / clicks_per_second
    position = rng.uniform(0, period)
    while position < n:
        start = int(position)
        burst = rng.standard_normal(burst_length) * burst_envelope * rng.uniform(0.5, 1.0)
        end = min(n, start + burst_length)
        signal[start:end] += burst[: end - start]
        position += period * rng.uniform(0.7, 1.3)
    return _peak_normalise(signal)


def mains_hum(seconds: float, rng: np.random.Generator, fundamental_hz: float = 50.0,
              sr: int = SAMPLE_RATE) -> np.ndarray:
    """Mains hum: a 50/60 Hz fundamental with decaying odd and even harmonics and a little hiss."""
    t = np.arange(_n_samples(seconds, sr)) / sr
    signal = sum((0.6 ** k) * np.sin(2 * np.pi * fundamental_hz * (k + 1) * t + rng.uniform(0, 2 * np.pi))
                 for k in range(6))
    signal = signal + 0.02 * rng.standard_normal(t.size)
    return _peak_normalise(_fade(np.asarray(signal), sr))


def music(seconds: float, rng: np.random.Generator, sr: int = SAMPLE_RATE) -> np.ndarray:
    """A melody of harmonic notes (plucked or sustained) over a held chord, at a random tempo."""
    n = _n_samples(seconds, sr)
    t = np.arange(n) / sr
    root = rng.uniform(110, 330)
    scale = np.array([0, 2, 4, 5, 7, 9, 11, 12])  # major scale, semitones
    beat_s = 60.0 / rng.uniform(70, 180)
    plucked = rng.random() < 0.5
    harmonics = rng.uniform(0.2, 0.7) ** np.arange(6)  # brighter or duller timbre
    signal = np.zeros(n)
    start = 0
    while start < n:
        length = min(n - start, int(beat_s * sr * rng.choice([0.5, 1.0, 1.0, 2.0])))
        f0 = 2 * root * 2 ** (rng.choice(scale) / 12)
        local = t[:length]
        note = sum(h * np.sin(2 * np.pi * f0 * (k + 1) * local) for k, h in enumerate(harmonics) if f0 * (k + 1) < sr / 2)
        envelope = np.exp(-local / rng.uniform(0.08, 0.4)) if plucked else np.minimum(1.0, local / 0.02)
        signal[start: start + length] += note * envelope
        start += length
    if rng.random() < 0.7:  # an accompanying chord
        ratios = _CHORD_RATIOS[int(rng.integers(len(_CHORD_RATIOS)))]
        signal = signal + 0.5 * np.max(np.abs(signal)) * tone(seconds, [root * r for r in ratios], rng, sr)
    if rng.random() < 0.4:
        signal = signal + 0.6 * np.max(np.abs(signal)) * drums(seconds, rng, sr)
    return _peak_normalise(_fade(signal, sr))


def drums(seconds: float, rng: np.random.Generator, sr: int = SAMPLE_RATE) -> np.ndarray:
    """A drum pattern: kick (a falling low sine), snare (a noise burst), hi-hat (a short high click)."""
    n = _n_samples(seconds, sr)
    step = int(sr * 60.0 / rng.uniform(80, 160) / 2)  # eighth notes
    pattern = rng.random((3, 8)) < np.array([[0.45], [0.3], [0.7]])
    pattern[0, 0] = True  # a kick on the one
    signal = np.zeros(n)
    kick_t = np.arange(int(0.15 * sr)) / sr
    kick = np.sin(2 * np.pi * (50 * kick_t + 60 * (1 - np.exp(-kick_t / 0.03)))) * np.exp(-kick_t / 0.05)
    snare_len, hat_len = int(0.12 * sr), int(0.03 * sr)
    for i, position in enumerate(range(0, n, step)):
        sounds = (kick, rng.standard_normal(snare_len) * np.exp(-np.arange(snare_len) / (0.03 * sr)),
                  np.diff(rng.standard_normal(hat_len + 1)) * np.exp(-np.arange(hat_len) / (0.006 * sr)))
        for voice, hit in enumerate(sounds):
            if pattern[voice, i % 8]:
                end = min(n, position + hit.size)
                signal[position:end] += hit[: end - position] * rng.uniform(0.6, 1.0)
    return _peak_normalise(signal)


def noise_bursts(seconds: float, rng: np.random.Generator, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Irregular bursts of filtered noise with sharp attacks (doors, footsteps, things set down)."""
    n = _n_samples(seconds, sr)
    signal = np.zeros(n)
    for _ in range(int(rng.integers(1, 6))):
        length = int(rng.uniform(0.02, 0.3) * sr)
        start = int(rng.integers(0, max(1, n - length)))
        colour = str(rng.choice(["white", "pink", "brown"]))
        burst = coloured_noise(length / sr, colour, rng, sr) * np.exp(-np.arange(length) / (length / rng.uniform(2, 8)))
        end = min(n, start + length)
        signal[start:end] += burst[: end - start] * rng.uniform(0.3, 1.0)
    return _peak_normalise(signal)


def rain(seconds: float, rng: np.random.Generator, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Rain-like: many tiny random drops (high-passed clicks) over a bright hiss."""
    n = _n_samples(seconds, sr)
    drops = np.zeros(n)
    count = int(rng.uniform(100, 800) * n / sr)
    drops[rng.integers(0, n, count)] = rng.uniform(-1, 1, count)
    drop_shape = np.exp(-np.arange(int(0.002 * sr)) / (0.0005 * sr))
    drops = np.convolve(drops, drop_shape)[:n]
    drops = np.diff(np.concatenate([[0.0], drops]))  # high-pass: drops are bright
    hiss = band_limit(coloured_noise(seconds, "white", rng, sr), rng.uniform(300, 1000), sr / 2, sr)
    return _peak_normalise(drops / (np.max(np.abs(drops)) or 1.0) + rng.uniform(0.1, 0.5) * hiss)


def wind(seconds: float, rng: np.random.Generator, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Wind-like: low-passed noise whose loudness swells and falls slowly."""
    n = _n_samples(seconds, sr)
    t = np.arange(n) / sr
    base = band_limit(coloured_noise(seconds, "pink", rng, sr), 20.0, rng.uniform(400, 1500), sr)
    gust = 0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(0.2, 1.5) * t + rng.uniform(0, 2 * np.pi))
    return _peak_normalise(base * gust)


def traffic(seconds: float, rng: np.random.Generator, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Traffic-like: a low rumble with an engine's harmonics and a vehicle passing (swell and fall)."""
    n = _n_samples(seconds, sr)
    t = np.arange(n) / sr
    rumble = coloured_noise(seconds, "brown", rng, sr)
    engine_hz = rng.uniform(25, 60)
    engine = sum(0.5 ** k * np.sin(2 * np.pi * engine_hz * (k + 1) * t + rng.uniform(0, 2 * np.pi)) for k in range(5))
    passing = np.exp(-((t - rng.uniform(0, t[-1] + 1e-9)) / rng.uniform(0.3, 1.5)) ** 2)
    return _peak_normalise((rumble + 0.3 * engine / 2) * (0.3 + passing))


# ---------------------------------------------------------------------- channels and rooms

def band_limit(signal: np.ndarray, low_hz: float, high_hz: float, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Keep low_hz..high_hz (FFT mask with 50 Hz raised-cosine edges, so no ringing brick wall)."""
    spectrum = np.fft.rfft(signal)
    freqs = np.fft.rfftfreq(signal.size, d=1.0 / sr)
    edge = 50.0
    rise = np.clip((freqs - (low_hz - edge)) / edge, 0, 1)
    fall = np.clip(((high_hz + edge) - freqs) / edge, 0, 1)
    mask = (0.5 - 0.5 * np.cos(np.pi * rise)) * (0.5 - 0.5 * np.cos(np.pi * fall))
    return np.fft.irfft(spectrum * mask, signal.size)


def apply_channel(signal: np.ndarray, channel: str, rng: np.random.Generator, sr: int = SAMPLE_RATE) -> np.ndarray:
    """The sound as recorded through `channel` (one of CHANNELS)."""
    if channel == "full":
        return signal
    if channel == "telephone":
        drive = rng.uniform(1.0, 4.0)  # a little saturation (a cheap microphone), then the line's band
        peak = np.max(np.abs(signal)) or 1.0
        return band_limit(np.tanh(drive * signal / peak) / np.tanh(drive) * peak, 300.0, 3400.0, sr)
    if channel == "lowpass":
        return band_limit(signal, 0.0, rng.uniform(4000, 6000), sr)
    raise ValueError(f"unknown channel {channel!r}; use {', '.join(CHANNELS)}")


def reverberate(signal: np.ndarray, rng: np.random.Generator, sr: int = SAMPLE_RATE) -> np.ndarray:
    """A room: the direct sound plus an exponentially decaying noise tail (RT60 0.2-0.8 s)."""
    rt60 = rng.uniform(0.2, 0.8)
    length = int(rt60 * sr)
    tail = rng.standard_normal(length) * np.exp(-6.9 * np.arange(length) / length)
    response = np.concatenate([[1.0], rng.uniform(0.1, 0.4) * tail / np.sqrt(np.sum(tail ** 2))])
    size = 1 << int(np.ceil(np.log2(signal.size + response.size - 1)))  # a power of two: a fast FFT
    wet = np.fft.irfft(np.fft.rfft(signal, size) * np.fft.rfft(response, size), size)
    return wet[: signal.size]


def nonspeech_sound(kind: str, seconds: float, rng: np.random.Generator) -> np.ndarray:
    """One random sound of a VARIED_NONSPEECH_KINDS kind (NONSPEECH_KINDS are its plain subset)."""
    if kind.endswith("_noise"):
        return coloured_noise(seconds, kind.removesuffix("_noise"), rng)
    if kind == "tone":
        tremolo_hz = rng.uniform(2, 8) if rng.random() < 0.5 else 0.0
        return tone(seconds, [rng.uniform(150, 3000)], rng, tremolo_hz=tremolo_hz)
    if kind == "chord":
        root = rng.uniform(110, 440)
        ratios = _CHORD_RATIOS[int(rng.integers(len(_CHORD_RATIOS)))]
        return tone(seconds, [root * r for r in ratios], rng)
    if kind == "chirp":
        low, high = rng.uniform(100, 600), rng.uniform(1500, 6000)
        start, end = (low, high) if rng.random() < 0.5 else (high, low)
        return chirp(seconds, start, end, logarithmic=bool(rng.random() < 0.5))
    if kind == "clicks":
        return click_train(seconds, rng.uniform(2, 25), rng)
    if kind == "hum":
        return mains_hum(seconds, rng, fundamental_hz=float(rng.choice([50.0, 60.0])))
    generators = {"music": music, "drums": drums, "noise_bursts": noise_bursts, "rain": rain, "wind": wind,
                  "traffic": traffic}
    if kind in generators:
        return generators[kind](seconds, rng)
    raise ValueError(f"unknown non-speech kind {kind!r}; use {', '.join(VARIED_NONSPEECH_KINDS)}")


# ---------------------------------------------------------------------- the demo dataset

def make_dataset(out_dir: str | Path, n_train: int = 96, n_test: int = 32, n_val: int = 0, seed: int = 0,
                 min_s: float = 0.8, max_s: float = 2.0, style: str = "plain") -> dict[str, Path]:
    """Write a balanced synthetic SPEECH / NONSPEECH dataset; returns {split: manifest path}.

    Files: <out_dir>/<split>/<speech|nonspeech>/<split>_<nnnn>.wav (16 kHz, 16-bit) and
    <out_dir>/<split>.csv with columns path,label,duration_ms,snr_db,condition,voice,channel (paths
    relative to out_dir). Each split has ceil(n/2) speech and floor(n/2) non-speech clips and
    its own random stream, so the test set does not change with n_train. Same seed, same bytes.
    `style` is one of STYLES (see there).
    """
    out_dir = Path(out_dir).expanduser()
    sizes = {"train": int(n_train), "test": int(n_test), "val": int(n_val)}
    if sizes["train"] < 2 or sizes["test"] < 2 or sizes["val"] < 0:
        raise ValueError(f"need n_train >= 2, n_test >= 2, n_val >= 0 (got {sizes})")
    if not 0 < min_s <= max_s:
        raise ValueError(f"need 0 < min_s <= max_s (got {min_s}, {max_s})")
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}; use {', '.join(STYLES)}")
    _prepare_out_dir(out_dir, style)

    plans = {split: plan_clips(n, seed, split_index, min_s, max_s, style)
             for split_index, (split, n) in enumerate(sizes.items()) if n > 0}
    # One fresh speech process per split (run side by side): espeak-ng's carried-over state then
    # depends on that split alone, so the test set does not change with n_train.
    with ThreadPoolExecutor(max_workers=len(plans)) as pool:
        audio_by_split = dict(zip(plans, pool.map(synthesize_clips, plans.values())))

    manifests: dict[str, Path] = {}
    for split, plan in plans.items():
        rows = []
        for number, (item, samples) in enumerate(zip(plan, audio_by_split[split])):
            relative = f"{split}/{item['label'].lower()}/{split}_{number:04d}.wav"
            write_wav(out_dir / relative, samples)
            rows.append({"path": relative, "label": item["label"],
                         "duration_ms": int(round(1000 * samples.size / SAMPLE_RATE)),
                         "snr_db": "" if item.get("snr_db") is None else item["snr_db"],
                         "condition": item["condition"], "voice": item.get("voice", ""),
                         "channel": item["channel"]})
        manifests[split] = out_dir / f"{split}.csv"
        with open(manifests[split], "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
    return manifests


def synthesize_clips(plan: list[dict[str, Any]], processes: int = 1) -> list[np.ndarray]:
    """The audio of every item of a plan_clips() plan, in order.

    processes > 1 splits the plan into that many consecutive parts made side by side in fresh
    processes; the bytes depend on the plan and `processes` only (espeak-ng's state is per process).
    """
    if processes > 1 and len(plan) > 1:
        bounds = np.linspace(0, len(plan), min(processes, len(plan)) + 1).astype(int)
        parts = [plan[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
        with ThreadPoolExecutor(max_workers=len(parts)) as pool:
            return [clip for part in pool.map(_synthesize_in_fresh_process, parts) for clip in part]
    speech = iter(speak_in_fresh_process([item["speech"] for item in plan if "speech" in item]))
    clips = []
    for item in plan:
        rng = np.random.default_rng(item["seed"])
        clips.append(_speech_clip(next(speech), item, rng) if "speech" in item else _nonspeech_clip(item, rng))
    return clips


def dataset_style(out_dir: str | Path) -> str | None:
    """The style a synthetic dataset folder was made in (read from its README), None if not one."""
    readme = Path(out_dir) / README_NAME
    try:
        text = readme.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    return next((style for style, content in _README.items() if text == content), None)


def write_wav(path: str | Path, samples: np.ndarray, sr: int = SAMPLE_RATE, channels: int = 1,
              subtype: str = "PCM_16") -> Path:
    """Write samples (mono, repeated over `channels`) as a wav file; for fixtures and the demo."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.asarray(samples, dtype=np.float32)
    if data.ndim == 1 and channels > 1:
        data = np.repeat(data[:, None], channels, axis=1)
    sf.write(path, data, sr, subtype=subtype, format="WAV")
    return path


def _prepare_out_dir(out_dir: Path, style: str) -> None:
    """Create out_dir, or clear the splits of an earlier synthetic set; never touch other folders."""
    if out_dir.exists() and any(out_dir.iterdir()):
        readme = out_dir / README_NAME
        if not (readme.is_file() and readme.read_text(encoding="utf-8", errors="replace").startswith(_README_MARKER)):
            raise ValueError(f"{out_dir}: not empty and not a synthetic dataset folder; choose a new or empty folder")
        for split in ("train", "test", "val"):
            shutil.rmtree(out_dir / split, ignore_errors=True)
            (out_dir / f"{split}.csv").unlink(missing_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Written first: it marks the folder as ours even if generation is interrupted.
    (out_dir / README_NAME).write_text(_README[style], encoding="utf-8")


def plan_clips(n: int, seed: int, stream: int = 0, min_s: float = 0.8, max_s: float = 2.0,
               style: str = "plain") -> list[dict[str, Any]]:
    """Every random choice of n clips (a split), drawn up front from the stream [seed, stream],
    in manifest order: ceil(n/2) speech items and floor(n/2) non-speech items."""
    varied = style == "varied"
    speech_voices = VARIED_SPEECH_VOICES if varied else SPEECH_VOICES
    nonspeech_kinds = VARIED_NONSPEECH_KINDS if varied else NONSPEECH_KINDS
    rng = np.random.default_rng([seed, stream])
    n_speech = (n + 1) // 2
    # Permuted round-robin: every voice and sound kind appears when the split is large enough.
    voices = [speech_voices[i % len(speech_voices)]
              for i in rng.permutation(max(n_speech, len(speech_voices)))][:n_speech]
    kinds = [nonspeech_kinds[i % len(nonspeech_kinds)]
             for i in rng.permutation(max(n - n_speech, len(nonspeech_kinds)))]
    items: list[dict[str, Any]] = []
    for voice in voices:
        language = voice.split("+")[0].split("-")[0]
        noisy = rng.random() < (VARIED_NOISY_SPEECH_FRACTION if varied else NOISY_SPEECH_FRACTION)
        text = str(rng.choice(SENTENCES[language]))
        if varied:
            rate = int(rng.integers(VARIED_RATE_RANGE[0], VARIED_RATE_RANGE[1] + 1))
            pitch = int(rng.integers(VARIED_PITCH_RANGE[0], VARIED_PITCH_RANGE[1] + 1))
        else:
            rate, pitch = int(rng.choice(SPEECH_RATES)), int(rng.integers(30, 71))
        item = {"label": SPEECH, "voice": voice, "style": style,
                "speech": {"text": text, "voice": voice, "rate": rate, "pitch": pitch,
                           "seed": int(rng.integers(2**31))},
                "snr_db": int(rng.choice(VARIED_SNRS_DB if varied else SPEECH_SNRS_DB)) if noisy else None,
                "condition": "noisy_speech" if noisy else "clean_speech"}
        if varied:
            item["background"] = str(rng.choice(SPEECH_BACKGROUNDS)) if noisy else None
        items.append(item)
    for kind in kinds[: n - n_speech]:
        items.append({"label": NONSPEECH, "condition": kind, "style": style})
    for item in items:
        item["seconds"] = float(rng.uniform(min_s, max_s))
        item["channel"] = str(rng.choice(CHANNELS, p=_CHANNEL_WEIGHTS)) if varied else "full"
        item["seed"] = int(rng.integers(2**63))
    return [items[i] for i in rng.permutation(len(items))]


def _speech_clip(speech: np.ndarray, item: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
    voiced = np.flatnonzero(np.abs(speech) > 1e-3)
    if voiced.size:
        speech = speech[voiced[0]: voiced[-1] + 1]
    clip = _place(speech, item["seconds"], rng)
    if item.get("snr_db") is not None:
        if item["style"] == "varied":
            background = nonspeech_sound(item["background"], clip.size / SAMPLE_RATE, rng)
            speech_power = np.mean(speech[: clip.size] ** 2)
        else:
            background = coloured_noise(clip.size / SAMPLE_RATE, str(rng.choice(["white", "pink", "brown"])), rng)
            speech_power = np.mean(speech ** 2)
        background = background * np.sqrt(speech_power / (np.mean(background ** 2) * 10 ** (item["snr_db"] / 10)))
        clip = clip + background
    return _finish(clip, item, rng)


def _nonspeech_clip(item: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
    # Like speech, the sound may fill only part of the clip: silence alone must not give the class away.
    sound = nonspeech_sound(item["condition"], item["seconds"] * rng.uniform(0.6, 1.0), rng)
    clip = _place(sound, item["seconds"], rng)
    if item["style"] == "varied" and rng.random() < LAYERED_NONSPEECH_FRACTION:
        layer = nonspeech_sound(str(rng.choice(VARIED_NONSPEECH_KINDS)), item["seconds"], rng)
        clip = clip + layer * 10 ** (rng.uniform(-15, -3) / 20) * (np.sqrt(np.mean(clip ** 2)) /
                                                                      (np.sqrt(np.mean(layer ** 2)) or 1.0))
    return _finish(clip, item, rng)


def _place(sound: np.ndarray, seconds: float, rng: np.random.Generator) -> np.ndarray:
    """The sound at a random offset in a clip of `seconds` (cut when longer)."""
    n = _n_samples(seconds, SAMPLE_RATE)
    clip = np.zeros(n)
    sound = sound[:n]
    offset = int(rng.integers(0, n - sound.size + 1))
    clip[offset: offset + sound.size] = sound
    return clip


def _finish(clip: np.ndarray, item: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
    """The recording chain, the same for both classes, as float32 in [-1, 1].

    plain: a loudness of -32..-16 dBFS RMS and a faint white noise floor. varied: sometimes a
    room, the item's channel, a loudness of -40..-14 dBFS RMS (sometimes rising or falling by up
    to 12 dB within the clip), and a coloured room-noise floor at -75..-55 dBFS.
    """
    if item["style"] != "varied":
        rms = np.sqrt(np.mean(clip ** 2)) or 1.0
        clip = clip * (10 ** (rng.uniform(-32, -16) / 20) / rms)
        clip = clip + 10 ** (-65 / 20) * rng.standard_normal(clip.size)
        return np.clip(clip, -1.0, 1.0).astype(np.float32)
    if rng.random() < REVERB_FRACTION:
        clip = reverberate(clip, rng)
    clip = apply_channel(clip, item["channel"], rng)
    rms = np.sqrt(np.mean(clip ** 2)) or 1.0
    clip = clip * (10 ** (rng.uniform(*LEVEL_RANGE_DBFS) / 20) / rms)
    if rng.random() < LEVEL_CHANGE_FRACTION:
        change_db = rng.uniform(-12, 12)
        ramp = np.clip((np.arange(clip.size) / clip.size - rng.uniform(0, 0.7)) / rng.uniform(0.05, 0.3), 0, 1)
        clip = clip * 10 ** (change_db * ramp / 20)
    floor = coloured_noise(clip.size / SAMPLE_RATE, str(rng.choice(NOISE_FLOOR_COLOURS)), rng)
    floor = floor / (np.sqrt(np.mean(floor ** 2)) or 1.0) * 10 ** (rng.uniform(*NOISE_FLOOR_DBFS) / 20)
    return np.clip(clip + floor, -1.0, 1.0).astype(np.float32)


def _n_samples(seconds: float, sr: int) -> int:
    n = int(round(seconds * sr))
    if n <= 0:
        raise ValueError(f"duration must be positive (got {seconds} s)")
    return n


def _fade(signal: np.ndarray, sr: int, seconds: float = 0.01) -> np.ndarray:
    ramp = min(signal.size // 2, int(seconds * sr))
    if ramp > 0:
        window = np.linspace(0.0, 1.0, ramp)
        signal = signal.copy()
        signal[:ramp] *= window
        signal[-ramp:] *= window[::-1]
    return signal


def _peak_normalise(signal: np.ndarray) -> np.ndarray:
    peak = np.max(np.abs(signal)) if signal.size else 0.0
    return (signal / peak if peak > 0 else signal).astype(np.float64)
