"""The runs of a shared-base group, trained one after another over one loaded base model.

`python -m engine train-group --runs-dir ROOT JOB_ID ...` is what the queue starts for the jobs
of a sweep queued with "share the base" (engine.jobs.groups): each job is still one run with its
own run folder, config and lifecycle; only the process, the loaded 4-bit base, its dequantized
cache and its compiled layers are shared (`train.SharedBase`). A run of a sweep then costs its
training steps instead of a model load and a compilation each.

Each member is looked up in the queue just before it starts, so a member cancelled while it
waits is skipped; a cancel of the running member stops that run at its next step (looked up at
most once a second) and the group goes on. SIGTERM/SIGINT stop the running member like a cancel
and skip the rest (their run folders say "cancelled"). A member that fails is recorded failed
in its run folder and the group goes on; after a failure inside the model the base is loaded
afresh for the next run.

`train_runs()` is the loop itself, for callers that hold the configs (tests, benchmarks).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from engine.config import ConfigError, TrainConfig
from engine.runs import folder as rf
from engine.runs.lifecycle import StopSignal, describe_error
from engine.tasks.train import SharedBase, config_from_args, train, train_arguments

log = logging.getLogger("engine.tasks.train_group")

# How often a running member looks for a cancel of its own job (a job.json read).
CANCEL_POLL_S = 1.0
# Failures of the run's input (config, data, folder): the base model was not touched, keep it.
INPUT_ERRORS = (ConfigError, rf.RunFolderError, ValueError, FileNotFoundError)


class MemberStop:
    """A member run's stop signal: the group process's own signal (which stops every member), or
    a cancel of this member's job (which stops this run only), looked up at most every CANCEL_POLL_S."""

    interrupt = False
    then = "finishing this step, saving the adapter, then stopping this run"

    def __init__(self, process_stop: StopSignal, cancelled: Callable[[], bool], every_s: float = CANCEL_POLL_S):
        self.process_stop, self.cancelled, self.every_s = process_stop, cancelled, every_s
        self._cancelled, self._checked = False, 0.0

    @property
    def signal(self) -> int | None:
        return self.process_stop.signal

    def install(self) -> "MemberStop":
        return self

    def restore(self) -> None:
        pass

    def __bool__(self) -> bool:
        if self.process_stop:
            return True
        now = time.monotonic()
        if not self._cancelled and now - self._checked >= self.every_s:
            self._checked = now
            try:
                self._cancelled = bool(self.cancelled())
            except OSError as exc:  # an unreadable job.json must not stop a healthy run
                log.warning("could not look for a cancel: %s", exc)
            if self._cancelled:
                log.warning("this run's job was cancelled: %s", self.then)
        return self._cancelled


@dataclass
class Member:
    """One run of a group: what to train, where, and what stops it."""

    cfg: TrainConfig
    run_dir: Path
    stop: Any  # StopSignal or MemberStop


def train_runs(members: Iterable[Member], stop: StopSignal) -> list[dict | None]:
    """Train each member in turn over one shared base; the summaries (None for a failed run).

    `members` is consumed lazily, one member just before it trains. Stops taking members once
    `stop` is set."""
    shared = SharedBase()
    results: list[dict | None] = []
    try:
        for member in members:
            if stop:
                break
            try:
                results.append(train(member.cfg, member.run_dir, stop=member.stop, shared=shared))
            except Exception as exc:  # recorded in the run folder by its lifecycle; the group goes on
                log.error("run %s failed: %s", member.run_dir.name, describe_error(exc))
                # a config refused before the run began leaves its queued folder as it was
                _record_skipped(member.run_dir, rf.FAILED, describe_error(exc))
                if not isinstance(exc, INPUT_ERRORS):
                    shared.release()  # the model may be mid-step: the next run loads it afresh
                results.append(None)
    finally:
        shared.release()
    return results


# ----------------------------------------------------------------------------- the queue's side

def member_from_job(job: dict) -> tuple[TrainConfig, Path]:
    """The config and run folder of a queued `train` job (its argv, as `train` would read it)."""
    from engine.cli import _underscores_to_dashes

    argv = job.get("argv") or []
    if not argv or argv[0] != "train":
        raise ConfigError("argv", f"job {job.get('job_id')} runs {argv[:1]}, not train: it cannot join a group")
    parser = argparse.ArgumentParser(prog="python -m engine train", exit_on_error=False)
    train_arguments(parser)
    try:
        args = parser.parse_args(_underscores_to_dashes(argv[1:]))
    except (argparse.ArgumentError, SystemExit) as exc:
        raise ConfigError("argv", f"job {job.get('job_id')}: cannot read its train command: {exc}") from None
    if not args.run_dir:
        raise ConfigError("argv", f"job {job.get('job_id')}: its train command names no --run-dir")
    return config_from_args(args), Path(args.run_dir)


def _record_skipped(run_dir: Path | None, state: str, error: str | None = None) -> None:
    """A member that never started: its run folder says so, unless it recorded a state itself."""
    if run_dir is None or not run_dir.is_dir():
        return
    try:
        recorded = rf.read_status(run_dir).get("state")
    except (OSError, ValueError):
        recorded = None
    if recorded in (None, rf.QUEUED):
        rf.write_status(run_dir, state, **({"error": error} if error else {}))


def queue_members(runs_root: Path, job_ids: list[str], stop: StopSignal) -> Iterable[Member]:
    """The group's members from the queue, each looked up just before it would start."""
    from engine.jobs import groups, store
    from engine.ops import disk

    for job_id in job_ids:
        try:
            recorded = store.read_job_file(runs_root, job_id)
        except store.JobError as exc:
            log.error("skipping %s: %s", job_id, exc)
            continue
        run_dir = Path(recorded["run_dir"]) if recorded.get("run_dir") else None
        if stop:
            _record_skipped(run_dir, rf.CANCELLED, "the group was stopped before this run started")
            continue
        job = groups.start_member(runs_root, job_id)
        if job is None:  # cancelled while it waited
            log.info("skipping %s: cancelled", job_id)
            _record_skipped(run_dir, rf.CANCELLED)
            continue
        try:
            cfg, run_dir = member_from_job(job)
            disk.preflight(run_dir.parent, disk.train_bytes(cfg.to_dict()))
        except (ConfigError, disk.DiskSpaceError) as exc:
            log.error("run of job %s not started: %s", job_id, exc)
            _record_skipped(run_dir, rf.FAILED, str(exc))
            continue
        yield Member(cfg, run_dir, MemberStop(stop, lambda job_id=job_id: groups.cancel_requested(runs_root, job_id)))


def train_group_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runs-dir", help="workspace (default: $QLORA_DASH_RUNS or ./runs)")
    p.add_argument("job_ids", nargs="+", metavar="JOB_ID", help="queued train jobs of one group, in order")


def train_group_main(args: argparse.Namespace) -> int:
    root = rf.runs_root(args.runs_dir)
    stop = StopSignal(then="finishing this step, saving the adapter, then skipping the group's other runs").install()
    started = time.time()
    try:
        results = train_runs(queue_members(root, list(args.job_ids), stop), stop)
    finally:
        stop.restore()
    failed = sum(result is None for result in results)
    print(f"group of {len(args.job_ids)} job(s): {len(results)} run(s) trained in {time.time() - started:.1f} s, "
          f"{failed} failed", file=sys.stderr if failed else sys.stdout)
    return 3 if failed else 0
