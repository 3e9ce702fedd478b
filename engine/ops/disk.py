"""Disk space: usage of the workspace and the model cache, clean-up with a preview, preflight.

Nothing is ever deleted without a plan: `plan_cleanup()` lists every path with its size and
reason, the user reviews it, and `execute_cleanup()` deletes exactly those paths after checking
again that each one (links followed) is strictly inside the workspace or the model cache.
Hugging Face cache revisions are removed through huggingface_hub's own delete strategy.

No torch here; huggingface_hub is imported only by the cache functions.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from engine.models import DEFAULT_FAMILY, ModelError, family_for
from engine.models.family import read_folder_config
from engine.runs import folder as rf

CATEGORIES = ("adapters", "checkpoints", "optimizer_state", "predictions", "logs", "other")
ACTIONS = ("intermediate_checkpoints", "optimizer_state", "failed_runs", "exported_reports", "upload_leftovers",
           "cache_revisions")
UPLOAD_LEFTOVER_AGE_S = 3600  # a browser upload's scratch folder older than this was left by a crash
FAILED_STATES = frozenset({rf.FAILED, rf.CANCELLED, rf.CRASHED})

# Intermediate checkpoint folders at the top of a run: checkpoint-*, checkpoints/, epoch-*.
_CHECKPOINT_DIR = re.compile(r"^(checkpoint|checkpoints|epoch)([-_.].*)?$")
# Training state that is never needed to use an adapter (optimizer, scheduler, RNG, AMP scaler).
_OPTIMIZER_FILE = re.compile(
    r"^(optimizer|scheduler|rng_state|random_states|scaler)([-_.].*)?\.(pt|pth|bin|pkl|safetensors)$")
_LOG_NAMES = frozenset({rf.LOG, rf.METRICS})

MB = 1_000_000  # decimal megabytes, as the adapter sizes are quoted (83 MB, 176 MB)


class DiskSpaceError(Exception):
    """Not enough free space for a job; the message says how much is needed and where."""


class CleanupRefused(Exception):
    """A clean-up or delete request that could leave the workspace or the cache; nothing was deleted."""


def format_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


# ---------------------------------------------------------------- volume

def _existing_ancestor(path: Path) -> Path:
    path = Path(path).expanduser().resolve()
    while not path.exists():
        path = path.parent
    return path


def _mount_point(path: Path) -> Path:
    path = _existing_ancestor(path)
    while not os.path.ismount(path):
        path = path.parent
    return path


def volume_usage(path: Path) -> dict:
    """{path, mount, total, used, free, free_fraction} of the volume holding `path` (may not exist yet)."""
    usage = shutil.disk_usage(_existing_ancestor(path))
    return {"path": str(path), "mount": str(_mount_point(path)), "total": usage.total, "used": usage.used,
            "free": usage.free, "free_fraction": usage.free / usage.total if usage.total else 0.0}


def low_space_warning(runs_root: Path, threshold: float = 0.10) -> str | None:
    """A sentence for the dashboard when less than `threshold` of the workspace's volume is free."""
    usage = volume_usage(runs_root)
    if usage["free_fraction"] >= threshold:
        return None
    return (f"Only {format_bytes(usage['free'])} ({usage['free_fraction']:.1%}) free on {usage['mount']}, "
            f"which holds the workspace {runs_root}. Free space with Disk clean-up before starting jobs.")


# ---------------------------------------------------------------- run folders

def _tree_bytes(path: Path) -> int:
    """Apparent size of a file or folder; links are counted as links, never followed."""
    path = Path(path)
    if path.is_symlink() or path.is_file():
        return path.lstat().st_size
    total = 0
    for folder, _dirs, files in os.walk(path, followlinks=False):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except FileNotFoundError:
                pass  # deleted while we walked
    return total


def _category(relative: Path) -> str:
    parts = relative.parts
    name = parts[-1]
    if _OPTIMIZER_FILE.match(name):
        return "optimizer_state"
    if parts[0] == rf.EVALUATIONS_DIR:
        return "predictions"
    if name in _LOG_NAMES or name.endswith(".log"):
        return "logs"
    in_checkpoint = len(parts) > 1 and bool(_CHECKPOINT_DIR.match(parts[0]))
    if parts[0] == rf.ADAPTER_DIR or (in_checkpoint and (rf.ADAPTER_DIR in parts[1:-1] or name.startswith("adapter"))):
        return "adapters"
    if in_checkpoint:
        return "checkpoints"
    return "other"


