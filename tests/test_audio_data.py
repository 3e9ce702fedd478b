"""Audio decoding and datasets, driven by the inputs a new user really makes."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from engine.data import manifests as data_module
from engine.data.audio import SAMPLE_RATE, AudioError, decode_bytes, load_audio
from engine.data.manifests import AudioCache, Clip, DataError, load_clips, manifest_sha256
from engine.data.synth import write_wav


def sine(seconds: float, freq: float = 440.0, sr: int = SAMPLE_RATE, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(seconds * sr))) / sr
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def dominant_hz(samples: np.ndarray, sr: int = SAMPLE_RATE) -> float:
    spectrum = np.abs(np.fft.rfft(samples))
    return float(np.fft.rfftfreq(samples.size, 1 / sr)[np.argmax(spectrum)])


def write_manifest(path: Path, rows: list[dict], columns: list[str] | None = None) -> Path:
    columns = columns or list(rows[0])
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture
def small_set(tmp_path: Path) -> Path:
    """Four valid clips in audio/ and a manifest with relative paths and metadata."""
    rows = []
    for i, (label, seconds, snr) in enumerate([("SPEECH", 0.5, 5), ("NONSPEECH", 1.25, ""),
                                               ("speech", 1.5, 10), ("non-speech", 0.25, 20)]):
        write_wav(tmp_path / "audio" / f"c{i}.wav", sine(seconds, 300 + 100 * i))
        rows.append({"path": f"audio/c{i}.wav", "label": label, "duration_ms": int(seconds * 1000),
                     "snr_db": snr, "condition": f"cond{i % 2}"})
    return write_manifest(tmp_path / "manifest.csv", rows)


# ---------------------------------------------------------------------- engine.data.audio

def test_load_audio_keeps_16k_mono_as_is(tmp_path):
    original = sine(1.0)
    samples, info = load_audio(write_wav(tmp_path / "a.wav", original, subtype="FLOAT"))
    assert samples.dtype == np.float32 and samples.shape == (SAMPLE_RATE,)
    np.testing.assert_allclose(samples, original, atol=1e-6)
    assert (info.original_sr, info.channels, info.original_seconds, info.truncated) == (16000, 1, 1.0, False)


def test_two_minute_stereo_44k_clip_is_resampled_downmixed_and_truncated(tmp_path):
    left = sine(120.0, 440.0, sr=44100)
    stereo = np.stack([left, np.zeros_like(left)], axis=1)  # right silent: the mean halves the level
    path = tmp_path / "long.wav"
    sf.write(path, stereo, 44100, subtype="PCM_16")
    samples, info = load_audio(path)
    assert samples.shape == (30 * SAMPLE_RATE,)
    assert info.truncated and info.channels == 2 and info.original_sr == 44100
    assert info.original_seconds == pytest.approx(120.0)
    assert dominant_hz(samples) == pytest.approx(440.0, abs=1.0)
    assert np.max(np.abs(samples)) == pytest.approx(0.25, abs=0.01)
    shorter, info_10 = load_audio(path, max_seconds=10)
    assert shorter.shape == (10 * SAMPLE_RATE,) and info_10.truncated


@pytest.mark.parametrize("fmt, suffix", [("FLAC", ".flac"), ("OGG", ".ogg"), ("MP3", ".mp3")])
def test_compressed_formats_decode(tmp_path, fmt, suffix):
    path = tmp_path / f"tone{suffix}"
    sf.write(path, sine(1.0, 1000.0, sr=22050), 22050, format=fmt)
    samples, info = load_audio(path)
    assert info.original_sr == 22050
    assert abs(samples.size - SAMPLE_RATE) < 0.1 * SAMPLE_RATE  # mp3 adds encoder padding
    assert dominant_hz(samples) == pytest.approx(1000.0, abs=3.0)


def test_eight_khz_is_resampled_to_16k(tmp_path):
    samples, info = load_audio(write_wav(tmp_path / "n.wav", sine(2.0, 500.0, sr=8000), sr=8000))
    assert samples.size == 2 * SAMPLE_RATE and info.original_sr == 8000
    assert dominant_hz(samples) == pytest.approx(500.0, abs=1.0)


def test_unusable_files_raise_audio_error_naming_file_and_reason(tmp_path):
    text = tmp_path / "notes.wav"
    text.write_text("these are my meeting notes, not audio")
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    nan = tmp_path / "nan.wav"
    sf.write(nan, np.array([0.1, np.nan, 0.2], dtype=np.float32), SAMPLE_RATE, subtype="FLOAT")
    no_samples = tmp_path / "zero.wav"
    sf.write(no_samples, np.zeros(0, dtype=np.float32), SAMPLE_RATE)
    expected = {tmp_path / "missing.wav": "file not found", text: "not an audio file soundfile can decode",
                empty: "empty (0 bytes)", nan: "NaN", no_samples: "no audio samples",
                tmp_path: "is a folder"}
    for path, reason in expected.items():
        with pytest.raises(AudioError) as caught:
            load_audio(path)
        assert str(path) in str(caught.value) and reason in str(caught.value)


def test_decode_bytes_for_uploads(tmp_path):
    path = write_wav(tmp_path / "up.wav", sine(0.5, sr=48000), sr=48000)
    samples, info = decode_bytes(path.read_bytes(), "up.wav")
    assert samples.size == SAMPLE_RATE // 2 and info.original_sr == 48000
    with pytest.raises(AudioError, match=r"^my upload\.wav: file is empty"):
        decode_bytes(b"", "my upload.wav")
    with pytest.raises(AudioError, match=r"^x\.wav: not an audio file soundfile can decode"):
        decode_bytes(b"hello world, not audio", "x.wav")


# ---------------------------------------------------------------------- manifests

def test_manifest_with_relative_paths_and_metadata(small_set, tmp_path):
    clips, report = load_clips(small_set)
    assert [c.clip_id for c in clips] == [f"audio/c{i}.wav" for i in range(4)]
    assert all(Path(c.path).is_absolute() and Path(c.path).is_file() for c in clips)
    assert [c.label for c in clips] == ["SPEECH", "NONSPEECH", "SPEECH", "NONSPEECH"]
    assert clips[0].metadata == {"duration_ms": 500, "snr_db": 5, "condition": "cond0"}
    assert clips[1].metadata["snr_db"] is None  # empty cell
    assert [c.duration_s for c in clips] == [0.5, 1.25, 1.5, 0.25]
    assert report.n_clips == 4 and report.per_class == {"SPEECH": 2, "NONSPEECH": 2}
    assert report.layout == "csv" and report.truncated == [] and not report.skipped
    assert report.manifest_sha256 == manifest_sha256(small_set)
    json.dumps(report.to_dict())


def test_reordered_manifest_keeps_clip_ids(small_set, tmp_path):
    with open(small_set, newline="") as fh:
        rows = list(csv.DictReader(fh))
    reordered = write_manifest(tmp_path / "reordered.csv", rows[::-1])
    first = {c.clip_id: (c.path, c.label) for c in load_clips(small_set)[0]}
    second = {c.clip_id: (c.path, c.label) for c in load_clips(reordered)[0]}
    assert first == second


def test_manifest_in_another_folder_resolves_against_its_own_folder(tmp_path):
    write_wav(tmp_path / "data" / "sounds" / "a.wav", sine(0.3))
    manifest = write_manifest(tmp_path / "data" / "m.csv", [{"file_name": "sounds/a.wav", "true_label": "1"}])
    clips, _ = load_clips(manifest)
    assert clips[0].path == str(tmp_path / "data" / "sounds" / "a.wav")
    assert clips[0].clip_id == "sounds/a.wav" and clips[0].label == "SPEECH"
    assert clips[0].duration_s == pytest.approx(0.3)  # filled by decoding


def test_jsonl_manifest_with_id_column_and_other_column_names(tmp_path):
    write_wav(tmp_path / "a.wav", sine(0.2))
    write_wav(tmp_path / "b.wav", sine(0.2))
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(
        json.dumps({"id": "first", "audio_path": "a.wav", "ground_truth": "non_speech", "snr_db": 3}) + "\n\n"
        + json.dumps({"id": "second", "audio_path": str(tmp_path / "b.wav"), "ground_truth": 0, "snr_db": "7.5"}) + "\n")
    clips, report = load_clips(manifest)
    assert [c.clip_id for c in clips] == ["first", "second"]
    assert [c.label for c in clips] == ["NONSPEECH", "NONSPEECH"]
    assert [c.metadata["snr_db"] for c in clips] == [3, 7.5]
    assert report.layout == "jsonl"


def test_label_spellings_and_label_words(tmp_path):
    spellings = ["SPEECH", "speech", "Speech", "1", "NONSPEECH", "Non-Speech", "non_speech", "nonspeech", "0", "yes", "NO"]
    rows = []
    for i, label in enumerate(spellings):
        write_wav(tmp_path / f"{i}.wav", sine(0.1))
        rows.append({"path": f"{i}.wav", "label": label})
    clips, _ = load_clips(write_manifest(tmp_path / "m.csv", rows), label_words=["Yes", "No"])
    assert [c.label for c in clips] == ["SPEECH"] * 4 + ["NONSPEECH"] * 5 + ["SPEECH", "NONSPEECH"]


def test_unknown_label_names_row_value_and_allowed_labels(small_set, tmp_path):
    with open(small_set, newline="") as fh:
        rows = list(csv.DictReader(fh))
    rows[1]["label"] = "MAYBE"
    with pytest.raises(DataError) as caught:
        load_clips(write_manifest(tmp_path / "bad.csv", rows))
    message = str(caught.value)
    assert "bad.csv, line 3" in message and "'MAYBE'" in message and "column 'label'" in message
    assert "SPEECH, NONSPEECH" in message


def test_manifest_errors_say_what_and_where(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_clips(tmp_path / "nope.csv")
    (tmp_path / "zero.csv").write_text("")
    with pytest.raises(DataError, match="no rows"):
        load_clips(tmp_path / "zero.csv")
    (tmp_path / "header.csv").write_text("path,label\n\n")
    with pytest.raises(DataError, match="no rows"):
        load_clips(tmp_path / "header.csv")
    (tmp_path / "nolabel.csv").write_text("path,kind\na.wav,SPEECH\n")
    with pytest.raises(DataError, match=r"no label column.*columns found: path, kind"):
        load_clips(tmp_path / "nolabel.csv")
    (tmp_path / "nopath.csv").write_text("audio,label\na.wav,SPEECH\n")
    with pytest.raises(DataError, match="no audio path column"):
        load_clips(tmp_path / "nopath.csv")
    (tmp_path / "m.txt").write_text("path,label\n")
    with pytest.raises(DataError, match="unsupported manifest type '.txt'"):
        load_clips(tmp_path / "m.txt")
    (tmp_path / "broken.jsonl").write_text('{"path": "a.wav", "label": "SPEECH"}\n{"path": \n')
    with pytest.raises(DataError, match=r"broken.jsonl, line 2: not valid JSON"):
        load_clips(tmp_path / "broken.jsonl")


def test_duplicate_clip_id_is_refused(tmp_path):
    write_wav(tmp_path / "a.wav", sine(0.1))
    manifest = write_manifest(tmp_path / "m.csv", [{"path": "a.wav", "label": "SPEECH"},
                                                    {"path": "./a.wav", "label": "SPEECH"}])
    with pytest.raises(DataError, match=r"line 3: duplicate clip id 'a.wav' \(first at .*line 2\)"):
        load_clips(manifest)


def test_bad_audio_files_are_listed_together_or_skipped(small_set, tmp_path):
    (tmp_path / "audio" / "text.wav").write_text("not audio")
    (tmp_path / "audio" / "empty.wav").write_bytes(b"")
    with open(small_set, newline="") as fh:
        rows = list(csv.DictReader(fh))
    rows += [{"path": p, "label": "SPEECH", "duration_ms": "", "snr_db": "", "condition": ""}
             for p in ("audio/text.wav", "audio/empty.wav", "audio/missing.wav")]
    manifest = write_manifest(tmp_path / "with_bad.csv", rows)
    with pytest.raises(DataError) as caught:
        load_clips(manifest)
    message = str(caught.value)
    assert "3 of 7 audio files cannot be used" in message
    for name, reason in [("text.wav", "not an audio file soundfile can decode"),
                         ("empty.wav", "file is empty (0 bytes)"), ("missing.wav", "file not found")]:
        assert f"{name}: {reason}" in message
    clips, report = load_clips(manifest, skip_bad=True)
    assert len(clips) == 4 and report.n_clips == 4 and report.skipped
    assert sorted(b["clip_id"] for b in report.bad_files) == ["audio/empty.wav", "audio/missing.wav", "audio/text.wav"]
    # Without decoding, only the missing file is noticed.
    clips, report = load_clips(manifest, skip_bad=True, check_audio=False)
    assert len(clips) == 6 and [b["clip_id"] for b in report.bad_files] == ["audio/missing.wav"]


def test_long_clip_is_truncated_and_counted_not_refused(tmp_path):
    long = np.stack([sine(120.0, sr=44100)] * 2, axis=1)
    sf.write(tmp_path / "long.wav", long, 44100)
    write_wav(tmp_path / "short.wav", sine(1.0))
    manifest = write_manifest(tmp_path / "m.csv", [{"path": "long.wav", "label": "SPEECH"},
                                                    {"path": "short.wav", "label": "NONSPEECH"}])
    clips, report = load_clips(manifest)
    assert report.truncated == ["long.wav"] and report.n_clips == 2
    assert clips[0].duration_s == pytest.approx(120.0)
    assert AudioCache().load(clips[0]).size == 30 * SAMPLE_RATE


# ---------------------------------------------------------------------- folder layouts

def test_folder_per_class_layout_any_case(tmp_path):
    write_wav(tmp_path / "Speech" / "a.wav", sine(0.2))
    write_wav(tmp_path / "Speech" / "deeper" / "b.flac", sine(0.2))
    write_wav(tmp_path / "non-speech" / "c.wav", sine(0.2))
    (tmp_path / "non-speech" / "notes.txt").write_text("ignored: not an audio extension")
    clips, report = load_clips(tmp_path)
    assert {c.clip_id: c.label for c in clips} == {
        "Speech/a.wav": "SPEECH", "Speech/deeper/b.flac": "SPEECH", "non-speech/c.wav": "NONSPEECH"}
    assert report.layout == "class-folders" and report.per_class == {"SPEECH": 2, "NONSPEECH": 1}


def test_folder_without_class_folders_is_explained(tmp_path):
    (tmp_path / "voices").mkdir()
    with pytest.raises(DataError, match=r"speech/ and nonspeech/ sub-folders.*found: voices/"):
        load_clips(tmp_path)


def test_huggingface_audiofolder(tmp_path):
    write_wav(tmp_path / "data" / "x.wav", sine(0.2))
    write_wav(tmp_path / "data" / "y.wav", sine(0.2))
    write_manifest(tmp_path / "metadata.csv", [{"file_name": "data/x.wav", "label": "speech", "snr_db": 1},
                                               {"file_name": "data/y.wav", "label": "nonspeech", "snr_db": 2}])
    clips, report = load_clips(tmp_path)
    assert [(c.clip_id, c.label) for c in clips] == [("data/x.wav", "SPEECH"), ("data/y.wav", "NONSPEECH")]
    assert report.layout == "audiofolder" and report.manifest_sha256 == manifest_sha256(tmp_path)


def test_folder_hash_follows_file_list_and_sizes(tmp_path):
    write_wav(tmp_path / "speech" / "a.wav", sine(0.2))
    first = manifest_sha256(tmp_path)
    assert manifest_sha256(tmp_path) == first
    write_wav(tmp_path / "speech" / "a.wav", sine(0.3))
    assert manifest_sha256(tmp_path) != first


# ---------------------------------------------------------------------- filters

def test_filters_ranges_values_and_errors(small_set):
    ids = lambda filters: [c.clip_id for c in load_clips(small_set, filters=filters)[0]]  # noqa: E731
    assert ids({"duration_ms": "1000:"}) == ["audio/c1.wav", "audio/c2.wav"]
    assert ids({"duration_ms": ":500"}) == ["audio/c0.wav", "audio/c3.wav"]
    assert ids({"snr_db": "5,20"}) == ["audio/c0.wav", "audio/c3.wav"]
    assert ids({"snr_db": "5:10", "duration_ms": "1000:2000"}) == ["audio/c2.wav"]  # empty snr never matches
    _, report = load_clips(small_set, filters={"duration_ms": "1000:"})
    assert report.filters == {"duration_ms": "1000:"} and report.n_filtered_out == 2
    with pytest.raises(DataError, match=r"cannot filter on 'speaker'.*duration_ms, snr_db, condition"):
        load_clips(small_set, filters={"speaker": "1"})
    with pytest.raises(DataError, match=r"line 2, column 'condition'.*'cond0'"):
        load_clips(small_set, filters={"condition": "1,2"})
    with pytest.raises(DataError, match="leave no clips"):
        load_clips(small_set, filters={"duration_ms": "5000:"})


# ---------------------------------------------------------------------- cache

def test_audio_cache_decodes_each_clip_once_within_budget(small_set, monkeypatch):
    clips, _ = load_clips(small_set)
    calls: list[str] = []
    real = data_module.load_audio
    monkeypatch.setattr(data_module, "load_audio", lambda path, m: calls.append(path) or real(path, m))
    cache = AudioCache()
    for _ in range(3):  # three epochs
        arrays = [cache.load(c) for c in clips]
    assert len(calls) == 4 and cache.hits == 8 and cache.misses == 4
    assert arrays[0].dtype == np.float32 and not arrays[0].flags.writeable
    assert cache.bytes_used == sum(a.nbytes for a in arrays)

    small = AudioCache(max_bytes=arrays[2].nbytes + 1)  # room for one 1.5 s clip at a time
    calls.clear()
    for clip in clips[:3]:
        small.load(clip)
    assert len(small) == 1 and small.bytes_used <= small.max_bytes
    small.load(clips[2])
    assert len(calls) == 3  # the last one stayed cached
    assert isinstance(clips[0], Clip)


# ---------------------------------------------------------------------- clips too short for the encoder

@pytest.mark.parametrize("sr", [44100, 48000, 96000])
def test_one_sample_clip_is_refused_after_resampling(tmp_path, sr):
    path = tmp_path / f"one-{sr}.wav"
    sf.write(path, np.array([0.25], dtype=np.float32), sr)
    with pytest.raises(AudioError) as caught:
        load_audio(path)
    assert caught.value.source == str(path) and "too short" in caught.value.reason


def test_shortest_clip_the_encoder_accepts(tmp_path):
    from engine.data.audio import MIN_SAMPLES

    # Independently of the engine: mel frames = ceil(samples / 160); the encoder's two stride-2
    # stages give ((frames - 1) // 2 + 1 - 2) // 2 + 1 audio tokens, which must be >= 1.
    def tokens(samples):
        frames = -(-samples // 160)
        return ((frames - 1) // 2 + 1 - 2) // 2 + 1

    assert tokens(MIN_SAMPLES) >= 1 and tokens(MIN_SAMPLES - 1) < 1
    write_wav(tmp_path / "ok.wav", sine(MIN_SAMPLES / SAMPLE_RATE))
    assert load_audio(tmp_path / "ok.wav")[0].size == MIN_SAMPLES
    write_wav(tmp_path / "short.wav", sine((MIN_SAMPLES - 1) / SAMPLE_RATE))
    with pytest.raises(AudioError, match="too short"):
        load_audio(tmp_path / "short.wav")


def test_all_bad_files_skipped_still_lists_every_reason(tmp_path):
    sf.write(tmp_path / "one.wav", np.array([0.1], dtype=np.float32), 44100)
    (tmp_path / "text.wav").write_text("not audio")
    manifest = write_manifest(tmp_path / "m.csv", [{"path": "one.wav", "label": "SPEECH"},
                                                    {"path": "text.wav", "label": "NONSPEECH"}])
    with pytest.raises(DataError) as caught:
        load_clips(manifest, skip_bad=True)
    message = str(caught.value)
    assert "none of the 2 audio files can be used" in message
    assert "one.wav: too short" in message and "text.wav: not an audio file soundfile can decode" in message


def test_one_class_training_data_is_refused_naming_the_file(small_set, tmp_path):
    from engine.data.manifests import require_both_classes

    with open(small_set, newline="") as fh:
        speech_only = [r for r in csv.DictReader(fh) if r["label"].lower() == "speech"]
    manifest = write_manifest(tmp_path / "speech_only.csv", speech_only)
    _, report = load_clips(manifest)
    with pytest.raises(DataError, match=r"speech_only\.csv.*no NONSPEECH clips"):
        require_both_classes(report)
    require_both_classes(load_clips(small_set)[1])  # both classes: no complaint
