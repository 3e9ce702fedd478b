"""Odd-shaped files of every kind the dashboard reads, and names, links and workspaces that are
not what they claim: each is refused with the file, line and reason, and pages keep rendering.

The workspace is written by hand here (no model), so every case is small and fast.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile
from streamlit.testing.v1 import AppTest

from engine.dashboard import review
from engine.ops import disk
from engine.runs import folder as rf
from engine.runs.predictions import PredictionsError, make_record, read_predictions, write_evaluation

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 60

# name -> (predictions.jsonl bytes, words the error must contain)
BAD_PREDICTIONS = {
    "empty": (b"", "holds no prediction records"),
    "array": (b"[]\n", "line 1 is a JSON array, not an object"),
    "number-line": (b'{"clip_id": "a", "label": "SPEECH", "pred": "SPEECH"}\n1\n', "line 2 is a JSON number"),
    "string-line": (b'"x"\n', "line 1 is a JSON string, not an object"),
    "label-outside": (b'{"clip_id": "a", "label": "MUSIC", "pred": "SPEECH"}\n', "label 'MUSIC' is not one of"),
    "wrong-type": (b'{"clip_id": "a", "label": "SPEECH", "pred": "SPEECH", "p_speech": "high"}\n',
                   "p_speech must be a number"),
    "binary": (bytes(range(256)) * 4, "not UTF-8 text"),
    "truncated": (b'{"clip_id": "a", "label": "SPE\n{"clip_id": "b", "label": "SPEECH", "pred": "SPEECH"}\n',
                  "line 1 is not valid JSON"),
}


def records(n: int = 8) -> list[dict]:
    out = []
    for i in range(n):
        label = "SPEECH" if i % 2 else "NONSPEECH"
        out.append(make_record(f"c{i}", f"/nowhere/c{i}.wav", label, 0.8 if i % 3 else 0.2, 0.5, 1.0))
    return out


def make_run(root: Path, run_id: str, label: str, predictions: bytes | None = None) -> Path:
    run = root / run_id
    run.mkdir(parents=True)
    rf.atomic_write_json(run / rf.CONFIG, {"schema_version": 1, "kind": rf.KIND_EVAL, "label": label,
                                           "model": "tiny", "seed": None})
    rf.atomic_write_json(run / rf.STATUS, {"state": rf.SUCCEEDED, "kind": rf.KIND_EVAL})
    out = write_evaluation(run, "test", records(), {"test_data": str(root.parent / "data" / "manifest.csv")})
    if predictions is not None:
        (out / rf.PREDICTIONS).write_bytes(predictions)
    return run


@pytest.fixture
def workspace(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "ws"
    make_run(root, "good", "Good")
    monkeypatch.setenv(rf.RUNS_ROOT_ENV, str(root))
    return root


def page(path: str, **query) -> AppTest:
    at = AppTest.from_file(str(REPO / path), default_timeout=TIMEOUT)
    at.query_params.update(query)
    return at.run()


# ---------------------------------------------------------------- predictions files

@pytest.mark.parametrize("kind", sorted(BAD_PREDICTIONS))
def test_odd_predictions_file_is_refused_with_file_line_and_reason(workspace, kind):
    content, reason = BAD_PREDICTIONS[kind]
    run = make_run(workspace, f"bad-{kind}", f"Bad {kind}", content)
    with pytest.raises(PredictionsError) as caught:
        read_predictions(run, "test")
    assert str(rf.evaluation_dir(run, "test") / rf.PREDICTIONS) in str(caught.value)
    assert reason in str(caught.value)


@pytest.mark.parametrize("kind", ["empty", "number-line", "label-outside", "binary"])
def test_results_page_shows_the_reason_for_an_odd_predictions_file(workspace, kind):
    content, reason = BAD_PREDICTIONS[kind]
    make_run(workspace, f"bad-{kind}", f"Bad {kind}", content)
    at = page("pages/results.py", run=f"bad-{kind}", evaluation="test")
    assert not at.exception, [e.value for e in at.exception]
    errors = " ".join(e.value for e in at.error)
    assert f"bad-{kind}" in errors and reason in errors


@pytest.mark.parametrize("kind", ["array", "wrong-type"])
def test_compare_page_shows_the_reason_and_keeps_rendering(workspace, kind):
    content, reason = BAD_PREDICTIONS[kind]
    make_run(workspace, f"bad-{kind}", f"Bad {kind}", content)
    at = page("pages/compare.py", configs=["Good", f"Bad {kind}"], evaluation="test")
    assert not at.exception, [e.value for e in at.exception]
    errors = " ".join(e.value for e in at.error)
    assert reason in errors and rf.PREDICTIONS in errors
    assert at.multiselect(key="compare_picks").value == ["Good", f"Bad {kind}"]  # the pickers still render


# ---------------------------------------------------------------- run files (config, status, summary, metrics)

@pytest.mark.parametrize("file_name, content, reason", [
    (rf.CONFIG, b"[]", "config.json holds a JSON array, not an object"),
    (rf.CONFIG, b"\x89PNG\x00\xff", "config.json is not UTF-8 text"),
    (rf.STATUS, b"7", "status.json holds a JSON number, not an object"),
    (rf.STATUS, b'{"state": "succ', "corrupt JSON in status.json"),
    (rf.SUMMARY, b'"done"', "summary.json holds a JSON string, not an object"),
])
def test_odd_run_files_make_an_unreadable_row_naming_the_file(workspace, file_name, content, reason):
    run = make_run(workspace, "odd", "Odd")
    (run / file_name).write_bytes(content)
    info = rf.read_run(run)
    assert not info.readable and reason in info.error
    table = review.overview_table(rf.list_runs(workspace)).set_index("name")
    assert table.loc["odd", "status"].startswith("unreadable:") and table.loc["good", "status"] == rf.SUCCEEDED


@pytest.mark.parametrize("content", [b"[]", b'{"summary": {"n": "many", "accuracy": 0.5}}',
                                     b'{"summary": [1, 2]}', b"\xff\xfe"])
def test_odd_evaluation_json_makes_an_unreadable_row(workspace, content):
    run = make_run(workspace, "odd", "Odd")
    (rf.evaluation_dir(run, "test") / rf.EVALUATION).write_bytes(content)
    table = review.overview_table(rf.list_runs(workspace)).set_index("name")
    assert table.loc["odd", "status"].startswith("unreadable: evaluations/test/evaluation.json")


def test_metrics_lines_of_the_wrong_shape_are_left_out_of_the_loss_curve(workspace):
    run = workspace / "good"
    (run / rf.METRICS).write_text('{"step": 1, "loss": 0.9}\n{"step": "x", "loss": "y"}\n'
                                  '{"step": 2, "loss": true}\n{"step": 3, "loss": 0.7}\n')
    frame = review.loss_frame([("Good", 1, rf.read_run(run))])
    assert frame["step"].tolist() == [1, 3] and frame["loss"].tolist() == [0.9, 0.7]
    (run / rf.METRICS).write_text("[1]\n")
    assert review.loss_frame([("Good", 1, rf.read_run(run))]).empty


# ---------------------------------------------------------------- names

def test_run_name_with_a_trailing_newline_is_refused():
    assert rf.check_run_name("run-1") == "run-1"
    for bad in ("run-1\n", "run\n1", "../x", ""):
        with pytest.raises(rf.RunFolderError, match="invalid run name"):
            rf.check_run_name(bad)


def test_eval_refuses_a_bad_name_before_loading_the_model(tmp_path, monkeypatch):
    from engine.models.qwen2_audio import runtime
    from engine.tasks import evaluate

    def must_not_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the name was checked")

    monkeypatch.setattr(runtime, "load_model", must_not_load)
    monkeypatch.setattr("engine.data.manifests.load_clips", must_not_load)
    parser = argparse.ArgumentParser()
    evaluate.eval_arguments(parser)
    for flags in (["--name", "../../x"], ["--run-name", "a/b"], ["--name", "x\n"]):
        args = parser.parse_args(["--base", "--test-data", str(tmp_path / "m.csv"),
                                  "--runs-dir", str(tmp_path / "ws"), *flags])
        assert evaluate.eval_main(args) == 2
    assert not (tmp_path / "ws").exists() or not any((tmp_path / "ws").iterdir())  # no run folder left behind


# ---------------------------------------------------------------- links and workspaces

def test_a_link_to_a_run_outside_the_workspace_is_not_listed_or_walked(workspace, tmp_path):
    elsewhere = make_run(tmp_path / "elsewhere", "foreign", "Foreign")
    (elsewhere / "big.bin").write_bytes(b"x" * 100_000)
    os.symlink(elsewhere, workspace / "linked")
    assert [p.name for p in rf.iter_run_dirs(workspace)] == ["good"]
    assert [r.run_id for r in rf.list_runs(workspace)] == ["good"]
    usage = disk.run_usage(workspace / "linked")  # even asked directly, the link is not followed
    assert usage["total"] < 1000


def test_workspace_must_look_like_one(tmp_path, workspace):
    with pytest.raises(rf.RunFolderError, match="filesystem root"):
        rf.check_workspace(Path("/"))
    junk = tmp_path / "usr"
    (junk / "bin").mkdir(parents=True)
    (junk / "lib").mkdir()
    with pytest.raises(rf.RunFolderError, match="does not look like a workspace"):
        rf.check_workspace(junk)
    assert rf.check_workspace(workspace) == workspace
    assert rf.check_workspace(tmp_path / "new") == tmp_path / "new"  # not made yet: a new workspace
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.md").write_text("runs go here")  # loose files are never runs
    assert rf.check_workspace(tmp_path / "empty") == tmp_path / "empty"
    (junk / ".jobs").mkdir()
    assert rf.check_workspace(junk) == junk  # the queue alone makes a workspace


def test_overview_refuses_the_filesystem_root_as_workspace(workspace):
    at = page("pages/overview.py", ws="/")
    assert not at.exception, [e.value for e in at.exception]
    assert any("filesystem root" in e.value for e in at.error)


# ---------------------------------------------------------------- media

def test_clip_player_serves_only_audio_inside_the_workspace_or_the_test_data(workspace, tmp_path):
    data = workspace.parent / "data"
    data.mkdir()
    clip = data / "c1.wav"
    inside = workspace / "good" / "c2.wav"
    secret = tmp_path / "secret.wav"
    for audio in (clip, inside, secret):
        soundfile.write(audio, np.zeros(160, dtype=np.float32), 16000)
    os.symlink(secret, data / "link.wav")
    not_audio = data / "notes.wav"
    not_audio.write_bytes(b"root:x:0:0:root:/root:/bin/bash\n")  # inside a root, named .wav, not audio
    side = review.resolve_picks(rf.list_runs(workspace), ["good/test"], "test", read_predictions)[0]
    roots = review.media_roots(workspace, side)
    assert review.playable_audio(str(clip), roots) == clip.resolve()
    assert review.playable_audio(str(inside), roots) == inside.resolve()
    for refused in (str(secret), str(data / "link.wav"), "/etc/passwd", str(workspace / "missing.wav"),
                    str(not_audio), None, 3.0, ""):
        assert review.playable_audio(refused, roots) is None, refused


def test_a_test_data_path_pointed_at_etc_does_not_make_etc_files_playable(workspace):
    """media_roots trusts the test data an evaluation recorded; someone who can write the
    workspace may point it at /etc. The player still serves audio only."""
    side = review.resolve_picks(rf.list_runs(workspace), ["good/test"], "test", read_predictions)[0]
    evaluation = workspace / "good" / "evaluations" / "test" / rf.EVALUATION
    meta = rf.read_json(evaluation)
    meta["test_data"] = "/etc/hostname"
    rf.atomic_write_json(evaluation, meta)
    side = review.resolve_picks(rf.list_runs(workspace), ["good/test"], "test", read_predictions)[0]
    roots = review.media_roots(workspace, side)
    assert Path("/etc") in roots  # the widened root is there ...
    assert review.playable_audio("/etc/passwd", roots) is None  # ... and serves nothing that is not audio


def test_a_rewrite_killed_before_its_document_leaves_an_unfinished_evaluation(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    old = [make_record(f"c{i}", f"/a/c{i}.wav", "SPEECH", 0.9, 1.0, 1.0) for i in range(4)]
    write_evaluation(run_dir, "test", old, {"model": "tiny"})
    assert rf.list_evaluations(run_dir) == ["test"]
    real = rf.atomic_write_json

    def killed(path, obj, *args, **kwargs):
        if Path(path).name == rf.EVALUATION:
            raise KeyboardInterrupt  # the process dies between predictions.jsonl and evaluation.json
        return real(path, obj, *args, **kwargs)

    monkeypatch.setattr(rf, "atomic_write_json", killed)
    new = [make_record(f"c{i}", f"/a/c{i}.wav", "NONSPEECH", 0.9, 1.0, 1.0) for i in range(2)]
    with pytest.raises(KeyboardInterrupt):
        write_evaluation(run_dir, "test", new, {"model": "tiny"})
    # Not the old summary (4 clips, all SPEECH) beside the new predictions: no finished evaluation.
    assert rf.list_evaluations(run_dir) == []
