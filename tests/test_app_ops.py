"""AppTest of the operations pages: Train, Evaluate, Try a clip and Disk, widgets looked up by key.

Each page runs against a small workspace made in the test; nothing trains (ensure_worker is a
no-op) and Try a clip's scoring is replaced by a stand-in (the real worker is tested in
test_clip_worker.py and, end to end, in test_browser.py).
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from streamlit.testing.v1 import AppTest

from engine.ops import clip_worker
from engine import jobs
from engine.data import datasets
from engine.runs import folder as rf

PAGES = Path(__file__).resolve().parents[1] / "pages"


def page(name: str) -> AppTest:
    return AppTest.from_file(str(PAGES / f"{name}.py"), default_timeout=60)


def texts(elements) -> list[str]:
    return [str(element.value) for element in elements]


@pytest.fixture()
def workspace(empty_workspace) -> Path:
    return empty_workspace


def trained_run(root: Path, name: str, label: str, seed: int) -> Path:
    """A succeeded training run folder as the engine leaves it (adapter files are stand-ins)."""
    run_dir = root / name
    (run_dir / rf.ADAPTER_DIR).mkdir(parents=True)
    for file_name in rf.ADAPTER_FILES:
        (run_dir / rf.ADAPTER_DIR / file_name).write_text("{}")
    rf.atomic_write_json(run_dir / rf.CONFIG, {"schema_version": 1, "kind": "train", "label": label, "seed": seed,
                                                "model": "tiny", "quantization": "4bit"})
    rf.write_status(run_dir, rf.SUCCEEDED)
    return run_dir


def wav_bytes(seconds: float = 0.5, sr: int = 22050, channels: int = 2) -> bytes:
    t = np.arange(int(seconds * sr)) / sr
    samples = np.repeat((0.2 * np.sin(2 * np.pi * 440 * t))[:, None], channels, axis=1)
    buffer = io.BytesIO()
    sf.write(buffer, samples, sr, format="WAV")
    return buffer.getvalue()


def running_job(root: Path, argv: list[str], run_dir: Path | None) -> str:
    """A job the queue reads as running whose process is this test process (alive; never cancel it)."""
    job_id = jobs.enqueue(root, argv, resource="gpu", run_dir=run_dir)
    me = rf.mark_process(root)
    handle = {"executor": "local", **{k: me[k] for k in ("pid", "pgid", "process_start_time", "host", "pid_namespace")}}
    jobs.store.update_job(root, job_id, lambda job: {"state": rf.RUNNING, "started_at": rf.now_iso(), "handle": handle})
    return job_id


def training_run(root: Path, name: str, steps: int, val_epochs: int = 0) -> Path:
    """A running training run (this process) whose metrics.jsonl holds `steps` step lines (6 steps an
    epoch) and validation lines after the first `val_epochs` epochs."""
    run_dir = root / name
    run_dir.mkdir()
    rf.atomic_write_json(run_dir / rf.CONFIG, {"schema_version": 1, "kind": "train", "label": "Live", "seed": 5,
                                                "model": "tiny", "val_data": "val.csv"})
    rf.write_status(run_dir, rf.RUNNING, **rf.mark_process(run_dir),
                    progress={"step": steps, "total_steps": 12, "loss": 0.5, "eta_s": 30, "samples_per_s": 4.0})
    grow_metrics(run_dir, 0, steps, val_epochs)
    return run_dir


def grow_metrics(run_dir: Path, first: int, last: int, val_epochs: int = 0) -> None:
    """Append step lines first+1..last (then the validation lines of whole epochs up to val_epochs)."""
    for step in range(first + 1, last + 1):
        rf.append_jsonl(run_dir / rf.METRICS, {"step": step, "epoch": round(step / 6, 4), "loss": 1.0 / step,
                                               "total_steps": 12})
    for epoch in range(1, val_epochs + 1):
        if 6 * epoch <= last and 6 * epoch > first:
            rf.append_jsonl(run_dir / rf.METRICS, {
                "kind": "validation", "step": 6 * epoch, "epoch": float(epoch), "val_loss": 0.6 / epoch,
                "val_accuracy": 0.5 + 0.25 * epoch / 2, "val_balanced_accuracy": 0.5, "val_clips": 16,
                "elapsed_s": 1.0})


def loss_chart(at):
    """The traces of the page's loss chart and, when drawn, its validation accuracy chart, by series."""
    from tests.test_app_review import chart

    traces = {trace.meta["series"]: trace for trace in chart(at, "loss").data}
    try:
        traces.update({trace.meta["series"]: trace for trace in chart(at, "validation_accuracy").data})
    except AssertionError:  # no validation points: no second chart
        pass
    return traces


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