def run_usage(run_dir: Path) -> dict:
    """Bytes of one run folder split into CATEGORIES, plus "total".

    adapters: adapter/ and the adapter files of checkpoint folders; checkpoints: everything else
    in intermediate checkpoint folders; optimizer_state: optimizer/scheduler/RNG files anywhere;
    predictions: evaluations/; logs: *.log and metrics.jsonl.
    """
    run_dir = Path(run_dir)
    sizes = dict.fromkeys(CATEGORIES, 0)
    if run_dir.is_symlink():  # os.walk follows a link given as the top: count the link, not its target
        sizes["other"] = run_dir.lstat().st_size
        sizes["total"] = sizes["other"]
        return sizes
    for folder, _dirs, files in os.walk(run_dir, followlinks=False):
        for name in files:
            path = Path(folder) / name
            try:
                size = path.lstat().st_size
            except FileNotFoundError:
                continue
            sizes[_category(path.relative_to(run_dir))] += size
    sizes["total"] = sum(sizes[c] for c in CATEGORIES)
    return sizes


def workspace_usage(runs_root: Path) -> list[dict]:
    """One row per run folder: run_id, path, kind, state and run_usage()'s figures."""
    rows = []
    for run_dir in rf.iter_run_dirs(Path(runs_root)):
        info = rf.read_run(run_dir)
        rows.append({"run_id": info.run_id, "path": str(run_dir), "kind": info.kind, "state": info.state,
                     **run_usage(run_dir)})
    return rows


def queue_usage(runs_root: Path) -> int:
    """Bytes held by the job queue folder (job files and job logs)."""
    folder = Path(runs_root) / ".jobs"
    return _tree_bytes(folder) if folder.is_dir() else 0


# Workspace folders that are not runs (names owned by engine.data.datasets and engine.dashboard.report).
SHARED_FOLDERS = {"_datasets": "uploaded data sets", "_reports": "exported reports"}


def shared_usage(runs_root: Path) -> dict[str, int]:
    """Bytes held by each folder of SHARED_FOLDERS (0 when absent)."""
    return {name: _tree_bytes(Path(runs_root) / name) if (Path(runs_root) / name).is_dir() else 0
            for name in SHARED_FOLDERS}


# ---------------------------------------------------------------- model cache

@dataclass
class CacheUsage:
    """The Hugging Face hub cache: one row per repo revision; `note` explains an empty result."""

    cache_dir: Path
    rows: list[dict] = field(default_factory=list)
    note: str | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        # Revisions of one repo share blobs: count each repo once, not each revision.
        return sum({row["repo_path"]: row["repo_size"] for row in self.rows}.values())


def default_cache_dir() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _scan(cache_dir: Path):
    from huggingface_hub import scan_cache_dir

    return scan_cache_dir(cache_dir)


def cache_usage(cache_dir: Path | None = None) -> CacheUsage:
    """Rows {repo_id, repo_type, revision, size, last_modified, refs, snapshot_path, repo_size, repo_path}."""
    from huggingface_hub import CacheNotFound

    cache_dir = Path(cache_dir or default_cache_dir()).expanduser()
    result = CacheUsage(cache_dir=cache_dir)
    try:
        info = _scan(cache_dir)
    except CacheNotFound:
        result.note = f"no model cache at {cache_dir}"
        return result
    except ValueError as exc:  # the path is a file
        result.note = str(exc)
        return result
    result.warnings = [str(w) for w in info.warnings]
    for repo in sorted(info.repos, key=lambda r: (r.repo_type, r.repo_id)):
        for revision in sorted(repo.revisions, key=lambda r: r.last_modified, reverse=True):
            result.rows.append({
                "repo_id": repo.repo_id, "repo_type": repo.repo_type, "revision": revision.commit_hash,
                "size": revision.size_on_disk, "last_modified": _iso(revision.last_modified),
                "refs": sorted(revision.refs), "snapshot_path": str(revision.snapshot_path),
                "repo_size": repo.size_on_disk, "repo_path": str(repo.repo_path)})
    if not result.rows:
        result.note = f"the model cache at {cache_dir} is empty"
    return result


def _iso(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(timestamp))


# ---------------------------------------------------------------- clean-up

