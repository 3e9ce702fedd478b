"""The one run lifecycle (engine/runs/lifecycle.py) and the one liveness check (engine/runs/folder.py).

Fast: no model is loaded. Full-disk faults are in tests/test_faults_disk.py.
"""

from __future__ import annotations

import ast
import logging
import os
import signal
import time
from pathlib import Path

import pytest

from engine.runs import folder as rf
from engine.runs import lifecycle
from engine.runs.lifecycle import StopRequested, StopSignal, run_lifecycle

REPO_ROOT = Path(__file__).resolve().parents[1]


def files_of(run_dir: Path) -> set[str]:
    return {p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*") if p.is_file()}


def engine_handlers() -> list[logging.Handler]:
    return list(logging.getLogger("engine").handlers)


# ---------------------------------------------------------------- terminal states

def test_a_body_that_returns_succeeds_with_where_its_process_lives(tmp_path):
    run_dir = tmp_path / "ok"
    handlers, sigterm = engine_handlers(), signal.getsignal(signal.SIGTERM)
    with run_lifecycle(run_dir, rf.KIND_EVAL, config={"kind": rf.KIND_EVAL}, environment=lambda: {"python": "x"}) as run:
        status = rf.read_json(run_dir / rf.STATUS)
        assert status["state"] == rf.RUNNING and status["kind"] == rf.KIND_EVAL
        assert status["pid"] == os.getpid() and status["pgid"] == os.getpgid(0) and status["process_start_time"]
        assert status["host"] == rf.hostname() and status["pid_namespace"] == rf.pid_namespace()
        assert abs(status["heartbeat_at"] - time.time()) < 60 and status["heartbeat_interval_s"] > 0
        assert (run_dir / lifecycle.RESERVE).is_file()  # room kept for the final status
        assert signal.getsignal(signal.SIGTERM) != sigterm  # the stop flag is installed
        run.set_result(clip_count=3)
    status = rf.read_json(run_dir / rf.STATUS)
    assert status["state"] == rf.SUCCEEDED and status["error"] is None and status["ended_at"]
    assert status["clip_count"] == 3
    assert files_of(run_dir) == {"config.json", "status.json", "environment.json", "engine.log"}
    assert not [h for h in engine_handlers() if isinstance(h, logging.FileHandler) and h not in handlers]
    assert signal.getsignal(signal.SIGTERM) == sigterm


def test_stop_requested_ends_cancelled_without_raising(tmp_path):
    with run_lifecycle(tmp_path / "stop", rf.KIND_OPRO, log=False) as run:
        raise StopRequested("enough")
    assert run.state == rf.CANCELLED
    assert rf.read_json(tmp_path / "stop" / rf.STATUS)["state"] == rf.CANCELLED


def test_a_received_signal_ends_cancelled_and_is_recorded(tmp_path):
    stop = StopSignal()
    with run_lifecycle(tmp_path / "sig", rf.KIND_TRAIN, stop=stop, log=False):
        stop.signal = signal.SIGTERM  # what the handler does
    status = rf.read_json(tmp_path / "sig" / rf.STATUS)
    assert status["state"] == rf.CANCELLED and status["signal"] == signal.SIGTERM and status["error"] is None


def test_an_interruptible_body_is_stopped_by_sigterm_at_once(tmp_path):
    with run_lifecycle(tmp_path / "int", rf.KIND_BASELINE, log=False, interruptible=True) as run:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # never finishes: the handler raises StopRequested
        raise AssertionError("not interrupted")
    assert run.state == rf.CANCELLED
    assert rf.read_json(tmp_path / "int" / rf.STATUS)["signal"] == signal.SIGTERM


def test_a_failure_is_recorded_with_its_message_and_raised(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        with run_lifecycle(tmp_path / "bad", rf.KIND_TRAIN, log=False):
            raise RuntimeError("boom")
    status = rf.read_json(tmp_path / "bad" / rf.STATUS)
    assert status["state"] == rf.FAILED and status["error"] == "RuntimeError: boom"
    assert not (tmp_path / "bad" / lifecycle.RESERVE).exists()


def test_keyboard_interrupt_ends_cancelled(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with run_lifecycle(tmp_path / "kbd", rf.KIND_TRAIN, log=False):
            raise KeyboardInterrupt
    status = rf.read_json(tmp_path / "kbd" / rf.STATUS)
    assert status["state"] == rf.CANCELLED and status["error"] == "interrupted"


def test_a_folder_holding_another_run_is_refused_and_left_alone(tmp_path):
    run_dir = tmp_path / "taken"
    rf.write_status(run_dir, rf.SUCCEEDED)
    before = rf.read_json(run_dir / rf.STATUS)
    with pytest.raises(rf.RunFolderError, match=r"already holds a run \(succeeded\)"):
        with run_lifecycle(run_dir, rf.KIND_TRAIN, log=False):
            raise AssertionError("body must not run")
    assert rf.read_json(run_dir / rf.STATUS) == before


def test_rerunning_into_a_crashed_run_says_crashed(tmp_path, capsys):
    from engine import cli

    run_dir = tmp_path / "crashed"
    rf.write_status(run_dir, rf.RUNNING, **dict(rf.mark_process(run_dir), pid=2**22 + 12345))
    before = rf.read_json(run_dir / rf.STATUS)
    (tmp_path / "train.csv").write_text("path,label\na.wav,SPEECH\n", encoding="utf-8")
    assert cli.main(["train", "--model", "tiny", "--train-csv", str(tmp_path / "train.csv"),
                     "--run-dir", str(run_dir)]) == 1
    assert "already holds a run (crashed)" in capsys.readouterr().err
    assert rf.read_json(run_dir / rf.STATUS) == before


def test_a_queued_folder_is_adopted(tmp_path):
    run_dir = tmp_path / "queued"
    rf.atomic_write_json(run_dir / rf.CONFIG, {"kind": rf.KIND_TRAIN})
    rf.write_status(run_dir, rf.QUEUED)
    with run_lifecycle(run_dir, rf.KIND_TRAIN, log=False):
        pass
    assert rf.read_json(run_dir / rf.STATUS)["state"] == rf.SUCCEEDED


# ---------------------------------------------------------------- progress and heartbeat

def test_progress_is_throttled_unless_forced(tmp_path):
    with run_lifecycle(tmp_path / "p", rf.KIND_TRAIN, log=False) as run:
        assert run.progress(step=1, total_steps=4) is True
        assert run.progress(step=2, total_steps=4) is False  # within a second of the last write
        assert rf.read_progress(run.run_dir)["step"] == 1
        assert run.progress(step=3, total_steps=4, force=True) is True
        assert rf.read_progress(run.run_dir) == {"step": 3, "total_steps": 4}
    assert rf.read_progress(tmp_path / "nothing-here") is None


def test_the_heartbeat_is_refreshed_while_the_body_runs_and_stops_after(tmp_path):
    run_dir = tmp_path / "beat"
    with run_lifecycle(run_dir, rf.KIND_TRAIN, log=False, heartbeat_s=0.05):
        first = rf.read_json(run_dir / rf.STATUS)["heartbeat_at"]
        deadline = time.monotonic() + 10
        while rf.read_json(run_dir / rf.STATUS)["heartbeat_at"] == first and time.monotonic() < deadline:
            time.sleep(0.02)
        assert rf.read_json(run_dir / rf.STATUS)["heartbeat_at"] > first
    final = rf.read_json(run_dir / rf.STATUS)
    time.sleep(0.2)
    assert rf.read_json(run_dir / rf.STATUS) == final and final["state"] == rf.SUCCEEDED


# ---------------------------------------------------------------- the one liveness check

def foreign_status(run_dir: Path, heartbeat_age_s: float, **where) -> Path:
    """A running status written by a process in another pid namespace (a container)."""
    fields = dict(pid=1, pgid=1, process_start_time=1.0, host=rf.hostname(), pid_namespace="pid:[1]",
                  heartbeat_at=time.time() - heartbeat_age_s, heartbeat_interval_s=30.0)
    fields.update(where)
    rf.atomic_write_json(run_dir / rf.CONFIG, {"kind": rf.KIND_TRAIN})
    rf.write_status(run_dir, rf.RUNNING, **fields)
    beat = time.time() - heartbeat_age_s
    os.utime(run_dir / rf.STATUS, (beat, beat))  # a silent process stops rewriting its status too
    return run_dir


@pytest.mark.parametrize("where", [{"pid_namespace": "pid:[1]"}, {"host": "another-host"}])
def test_a_run_in_another_namespace_or_host_is_alive_while_its_heartbeat_is_fresh(tmp_path, where):
    run_dir = foreign_status(tmp_path / "elsewhere", heartbeat_age_s=5, **where)
    assert rf.read_status(run_dir)["state"] == rf.RUNNING


def test_a_stale_heartbeat_reads_crashed_and_says_why(tmp_path):
    run_dir = foreign_status(tmp_path / "stale", heartbeat_age_s=200)
    status = rf.read_status(run_dir)
    assert status["state"] == rf.CRASHED and status["recorded_state"] == rf.RUNNING
    assert "no heartbeat for 200 s" in status["error"] and "pid:[1]" in status["error"]


def test_a_writer_whose_clock_runs_behind_is_alive_while_it_rewrites_its_status(tmp_path):
    """heartbeat_at comes from the writer's clock; status.json's modification time from the file
    system's. A live run elsewhere whose clock is 95 s behind must not read crashed."""
    run_dir = foreign_status(tmp_path / "skewed", heartbeat_age_s=95, host="another-host")
    os.utime(run_dir / rf.STATUS)  # just rewritten by its heartbeat
    assert rf.read_status(run_dir)["state"] == rf.RUNNING


def test_a_local_run_is_decided_by_pid_and_start_time(tmp_path):
    here = rf.mark_process(tmp_path)
    assert rf.liveness(here) == (True, None)
    assert rf.liveness(dict(here, process_start_time=here["process_start_time"] - 100))[0] is False  # pid reused
    alive, why = rf.liveness(dict(here, pid=2**22 + 12345, heartbeat_at=time.time()))
    assert not alive and "died without a final state" in why  # a fresh heartbeat does not save a dead local pid
    assert rf.liveness({"pid": os.getpid(), "process_start_time": here["process_start_time"]})[0]  # older status


# ---------------------------------------------------------------- no import circles

def _engine_imports() -> dict[str, set[str]]:
    modules = {}
    for path in (REPO_ROOT / "engine").rglob("*.py"):
        name = ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts).removesuffix(".__init__")
        modules[name] = path
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):  # lazy imports included
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        graph[name] = {m for m in found if m in modules and m not in (name, "engine")}
    return graph


def _reaches(graph: dict[str, set[str]], start: str, goal: str) -> bool:
    seen, todo = set(), list(graph[start])
    while todo:
        node = todo.pop()
        if node == goal:
            return True
        if node not in seen:
            seen.add(node)
            todo.extend(graph[node])
    return False


def test_no_task_module_and_no_run_folder_module_is_in_an_import_circle():
    graph = _engine_imports()
    circular = sorted(m for m in graph if m.startswith(("engine.tasks.", "engine.runs.lifecycle", "engine.runs.folder"))
                      and _reaches(graph, m, m))
    assert circular == []
