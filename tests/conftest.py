"""Shared fixtures. The expensive ones are session-scoped and built with the real engine."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# Two real exports of another tool (MIT; see the README.md in that folder).
EXAMPLES = REPO_ROOT / "tests" / "data" / "seed_predictions"


def wait_for(predicate, timeout_s: float = 15.0, what: str = "condition", poll_s: float = 0.03):
    """predicate()'s first truthy value, polled every poll_s; fails the test after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def kill_jobs_left_running(workspace: Path) -> None:
    """SIGKILL the process group of every job of `workspace` still alive: what a failing test left running."""
    import signal

    from engine.jobs import local, store

    for job in store.raw_jobs(workspace):
        if job.get("pgid") and local._process_state(job["pid"], job["process_start_time"]) == "alive":
            os.killpg(job["pgid"], signal.SIGKILL)


def pytest_collection_modifyitems(items) -> None:
    """A test that needs the demo workspace is `slow`: building it trains four tiny runs."""
    for item in items:
        if "demo_workspace" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def examples_dir() -> Path:
    if not EXAMPLES.is_dir():
        pytest.skip(f"example exports not found at {EXAMPLES}")
    return EXAMPLES


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """The built-in tiny model folder (built once into the user's cache, reused afterwards)."""
    from engine.models.qwen2_audio.tiny import ensure_tiny_model

    return ensure_tiny_model()


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory) -> dict[str, Path]:
    """Synthetic SPEECH/NONSPEECH data: 96 train, 32 test (16/16), 16 val clips."""
    from engine.data.synth import make_dataset

    return make_dataset(tmp_path_factory.mktemp("demo-data"), n_train=96, n_test=32, n_val=16, seed=0)


@pytest.fixture(scope="session")
def demo_workspace(tmp_path_factory, tiny_model, examples_dir) -> Path:
    """A workspace made by the engine: tiny attention / attention+MLP runs over two seeds with a
    test evaluation each, the Silero baseline, and the two example exports imported.

    Set QLORA_DASH_TEST_WORKSPACE to a folder to build it once and reuse it across sessions.
    """
    from engine.tasks.demo import build_demo
    from engine.tasks.importing import import_predictions

    reuse = os.environ.get("QLORA_DASH_TEST_WORKSPACE")
    root = Path(reuse) if reuse else tmp_path_factory.mktemp("workspace")
    if not (root / "example-lora-s42").exists():
        build_demo(root, seeds=(42, 123), n_train=96, say=lambda msg: None)  # half the demo's clips: faster
        import_predictions(examples_dir / "base_predictions.csv", "example-base", root,
                           config_label="Base (example)", seed=42)
        import_predictions(examples_dir / "lora_seed42_predictions.csv", "example-lora-s42", root,
                           config_label="LoRA (example)", seed=42)
    return root


@pytest.fixture()
def no_worker(monkeypatch) -> list:
    """Pages queue jobs but no worker runs them: the stand-in takes the worker lock, as a started
    worker would (so pages see one running), and runs nothing. The list collects the workspaces
    a worker was started for."""
    from engine import jobs
    from engine.jobs import store

    started, locks = [], []

    def start_none(runs_root, **kwargs):
        if jobs.worker_running(runs_root):
            return None
        started.append(Path(runs_root))
        locks.append(store.try_lock(store.jobs_dir(runs_root) / store.WORKER_LOCK))
        return None

    monkeypatch.setattr(jobs, "ensure_worker", start_none)
    yield started
    for fd in locks:
        os.close(fd)


@pytest.fixture()
def empty_workspace(tmp_path, monkeypatch) -> Path:
    """A new, empty workspace that the dashboard pages read (through $QLORA_DASH_RUNS)."""
    from engine.runs import folder as rf

    root = tmp_path / "ws"
    root.mkdir()
    monkeypatch.setenv(rf.RUNS_ROOT_ENV, str(root))
    return root


@pytest.fixture()
def manifests(tmp_path) -> dict[str, Path]:
    """Two tiny manifests, "dev" and "test", for forms that only check that the files exist."""
    paths = {}
    for name in ("dev", "test"):
        paths[name] = tmp_path / f"{name}.csv"
        paths[name].write_text("path,label\na.wav,SPEECH\nb.wav,NONSPEECH\n", encoding="utf-8")
    return paths