@dataclass
class Plan:
    """What a clean-up would delete: items [{path, bytes, reason, action}] and their total."""

    items: list[dict] = field(default_factory=list)
    cache_dir: Path | None = None
    cache_strategy: Any = None  # huggingface_hub DeleteCacheStrategy for the cache items
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(int(item["bytes"]) for item in self.items)


def plan_cleanup(runs_root: Path, actions: Iterable[str], cache_dir: Path | None = None,
                 revisions: Iterable[str] = ()) -> Plan:
    """Preview a clean-up; deletes nothing.

    actions: "intermediate_checkpoints" (checkpoint folders of finished runs that kept their
    final adapter), "optimizer_state" (optimizer/scheduler/RNG files of finished runs),
    "failed_runs" (whole folders of failed, cancelled and crashed runs), "exported_reports" (the
    report folders in _reports/; the shared plotly.js goes with the last one), "upload_leftovers"
    (hidden scratch folders of browser uploads in _datasets/ older than an hour: an upload cut off
    by a crash), "cache_revisions" (the hub-cache `revisions` listed, by commit hash).
    """
    actions = set(actions)
    unknown = sorted(actions - set(ACTIONS))
    if unknown:
        raise ValueError(f"unknown clean-up action(s) {', '.join(unknown)}; known: {', '.join(ACTIONS)}")
    plan = Plan()
    runs_root = Path(runs_root)
    for run_dir in rf.iter_run_dirs(runs_root):
        if run_dir.is_symlink():
            plan.notes.append(f"{run_dir.name}: a link, left alone")
            continue
        info = rf.read_run(run_dir)
        if not info.readable:
            plan.notes.append(f"{run_dir.name}: unreadable ({info.error}), left alone")
            continue
        waiting = rf.may_still_run_elsewhere(run_dir, info.status)
        if waiting:
            plan.notes.append(f"{info.run_id}: reads {info.state} but is left alone: {waiting}")
            continue
        if "failed_runs" in actions and info.state in FAILED_STATES:
            plan.items.append(_item(run_dir, "failed_runs", f"{info.state} run {info.run_id}"))
            continue
        if info.state not in rf.TERMINAL_STATES:
            continue  # never touch a queued or running run
        planned_dirs: list[Path] = []
        if "intermediate_checkpoints" in actions:
            if (run_dir / rf.ADAPTER_DIR / rf.ADAPTER_FILES[1]).is_file():
                for child in sorted(run_dir.iterdir()):
                    if child.is_dir() and not child.is_symlink() and _CHECKPOINT_DIR.match(child.name):
                        plan.items.append(_item(child, "intermediate_checkpoints",
                                                f"intermediate checkpoint of {info.state} run {info.run_id} "
                                                "(final adapter kept)"))
                        planned_dirs.append(child)
            elif any(_CHECKPOINT_DIR.match(c.name) for c in run_dir.iterdir()):
                plan.notes.append(f"{info.run_id}: checkpoints kept, the run has no final adapter")
        if "optimizer_state" in actions:
            for folder, dirs, files in os.walk(run_dir, followlinks=False):
                if any(Path(folder) == d or d in Path(folder).parents for d in planned_dirs):
                    continue
                for name in sorted(files):
                    path = Path(folder) / name
                    if _OPTIMIZER_FILE.match(name) and not path.is_symlink():
                        plan.items.append(_item(path, "optimizer_state",
                                                f"training state of {info.state} run {info.run_id}"))
    if "exported_reports" in actions:
        _plan_reports(plan, runs_root)
    if "upload_leftovers" in actions:
        _plan_upload_leftovers(plan, runs_root)
    if "cache_revisions" in actions:
        _plan_cache(plan, cache_dir, list(revisions))
    return plan


def _shared_children(runs_root: Path, folder: str):
    """The entries of a shared workspace folder (_reports, _datasets); none when it is a link."""
    base = runs_root / folder
    if base.is_symlink() or not base.is_dir():
        return []
    return sorted(base.iterdir())


def _plan_reports(plan: Plan, runs_root: Path) -> None:
    children = _shared_children(runs_root, "_reports")
    reports = [c for c in children if c.is_dir() and not c.is_symlink()]
    plan.items += [_item(c, "exported_reports", f"exported report {c.name}") for c in reports]
    others = [c for c in children if c not in reports]
    if reports and all(c.is_file() and not c.is_symlink() and c.name.startswith("plotly") for c in others):
        plan.items += [_item(c, "exported_reports", "plotly.js shared by the reports (none left)") for c in others]


