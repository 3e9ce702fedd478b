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


def test_environmental_and_music_generators_have_their_character():
    rng = np.random.default_rng(1)
    wind, traffic, rain = synth.wind(2.0, rng), synth.traffic(2.0, rng), synth.rain(2.0, rng)
    assert band_power(wind, 20, 500) > 100 * band_power(wind, 3000, 8000)  # wind and traffic rumble low
    assert band_power(traffic, 20, 300) > 100 * band_power(traffic, 3000, 8000)
    assert band_power(rain, 3000, 8000) > band_power(rain, 100, 300)  # rain drops are bright
    quarter = wind.size // 4
    loudness = [np.sqrt(np.mean(wind[i * quarter:(i + 1) * quarter] ** 2)) for i in range(4)]
    assert max(loudness) > 1.1 * min(loudness)  # gusts
    drums = synth.drums(2.0, rng)
    assert np.mean(np.abs(drums) > 0.05) < 0.6  # hits with decays between them
    bursts = synth.noise_bursts(2.0, rng)
    assert np.mean(np.abs(bursts) < 1e-9) > 0.2  # silence between bursts


def test_music_is_harmonic_notes():
    tune = synth.music(2.0, np.random.default_rng(5))
    spectrum = np.abs(np.fft.rfft(tune))
    # Tonal: a few spectral lines hold most of the energy, unlike noise.
    top = np.sort(spectrum ** 2)[::-1]
    assert top[:200].sum() > 0.5 * top.sum()
    noise = np.sort(np.abs(np.fft.rfft(synth.coloured_noise(2.0, "white", np.random.default_rng(5)))) ** 2)[::-1]
    assert noise[:200].sum() < 0.1 * noise.sum()


def test_channels_limit_the_band_and_keep_the_length():
    rng = np.random.default_rng(2)
    white = synth.coloured_noise(1.0, "white", rng)
    phone = synth.apply_channel(white, "telephone", rng)
    assert phone.size == white.size and np.max(np.abs(phone)) <= np.max(np.abs(white)) + 1e-9
    assert band_power(phone, 500, 3000) > 1000 * band_power(phone, 4000, 8000)
    assert band_power(phone, 500, 3000) > 1000 * band_power(phone, 20, 150)
    lowpass = synth.apply_channel(white, "lowpass", rng)
    assert band_power(lowpass, 100, 3000) > 1000 * band_power(lowpass, 6500, 8000)
    assert np.array_equal(synth.apply_channel(white, "full", rng), white)
    with pytest.raises(ValueError, match="unknown channel"):
        synth.apply_channel(white, "radio", rng)
    wet = synth.reverberate(synth.click_train(1.0, 2.0, rng), rng)
    assert wet.size == 16000 and np.mean(np.abs(wet) > 1e-3) > 0.1  # the clicks now ring on


# ---------------------------------------------------------------------- dataset

def test_make_dataset_is_balanced_reproducible_and_loadable(tmp_path):
    first = synth.make_dataset(tmp_path / "a", n_train=8, n_test=6, n_val=4, seed=1, min_s=0.5, max_s=1.0)
    synth.make_dataset(tmp_path / "b", n_train=8, n_test=6, n_val=4, seed=1, min_s=0.5, max_s=1.0)
    synth.make_dataset(tmp_path / "c", n_train=8, n_test=6, n_val=4, seed=2, min_s=0.5, max_s=1.0)
    assert set(first) == {"train", "test", "val"}
    assert file_bytes(tmp_path / "a") == file_bytes(tmp_path / "b")
    assert file_bytes(tmp_path / "a") != file_bytes(tmp_path / "c")
    assert (tmp_path / "a" / "README.txt").read_text().startswith("Synthetic demo data")
    assert synth.dataset_style(tmp_path / "a") == "plain" and synth.dataset_style(tmp_path) is None

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
            assert row["channel"] == "full"  # the plain style has no channels
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


def test_varied_dataset_covers_voices_kinds_channels_for_both_classes(tmp_path):
    """The demo's data: every voice and sound kind, noisy speech over everyday backgrounds at
    several SNRs, and channels drawn alike for both classes, so no recording trait gives the class away."""
    started = time.perf_counter()
    manifests = synth.make_dataset(tmp_path / "demo", n_train=192, n_test=32, n_val=32, style="varied")
    elapsed = time.perf_counter() - started
    assert elapsed < 30, f"the varied demo set took {elapsed:.1f} s for 256 clips"
    assert synth.dataset_style(tmp_path / "demo") == "varied"
    train = read_rows(manifests["train"])
    assert len(train) == 192 and sum(r["label"] == "SPEECH" for r in train) == 96
    assert {r["voice"] for r in train if r["voice"]} == set(synth.VARIED_SPEECH_VOICES)
    assert {r["condition"] for r in train if r["label"] == "NONSPEECH"} == set(synth.VARIED_NONSPEECH_KINDS)
    noisy = [r for r in train if r["condition"] == "noisy_speech"]
    assert 0.3 < len(noisy) / 96 < 0.7 and len({r["snr_db"] for r in noisy}) >= 4
    for label in ("SPEECH", "NONSPEECH"):
        assert {r["channel"] for r in train if r["label"] == label} == set(synth.CHANNELS)
    # Loudness varies over tens of dB for both classes, and speech is not simply the louder class.
    levels = {label: [20 * np.log10(np.sqrt(np.mean(sf.read(tmp_path / "demo" / r["path"])[0] ** 2)))
                      for r in train if r["label"] == label] for label in ("SPEECH", "NONSPEECH")}
    for values in levels.values():
        assert np.ptp(values) > 15
    assert abs(np.median(levels["SPEECH"]) - np.median(levels["NONSPEECH"])) < 6
    # Same seed, same bytes; and the plain style of the same seed is another set.
    again = synth.make_dataset(tmp_path / "again", n_train=192, n_test=32, n_val=32, style="varied")
    assert file_bytes(tmp_path / "demo") == file_bytes(tmp_path / "again") and again
    with pytest.raises(ValueError, match="unknown style"):
        synth.make_dataset(tmp_path / "x", style="fancy")


# The first clip of the plain plan (seed 0, 64 clips) as it was drawn before the varied style existed.
PLAIN_FIRST_CLIP = ("SPEECH", "clean_speech", 1.9109, 6901374321971837629)


def test_plain_dataset_is_unchanged_by_the_varied_style():
    """The tests' pinned losses train on the plain set: its plan must not draw from the varied lists."""
    plan = synth.plan_clips(64, seed=0, stream=0)
    assert {item["voice"] for item in plan if "voice" in item} <= set(synth.SPEECH_VOICES)
    assert {item["condition"] for item in plan if item["label"] == "NONSPEECH"} <= set(synth.NONSPEECH_KINDS)
    assert all(item["channel"] == "full" and "background" not in item for item in plan)
    first = plan[0]
    assert (first["label"], first["condition"], round(first["seconds"], 4), first["seed"]) == PLAIN_FIRST_CLIP


def test_synthesis_in_processes_is_deterministic():
    plan = synth.plan_clips(12, seed=3, stream=1, style="varied")
    one, two = synth.synthesize_clips(plan, processes=2), synth.synthesize_clips(plan, processes=2)
    assert len(one) == 12 and all(np.array_equal(a, b) for a, b in zip(one, two))
    assert all(a.dtype == np.float32 and a.size >= int(0.8 * 16000) for a in one)


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
