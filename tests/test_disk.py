"""Disk usage, clean-up with preview, path safety and preflight on fabricated folders."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import pytest

from engine import cli
from engine.ops import disk
from engine.runs import folder as rf


def write(path: Path, size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    return path


def make_run(root: Path, name: str, state: str, adapter: bool = True, checkpoint: bool = True) -> Path:
    """A training run folder with every kind of file the usage report tells apart."""
    run = root / name
    rf.atomic_write_json(run / rf.CONFIG, {"schema_version": 1, "kind": rf.KIND_TRAIN})
    alive = {"pid": os.getpid(), "process_start_time": rf.process_start_time(os.getpid())}
    rf.write_status(run, state, **(alive if state == rf.RUNNING else {}))
    if adapter:
        write(run / "adapter" / "adapter_model.safetensors", 1000)
        write(run / "adapter" / "adapter_config.json", 100)
    if checkpoint:
        write(run / "checkpoint-10" / "adapter_model.safetensors", 500)
        write(run / "checkpoint-10" / "optimizer.pt", 2000)
        write(run / "checkpoint-10" / "rng_state.pth", 70)
        write(run / "checkpoint-10" / "trainer_state.json", 30)
    write(run / "optimizer.pt", 400)
    write(run / "evaluations" / "test" / "predictions.jsonl", 300)
    write(run / "evaluations" / "test" / "evaluation.json", 40)
    write(run / "engine.log", 50)
    write(run / "metrics.jsonl", 60)
    return run


def file_set(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() or p.is_symlink()}


@pytest.fixture
def root(tmp_path):
    workspace = tmp_path / "runs"
    workspace.mkdir()
    return workspace


@pytest.fixture
def outside(tmp_path):
    folder = tmp_path / "outside"
    write(folder / "precious.bin", 5000)
    return folder


# ---------------------------------------------------------------- usage

def test_run_usage_splits_a_run_folder_by_purpose(root, outside):
    run = make_run(root, "done", rf.SUCCEEDED)
    os.symlink(outside / "precious.bin", run / "linked.bin")  # counted as a link, never followed
    usage = disk.run_usage(run)
    small_files = sum((run / n).stat().st_size for n in (rf.CONFIG, rf.STATUS)) + (run / "linked.bin").lstat().st_size
    assert usage == {"adapters": 1100 + 500, "checkpoints": 30, "optimizer_state": 2000 + 70 + 400,
                     "predictions": 340, "logs": 110, "other": small_files,
                     "total": 1600 + 30 + 2470 + 340 + 110 + small_files}
    assert (run / "linked.bin").lstat().st_size < 5000

    make_run(root, "other", rf.FAILED, checkpoint=False)
    rows = disk.workspace_usage(root)
    assert [(r["run_id"], r["state"], r["kind"]) for r in rows] == [
        ("done", rf.SUCCEEDED, rf.KIND_TRAIN), ("other", rf.FAILED, rf.KIND_TRAIN)]
    assert rows[1]["checkpoints"] == 0 and rows[1]["adapters"] == 1100


# ---------------------------------------------------------------- clean-up

def test_plan_then_execute_deletes_exactly_the_planned_items(root):
    make_run(root, "done", rf.SUCCEEDED)
    make_run(root, "broken", rf.FAILED)
    make_run(root, "live", rf.RUNNING)  # this process is its live "training process"
    make_run(root, "no-final", rf.CANCELLED, adapter=False)
    before = file_set(root)

    plan = disk.plan_cleanup(root, {"intermediate_checkpoints", "optimizer_state"})
    planned = {(Path(i["path"]).relative_to(root).as_posix(), i["action"]) for i in plan.items}
    assert planned == {("done/checkpoint-10", "intermediate_checkpoints"), ("done/optimizer.pt", "optimizer_state"),
                       ("broken/optimizer.pt", "optimizer_state"),
                       ("broken/checkpoint-10", "intermediate_checkpoints"),
                       ("no-final/optimizer.pt", "optimizer_state"),
                       ("no-final/checkpoint-10/optimizer.pt", "optimizer_state"),
                       ("no-final/checkpoint-10/rng_state.pth", "optimizer_state")}
    assert plan.total == 2 * (2600 + 400) + 400 + 2070
    assert any("no-final" in note and "no final adapter" in note for note in plan.notes)
    assert file_set(root) == before  # a plan deletes nothing

    result = disk.execute_cleanup(plan, root)
    assert result["freed_bytes"] == plan.total and result["missing"] == []
    removed = before - file_set(root)
    assert removed == {f for f in before if any(f == p or f.startswith(p + "/") for p, _ in planned)}
    assert (root / "live" / "checkpoint-10" / "optimizer.pt").exists()
    assert (root / "done" / "adapter" / "adapter_model.safetensors").exists()


def test_failed_runs_action_removes_whole_failed_folders_only(root):
    for name, state in [("ok", rf.SUCCEEDED), ("f", rf.FAILED), ("c", rf.CANCELLED), ("x", rf.CRASHED),
                        ("q", rf.QUEUED)]:
        make_run(root, name, state, checkpoint=False)
    plan = disk.plan_cleanup(root, {"failed_runs", "optimizer_state"})
    by_action = {}
    for item in plan.items:
        by_action.setdefault(item["action"], set()).add(Path(item["path"]).name)
    assert by_action == {"failed_runs": {"f", "c", "x"}, "optimizer_state": {"optimizer.pt"}}
    disk.execute_cleanup(plan, root)
    assert sorted(p.name for p in root.iterdir()) == ["ok", "q"]
    assert not (root / "ok" / "optimizer.pt").exists() and (root / "q" / "optimizer.pt").exists()
    with pytest.raises(ValueError, match="unknown clean-up action"):
        disk.plan_cleanup(root, {"everything"})


def elsewhere_run(root: Path, name: str, heartbeat_age_s: float) -> Path:
    """A training run whose process lives in another pid namespace (a container): its pid is not ours."""
    run = make_run(root, name, rf.SUCCEEDED, checkpoint=False)
    beat = time.time() - heartbeat_age_s
    rf.write_status(run, rf.RUNNING, pid=1, pgid=1, process_start_time=1.0, host=rf.hostname(),
                    pid_namespace="pid:[1]", heartbeat_at=beat, heartbeat_interval_s=30.0)
    os.utime(run / rf.STATUS, (beat, beat))  # a silent process stops rewriting its status too
    return run


def test_reports_and_upload_leftovers_are_cleaned_only_as_planned(root, outside):
    write(root / "_reports" / "20261201-101010" / "report.md", 100)
    write(root / "_reports" / "20261202-101010" / "figures" / "loss.png", 300)
    write(root / "_reports" / "plotly-2.35.2.min.js", 4000)
    old_upload = write(root / "_datasets" / ".upload-old" / "part.wav", 700).parent
    fresh_upload = write(root / "_datasets" / ".upload-fresh" / "part.wav", 50).parent
    kept_dataset = write(root / "_datasets" / "heldout-1a2b3c4d" / "manifest.csv", 20)
    hour_ago = time.time() - disk.UPLOAD_LEFTOVER_AGE_S - 5
    os.utime(old_upload, (hour_ago, hour_ago))
    (root / "_reports" / "outside-link").symlink_to(outside, target_is_directory=True)
    make_run(root, "done", rf.SUCCEEDED)

    plan = disk.plan_cleanup(root, {"exported_reports", "upload_leftovers"})
    planned = {Path(i["path"]).relative_to(root).as_posix(): i["action"] for i in plan.items}
    assert planned == {"_reports/20261201-101010": "exported_reports", "_reports/20261202-101010": "exported_reports",
                       "_datasets/.upload-old": "upload_leftovers"}  # a link among them keeps plotly.js
    assert any(".upload-fresh" in note and "left alone" in note for note in plan.notes)
    assert plan.total == 100 + 300 + 700
    disk.execute_cleanup(plan, root)
    assert not old_upload.exists() and fresh_upload.exists() and kept_dataset.exists()
    assert not (root / "_reports" / "20261201-101010").exists() and (root / "_reports" / "plotly-2.35.2.min.js").exists()
    assert (outside / "precious.bin").exists() and (root / "done" / "adapter").is_dir()

    (root / "_reports" / "outside-link").unlink()  # now plotly.js is the only thing left: it goes with the last report
    write(root / "_reports" / "20261203-101010" / "report.md", 10)
    plan = disk.plan_cleanup(root, {"exported_reports"})
    assert {Path(i["path"]).name for i in plan.items} == {"20261203-101010", "plotly-2.35.2.min.js"}


def test_clean_up_never_lists_a_run_running_elsewhere_with_a_fresh_heartbeat(root):
    live = elsewhere_run(root, "in-container", heartbeat_age_s=5)
    quiet = elsewhere_run(root, "quiet-container", heartbeat_age_s=300)  # reads crashed, may be paused
    gone = elsewhere_run(root, "gone-container", heartbeat_age_s=2 * rf.ELSEWHERE_DELETE_AFTER_S)
    plan = disk.plan_cleanup(root, {"failed_runs"})
    assert [Path(item["path"]).name for item in plan.items] == ["gone-container"]
    assert "no heartbeat" in rf.read_status(quiet)["error"] and "no heartbeat" in rf.read_status(gone)["error"]
    assert any(note.startswith("quiet-container: reads crashed but is left alone") for note in plan.notes)
    with pytest.raises(disk.CleanupRefused, match="last heard"):
        disk.delete_run(root, "quiet-container")
    with pytest.raises(disk.CleanupRefused, match="last heard"):
        disk.execute_cleanup(disk.Plan(items=[{"path": str(quiet), "bytes": 1, "reason": "x",
                                               "action": "failed_runs"}]), root)
    assert quiet.is_dir()
    with pytest.raises(disk.CleanupRefused, match="running run in-container"):
        disk.execute_cleanup(disk.Plan(items=[{"path": str(live), "bytes": 1, "reason": "x",
                                               "action": "failed_runs"}]), root)
    with pytest.raises(disk.CleanupRefused, match="running"):
        disk.delete_run(root, "in-container")
    assert live.is_dir()


def test_execute_refuses_a_plan_with_any_path_outside_and_deletes_nothing(root, outside):
    run = make_run(root, "done", rf.SUCCEEDED)
    os.symlink(outside, root / "escape")  # a link inside the workspace pointing outside
    good = {"path": str(run / "optimizer.pt"), "bytes": 400, "reason": "ok", "action": "optimizer_state"}
    before_root, before_outside = file_set(root), file_set(outside)
    for bad_path in (root / "escape", root / "escape" / "precious.bin", outside / "precious.bin",
                     root / ".." / "outside", root, Path("runs/done/engine.log")):
        bad = {"path": str(bad_path), "bytes": 1, "reason": "bad", "action": "failed_runs"}
        with pytest.raises(disk.CleanupRefused, match="refusing"):
            disk.execute_cleanup(disk.Plan(items=[good, bad]), root)
        assert file_set(root) == before_root and file_set(outside) == before_outside

    live = make_run(root, "live", rf.RUNNING)
    with pytest.raises(disk.CleanupRefused, match="running run live"):
        disk.execute_cleanup(disk.Plan(items=[{"path": str(live / "optimizer.pt"), "bytes": 400,
                                               "reason": "x", "action": "optimizer_state"}]), root)
    assert disk.execute_cleanup(disk.Plan(items=[good]), root)["deleted"] == [good["path"]]


def test_delete_run_refuses_escaping_ids_links_and_active_runs(root, outside):
    make_run(root, "keep", rf.SUCCEEDED)
    make_run(root, "live", rf.RUNNING)
    os.symlink(outside, root / "escape")
    os.symlink(root / "keep", root / "alias")
    before_root, before_outside = file_set(root), file_set(outside)
    for run_id, message in [("../outside", "invalid run name"), (str(outside), "invalid run name"),
                            ("escape", "outside the workspace"), ("alias", "is a link"),
                            ("live", "running"), ("missing", "no run")]:
        with pytest.raises(disk.CleanupRefused, match=message):
            disk.delete_run(root, run_id)
    assert file_set(root) == before_root and file_set(outside) == before_outside

    expected = disk.run_usage(root / "keep")["total"]
    assert disk.delete_run(root, "keep") == expected and not (root / "keep").exists() and (root / "live").exists()


# ---------------------------------------------------------------- preflight

def test_adapter_estimates_match_the_peft_counts_for_the_7b():
    # Reference values counted with peft on the meta device.
    assert disk.lora_parameter_count("attention", 16) == 20_709_376
    assert disk.lora_parameter_count("attention+mlp", 16) == 43_909_120
    assert disk.lora_parameter_count("attention", 8) * 2 == 20_709_376
    expected = math.ceil((20 * disk.MB + 20_709_376 * 4 + disk.MB) * 1.5)
    assert disk.estimate_job_bytes("train", lora_r=16, targets="attention") == expected
    assert disk.estimate_job_bytes("eval", n_eval_clips=2000) == math.ceil((20 * disk.MB + 2000 * 1000) * 1.5)
    with pytest.raises(ValueError, match="unknown job kind"):
        disk.estimate_job_bytes("sing")


def test_adapter_estimate_reads_a_local_model_config(tmp_path):
    model = tmp_path / "small"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({
        "text_config": {"hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
                        "num_hidden_layers": 2, "intermediate_size": 128},
        "audio_config": {"d_model": 32, "encoder_layers": 3, "encoder_ffn_dim": 96}}))
    # LM: q 64+64, k 64+32, v 64+32, o 64+64 per layer x 2; encoder: q,k,v 32+32 each x 3.
    assert disk.lora_parameter_count("attention", 2, str(model)) == 2 * (2 * 448 + 3 * 192)


def test_preflight_refuses_when_the_disk_is_nearly_full(root, monkeypatch):
    full = {"path": str(root), "mount": "/data", "total": 10_000 * disk.MB, "used": 9_750 * disk.MB,
            "free": 250 * disk.MB, "free_fraction": 0.025}
    monkeypatch.setattr(disk, "volume_usage", lambda path: full)
    needed = disk.estimate_job_bytes("train", targets="attention+mlp")
    with pytest.raises(disk.DiskSpaceError, match=r"needs 295 MB, only 250 MB free on /data"):
        disk.preflight(root, needed)
    disk.preflight(root, 40 * disk.MB)  # 250 - 200 reserve = 50 MB left
    with pytest.raises(disk.DiskSpaceError):
        disk.preflight(root, 60 * disk.MB)
    assert "2.5%" in disk.low_space_warning(root)
    assert disk.low_space_warning(root, threshold=0.02) is None


def test_volume_usage_of_a_folder_that_does_not_exist_yet(tmp_path):
    usage = disk.volume_usage(tmp_path / "not" / "yet")
    assert usage["total"] >= usage["free"] > 0 and 0 < usage["free_fraction"] <= 1
    assert Path(usage["mount"]).is_dir()


# ---------------------------------------------------------------- model cache

REV_OLD, REV_NEW = "a" * 40, "b" * 40


def fake_cache(cache: Path) -> Path:
    """The hub cache layout: blobs, refs, snapshots whose files link to blobs."""
    repo = cache / "models--org--model"
    write(repo / "blobs" / "shared", 100)
    write(repo / "blobs" / "old-weights", 3000)
    write(repo / "blobs" / "new-weights", 4000)
    for revision, weights in ((REV_OLD, "old-weights"), (REV_NEW, "new-weights")):
        snapshot = repo / "snapshots" / revision
        snapshot.mkdir(parents=True)
        os.symlink(Path("../../blobs/shared"), snapshot / "config.json")
        os.symlink(Path("../../blobs") / weights, snapshot / "model.safetensors")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REV_NEW)
    (repo / "refs" / "old").write_text(REV_OLD)
    return repo


def test_cache_usage_without_a_cache_or_with_an_empty_one(tmp_path):
    missing = disk.cache_usage(tmp_path / "nowhere")
    assert missing.rows == [] and "no model cache" in missing.note and missing.total == 0
    (tmp_path / "empty").mkdir()
    empty = disk.cache_usage(tmp_path / "empty")
    assert empty.rows == [] and "empty" in empty.note


def test_cache_revision_clean_up_keeps_blobs_other_revisions_use(tmp_path, root):
    cache = tmp_path / "hub"
    repo = fake_cache(cache)
    usage = disk.cache_usage(cache)
    rows = sorted(usage.rows, key=lambda r: r["revision"])
    assert [(r["repo_id"], r["revision"], r["size"], r["refs"]) for r in rows] == [
        ("org/model", REV_OLD, 3100, ["old"]), ("org/model", REV_NEW, 4100, ["main"])]
    assert usage.total == 7100 and usage.note is None

    with pytest.raises(ValueError, match="not found in the model cache"):
        disk.plan_cleanup(root, {"cache_revisions"}, cache_dir=cache, revisions=["c" * 40])
    plan = disk.plan_cleanup(root, {"cache_revisions"}, cache_dir=cache, revisions=[REV_OLD])
    assert {Path(i["path"]).relative_to(repo).as_posix() for i in plan.items} == {
        f"snapshots/{REV_OLD}", "refs/old", "blobs/old-weights"}
    assert plan.total == 3000 + len(REV_OLD)
    assert (repo / "snapshots" / REV_OLD).exists()  # nothing deleted by planning

    tampered = disk.Plan(items=plan.items + [{"path": str(repo / "blobs" / "shared"), "bytes": 100,
                                              "reason": "x", "action": "cache_revisions"}],
                         cache_dir=cache, cache_strategy=plan.cache_strategy)
    with pytest.raises(disk.CleanupRefused, match="do not match"):
        disk.execute_cleanup(tampered, root)
    assert (repo / "blobs" / "old-weights").exists()

    disk.execute_cleanup(plan, root, cache_dir=cache)
    assert sorted(p.name for p in (repo / "blobs").iterdir()) == ["new-weights", "shared"]
    assert [r["revision"] for r in disk.cache_usage(cache).rows] == [REV_NEW]


def test_disk_command_reports_runs_and_cache_as_json(tmp_path, root, capsys):
    make_run(root, "done", rf.SUCCEEDED)
    fake_cache(tmp_path / "hub")
    assert cli.main(["disk", "--runs-dir", str(root), "--cache-dir", str(tmp_path / "hub"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [r["run_id"] for r in report["runs"]] == ["done"]
    assert report["cache"]["total"] == 7100 and report["volume"]["total"] > 0
    assert cli.main(["disk", "--runs-dir", str(root), "--cache-dir", str(tmp_path / "hub")]) == 0
    assert "org/model" in capsys.readouterr().out