def _plan_upload_leftovers(plan: Plan, runs_root: Path) -> None:
    now = time.time()
    for child in _shared_children(runs_root, "_datasets"):
        if child.name.startswith(".upload-") and child.is_dir() and not child.is_symlink():
            age = now - child.stat().st_mtime
            if age >= UPLOAD_LEFTOVER_AGE_S:
                plan.items.append(_item(child, "upload_leftovers", f"unfinished upload from {_iso(child.stat().st_mtime)}"))
            else:
                plan.notes.append(f"{child.name}: an upload from the last hour, left alone (it may still be running)")


def _item(path: Path, action: str, reason: str, size: int | None = None) -> dict:
    return {"path": str(path), "bytes": _tree_bytes(path) if size is None else size,
            "reason": reason, "action": action}


def _plan_cache(plan: Plan, cache_dir: Path | None, revisions: list[str]) -> None:
    cache_dir = Path(cache_dir or default_cache_dir()).expanduser()
    plan.cache_dir = cache_dir
    if not revisions:
        plan.notes.append("no cache revisions selected")
        return
    info = _scan(cache_dir)
    by_hash = {rev.commit_hash: (repo, rev) for repo in info.repos for rev in repo.revisions}
    missing = [r for r in revisions if r not in by_hash]
    if missing:
        raise ValueError(f"revision(s) {', '.join(missing)} not found in the model cache {cache_dir}")
    strategy = info.delete_revisions(*revisions)
    blob_sizes = {f.blob_path: f.size_on_disk for repo in info.repos for rev in repo.revisions for f in rev.files}
    repo_by_path = {repo.repo_path: repo for repo in info.repos}

    def owner(path: Path) -> str:
        for repo_path, repo in repo_by_path.items():
            if path == repo_path or repo_path in path.parents:
                return repo.repo_id
        return "?"

    for path in sorted(strategy.repos):
        repo = repo_by_path[path]
        plan.items.append(_item(path, "cache_revisions", f"cached {repo.repo_type} {repo.repo_id}: every "
                                "revision selected, the whole repo goes", repo.size_on_disk))
    for path in sorted(strategy.snapshots):
        plan.items.append(_item(path, "cache_revisions", f"snapshot {path.name[:12]} of {owner(path)} "
                                "(links; the files they point to are listed separately)", 0))
    for path in sorted(strategy.refs):
        plan.items.append(_item(path, "cache_revisions", f"ref {path.name} of {owner(path)}"))
    for path in sorted(strategy.blobs):
        plan.items.append(_item(path, "cache_revisions", f"file used only by the selected revisions of "
                                f"{owner(path)}", blob_sizes.get(path, 0)))
    plan.cache_strategy = strategy


def _strategy_paths(strategy: Any) -> set[str]:
    return {str(p) for group in (strategy.repos, strategy.snapshots, strategy.refs, strategy.blobs) for p in group}


def execute_cleanup(plan: Plan, runs_root: Path, cache_dir: Path | None = None) -> dict:
    """Delete exactly the planned items; returns {deleted, missing, freed_bytes}.

    Every path is checked first (links followed): workspace items strictly inside `runs_root`,
    not a link, not in a queued or running run; cache items strictly inside the cache and
    exactly the paths of the plan's huggingface_hub strategy. One bad item refuses the whole
    plan (CleanupRefused) before anything is deleted.
    """
    root = Path(runs_root).resolve()
    cache = Path(cache_dir or plan.cache_dir).expanduser().resolve() if (cache_dir or plan.cache_dir) else None
    problems: list[str] = []
    run_items, cache_items = [], []
    for item in plan.items:
        path = Path(item["path"])
        if item.get("action") == "cache_revisions":
            cache_items.append(item)
            if cache is None or not rf.is_inside(path, cache):
                problems.append(f"{path} is not inside the model cache {cache}")
            continue
        run_items.append(item)
        if not path.is_absolute():
            problems.append(f"{path} is not an absolute path")
        elif path.is_symlink():
            problems.append(f"{path} is a link")
        elif not rf.is_inside(path, root):
            problems.append(f"{path} is not inside the workspace {root}")
        else:
            run_dir = root / path.resolve().relative_to(root).parts[0]
            state = _recorded_state(run_dir)
            if state in rf.ACTIVE_STATES:
                problems.append(f"{path} belongs to the {state} run {run_dir.name}")
            elif (waiting := _elsewhere(run_dir)):
                problems.append(f"{path} belongs to run {run_dir.name}: {waiting}")
    if cache_items:
        planned = {item["path"] for item in cache_items}
        if plan.cache_strategy is None or _strategy_paths(plan.cache_strategy) != planned:
            problems.append("the cache items do not match the plan's huggingface_hub delete strategy")
    if problems:
        raise CleanupRefused("refusing to delete anything: " + "; ".join(problems))

    deleted, missing, freed = [], [], 0
    for item in run_items:
        path = Path(item["path"])
        if not path.exists():
            missing.append(str(path))
            continue
        size = _tree_bytes(path)
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
        deleted.append(str(path))
        freed += size
    if cache_items:
        plan.cache_strategy.execute()
        deleted += sorted(item["path"] for item in cache_items)
        freed += sum(int(item["bytes"]) for item in cache_items)
    return {"deleted": deleted, "missing": missing, "freed_bytes": freed}