# ---------------------------------------------------------------- Train

def test_train_preview_validation_launch_and_cancel(workspace, no_worker, tmp_path):
    train_csv = tmp_path / "train.csv"
    train_csv.write_text("path,label\na.wav,SPEECH\n", encoding="utf-8")
    at = page("train").run()
    assert not at.exception
    assert at.button(key="train_launch").disabled  # train_data is still empty
    assert "train_data: is required (a manifest CSV/JSONL or a folder)" in texts(at.error)

    at.text_input(key="train_train_data").input(str(train_csv))
    at.text_input(key="train_model").input("tiny")
    at.text_input(key="train_seed").input("42, 123")
    at.text_input(key="train_lora_r").input("8, 16")
    at.run()
    assert not at.exception and texts(at.error) == []
    assert any(m.startswith("**4 runs** in this launch") for m in texts(at.markdown))
    preview = at.dataframe[0].value
    assert list(preview["run"]) == ["attn-r8-a32-s42", "attn-r8-a32-s123", "attn-r16-a32-s42", "attn-r16-a32-s123"]
    assert set(preview["configuration"]) == {"Attention-Only · r8", "Attention-Only · r16"}
    assert at.code[0].value.startswith("python -m engine train --label 'Attention-Only · r8' --model tiny --lora-r 8 ")
    assert at.button(key="train_launch").label == "Launch 4 runs"

    at.text_input(key="train_lora_alpha").input("-5").run()
    assert texts(at.error) == ["lora_alpha: must be > 0 (got -5)"]
    assert at.button(key="train_launch").disabled
    at.text_input(key="train_lora_alpha").input("32").run()
    assert texts(at.error) == [] and not at.button(key="train_launch").disabled

    share = at.checkbox(key="train_share_base")
    assert share.value is True and share.label == ("Train the sweep in one process over one loaded base model "
                                                   "(faster; GPU, local queue)")
    at.button(key="train_launch").click().run()
    assert not at.exception
    assert any(s.startswith("Queued 4 run(s) as sweep-") for s in texts(at.success))
    assert no_worker == [workspace.resolve()]
    queued = jobs.read_jobs(workspace)
    assert len(queued) == 4 and {job["state"] for job in queued} == {rf.QUEUED}
    assert {job["group"] for job in queued} == {queued[0]["sweep_id"]}  # one shared-base group
    queue = at.dataframe[-1].value
    assert sorted(queue["run"]) == sorted(preview["run"]) and set(queue["state"]) == {rf.QUEUED}
    assert set(queue["command"]) == {"train"}
    # the launched runs exist as queued folders, so the preview now says they would be skipped
    assert set(at.dataframe[0].value["folder"]) == {"queued: skipped"}
    assert at.button(key="train_launch").label == "Launch 0 runs" and at.button(key="train_launch").disabled

    first = queued[0]["job_id"]
    at.button(key=f"cancel_{first}").click().run()
    assert f"Job {first}: dequeued" in texts(at.info)
    assert jobs.read_job(workspace, first)["state"] == rf.CANCELLED
    # the cancelled run is the one unfinished run a resume would queue again (the others are queued)
    sweep_id = queued[0]["sweep_id"]
    assert at.button(key=f"resume_{sweep_id}").label == f"Resume sweep {sweep_id} (1 of 4 runs unfinished)"


