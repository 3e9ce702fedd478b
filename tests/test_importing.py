"""Importing predictions made by another tool: the real exports, spellings, refusals, atomicity."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from engine.tasks import importing
from engine.runs import folder as rf
from engine.tasks.importing import ImportError_, import_predictions
from engine.runs.predictions import read_predictions

REPO = Path(__file__).resolve().parents[1]
from tests.conftest import EXAMPLES  # noqa: E402


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def evaluation(run_dir: Path) -> dict:
    return rf.read_json(run_dir / "evaluations" / "test" / "evaluation.json")


def nothing_written(root: Path) -> bool:
    return not root.exists() or not any(root.iterdir())


# ---------------------------------------------------------------- the real exports

@pytest.mark.parametrize("stem", ["base", "lora_seed42"])
def test_import_reproduces_the_tools_own_metrics(tmp_path, stem):
    source = EXAMPLES / f"{stem}_predictions.csv"
    metrics = json.loads((EXAMPLES / f"{stem}_metrics.json").read_text())
    run_dir = import_predictions(source, stem, tmp_path, seed=42)
    summary = evaluation(run_dir)["summary"]
    assert summary["n"] == metrics["n_samples"]
    assert abs(summary["accuracy"] - metrics["overall_acc"]) < 1e-9
    assert abs(summary["per_class"]["SPEECH"]["accuracy"] - metrics["speech_acc"]) < 1e-9
    assert abs(summary["per_class"]["NONSPEECH"]["accuracy"] - metrics["nonspeech_acc"]) < 1e-9
    assert abs(summary["balanced_accuracy"] - metrics["ba_clip"]) < 1e-9

    config = rf.read_json(run_dir / "config.json")
    assert config == {
        "schema_version": rf.SCHEMA_VERSION, "kind": "imported", "label": stem, "seed": 42,
        "source_file": str(source.resolve()),
        "source_sha256": hashlib.sha256(source.read_bytes()).hexdigest(),
        "column_mapping": {"clip_id": "audio_path", "path": "audio_path", "label": "ground_truth",
                           "pred": "prediction", "p_speech": "p_first_token", "correct": "correct"},
    }
    assert rf.read_status(run_dir)["state"] == "succeeded"
    assert sorted(p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*") if p.is_file()) == [
        "config.json", "evaluations/test/evaluation.json", "evaluations/test/predictions.jsonl", "status.json"]
    assert [p.name for p in tmp_path.iterdir()] == [stem]  # no staging folder left
    doc = evaluation(run_dir)
    assert doc["producer"]["kind"] == "imported" and doc["manifest_sha256"] is None
    assert doc["time_taken_s"] >= 0

    records = read_predictions(run_dir)
    with open(source, newline="") as fh:
        first = next(csv.DictReader(fh))
    assert records[0]["clip_id"] == first["audio_path"] == records[0]["path"]
    assert records[0]["p_speech"] == float(first["p_first_token"])
    assert records[0]["raw_output"] == first["raw_output"]
    assert records[0]["duration_ms"] == int(first["duration_ms"]) and records[0]["snr_db"] == int(first["snr_db"])
    assert records[0]["duration_s"] == int(first["duration_ms"]) / 1000
    assert math.isnan(records[0]["margin"])
    assert rf.read_run(run_dir).error is None


# ---------------------------------------------------------------- formats and spellings

def test_label_spellings_are_canonicalised(tmp_path):
    spellings = ["SPEECH", "NONSPEECH", "NON-SPEECH", "non_speech", "speech", "nonspeech", "Non-Speech", "1", "0"]
    expected = ["SPEECH", "NONSPEECH", "NONSPEECH", "NONSPEECH", "SPEECH", "NONSPEECH", "NONSPEECH", "SPEECH", "NONSPEECH"]
    source = write_csv(tmp_path / "p.csv", ["file", "label", "pred"],
                       [[f"a{i}.wav", s, "SPEECH"] for i, s in enumerate(spellings)])
    records = read_predictions(import_predictions(source, "spell", tmp_path / "runs"))
    assert [r["label"] for r in records] == expected
    assert [r["clip_id"] for r in records] == [f"a{i}.wav" for i in range(len(spellings))]


@pytest.mark.parametrize("shape", ["list", "object", "jsonl"])
def test_json_and_jsonl(tmp_path, shape):
    rows = [{"id": "x1", "path": "/d/x1.wav", "true_label": "speech", "predicted": "SPEECH", "prob": 0.9, "snr": "5"},
            {"id": "x2", "path": "/d/x2.wav", "true_label": 0, "predicted": "speech", "prob": 0.6, "snr": "-5"}]
    if shape == "jsonl":
        source = tmp_path / "p.jsonl"
        source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        source = tmp_path / "p.json"
        source.write_text(json.dumps(rows if shape == "list" else {"predictions": rows}))
    records = read_predictions(import_predictions(source, "j", tmp_path / "runs"))
    assert [(r["clip_id"], r["path"], r["label"], r["pred"], r["correct"]) for r in records] == [
        ("x1", "/d/x1.wav", "SPEECH", "SPEECH", True), ("x2", "/d/x2.wav", "NONSPEECH", "SPEECH", False)]
    assert [r["snr"] for r in records] == [5, -5]  # numeric strings become numbers


def test_pred_from_probability_and_metadata_types(tmp_path):
    source = write_csv(tmp_path / "p.csv", ["filename", "gold", "p_speech", "speaker", "gain"],
                       [["a.wav", "SPEECH", "0.5", "007", "1.5"], ["b.wav", "NONSPEECH", "0.49", "abc", ""]])
    run_dir = import_predictions(source, "probs", tmp_path / "runs")
    records = read_predictions(run_dir)
    assert [r["pred"] for r in records] == ["SPEECH", "NONSPEECH"]  # p >= 0.5 is SPEECH
    assert [r["speaker"] for r in records] == ["007", "abc"]
    assert [r["gain"] for r in records] == [1.5, None]
    assert rf.read_json(run_dir / "config.json")["column_mapping"]["pred"] == "p_speech >= 0.5"


def test_explicit_mapping(tmp_path):
    source = write_csv(tmp_path / "p.csv", ["wav", "truth", "guess", "label"],
                       [["a.wav", "SPEECH", "NONSPEECH", "x"], ["b.wav", "NONSPEECH", "NONSPEECH", "y"]])
    run_dir = import_predictions(source, "mapped", tmp_path / "runs",
                                 mapping={"label": "truth", "pred": "guess", "clip_id": "wav"})
    records = read_predictions(run_dir)
    assert [(r["clip_id"], r["label"], r["pred"]) for r in records] == [
        ("a.wav", "SPEECH", "NONSPEECH"), ("b.wav", "NONSPEECH", "NONSPEECH")]
    assert [r["orig_label"] for r in records] == ["x", "y"]  # the unused 'label' column kept apart
    with pytest.raises(ImportError_, match="no column 'nope'"):
        import_predictions(source, "bad-map", tmp_path / "runs", mapping={"label": "nope"})


# ---------------------------------------------------------------- refusals write nothing

@pytest.mark.parametrize("header,rows,message", [
    (["path", "prediction"], [["a.wav", "SPEECH"]], r"p\.csv: no label column"),
    (["path", "label", "prediction"], [["a.wav", "SPEECH", "SPEECH"], ["b.wav", "MAYBE", "SPEECH"]],
     r"p\.csv: row 2 \(line 3\), column 'label': unknown label 'MAYBE'"),
    (["path", "label", "prediction"], [["a.wav", "SPEECH", "SPEECH"], ["b.wav", "SPEECH", "SOMETIMES"]],
     r"row 2 .*column 'prediction': unknown prediction 'SOMETIMES'"),
    (["id", "label", "prediction"], [["c1", "SPEECH", "SPEECH"], ["c1", "NONSPEECH", "SPEECH"]],
     r"row 2 .*clip id 'c1' repeats row 1 \(line 2\) with different labels"),
    (["path", "label", "prediction", "correct"], [["a.wav", "SPEECH", "NONSPEECH", "True"]],
     r"row 1 .*column 'correct': says 'True' but label SPEECH and prediction NONSPEECH disagree"),
    (["path", "label", "raw_output"], [["a.wav", "SPEECH", "yes"]], r"no prediction column .* and no probability column"),
    (["path", "label", "p_speech"], [["a.wav", "SPEECH", ""]], r"row 1 .*no prediction and no probability"),
    (["path", "label", "score"], [["a.wav", "SPEECH", "3.2"]], r"row 1 .*column 'score': 3\.2 is not a probability"),
    (["path", "label", "prediction"], [], r"no predictions"),
])
def test_refusals_name_file_row_and_column_and_write_nothing(tmp_path, header, rows, message):
    source = write_csv(tmp_path / "p.csv", header, rows)
    root = tmp_path / "runs"
    with pytest.raises(ImportError_, match=message):
        import_predictions(source, "refused", root)
    assert nothing_written(root)


def test_existing_folder_and_bad_name_are_refused(tmp_path):
    source = write_csv(tmp_path / "p.csv", ["path", "label", "prediction"], [["a.wav", "SPEECH", "SPEECH"]])
    root = tmp_path / "runs"
    (root / "taken").mkdir(parents=True)
    with pytest.raises(ImportError_, match="already exists"):
        import_predictions(source, "taken", root)
    with pytest.raises(ImportError_, match="invalid run name"):
        import_predictions(source, "../escape", root)
    assert [p.name for p in root.iterdir()] == ["taken"]


def test_failed_write_leaves_no_half_made_folder(tmp_path, monkeypatch):
    source = write_csv(tmp_path / "p.csv", ["path", "label", "prediction"], [["a.wav", "SPEECH", "SPEECH"]])
    root = tmp_path / "runs"

    def broken_write(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(importing, "write_evaluation", broken_write)
    with pytest.raises(OSError, match="disk full"):
        import_predictions(source, "half", root)
    assert nothing_written(root)


# ---------------------------------------------------------------- command line

def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120)


def test_cli_imports_and_prints_json(tmp_path):
    source = write_csv(tmp_path / "p.csv", ["wav", "truth", "guess"], [["a.wav", "SPEECH", "SPEECH"],
                                                                       ["b.wav", "NONSPEECH", "SPEECH"]])
    result = run_cli("import-predictions", str(source), "--name", "cli", "--runs_dir", str(tmp_path / "runs"),
                     "--seed", "3", "--config-label", "Other tool", "--map", "label=truth", "--map", "pred=guess",
                     "--map", "clip_id=wav", "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert set(out) == {"run_dir", "run_id", "clip_count", "column_mapping", "summary"}
    assert out["clip_count"] == 2 and out["summary"]["accuracy"] == 0.5
    config = rf.read_json(Path(out["run_dir"]) / "config.json")
    assert (config["label"], config["seed"]) == ("Other tool", 3)


@pytest.mark.parametrize("header,rows,message", [
    (["path", "prediction"], [["a.wav", "SPEECH"]], "no label column"),
    (["path", "label", "prediction"], [["a.wav", "SPEECH", "SPEECH"], ["b.wav", "MAYBE", "SPEECH"]],
     "row 2 (line 3), column 'label': unknown label 'MAYBE'"),
])
def test_cli_refuses_with_a_clear_message_and_writes_nothing(tmp_path, header, rows, message):
    source = write_csv(tmp_path / "bad.csv", header, rows)
    root = tmp_path / "runs"
    result = run_cli("import-predictions", str(source), "--name", "nope", "--runs-dir", str(root))
    assert result.returncode == 2
    assert message in result.stderr and str(source) in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert nothing_written(root)
