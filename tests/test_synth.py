"""Offline synthesis: espeak-ng speech, non-speech generators and the reproducible demo set."""

from __future__ import annotations

import csv
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from engine.data import synth
from engine.data.manifests import load_clips


def band_power(samples: np.ndarray, low: float, high: float, sr: int = synth.SAMPLE_RATE) -> float:
    spectrum = np.abs(np.fft.rfft(samples)) ** 2
    freqs = np.fft.rfftfreq(samples.size, 1 / sr)
    return float(spectrum[(freqs >= low) & (freqs < high)].mean())


def dominant_hz(samples: np.ndarray, sr: int = synth.SAMPLE_RATE) -> float:
    return float(np.fft.rfftfreq(samples.size, 1 / sr)[np.argmax(np.abs(np.fft.rfft(samples)))])


def file_bytes(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def read_rows(manifest: Path) -> list[dict]:
    with open(manifest, newline="") as fh:
        return list(csv.DictReader(fh))


# ---------------------------------------------------------------------- speech

def test_speak_gives_16k_float_speech_in_several_voices():
    for voice in ("en-us", "en+m3", "de", "fr"):
        samples = synth.speak("The train leaves at seven.", voice=voice)
        assert samples.dtype == np.float32 and samples.ndim == 1
        assert 0.8 * synth.SAMPLE_RATE < samples.size < 4 * synth.SAMPLE_RATE
        assert 0.05 < np.max(np.abs(samples)) <= 1.0
        # Voiced speech: most energy between 100 Hz and 4 kHz.
        assert band_power(samples, 100, 4000) > 10 * band_power(samples, 6000, 8000)
    slow = synth.speak("The train leaves at seven.", rate=100)
    fast = synth.speak("The train leaves at seven.", rate=300)
    assert slow.size > 1.5 * fast.size


def test_speak_rejects_bad_arguments():
    with pytest.raises(ValueError, match="no voice 'xx-nonsense'"):
        synth.speak("hello", voice="xx-nonsense")
    with pytest.raises(ValueError, match="needs some text"):
        synth.speak("   ")
    with pytest.raises(ValueError, match="rate"):
        synth.speak("hello", rate=5)


def test_fresh_process_speech_is_reproducible():
    requests = [{"text": "Please close the window.", "voice": "en-us+f3", "rate": 160, "pitch": 40, "seed": 7},
                {"text": "Il a plu toute la nuit.", "voice": "fr", "rate": 175, "pitch": 50, "seed": 8}]
    first, second = synth.speak_in_fresh_process(requests), synth.speak_in_fresh_process(requests)
    assert all(np.array_equal(a, b) for a, b in zip(first, second))
    assert len(first) == 2 and first[0].size > 0


# ---------------------------------------------------------------------- generators

def test_generators_are_seeded_and_bounded():
    for kind in synth.NONSPEECH_KINDS:
        a = synth.nonspeech_sound(kind, 0.5, np.random.default_rng(3))
        b = synth.nonspeech_sound(kind, 0.5, np.random.default_rng(3))
        c = synth.nonspeech_sound(kind, 0.5, np.random.default_rng(4))
        assert a.size == 8000 and np.array_equal(a, b), kind
        assert np.all(np.isfinite(a)) and np.max(np.abs(a)) == pytest.approx(1.0), kind
        if kind not in ("chirp",):  # a chirp has no randomness beyond its chosen range
            assert not np.array_equal(a, c), kind
    with pytest.raises(ValueError, match="unknown non-speech kind"):
        synth.nonspeech_sound("birdsong", 1.0, np.random.default_rng(0))


def test_generators_have_the_intended_spectra():
    rng = np.random.default_rng(0)
    white, pink, brown = (synth.coloured_noise(2.0, c, rng) for c in ("white", "pink", "brown"))
    tilt = [band_power(x, 100, 200) / band_power(x, 4000, 8000) for x in (white, pink, brown)]
    assert tilt[0] < 2 and 10 < tilt[1] < 100 and tilt[2] > 500  # flat, 1/f, 1/f^2
    assert dominant_hz(synth.tone(1.0, [440.0], rng)) == pytest.approx(440, abs=1)
    assert dominant_hz(synth.mains_hum(1.0, rng, fundamental_hz=60.0)) == pytest.approx(60, abs=1)
    sweep = synth.chirp(1.0, 200.0, 4000.0)
    assert dominant_hz(sweep[:1600]) < 700 < 3000 < dominant_hz(sweep[-1600:])
    clicks = synth.click_train(1.0, 5.0, rng)
    assert np.mean(np.abs(clicks) > 0.05) < 0.1  # mostly silence between bursts


# ---------------------------------------------------------------------- dataset

def test_make_dataset_is_balanced_reproducible_and_loadable(tmp_path):
    first = synth.make_dataset(tmp_path / "a", n_train=8, n_test=6, n_val=4, seed=1, min_s=0.5, max_s=1.0)
    synth.make_dataset(tmp_path / "b", n_train=8, n_test=6, n_val=4, seed=1, min_s=0.5, max_s=1.0)
    synth.make_dataset(tmp_path / "c", n_train=8, n_test=6, n_val=4, seed=2, min_s=0.5, max_s=1.0)
    assert set(first) == {"train", "test", "val"}
    assert file_bytes(tmp_path / "a") == file_bytes(tmp_path / "b")
    assert file_bytes(tmp_path / "a") != file_bytes(tmp_path / "c")
    assert (tmp_path / "a" / "README.txt").read_text().startswith("Synthetic demo data")

    for split, n in (("train", 8), ("test", 6), ("val", 4)):
        rows = read_rows(first[split])
        assert list(rows[0]) == list(synth.MANIFEST_COLUMNS)
        assert sum(r["label"] == "SPEECH" for r in rows) == sum(r["label"] == "NONSPEECH" for r in rows) == n // 2
        for row in rows:
            info = sf.info(tmp_path / "a" / row["path"])
            assert info.samplerate == 16000 and info.channels == 1 and info.subtype == "PCM_16"
            assert int(row["duration_ms"]) == round(info.frames / 16)
            assert 500 <= int(row["duration_ms"]) <= 1000
            assert bool(row["voice"]) == (row["label"] == "SPEECH")
            assert (row["snr_db"] != "") == (row["condition"] == "noisy_speech")
        clips, report = load_clips(first[split])
        assert len(clips) == report.n_clips == n and not report.bad_files


def test_default_dataset_size_balance_and_speed(tmp_path):
    started = time.perf_counter()
    manifests = synth.make_dataset(tmp_path / "demo")
    elapsed = time.perf_counter() - started
    assert elapsed < 10, f"make_dataset took {elapsed:.1f} s for 128 clips"
    train, test = read_rows(manifests["train"]), read_rows(manifests["test"])
    assert len(train) == 96 and sum(r["label"] == "SPEECH" for r in train) == 48
    assert len(test) == 32 and sum(r["label"] == "SPEECH" for r in test) == 16
    voices = {r["voice"] for r in train + test if r["voice"]}
    conditions = {r["condition"] for r in train + test}
    assert set(synth.SPEECH_VOICES) <= voices
    assert set(synth.NONSPEECH_KINDS) | {"clean_speech", "noisy_speech"} <= conditions
    # The test split has its own random stream: it does not change when the training set grows.
    synth.make_dataset(tmp_path / "bigger", n_train=40)
    assert file_bytes(tmp_path / "demo" / "test") == file_bytes(tmp_path / "bigger" / "test")


def test_make_dataset_protects_other_folders_and_regenerates_its_own(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    with pytest.raises(ValueError, match="not empty and not a synthetic dataset folder"):
        synth.make_dataset(tmp_path / "mine", n_train=2, n_test=2)
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"
    out = tmp_path / "demo"
    synth.make_dataset(out, n_train=6, n_test=4)
    synth.make_dataset(out, n_train=2, n_test=2)
    assert len(list((out / "train").rglob("*.wav"))) == 2  # no stale clips from the larger set
    with pytest.raises(ValueError, match="min_s <= max_s"):
        synth.make_dataset(tmp_path / "x", min_s=2.0, max_s=1.0)


def test_write_wav_multichannel_fixture(tmp_path):
    path = synth.write_wav(tmp_path / "st.wav", np.zeros(441), sr=44100, channels=2)
    info = sf.info(path)
    assert (info.samplerate, info.channels, info.frames) == (44100, 2, 441)