def test_train_sweep_runs_alone_when_not_shared_and_a_claimed_member_reads_as_waiting(workspace, no_worker, tmp_path):
    train_csv = tmp_path / "train.csv"
    train_csv.write_text("path,label\na.wav,SPEECH\n", encoding="utf-8")
    at = page("train").run()
    at.text_input(key="train_train_data").input(str(train_csv))
    at.text_input(key="train_model").input("tiny")
    at.text_input(key="train_seed").input("1, 2")
    at.checkbox(key="train_share_base").uncheck().run()
    at.button(key="train_launch").click().run()
    assert not at.exception
    queued = jobs.read_jobs(workspace)
    assert len(queued) == 2 and {job["group"] for job in queued} == {None}

    # A worker claimed both into one shared-base process (this test process stands in for it):
    # the one it has started shows as running, the other as waiting for its turn.
    first, second = (job["job_id"] for job in queued)
    me = rf.mark_process(workspace)
    handle = {"executor": "local", **{k: me[k] for k in ("pid", "pgid", "process_start_time", "host", "pid_namespace")}}
    jobs.store.update_jobs(workspace, lambda current: {job["job_id"]: {
        "state": rf.RUNNING, "started_at": rf.now_iso(), "handle": handle, "group_members": [first, second]}
        for job in current})
    jobs.store.update_job(workspace, first, lambda job: {"member_started_at": rf.now_iso()})
    at.run()
    assert not at.exception
    lines = [m for m in texts(at.markdown) if m.startswith("`")]
    assert any(m.startswith(f"`{second}`") and m.endswith(": running (waiting in shared-base group)") for m in lines)
    assert any(m.startswith(f"`{first}`") and m.endswith(": running") for m in lines)


def test_train_page_follows_the_loss_curve_and_the_validation_points(workspace, no_worker):
    run_dir = training_run(workspace, "live-run", steps=4)
    job_id = running_job(workspace, ["train", "--run-dir", str(run_dir)], run_dir)
    at = page("train").run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.selectbox(key="train_watch").value == "live-run"
    (bar,) = at.get("progress")
    assert bar.proto.value == 33 and "live-run: step 4/12, loss 0.5000" in bar.proto.text
    assert at.button(key=f"cancel_{job_id}")
    traces = loss_chart(at)
    assert list(traces) == ["train_loss"] and list(traces["train_loss"].y) == [1.0, 0.5, 1 / 3, 0.25]

    grow_metrics(run_dir, 4, 8, val_epochs=1)  # the run trains on: two steps, an epoch's end, its validation
    at.run()
    traces = loss_chart(at)
    assert list(traces["train_loss"].x) == list(range(1, 9))
    assert list(traces["val_loss"].x) == [6] and list(traces["val_loss"].y) == [pytest.approx(0.6)]
    assert traces["val_loss"].yaxis == "y2"  # the two-class log loss has an axis of its own
    assert list(traces["val_accuracy"].x) == [6] and list(traces["val_accuracy"].y) == [pytest.approx(62.5)]
    assert list(traces["val_balanced_accuracy"].y) == [50.0]


def test_train_resume_sweep_requeues_unfinished_runs(workspace, no_worker, tmp_path):
    train_csv = tmp_path / "train.csv"
    train_csv.write_text("path,label\na.wav,SPEECH\n", encoding="utf-8")
    cells = [{"run_name": f"attn-r16-a32-s{seed}",
              "config": {"model": "tiny", "seed": seed, "train_data": str(train_csv)}} for seed in (1, 2)]
    sweep = jobs.enqueue_sweep(workspace, cells)
    for name, job_id in sweep["enqueued"].items():  # s1 succeeded, s2 failed
        state = rf.SUCCEEDED if name.endswith("s1") else rf.FAILED
        rf.write_status(workspace / name, state)
        jobs.store.update_job(workspace, job_id, lambda job, s=state: {"state": s})
    at = page("train").run()
    button = at.button(key=f"resume_{sweep['sweep_id']}")
    assert button.label == f"Resume sweep {sweep['sweep_id']} (1 of 2 runs unfinished)"
    button.click().run()
    assert f"Sweep {sweep['sweep_id']}: re-queued 1 unfinished run(s)." in texts(at.info)
    requeued = [job for job in jobs.read_jobs(workspace) if job["state"] == rf.QUEUED]
    assert [Path(job["run_dir"]).name for job in requeued] == ["attn-r16-a32-s2"]
    assert (workspace / "attn-r16-a32-s2.attempt1").is_dir()


