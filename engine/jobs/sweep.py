"""Sweeps: the form's comma-separated lists, their cartesian product as named run cells, and
queueing the cells that have not succeeded yet (resume).

Queueing a sweep holds `.jobs/sweep.lock` (an O_EXCL lock file, safe on NFS) around the pending
check, the move-aside of failed attempts and the preparation of the run folders, so two browser
sessions launching the same sweep at once queue it once; the later one finds every cell
"already queued or running".

No torch and no streamlit here.
"""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path
from typing import Any, Iterable

from engine.jobs import store
from engine.jobs.tracking import active_jobs
from engine.runs import folder as rf

ALREADY_QUEUED = "already queued or running"
ALREADY_SUCCEEDED = "already succeeded"
SWEEP_LOCK_TIMEOUT_S = 60.0

_NAME_TAGS = {"lora_r": "r", "lora_alpha": "a", "seed": "s", "learning_rate": "lr", "epochs": "ep",
              "lora_dropout": "do", "quantization": "q", "max_steps": "steps"}
_TARGET_TAGS = {"attention": "attn", "attention+mlp": "attn+mlp"}


def parse_list(text: str, item_type: type = int) -> list:
    """"42, 123, 456" -> [42, 123, 456]; item_type int, float or str. Junk raises ValueError."""
    if item_type not in (int, float, str):
        raise ValueError(f"item_type must be int, float or str (got {item_type!r})")
    items = [part.strip() for part in str(text).split(",")]
    if not any(items):
        raise ValueError("the list is empty: give values separated by commas, e.g. 42, 123, 456")
    values: list = []
    for position, item in enumerate(items, start=1):
        if not item:
            raise ValueError(f"item {position} of {text!r} is empty (two commas in a row?)")
        try:
            if item_type is int:
                number = float(item)
                if not number.is_integer():
                    raise ValueError
                value: Any = int(number)
            elif item_type is float:
                value = float(item)
                if value != value or value in (float("inf"), float("-inf")):
                    raise ValueError
            else:
                value = item
        except ValueError:
            kind = {int: "a whole number", float: "a finite number"}.get(item_type, "a value")
            raise ValueError(f"item {position} of {text!r}: {item!r} is not {kind}") from None
        if value in values:
            raise ValueError(f"item {position} of {text!r}: {item!r} is listed twice")
        values.append(value)
    return values


def expand_sweep(base: dict, lists: dict[str, list]) -> list[dict]:
    """Cartesian product of `lists` over `base`: [{"run_name", "config"}], one per cell, in order.

    Names are deterministic, e.g. "attn-r16-a32-s42" (label or target preset, then rank, alpha,
    seed and any other swept field). When more than the seed varies, each cell's "label" names
    its configuration for people (e.g. "My sweep · r8 · α16 · attention+MLP", see label_part), so
    seeds of one cell aggregate together. A base label that is just a preset's name (as TrainConfig.to_dict() fills it in) counts as unset, and
    the derived keys target_modules and effective_batch are dropped (train recomputes them).
    """
    from engine.config import PRESET_LABELS

    for key, values in lists.items():
        if not isinstance(values, (list, tuple)) or not values:
            raise ValueError(f"sweep field {key!r} needs a non-empty list of values (got {values!r})")
    swept = list(lists)
    cells = []
    seen: dict[str, dict] = {}
    for combination in itertools.product(*(lists[k] for k in swept)):
        cell = dict(zip(swept, combination))
        config = {k: v for k, v in {**base, **cell}.items() if k not in ("target_modules", "effective_batch")}
        targets = config.get("targets", "attention")
        target_key = targets if isinstance(targets, str) else ",".join(targets)
        base_label = str(base.get("label") or "")
        if base_label in PRESET_LABELS.values():
            base_label = ""
            config.pop("label", None)
        parts = [base_label or _TARGET_TAGS.get(target_key, target_key)]
        if base_label and "targets" in swept:
            parts.append(_TARGET_TAGS.get(target_key, target_key))
        for key in ("lora_r", "lora_alpha", "seed"):
            if key in config:
                parts.append(f"{_NAME_TAGS[key]}{_name_value(config[key])}")
        for key in swept:
            if key not in ("lora_r", "lora_alpha", "seed", "targets"):
                parts.append(f"{_NAME_TAGS.get(key, key)}{_name_value(config[key])}")
        name = _safe_name("-".join(parts))
        if name in seen:
            raise ValueError(f"sweep cells {seen[name]} and {cell} would share the run name {name!r}")
        seen[name] = cell
        non_seed = [k for k in swept if k != "seed"]
        if non_seed:
            label = base_label or PRESET_LABELS.get(target_key, target_key)
            shown = [k for k in non_seed if not (k == "targets" and not base_label)]
            config["label"] = " · ".join([label, *(label_part(k, config[k]) for k in _label_order(shown))])
        cells.append({"run_name": name, "config": config})
    return cells


# How a swept field reads in a configuration's label ("My sweep · r8 · α16 · attention+MLP");
# run folder names keep the short tags above.
_LABEL_FORMS = {"lora_r": "r{}", "lora_alpha": "α{}", "learning_rate": "lr {}", "epochs": "{} epochs",
                "lora_dropout": "dropout {}", "max_steps": "{} steps", "quantization": "{}"}