def _recorded_state(run_dir: Path) -> str | None:
    try:
        return rf.read_status(run_dir).get("state")
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        return None


def _elsewhere(run_dir: Path) -> str | None:
    try:
        return rf.may_still_run_elsewhere(run_dir, rf.read_status(run_dir))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return None


def delete_run(runs_root: Path, run_id: str) -> int:
    """Delete one run folder by id; returns the bytes freed. Refuses ids that leave the
    workspace, links, and runs still queued or running."""
    root = Path(runs_root).resolve()
    try:
        run_dir = rf.resolve_in_root(root, run_id)
    except rf.RunFolderError as exc:
        raise CleanupRefused(str(exc)) from None
    if (root / run_id).is_symlink():
        raise CleanupRefused(f"run {run_id!r} is a link in {root}; remove the link by hand")
    if not run_dir.is_dir():
        raise CleanupRefused(f"no run {run_id!r} in {root}")
    state = _recorded_state(run_dir)
    if state in rf.ACTIVE_STATES:
        raise CleanupRefused(f"run {run_id!r} is {state}; cancel its job before deleting it")
    waiting = _elsewhere(run_dir)
    if waiting:
        raise CleanupRefused(f"run {run_id!r} is not deleted: {waiting}")
    size = _tree_bytes(run_dir)
    shutil.rmtree(run_dir)
    return size


# ---------------------------------------------------------------- preflight

_LORA_SAVE_BYTES = 4  # adapters are saved in fp32 whatever the base model's quantization
_PREDICTION_RECORD_BYTES = 1_000  # one JSONL record with manifest metadata, generously
_LOG_MARGIN = 20 * MB  # engine.log, metrics.jsonl, summary, environment
_SAFETY_FACTOR = 1.5
_KINDS = ("train", "eval", "baseline", "imported")


def lora_parameter_count(targets: str | list[str], lora_r: int, model: str = DEFAULT_FAMILY.default_model) -> int:
    """Trainable LoRA parameters of `model` without loading weights (the model family counts them).

    A local model folder's config.json gives its real sizes; anything else, or a folder whose
    config lacks them, counts as the family's default model (a safe overestimate).
    """
    try:
        family = family_for(model)
    except ModelError:
        family = DEFAULT_FAMILY  # an estimate only: loading the model reports the real problem
    return family.lora_parameter_count(targets, lora_r, read_folder_config(model))


def estimate_job_bytes(kind: str, model: str = DEFAULT_FAMILY.default_model, lora_r: int = 16,
                       targets: str | list[str] = "attention", quantization: str = "4bit",
                       n_eval_clips: int = 0, n_adapters: int = 1) -> int:
    """Bytes a job may write, with a safety factor: adapters (fp32 LoRA weights; the 7B with
    r=16 gives 83 MB attention-only, 176 MB attention+MLP, linear in r), predictions and logs.
    The quantization does not change it: the base model is never written."""
    if kind not in _KINDS:
        raise ValueError(f"unknown job kind {kind!r}; one of {', '.join(_KINDS)}")
    if quantization not in ("4bit", "8bit", "none"):
        raise ValueError(f"unknown quantization {quantization!r}")
    needed = _LOG_MARGIN + max(0, int(n_eval_clips)) * _PREDICTION_RECORD_BYTES
    if kind == "train":
        adapter = lora_parameter_count(targets, lora_r, model) * _LORA_SAVE_BYTES + MB  # + config, header
        needed += max(1, int(n_adapters)) * adapter
    return int(math.ceil(needed * _SAFETY_FACTOR))