def test_train_data_fields_offer_the_uploaded_data_sets(workspace, no_worker):
    stored = datasets.ingest_zip(workspace, "val-set", zip_bytes({"speech/a.wav": wav_bytes(),
                                                                  "nonspeech/b.wav": wav_bytes(seconds=0.4)}))
    at = page("train").run()
    assert not at.exception
    picker = at.selectbox(key="train_val_data_pick")
    assert str(stored.manifest) in picker.options or stored.dataset_id + " (uploaded)" in picker.options
    picker.set_value(str(stored.manifest)).run()
    assert not at.exception
    assert at.text_input(key="train_val_data").value == str(stored.manifest)
    at.selectbox(key="train_train_data_pick").set_value(str(stored.manifest)).run()
    at.text_input(key="train_model").input("tiny").run()
    assert texts(at.error) == []
    assert f"--train-data {stored.manifest}" in at.code[0].value and f"--val-data {stored.manifest}" in at.code[0].value


# ---------------------------------------------------------------- Evaluate

def test_evaluate_uploads_a_zip_and_evaluates_it_under_its_name(workspace, no_worker):
    trained_run(workspace, "cfg-s1", "Cfg", 1)
    upload = zip_bytes({"set/speech/a.wav": wav_bytes(), "set/nonspeech/b.wav": wav_bytes(seconds=0.4),
                        "set/speech/broken.wav": b"not audio", "../evil.wav": wav_bytes(),
                        "set/laughter/c.wav": wav_bytes()})
    at = page("evaluate").run()
    assert not at.exception
    assert at.button(key="eval_upload_store").disabled  # nothing chosen yet
    at.text_input(key="eval_upload_name").input("heldout")
    at.file_uploader(key="eval_upload_zip").set_value([("heldout.zip", upload, "application/zip")]).run()
    at.button(key="eval_upload_store").click().run()
    assert not at.exception
    stored = datasets.list_datasets(workspace)
    assert len(stored) == 1 and stored[0].n_clips == 2
    dataset = stored[0]
    assert texts(at.success) == [f"Stored {dataset.describe()} in {dataset.folder}."]
    refused = next(frame.value for frame in at.dataframe if "reason" in frame.value).set_index("file")["reason"]
    assert sorted(refused.index) == ["../evil.wav", "set/laughter/c.wav", "set/speech/broken.wav"]
    assert refused["../evil.wav"].startswith("unsafe path")
    assert not (workspace.parent / "evil.wav").exists()
    # the stored set is now the test data, and the evaluation is named after it
    assert at.selectbox(key="eval_test_choice").value == str(dataset.manifest)
    assert at.text_input(key="eval_name").value == dataset.dataset_id
    preview = next(frame.value for frame in at.dataframe if "command" in frame.value)
    assert list(preview["evaluation"]) == [dataset.dataset_id]
    assert f"--test-data {dataset.manifest}" in preview["command"][0]
    # another prompt gets its own name, a name typed by hand is kept
    at.radio(key="eval_prompt_choice").set_value("Custom text").run()
    assert at.text_input(key="eval_name").value == f"{dataset.dataset_id}-opro"
    at.text_input(key="eval_name").input("mine").run()
    at.radio(key="eval_prompt_choice").set_value("The run's own prompt").run()
    assert at.text_input(key="eval_name").value == "mine"

    # the same zip again: reused, nothing new stored
    at.button(key="eval_upload_store").click().run()
    assert any(t.startswith(f"The same clips are already stored as {dataset.dataset_id}") for t in texts(at.info))
    assert len(datasets.list_datasets(workspace)) == 1