_TARGET_TEXT = {"attention": "attention", "attention+mlp": "attention+MLP"}
_LABEL_FIRST = ("lora_r", "lora_alpha")  # rank and alpha first, the target set last: the order a grid reads


def label_part(key: str, value: Any) -> str:
    """One swept value as a configuration label shows it: "r8", "α16", "lr 0.0002", "attention+MLP"."""
    if key == "targets":
        text = value if isinstance(value, str) else "+".join(str(v) for v in value)
        return _TARGET_TEXT.get(text, text)
    form = _LABEL_FORMS.get(key)
    return form.format(_name_value(value)) if form else f"{key} {_name_value(value)}"


def _label_order(keys: list[str]) -> list[str]:
    first = [k for k in _LABEL_FIRST if k in keys]
    last = [k for k in keys if k == "targets"]
    return first + [k for k in keys if k not in first and k not in last] + last


def _name_value(value: Any) -> str:
    """A swept value as it appears in run names and labels (lists joined with '+': a name has no commas)."""
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "+".join(str(v) for v in value)
    return str(value)


def _safe_name(raw: str) -> str:
    name = re.sub(r"[^A-Za-z0-9._+-]+", "-", raw)
    name = re.sub(r"-{2,}", "-", name).lstrip("._+-")[:128].rstrip("-") or "run"
    return rf.check_run_name(name)


def sweep_pending(runs_root: Path, names: Iterable[str]) -> list[str]:
    """The names whose run folder has not succeeded (missing, failed, ...): what a resume redoes."""
    pending = []
    for name in names:
        run_dir = rf.resolve_in_root(Path(runs_root), name)
        try:
            state = rf.read_status(run_dir).get("state")
        except (FileNotFoundError, json.JSONDecodeError, NotADirectoryError):
            state = None
        if state != rf.SUCCEEDED:
            pending.append(name)
    return pending


def enqueue_sweep(runs_root: Path, cells: list[dict], sweep_id: str | None = None,
                  resource: str = "gpu", share_base: bool = False) -> dict:
    """One `train` job per pending cell; returns {"sweep_id", "enqueued": {name: job_id}, "skipped": {...}}.

    The job runs `train --config <run>/config.json --run-dir <run>`: the prepared config.json
    (JSON is YAML) carries the cell's fields to the trainer.

    Succeeded cells and cells with an active job are skipped. A cell whose folder holds an earlier
    failed attempt keeps that attempt, renamed "<name>.attemptN", and is run again. Each cell is
    its own job, so a failing cell does not stop the others. Runs under the sweep lock (it waits
    for another launch to finish; LockBusyError after a minute). `engine.jobs.submit_sweep` also
    ensures a worker.

    With `share_base` every cell's job gets `group = sweep_id`: the local worker then trains the
    sweep's queued cells one after another in one process over one loaded base model (docs/JOBS.md,
    "Shared-base groups"). A cell that trains on several GPUs (`num_processes` > 1) relaunches
    itself through accelerate and is left out of the group.
    """
    runs_root = Path(runs_root)
    sweep_id = sweep_id or f"sweep-{store.new_job_id()}"
    with store.exclusive_lock_file(store.jobs_dir(runs_root) / store.SWEEP_LOCK, timeout_s=SWEEP_LOCK_TIMEOUT_S):
        return _enqueue_pending(runs_root, cells, sweep_id, resource, share_base)


def _shares_base(config: dict) -> bool:
    """Whether a cell can train in a shared-base group: not when it launches one process per GPU."""
    processes = config.get("num_processes", 1)
    return not isinstance(processes, int) or processes <= 1


def _enqueue_pending(runs_root: Path, cells: list[dict], sweep_id: str, resource: str, share_base: bool) -> dict:
    active_runs = {job.get("run_dir") for job in active_jobs(runs_root)}
    pending = set(sweep_pending(runs_root, [c["run_name"] for c in cells]))
    enqueued: dict[str, str] = {}
    skipped: dict[str, str] = {}
    for cell in cells:
        name = cell["run_name"]
        run_dir = rf.resolve_in_root(runs_root, name)
        if name not in pending:
            skipped[name] = ALREADY_SUCCEEDED
            continue
        if str(run_dir) in active_runs:
            skipped[name] = ALREADY_QUEUED
            continue
        if run_dir.exists():
            _move_aside(run_dir)
        argv = ["train", "--config", str(run_dir / rf.CONFIG), "--run-dir", str(run_dir)]
        group = sweep_id if share_base and _shares_base(cell["config"]) else None
        enqueued[name] = store.enqueue(runs_root, argv, resource=resource, sweep_id=sweep_id,
                                       prepare_run=(run_dir, cell["config"]), group=group)
    return {"sweep_id": sweep_id, "enqueued": enqueued, "skipped": skipped}


def _move_aside(run_dir: Path) -> Path:
    for n in itertools.count(1):
        target = run_dir.with_name(f"{run_dir.name}.attempt{n}")
        if not target.exists():
            run_dir.rename(target)
            return target
    raise AssertionError("unreachable")