def train_bytes(config: dict) -> int:
    """What one training run of `config` (TrainConfig fields) may write: its final adapter, plus
    one per epoch with epoch checkpoints, logs and metrics. The Train page and `engine train`
    both check this against the free space."""
    from engine.config import TINY_MODEL, TrainConfig
    from engine.models.qwen2_audio.tiny import default_tiny_dir

    epochs = float(config.get("epochs") or 1)
    adapters = 1 + (int(epochs) if config.get("checkpoints") == "epoch" else 0)
    model = str(config.get("model") or TrainConfig().model)
    if model in (TINY_MODEL, DEFAULT_FAMILY.demo_model):  # the demo model has the tiny one's sizes
        model = str(default_tiny_dir())  # its folder gives its real sizes
    return estimate_job_bytes("train", model=model, lora_r=int(config.get("lora_r") or 16),
                              targets=config.get("targets") or "attention",
                              quantization=config.get("quantization") or "4bit", n_adapters=adapters)


def preflight(runs_root: Path, needed_bytes: int, reserve_fraction: float = 0.02) -> None:
    """Raise DiskSpaceError unless `needed_bytes` fit while `reserve_fraction` of the volume stays free."""
    usage = volume_usage(runs_root)
    reserve = reserve_fraction * usage["total"]
    if needed_bytes > usage["free"] - reserve:
        raise DiskSpaceError(
            f"needs {needed_bytes / MB:.0f} MB, only {usage['free'] / MB:.0f} MB free on {usage['mount']} "
            f"(keeping {reserve / MB:.0f} MB, {reserve_fraction:.0%} of the volume, in reserve); "
            f"free space with Disk clean-up or choose another workspace")


# ---------------------------------------------------------------- CLI

def disk_report(runs_root: Path, cache_dir: Path | None = None) -> dict:
    cache = cache_usage(cache_dir)
    return {
        "runs_root": str(runs_root),
        "volume": volume_usage(runs_root),
        "warning": low_space_warning(runs_root),
        "runs": workspace_usage(runs_root),
        "queue_bytes": queue_usage(runs_root),
        "shared_bytes": shared_usage(runs_root),
        "cache": {"cache_dir": str(cache.cache_dir), "rows": cache.rows, "note": cache.note,
                  "warnings": cache.warnings, "total": cache.total},
    }


def disk_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs-dir", help="workspace (default: $QLORA_DASH_RUNS or ./runs)")
    parser.add_argument("--cache-dir", help="Hugging Face hub cache (default: $HF_HUB_CACHE or ~/.cache/...)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def disk_main(args: argparse.Namespace) -> int:
    root = rf.runs_root(args.runs_dir)
    report = disk_report(root, Path(args.cache_dir) if args.cache_dir else None)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    volume = report["volume"]
    print(f"Volume {volume['mount']}: {format_bytes(volume['free'])} free of {format_bytes(volume['total'])} "
          f"({volume['free_fraction']:.1%})")
    if report["warning"]:
        print(f"WARNING: {report['warning']}", file=sys.stderr)
    print(f"\nWorkspace {root}: {len(report['runs'])} runs, "
          f"{format_bytes(sum(r['total'] for r in report['runs']))}; job queue {format_bytes(report['queue_bytes'])}")
    if report["runs"]:
        header = ["run", "state", *CATEGORIES, "total"]
        table = [[r["run_id"], r["state"], *(format_bytes(r[c]) for c in CATEGORIES), format_bytes(r["total"])]
                 for r in report["runs"]]
        _print_table(header, table)
    cache = report["cache"]
    print(f"\nModel cache {cache['cache_dir']}: {format_bytes(cache['total'])}")
    if cache["note"]:
        print(f"  ({cache['note']})")
    if cache["rows"]:
        _print_table(["repo", "revision", "refs", "size", "last modified"],
                     [[r["repo_id"], r["revision"][:12], ",".join(r["refs"]), format_bytes(r["size"]),
                       r["last_modified"]] for r in cache["rows"]])
    return 0


def _print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows)]
    for row in [header, *rows]:
        print("  " + "  ".join(str(x).ljust(w) for x, w in zip(row, widths)))