def test_evaluate_uploads_files_with_a_label_each(workspace, no_worker):
    at = page("evaluate").run()
    at.radio(key="eval_upload_mode").set_value("Audio files with a label each").run()
    at.text_input(key="eval_upload_name").input("by-hand")
    at.file_uploader(key="eval_upload_files").set_value([("one.wav", wav_bytes(), "audio/wav"),
                                                         ("two.wav", wav_bytes(seconds=0.4), "audio/wav")]).run()
    at.selectbox(key="eval_upload_label").set_value("A label per file").run()
    at.selectbox(key="eval_upload_label_1").set_value("NONSPEECH").run()
    at.button(key="eval_upload_store").click().run()
    assert not at.exception
    (dataset,) = datasets.list_datasets(workspace)
    assert dataset.per_class == {"SPEECH": 1, "NONSPEECH": 1} and dataset.layout == "files"

    at.text_input(key="eval_upload_name").input("../escape").run()
    at.button(key="eval_upload_store").click().run()
    assert any(e.startswith("Nothing stored: invalid data set name '../escape'") for e in texts(at.error))
    assert len(datasets.list_datasets(workspace)) == 1


def test_evaluate_every_seed_of_a_configuration(workspace, no_worker):
    test_csv = workspace / "test.csv"
    test_csv.write_text("path,label\na.wav,SPEECH\n", encoding="utf-8")
    for seed in (1, 2):
        trained_run(workspace, f"cfg-s{seed}", "Cfg", seed)
    trained_run(workspace, "other-s1", "Other", 1)
    at = page("evaluate").run()
    assert not at.exception
    at.radio(key="eval_target").set_value("Every seed of a configuration").run()
    at.selectbox(key="eval_config").set_value("Cfg")
    at.selectbox(key="eval_test_choice").set_value("Another path ...").run()
    at.text_input(key="eval_test_path").input(str(test_csv))
    at.multiselect(key="eval_audio").set_value(["real audio", "silence control"]).run()
    assert not at.exception and texts(at.error) == []
    preview = at.dataframe[0].value
    assert list(preview["target"]) == ["cfg-s1", "cfg-s2", "cfg-s1", "cfg-s2"]
    assert list(preview["evaluation"]) == ["test", "test", "test-silence", "test-silence"]

    at.checkbox(key="eval_threshold").check().run()
    assert texts(at.error) == [f"cfg-s{s}: no 'val' evaluation to choose a threshold on (train with val_data, or "
                               "untick the option)" for s in (1, 2)]
    assert at.button(key="eval_launch").disabled
    at.checkbox(key="eval_threshold").uncheck().run()

    at.button(key="eval_launch").click().run()
    assert "Queued 4 evaluation job(s). Results appear in the runs' evaluations when done." in texts(at.success)
    queued = jobs.read_jobs(workspace)
    assert [job["resource"] for job in queued] == ["gpu"] * 4 and {job["argv"][0] for job in queued} == {"eval"}
    assert no_worker == [workspace.resolve()]
    table = at.dataframe[-1].value
    assert sorted(table["evaluation"]) == ["test", "test", "test", "test"]
    assert sorted(table["control"]) == ["", "", "silence", "silence"]


def test_evaluate_job_list_shows_clips_scored_while_it_runs(workspace, no_worker):
    run_dir = trained_run(workspace, "cfg-s1", "Cfg", 1)
    argv = ["eval", "--run", str(run_dir), "--test-data", "test.csv", "--name", "test", "--control", "silence"]
    job_id = running_job(workspace, argv, run_dir)
    at = page("evaluate").run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.get("progress") == [] and f"`{job_id}` **cfg-s1**: running" in texts(at.markdown)
    folder = rf.evaluation_dir(run_dir, "test-silence")
    folder.mkdir(parents=True)
    rf.atomic_write_json(folder / rf.EVALUATION_PROGRESS, {"clips_scored": 24, "total_clips": 64, "clips_per_s": 8.0,
                                                           "eta_s": 5.0})
    at.run()
    (bar,) = at.get("progress")
    assert bar.proto.value == 37  # 24/64
    assert bar.proto.text == "cfg-s1 / test-silence: 24/64 clips scored, 8.0 clips/s, ETA 5 s"
    table = at.dataframe[-1].value
    assert list(table["state"]) == [rf.RUNNING] and list(table["control"]) == ["silence"]


def test_a_base_model_evaluation_reports_progress_from_the_run_it_made(workspace):
    from engine.dashboard import launch

    argv = launch.eval_argv("test.csv", base_model="tiny", runs_root=workspace, run_name="base-tiny")
    job = {"job_id": "j1", "argv": argv, "run_dir": None, "state": rf.RUNNING}
    assert launch.evaluation_progress(job) is None  # the run folder is not made yet
    (workspace / "base-tiny").mkdir()  # an older run of that name: this one became base-tiny-2
    folder = rf.evaluation_dir(workspace / "base-tiny-2", "test")
    folder.mkdir(parents=True)
    rf.atomic_write_json(folder / rf.EVALUATION_PROGRESS, {"clips_scored": 10, "total_clips": 40, "clips_per_s": 10.0,
                                                           "eta_s": 3.0})
    assert launch.evaluation_progress(job) == {"step": 10, "total_steps": 40, "fraction": 0.25, "eta_s": 3.0,
                                               "clips_per_s": 10.0}


def test_evaluate_base_model_preview(workspace, no_worker):
    test_csv = workspace / "test.csv"
    test_csv.write_text("path,label\n", encoding="utf-8")
    at = page("evaluate").run()
    at.radio(key="eval_target").set_value("Base model").run()
    at.text_input(key="eval_base_model").input("tiny")
    at.selectbox(key="eval_test_choice").set_value("Another path ...").run()
    at.text_input(key="eval_test_path").input(str(test_csv)).run()
    assert not at.exception and texts(at.error) == []
    command = at.dataframe[0].value["command"][0]
    assert command.startswith("python -m engine eval --base --model tiny --runs-dir ")
    assert "--run-name base-" in command and f"--test-data {test_csv}" in command


# ---------------------------------------------------------------- Try a clip

def test_try_a_clip_scores_good_files_and_reports_bad_ones(workspace, monkeypatch):
    trained_run(workspace, "cfg-s1", "Cfg", 1)
    calls = []

    def fake_score(runs_root, clips, choices, **kwargs):
        calls.append(([name for name, _ in clips], [c.label for c in choices], [len(a) for _, a in clips]))
        return ([{"clip": name, "adapter": c.label, "p_speech": 0.8125, "pred": "SPEECH", "margin": 1.47, "ms": 12.0}
                 for name, _ in clips for c in choices], [])

    monkeypatch.setattr(clip_worker, "score_clips", fake_score)
    at = page("try_clip").run()
    assert not at.exception
    assert at.multiselect(key="clip_adapters").value == ["cfg-s1"]
    assert at.button(key="clip_score").disabled  # nothing uploaded
    at.file_uploader(key="clip_upload").set_value([("tone.wav", wav_bytes(), "audio/wav"),
                                                   ("broken.wav", b"this is not audio", "audio/wav")])
    at.run()
    assert not at.exception
    assert len(at.error) == 1 and at.error[0].value.startswith("broken.wav: not an audio file soundfile can decode")
    at.multiselect(key="clip_adapters").set_value(["cfg-s1", "base model"]).run()
    at.button(key="clip_score").click().run()
    assert not at.exception
    # only the decodable clip is sent, resampled to 16 kHz mono
    assert calls == [(["tone.wav"], ["cfg-s1", "base model (tiny)"], [8000])]
    matrix = at.table[0].value
    assert list(matrix.index) == ["tone.wav"]
    assert list(matrix.columns) == ["Cfg · seed 1", "base model (tiny)"]
    assert list(matrix.loc["tone.wav"]) == ["0.812 SPEECH", "0.812 SPEECH"]
    table = at.table[1].value  # every score, in the expander below the matrix
    assert list(table["p(SPEECH)"]) == ["0.812", "0.812"] and list(table["prediction"]) == ["SPEECH", "SPEECH"]
    assert len(at.error) == 1  # the broken file's message stays next to it


def test_try_a_clip_matrix_groups_seeds_with_their_mean(workspace, monkeypatch):
    for seed in (2, 1):
        trained_run(workspace, f"cfg-s{seed}", "Cfg", seed)
    trained_run(workspace, "other-s7", "Other", 7)
    scores = {("a.wav", "cfg-s1"): 0.9, ("a.wav", "cfg-s2"): 0.6, ("a.wav", "other-s7"): 0.2,
              ("b.wav", "cfg-s1"): 0.3, ("b.wav", "cfg-s2"): 0.1, ("b.wav", "other-s7"): 0.55}

    def fake_score(runs_root, clips, choices, **kwargs):
        return ([{"clip": name, "adapter": c.label, "p_speech": scores[(name, c.label)],
                  "pred": "SPEECH" if scores[(name, c.label)] >= 0.5 else "NONSPEECH", "margin": 0.0, "ms": 1.0}
                 for name, _ in clips for c in choices], [])

    monkeypatch.setattr(clip_worker, "score_clips", fake_score)
    at = page("try_clip").run()
    at.file_uploader(key="clip_upload").set_value([("a.wav", wav_bytes(), "audio/wav"),
                                                   ("b.wav", wav_bytes(seconds=0.3), "audio/wav")]).run()
    at.multiselect(key="clip_adapters").set_value(["other-s7", "cfg-s2", "cfg-s1"]).run()
    at.button(key="clip_score").click().run()
    assert not at.exception
    matrix = at.table[0].value
    # configurations in the order first picked, seeds ascending, then the mean over the seeds
    assert list(matrix.columns) == ["Other · seed 7", "Cfg · seed 1", "Cfg · seed 2", "Cfg · mean of 2 seeds"]
    assert list(matrix.loc["a.wav"]) == ["0.200 NONSPEECH", "0.900 SPEECH", "0.600 SPEECH", "0.750 SPEECH"]
    assert list(matrix.loc["b.wav"]) == ["0.550 SPEECH", "0.300 NONSPEECH", "0.100 NONSPEECH", "0.200 NONSPEECH"]


# ---------------------------------------------------------------- Disk

def disk_format(n: int) -> str:
    from engine.ops.disk import format_bytes

    return format_bytes(n)


def test_disk_preview_deletes_nothing_until_confirmed(workspace, tmp_path):
    done = trained_run(workspace, "done-s1", "Done", 1)
    checkpoint = done / "checkpoints" / "epoch-1"
    checkpoint.mkdir(parents=True)
    (checkpoint / "adapter_model.safetensors").write_bytes(b"\0" * 50_000)
    failed = workspace / "broken-s2"
    failed.mkdir()
    rf.atomic_write_json(failed / rf.CONFIG, {"kind": "train"})
    rf.write_status(failed, rf.FAILED, error="boom")
    (failed / "engine.log").write_text("boom\n")

    stored = datasets.ingest_zip(workspace, "kept", zip_bytes({"speech/a.wav": wav_bytes()}))
    stored_bytes = sum(p.stat().st_size for p in stored.folder.rglob("*") if p.is_file())

    at = page("disk").run()
    assert not at.exception
    assert [m.label for m in at.metric] == ["Free", "Volume size", "Workspace"]
    assert any(f"Uploaded data sets (_datasets/): {disk_format(stored_bytes)}." in t for t in texts(at.caption))
    sizes = at.dataframe[0].value.set_index("run")
    assert sizes.loc["done-s1", "adapters"] > 0 and sizes.loc["broken-s2", "logs"] > 0
    at.text_input(key="disk_cache_dir").input(str(tmp_path / "no-cache")).run()
    assert "no model cache at" in " ".join(texts(at.caption))

    at.multiselect(key="disk_actions").set_value(["intermediate_checkpoints", "failed_runs"]).run()
    at.button(key="disk_preview").click().run()
    assert not at.exception
    items = at.dataframe[-1].value
    assert sorted(items["path"]) == sorted([str(done / "checkpoints"), str(failed)])
    assert at.button(key="disk_delete").disabled
    assert checkpoint.exists() and failed.exists()  # a preview deletes nothing

    at.checkbox(key="disk_confirm").check().run()
    assert checkpoint.exists() and failed.exists()  # nor does ticking the box
    at.button(key="disk_delete").click().run()
    assert not at.exception
    assert any(s.startswith("Deleted 2 item(s), freed") for s in texts(at.success))
    assert not (done / "checkpoints").exists() and not failed.exists()
    assert (done / rf.ADAPTER_DIR / "adapter_model.safetensors").exists()  # the final adapter is kept
