"""The tables behind the review side of the dashboard (Overview, Results, Compare) and the report.

Pure functions over run folders and prediction records: every statistic comes from
engine.stats.core (docs/STATISTICS.md) and is only arranged and formatted here. Imports pandas,
numpy, stats, runfolder, predictions and config only: no streamlit, no torch.

Vocabulary:
- a *configuration* is the set of runs that differ only by seed (same label and the same
  resolved config once per-run fields such as the seed are left out);
- a *side* is one pick on the Compare page: a configuration (one evaluation per seed) or a
  single evaluation "run_id/evaluation";
- seed keys are the runs' seeds; a run without a seed is keyed by its run id.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import pandas as pd

from engine.runs import folder as rf
from engine.stats import core as stats
from engine.runs.predictions import CLASSES, NONSPEECH, RECORD_FIELDS, SPEECH

DEFAULT_EVALUATION = "test"
OVERALL = "Overall"
METRICS = (OVERALL, SPEECH, NONSPEECH)
# Fields that vary from seed to seed (or from file to file) without making another configuration.
PER_RUN_FIELDS = frozenset({"seed", "schema_version", "source_file", "source_sha256", "column_mapping",
                            "device", "num_workers", "run_name"})
# Columns of the overview table, in order.
OVERVIEW_COLUMNS = ("name", "configuration", "seed", "kind", "status", "attempts", "evaluation", "clips", "overall",
                    *CLASSES, "trainable %", "adapter MB", "created", "size MB", "slurm job")
# A failed sweep cell's earlier try, moved aside by engine.jobs.sweep._move_aside ("<run>.attemptN").
ATTEMPT_NAME = re.compile(r"^(?P<run>.+)\.attempt(?P<n>[0-9]+)$")
# OPRO config fields that belong to one target run (its folder, adapter, seed): left out when OPRO
# runs are grouped into the configuration of the runs they searched for.
OPRO_PER_TARGET_FIELDS = frozenset({"target", "adapter", "search_seed", "label"})
CLIP_OUTCOMES = ("false positive", "false negative", "correct")

Loader = Callable[[Path], list[dict]]


class SelectionError(ValueError):
    """A pick on the Compare or Results page that names nothing usable; the message says why."""


# ---------------------------------------------------------------- workspace signature

def _mtime_ns(path: str) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return 0


def workspace_signature(root: Path) -> str:
    """A cheap fingerprint of every run folder's state, for caches keyed on modification times.

    Covers each run folder, its config.json and status.json (a status write changes the
    folder's mtime too) and every evaluation folder (evaluation.json is replaced atomically in
    it). A few stat calls per run: about 10 ms for 1,000 runs.
    """
    digest = hashlib.blake2b(digest_size=16)
    try:
        entries = sorted((e for e in os.scandir(root) if not e.name.startswith((".", "_"))),
                         key=lambda e: e.name)
    except OSError:
        return "missing"
    for entry in entries:
        if not entry.is_dir():
            continue
        evals = os.path.join(entry.path, rf.EVALUATIONS_DIR)
        parts = [entry.name, entry.stat().st_mtime_ns, _mtime_ns(os.path.join(entry.path, rf.CONFIG)),
                 _mtime_ns(os.path.join(entry.path, rf.STATUS)), _mtime_ns(evals)]
        try:
            parts += [(e.name, e.stat().st_mtime_ns) for e in os.scandir(evals)]
        except OSError:
            pass
        digest.update(repr(parts).encode())
    return digest.hexdigest()


def run_folder_names(root: Path) -> frozenset[str]:
    """Names of the run folders, without reading them: tells the live view that a run appeared."""
    try:
        return frozenset(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith((".", "_")))
    except OSError:
        return frozenset()


# ---------------------------------------------------------------- formatting

def pct(fraction: float | None, digits: int = 1) -> str:
    return "n/a" if fraction is None else f"{100.0 * fraction:.{digits}f}%"


def format_interval(ci: Sequence[float] | None, scale: float = 100.0) -> str:
    """'[80.0, 98.3]' from a fraction interval (scale 100) or a percent one (scale 1)."""
    if not ci or ci[0] is None or (isinstance(ci[0], float) and math.isnan(ci[0])):
        return "n/a"
    return f"[{scale * ci[0]:.1f}, {scale * ci[1]:.1f}]"


def format_accuracy(correct: int, n: int, ci: Sequence[float] | None) -> str:
    """'93.8% (30/32) [80.0, 98.3]': accuracy, exact counts and the 95% interval in percent."""
    if not n:
        return stats.format_count(0, 0)
    return f"{stats.format_count(correct, n)} {format_interval(ci)}"


def format_p(p: float | None) -> str:
    """Three significant digits; scientific notation below 0.001."""
    if p is None:
        return "n/a"
    return f"{p:.2e}" if p < 1e-3 else f"{p:.3g}"


def format_pts(points: float | None) -> str:
    if points is None:
        return "n/a"
    return f"{0.0 if abs(points) < 0.05 else points:+.1f}"


def format_eta(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "unknown"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def format_mb(mb: float | None) -> str:
    if mb is None:
        return "—"
    return f"{mb:.3f} MB" if mb < 1 else f"{mb:.1f} MB"


def format_trainable(percent: float | None) -> str:
    return "—" if percent is None else f"{percent:.4f}%"


def seed_text(key: Any) -> str:
    return f"seed {key}" if isinstance(key, int) else str(key)


# ---------------------------------------------------------------- overview

def preferred_evaluation(names: Sequence[str]) -> str | None:
    """The evaluation a run is summarised by: "test" when it has one, else the first by name."""
    if not names:
        return None
    return DEFAULT_EVALUATION if DEFAULT_EVALUATION in names else sorted(names)[0]


def _evaluation_document(run_dir: Path, name: str) -> dict:
    document = rf.read_json(rf.evaluation_dir(run_dir, name) / rf.EVALUATION)
    if not isinstance(document, dict):
        raise ValueError("not a JSON object")
    return document


def run_seed(info: rf.RunInfo) -> int | None:
    """The run's seed, or None when it has none or an unusable one (e.g. a text seed)."""
    try:
        return info.seed
    except (TypeError, ValueError):
        return None


def attempt_of(name: str) -> tuple[str, int] | None:
    """("attn-r8-a16-s42", 1) for the moved-aside attempt "attn-r8-a16-s42.attempt1", else None."""
    match = ATTEMPT_NAME.match(name)
    return (match["run"], int(match["n"])) if match else None


def superseded_attempts(runs: Iterable[rf.RunInfo]) -> dict[str, list[str]]:
    """Run id -> its earlier attempts' folder names, for attempts whose run folder exists."""
    runs = list(runs)
    ids = {info.run_id for info in runs}
    out: dict[str, list[str]] = {}
    for info in runs:
        parsed = attempt_of(info.run_id)
        if parsed and parsed[0] in ids:
            out.setdefault(parsed[0], []).append(info.run_id)
    return out


def evaluation_names(runs: Iterable[rf.RunInfo]) -> list[str]:
    """Every evaluation name of the readable runs, "test" first, then by name."""
    names = {e for info in runs if info.readable for e in info.evaluations}
    return sorted(names, key=lambda n: (n != DEFAULT_EVALUATION, n))


def overview_row(info: rf.RunInfo, size_bytes: int | None = None, evaluation: str | None = None) -> dict[str, Any]:
    """One overview row; a broken folder gives status "unreadable: why" instead of raising.

    The accuracies are those of `evaluation` (empty when the run has none of that name); without
    one, of the run's preferred evaluation ("test", else its first).
    """
    row: dict[str, Any] = dict.fromkeys(OVERVIEW_COLUMNS)
    row.update(name=info.run_id, kind=info.kind, attempts=1)
    row["size MB"] = None if size_bytes is None else size_bytes / 1e6
    if not info.readable:
        row["status"] = f"unreadable: {info.error}"
        return row
    row.update(configuration=info.config_label, seed=run_seed(info), status=info.state,
               created=info.status.get("created_at") or info.status.get("started_at"))
    row["trainable %"] = info.summary.get("trainable_percent")
    row["adapter MB"] = info.summary.get("adapter_mb")
    slurm = info.status.get("slurm")
    row["slurm job"] = slurm.get("job_id") if isinstance(slurm, dict) else None
    name = preferred_evaluation(info.evaluations) if evaluation is None else (
        evaluation if evaluation in info.evaluations else None)
    if name:
        row["evaluation"] = name
        try:
            summary = _evaluation_document(info.path, name)["summary"]
            row["clips"] = _whole(summary["n"], "n")
            row["overall"] = _as_pct(_fraction_field(summary["accuracy"], "accuracy"))
            for cls in CLASSES:
                row[cls] = _as_pct(_fraction_field(summary["per_class"][cls]["accuracy"], f"{cls} accuracy"))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            row["status"] = f"unreadable: evaluations/{name}/{rf.EVALUATION}: {_reason(exc)}"
    return row


def _reason(exc: Exception) -> str:
    if isinstance(exc, FileNotFoundError):
        return "missing"
    if isinstance(exc, json.JSONDecodeError):
        return f"corrupt JSON ({exc.msg}, line {exc.lineno})"
    if isinstance(exc, KeyError):
        return f"no field {exc.args[0]!r}"
    if isinstance(exc, UnicodeDecodeError):
        return "not UTF-8 text"
    if isinstance(exc, (TypeError, AttributeError)):
        return f"a field has the wrong type ({exc})"
    return str(exc)


def _whole(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"summary field {name!r} is {value!r}, not a whole number")
    return value


def _fraction_field(value: Any, name: str) -> float | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise ValueError(f"summary field {name!r} is {value!r}, not a number")
    return value


def _as_pct(fraction: float | None) -> float | None:
    return None if fraction is None else 100.0 * fraction


def overview_table(runs: Iterable[rf.RunInfo], sizes: Mapping[str, int] | None = None,
                   evaluation: str | None = None) -> pd.DataFrame:
    """Every run: name, configuration, seed, kind, status, attempts, accuracies in percent (of
    `evaluation`, see overview_row), trainable %, adapter MB, created and size on disk (MB).
    Sorted newest first.

    A resumed sweep's earlier attempts ("<run>.attemptN") are folded into their run's row: they
    count in its `attempts` and its size on disk, and are not rows of their own.
    """
    sizes = sizes or {}
    runs = list(runs)
    attempts = superseded_attempts(runs)
    folded = {name for names in attempts.values() for name in names}
    rows = []
    for info in runs:
        if info.run_id in folded:
            continue
        row = overview_row(info, sizes.get(info.run_id), evaluation)
        earlier = attempts.get(info.run_id, [])
        if earlier:
            row["attempts"] = 1 + len(earlier)
            known = [sizes[name] for name in [info.run_id, *earlier] if name in sizes]
            row["size MB"] = sum(known) / 1e6 if known else None
        rows.append(row)
    frame = pd.DataFrame(rows, columns=list(OVERVIEW_COLUMNS))
    for column in ("seed", "clips", "attempts"):
        frame[column] = frame[column].astype("Int64")
    for column in ("overall", SPEECH, NONSPEECH, "trainable %", "adapter MB", "size MB"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    return frame.sort_values(["created", "name"], ascending=[False, True], na_position="last",
                             ignore_index=True)


def status_group(status: str | None) -> str:
    """'running 3/48' -> 'running'; 'unreadable: missing config.json' -> 'unreadable'."""
    return str(status or "?").split(":")[0].split(" ")[0]


def filter_overview(frame: pd.DataFrame, kinds: Iterable[str] = (), statuses: Iterable[str] = (),
                    text: str = "") -> pd.DataFrame:
    """Rows of the chosen kinds and status groups whose name or configuration contains `text`."""
    keep = pd.Series(True, index=frame.index)
    kinds, statuses = list(kinds), list(statuses)
    if kinds:
        keep &= frame["kind"].isin(kinds)
    if statuses:
        keep &= frame["status"].map(status_group).isin(statuses)
    text = text.strip().lower()
    if text:
        haystack = pd.Series("", index=frame.index)
        for column in ("name", "configuration"):  # a configurations table has no run names
            if column in frame:
                haystack += frame[column].fillna("").astype(str) + " "
        keep &= haystack.str.lower().str.contains(text, regex=False)
    return frame[keep].reset_index(drop=True)


RESULTS_PAGE = "pages/results.py"


def results_link(row: Mapping[str, Any], evaluation: str | None) -> tuple[dict[str, str] | None, str | None]:
    """Where a click on an Overview row leads: (Results page query parameters, None), or
    (None, why not) for a row that cannot be opened.

    A run row opens that run's evaluation, a configuration row (no "name") the configuration."""
    if "name" not in row:
        params = {"config": str(row["configuration"])}
    elif str(row.get("status") or "").startswith("unreadable"):
        return None, f"{row['name']} cannot be opened: its folder is {row['status']}"
    else:
        params = {"run": str(row["name"])}
        # the run's own evaluation: a run without the one shown opens on its preferred one
        evaluation = row["evaluation"] if isinstance(row.get("evaluation"), str) else None
    if evaluation:
        params["evaluation"] = evaluation
    return params, None


@dataclass
class Progress:
    """Where an active run stands, from its status.json."""

    run_id: str
    state: str
    step: int | None
    total_steps: int | None
    loss: float | None
    eta_s: float | None

    @property
    def fraction(self) -> float:
        if not self.step or not self.total_steps:
            return 0.0
        return min(1.0, self.step / self.total_steps)

    @property
    def text(self) -> str:
        if self.state == rf.QUEUED:
            return f"{self.run_id}: queued"
        parts = [f"{self.run_id}: {self.state}"]
        if self.total_steps:
            parts.append(f"step {self.step or 0}/{self.total_steps}")
        if self.loss is not None:
            parts.append(f"loss {self.loss:.4f}")
        if self.total_steps:
            parts.append(f"ETA {format_eta(self.eta_s)}")
        return " · ".join(parts)


# "path/to/file.py:12: UserWarning: text": Python's warning line; the indented line after it echoes the source
_WARNING_LINE = re.compile(r"^\S.*:\d+: \w*Warning: ")


def last_log_line(text: str) -> str:
    """The last line of a log worth a status line: blank lines and Python warnings (the
    "file:line: XWarning: ..." line and the source line echoed under it) are skipped; if nothing
    else is left, the last warning itself."""
    lines = text.splitlines()
    last_warning = ""
    for i in range(len(lines) - 1, -1, -1):
        line = lines[i]
        if not line.strip():
            continue
        if _WARNING_LINE.match(line):
            last_warning = last_warning or line.strip()
            continue
        if line[:1].isspace() and i > 0 and _WARNING_LINE.match(lines[i - 1]):
            continue  # the source echo ("  warnings.warn(") under a warning line
        return line.strip()
    return last_warning


def active_progress(runs: Iterable[rf.RunInfo]) -> list[Progress]:
    """Fresh progress of the runs listed as queued or running (their status.json is re-read, so a
    run that finished or crashed since the listing drops out)."""
    out = []
    for info in runs:
        if info.state not in rf.ACTIVE_STATES:
            continue
        try:
            status = rf.read_status(info.path)
        except (OSError, ValueError):
            continue
        if status.get("state") not in rf.ACTIVE_STATES:
            continue
        progress = status.get("progress") or {}
        out.append(Progress(info.run_id, status["state"], progress.get("step"), progress.get("total_steps"),
                            progress.get("loss"), progress.get("eta_s")))
    return out


# ---------------------------------------------------------------- configurations

def shared_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The config without the fields that change from seed to seed."""
    return {k: v for k, v in config.items() if k not in PER_RUN_FIELDS}


@dataclass
class Configuration:
    """Runs that differ only by seed."""

    name: str
    label: str
    kind: str
    config: dict
    runs: list[rf.RunInfo]

    @property
    def evaluations(self) -> list[str]:
        return sorted({e for r in self.runs for e in r.evaluations})

    def runs_with(self, evaluation: str) -> list[rf.RunInfo]:
        return [r for r in self.runs if evaluation in r.evaluations]


def _run_order(info: rf.RunInfo) -> tuple:
    seed = run_seed(info)
    return (seed is None, seed if seed is not None else 0, info.run_id)


def configurations(runs: Iterable[rf.RunInfo]) -> list[Configuration]:
    """Readable runs grouped by label and resolved config (seed left out), sorted by name.

    Two groups with the same label (say Attention-Only at rank 8 and at rank 16) get the
    fields that tell them apart appended to the name: "Attention-Only · lora_r=8".

    OPRO runs group by what they searched for: the searches of the seeds of one training
    configuration, with the same search settings, are one configuration "OPRO of <that
    configuration>" whose seeds are the adapters' seeds (so they pair with the training runs);
    searches on the base model group as "OPRO of the base model (<model>)", seeded by their
    search seed. A sweep's earlier attempts ("<run>.attemptN" next to <run>) are left out.
    """
    runs = list(runs)
    folded = {name for names in superseded_attempts(runs).values() for name in names}
    readable = [info for info in runs if info.readable and info.run_id not in folded]
    plain = [info for info in readable if info.kind != rf.KIND_OPRO]
    out = _group(plain, lambda info: info.config_label, shared_config)
    by_run = {info.run_id: c.name for c in out for info in c.runs}
    opro = [info for info in readable if info.kind == rf.KIND_OPRO]
    out += _group(opro, lambda info: opro_configuration_label(info.config, by_run), _opro_shared)
    return sorted(out, key=lambda c: natural_key(c.name))


def natural_key(text: str) -> tuple:
    """Sort key reading digit runs as numbers: "r8" before "r16", case ignored."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part)
                 for part in re.split(r"([0-9]+)", text.lower()) if part)


def opro_configuration_label(config: Mapping[str, Any], configuration_of_run: Mapping[str, str]) -> str:
    """"OPRO of <the target run's configuration>" (the target's label when that run is gone), or
    "OPRO of the base model (<model>)"; no paths."""
    target = config.get("target") if isinstance(config.get("target"), Mapping) else {}
    if target.get("kind") == "base":
        return f"OPRO of the base model ({Path(str(config.get('model') or '?')).name})"
    run = target.get("run")
    name = configuration_of_run.get(str(run)) if run else None
    return f"OPRO of {name or target.get('config_label') or run or '?'}"


def _opro_shared(config: Mapping[str, Any]) -> dict[str, Any]:
    """An OPRO config's search settings: what makes searches of different seeds one configuration."""
    shared = {k: v for k, v in shared_config(config).items() if k not in OPRO_PER_TARGET_FIELDS}
    target = config.get("target") if isinstance(config.get("target"), Mapping) else {}
    shared["target_kind"] = target.get("kind")
    return shared


def _group(runs: Sequence[rf.RunInfo], label_of: Callable[[rf.RunInfo], str],
           shared_of: Callable[[Mapping[str, Any]], dict]) -> list[Configuration]:
    groups: dict[tuple[str, str], list[rf.RunInfo]] = {}
    for info in runs:
        key = (label_of(info), json.dumps(shared_of(info.config), sort_keys=True, default=str))
        groups.setdefault(key, []).append(info)
    by_label: dict[str, list[tuple[str, str]]] = {}
    for key in groups:
        by_label.setdefault(key[0], []).append(key)
    out = []
    for label, keys in by_label.items():
        shared = {key: shared_of(groups[key][0].config) for key in keys}
        differing = _differing_fields(list(shared.values())) if len(keys) > 1 else []
        for key in keys:
            members = sorted(groups[key], key=_run_order)
            name = label
            if differing:
                flat = _flatten(shared[key])
                name += " · " + ", ".join(f"{f}={_name_text(flat.get(f))}" for f in differing[:3])
            out.append(Configuration(name, label, members[0].kind, shared[key], members))
    return out


def _name_text(value: Any) -> str:
    """A config value as a configuration name shows it: a path by its last part."""
    text = config_value_text(value)
    return Path(text).name or text if isinstance(value, str) and os.sep in text else text


CONFIGURATION_COLUMNS = ("configuration", "kind", "seeds", "seed list", "mean", "interval", "ci low", "ci high",
                         *(f"{cls} mean" for cls in CLASSES), "balanced mean", "trainable %", "adapter MB", "runs",
                         "note")
# The interval the overview and the grid show for a configuration's mean: stats.aggregate_seeds'
# clip+seed bootstrap, a percentile interval, hence always inside [0, 100].
INTERVAL_NAME = "95% bootstrap interval (seeds and clips)"


@dataclass
class SeedAggregate:
    """A configuration's seeds on one evaluation: stats.aggregate_seeds, or why there is none."""

    configuration: Configuration
    evaluation: str
    seeds: list[Any] = field(default_factory=list)
    stats: dict | None = None
    error: str | None = None


def seed_aggregates(configs: Iterable[Configuration], evaluation: str, load: Loader,
                    n_boot: int = stats.DEFAULT_N_BOOT) -> dict[str, SeedAggregate]:
    """Configuration name -> its seeds' aggregate on `evaluation` (percent; docs/STATISTICS.md).

    A configuration with no run evaluated so gets stats None; one whose predictions cannot be
    read gets the reason in `error` (the others are still computed).
    """
    out = {}
    for config in configs:
        members = config.runs_with(evaluation)
        entry = SeedAggregate(config, evaluation)
        if members:
            try:
                side = _side(config.name, config.kind, evaluation, members, config.config, load)
                entry.seeds = list(side.records)
                entry.stats = stats.aggregate_seeds(side.records, n_boot=n_boot)
            except (OSError, ValueError, KeyError, TypeError, rf.RunFolderError) as exc:
                entry.error = f"{evaluation} predictions cannot be read: {_reason(exc)}"
        out[config.name] = entry
    return out


def configuration_overview(aggregates: Mapping[str, SeedAggregate]) -> pd.DataFrame:
    """One row per configuration: seeds evaluated, mean accuracy over them with its bootstrap
    interval (INTERVAL_NAME), per-class and balanced means (percent), trainable %, adapter MB, runs."""
    rows = []
    for name, entry in aggregates.items():
        config = entry.configuration
        agg = entry.stats or {}
        overall = agg.get("overall") or {}
        ci = overall.get("bootstrap_ci")
        summaries = [info.summary for info in config.runs]
        row = {"configuration": name, "kind": config.kind, "seeds": len(entry.seeds) if entry.stats else 0,
               "seed list": ", ".join(map(str, entry.seeds)), "mean": overall.get("mean"),
               "interval": format_interval(ci, 1.0) if ci else None,
               "ci low": ci[0] if ci else None, "ci high": ci[1] if ci else None,
               "balanced mean": (agg.get("balanced") or {}).get("mean"),
               "trainable %": _single_number(s.get("trainable_percent") for s in summaries),
               "adapter MB": _single_number(s.get("adapter_mb") for s in summaries),
               "runs": len(config.runs),
               "note": entry.error or (None if entry.stats else f"no {entry.evaluation} evaluation")}
        for cls in CLASSES:
            row[f"{cls} mean"] = (agg.get(cls) or {}).get("mean")
        rows.append(row)
    frame = pd.DataFrame(rows, columns=list(CONFIGURATION_COLUMNS))
    for column in ("mean", "ci low", "ci high", *(f"{cls} mean" for cls in CLASSES), "balanced mean",
                   "trainable %", "adapter MB"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    frame["seeds"] = frame["seeds"].astype("Int64")
    return frame


def _single_number(values: Iterable[Any]) -> float | None:
    """The value the runs share (first when they differ, as for seeds of one config), else None."""
    numbers = [v for v in values if _is_number(v)]
    return numbers[0] if numbers else None


def evaluation_options(runs: Iterable[rf.RunInfo]) -> list[str]:
    """'run_id/evaluation' for every evaluation of every readable run."""
    return [f"{r.run_id}/{e}" for r in sorted(runs, key=lambda r: r.run_id) if r.readable for e in r.evaluations]


# ---------------------------------------------------------------- sides (Compare picks)

@dataclass
class Side:
    """One pick: a configuration or a single evaluation, with its records per seed key."""

    name: str
    kind: str
    evaluation: str
    runs: dict[Any, rf.RunInfo]
    records: dict[Any, list[dict]]
    config: dict
    single: bool = False
    baseline: bool = False  # added automatically as a reference row

    @property
    def n_seeds(self) -> int:
        return len(self.records)


def predictions_path(info: rf.RunInfo, evaluation: str) -> Path:
    return rf.evaluation_dir(info.path, evaluation) / rf.PREDICTIONS


def _seed_keys(members: Sequence[rf.RunInfo]) -> list[Any]:
    keys, seen = [], set()
    for info in members:
        seed = run_seed(info)
        key = seed if seed is not None else info.run_id
        if key in seen:  # the same seed run twice: keep both, told apart by run id
            key = f"{key} ({info.run_id})"
        seen.add(key)
        keys.append(key)
    return keys


def _side(name: str, kind: str, evaluation: str, members: Sequence[rf.RunInfo], config: dict,
          load: Loader, single: bool = False, baseline: bool = False) -> Side:
    keys = _seed_keys(members)
    runs = dict(zip(keys, members))
    records = {key: load(predictions_path(info, evaluation)) for key, info in runs.items()}
    return Side(name, kind, evaluation, runs, records, config, single, baseline)


def resolve_picks(runs: Sequence[rf.RunInfo], picks: Sequence[str], evaluation: str,
                  load: Loader) -> list[Side]:
    """Sides for configuration names (evaluation `evaluation` of each seed) and 'run/evaluation'
    picks; raises SelectionError naming a pick that matches nothing."""
    configs = {c.name: c for c in configurations(runs)}
    by_id = {r.run_id: r for r in runs if r.readable}
    sides = []
    for pick in picks:
        if pick in configs:
            config = configs[pick]
            members = config.runs_with(evaluation)
            if not members:
                raise SelectionError(
                    f"configuration {pick!r} has no evaluation named {evaluation!r} "
                    f"(its runs have: {', '.join(config.evaluations) or 'none'})")
            sides.append(_side(pick, config.kind, evaluation, members, config.config, load))
            continue
        run_id, _, name = pick.rpartition("/")
        info = by_id.get(run_id)
        if info is None or name not in info.evaluations:
            raise SelectionError(f"{pick!r} is neither a configuration nor a 'run/evaluation' of this workspace")
        config = shared_config(info.config)
        if run_seed(info) is not None:
            config["seed"] = run_seed(info)
        sides.append(_side(pick, info.kind, name, [info], config, load, single=True))
    return sides


def selection_signature(configs: Sequence[Configuration], runs: Sequence[rf.RunInfo], picks: Sequence[str],
                        evaluation: str) -> str:
    """A cache key for a comparison: the files it reads (configs, status, evaluations, metrics) of
    the picked runs and of every baseline, so activity elsewhere in the workspace keeps it."""
    by_name = {c.name: c.runs for c in configs}
    by_id = {r.run_id: r for r in runs}
    members = [r for pick in picks for r in by_name.get(pick, [by_id.get(pick.rpartition("/")[0])]) if r]
    members += [r for r in runs if r.kind == rf.KIND_BASELINE]
    parts = []
    for info in members:
        base = str(info.path)
        parts.append((info.run_id, evaluation, _mtime_ns(os.path.join(base, rf.CONFIG)),
                      _mtime_ns(os.path.join(base, rf.STATUS)), _mtime_ns(os.path.join(base, rf.METRICS)),
                      *(_mtime_ns(str(rf.evaluation_dir(info.path, e) / rf.EVALUATION)) for e in info.evaluations)))
    return hashlib.blake2b(repr(parts).encode(), digest_size=16).hexdigest()


def check_same_clips(sides: Sequence[Side]) -> None:
    """Raise stats.PairingError (naming the evaluations) unless every evaluation of every side
    covers the same clips with the same gold labels."""
    reference = None
    for side in sides:
        for key, records in side.records.items():
            where = f"{side.name} ({seed_text(key)})" if not side.single else side.name
            if reference is None:
                reference = (where, records)
                continue
            try:
                stats.pair_records(reference[1], records)
            except stats.PairingError as exc:
                raise stats.PairingError(f"{where} is not on the same clips as {reference[0]}: {exc}",
                                         exc.only_a, exc.only_b, exc.label_mismatch) from None


def baseline_sides(runs: Sequence[rf.RunInfo], sides: Sequence[Side], load: Loader) -> list[Side]:
    """Baseline runs (kind baseline) not picked already whose evaluation of the picks' name, else
    "test", covers the same clips as the first pick: shown as reference rows."""
    if not sides:
        return []
    picked = {info.run_id for side in sides for info in side.runs.values()}
    reference = next(iter(sides[0].records.values()))
    out = []
    for info in runs:
        if not info.readable or info.kind != rf.KIND_BASELINE or info.run_id in picked:
            continue
        name = sides[0].evaluation if sides[0].evaluation in info.evaluations else preferred_evaluation(info.evaluations)
        if not name:
            continue
        try:
            records = load(predictions_path(info, name))
            stats.pair_records(reference, records)
        except (OSError, ValueError):
            continue  # other clips, or unreadable: not a reference for this comparison
        out.append(Side(f"{info.config_label} (baseline)", info.kind, name,
                        {info.run_id: info}, {info.run_id: records}, shared_config(info.config),
                        single=True, baseline=True))
    # Two runs of one detector (say WebRTC at the fixed rule and chosen on val) are two rows: a
    # shared name would fold them into one configuration with a "mean of 2 seeds".
    labels = [side.name for side in out]
    for side in out:
        if labels.count(side.name) > 1:
            (run_id,) = side.runs
            side.name = f"{side.runs[run_id].config_label} · {run_id} (baseline)"
    return out


# ---------------------------------------------------------------- how a baseline decided

BASELINE_DECISION_COLUMNS = ("Baseline", "Clip rule", "Threshold", "ROC AUC", "How chosen", "Validation split",
                             "Val balanced accuracy")
FIXED_RULE_TEXT = "fixed: the detector's default rule and threshold (no validation split)"


def baseline_decision(run_dir: Path, evaluation: str) -> dict[str, Any] | None:
    """How a baseline run's evaluation turned frame scores into labels, or None for another kind.

    From its evaluation.json (config.json for keys it lacks): {detector, rule, reduction,
    threshold, val_data (None: the fixed default rule), val_balanced_accuracy (of the chosen rule
    on the validation split), n_rules (rules tried)}. Runs made before validation splits have no
    rule name: their reduction says what the clip score is.
    """
    try:
        meta = _evaluation_document(Path(run_dir), evaluation)
    except (OSError, ValueError, rf.RunFolderError):
        meta = {}
    try:
        config = rf.read_json(Path(run_dir) / rf.CONFIG)
    except (OSError, ValueError):
        config = {}
    config = config if isinstance(config, dict) else {}
    merged = {**config, **meta}
    if merged.get("kind") != rf.KIND_BASELINE:
        return None
    candidates = [c for c in merged.get("rule_candidates") or [] if isinstance(c, dict)]
    chosen = next((c for c in candidates if c.get("rule") == merged.get("rule")), None)
    threshold = merged.get("threshold")
    return {"detector": merged.get("label") or merged.get("method") or "baseline", "rule": merged.get("rule"),
            "reduction": merged.get("reduction"),
            "threshold": float(threshold) if isinstance(threshold, (int, float)) else None,
            "val_data": merged.get("val_data") or None,
            "val_balanced_accuracy": chosen.get("val_balanced_accuracy") if chosen else None,
            "n_rules": len(candidates)}


def _baseline_chosen_text(decision: Mapping[str, Any]) -> str:
    if not decision["val_data"]:
        return FIXED_RULE_TEXT
    text = f"chosen on the validation split {decision['val_data']}"
    details = []
    if decision["val_balanced_accuracy"] is not None:
        details.append(f"balanced accuracy {pct(decision['val_balanced_accuracy'])} there")
    if decision["n_rules"] > 1:
        details.append(f"best of {decision['n_rules']} rules")
    return text + (f" ({', '.join(details)})" if details else "")


def _auc_text(roc_auc: float | None) -> str:
    return "n/a" if roc_auc is None else f"{roc_auc:.3f}"


def baseline_decision_line(decision: Mapping[str, Any], roc_auc: float | None) -> str:
    """One Markdown sentence: the clip rule and threshold, how they were chosen, and the ROC AUC."""
    rule = f" (rule `{decision['rule']}`)" if decision["rule"] else ""
    threshold = "n/a" if decision["threshold"] is None else f"{decision['threshold']:.3f}"
    return (f"**{decision['detector']}**: SPEECH when the {decision['reduction'] or 'clip score'}{rule} is at "
            f"least {threshold}; {_baseline_chosen_text(decision)}. ROC AUC {_auc_text(roc_auc)} (of the "
            "clip score, over every threshold).")


def baseline_decision_table(rows: Iterable[tuple[str, Mapping[str, Any], float | None]]) -> pd.DataFrame:
    """One row per (name, decision, roc_auc): BASELINE_DECISION_COLUMNS, short cells ("—" where a
    fixed rule has no validation split), so the table fits beside Compare's."""
    out = []
    for name, decision, roc_auc in rows:
        chosen = bool(decision["val_data"])
        balanced = "—"
        if chosen and decision["val_balanced_accuracy"] is not None:
            balanced = pct(decision["val_balanced_accuracy"])
            if decision["n_rules"] > 1:
                balanced += f" (best of {decision['n_rules']} rules)"
        out.append({"Baseline": name, "Clip rule": decision["rule"] or decision["reduction"] or "n/a",
                    "Threshold": "n/a" if decision["threshold"] is None else f"{decision['threshold']:.3f}",
                    "How chosen": "on the validation split" if chosen else "fixed: the default rule and threshold",
                    "Validation split": decision["val_data"] if chosen else "—",
                    "Val balanced accuracy": balanced, "ROC AUC": _auc_text(roc_auc)})
    return pd.DataFrame(out, columns=list(BASELINE_DECISION_COLUMNS))


def comparison_baselines(comparison: "Comparison") -> pd.DataFrame:
    """The decision table of every baseline evaluation in a comparison (added rows and picks alike),
    named as the comparison table names them; empty when there is none."""
    folders = {info.run_id: info.path for side in comparison.sides for info in side.runs.values()}
    rows = [row for row in comparison.rows if row["kind"] == rf.KIND_BASELINE]
    entries = []
    for row in rows:
        decision = baseline_decision(folders[row["run"]], row["evaluation"])
        if decision is not None:
            several = sum(other["configuration"] == row["configuration"] for other in rows) > 1
            entries.append((f"{row['configuration']} · {seed_text(row['_key'])}" if several else row["configuration"],
                            decision, row["roc_auc"]))
    return baseline_decision_table(entries)


# ---------------------------------------------------------------- one evaluation

def class_accuracy_frame(summaries: Mapping[str, dict]) -> pd.DataFrame:
    """Long table for the per-class bars: name, class, accuracy, ci_lo, ci_hi (percent), correct, n."""
    rows = []
    for name, summary in summaries.items():
        parts = [(OVERALL, summary["correct"], summary["n"], summary["ci"])]
        parts += [(cls, summary["per_class"][cls]["correct"], summary["per_class"][cls]["n"],
                   summary["per_class"][cls]["ci"]) for cls in CLASSES]
        for cls, correct, n, ci in parts:
            rows.append({"name": name, "class": cls, "correct": correct, "n": n,
                         "accuracy": 100.0 * correct / n if n else None,
                         "ci_lo": 100.0 * ci[0] if ci else None, "ci_hi": 100.0 * ci[1] if ci else None})
    return pd.DataFrame(rows, columns=["name", "class", "accuracy", "ci_lo", "ci_hi", "correct", "n"])


def metadata_columns(records: Sequence[dict]) -> list[str]:
    """Columns worth a breakdown: duration_s and every metadata column with 2 to 50 values."""
    columns = []
    candidates = ["duration_s"] + sorted({k for r in records for k in r} - set(RECORD_FIELDS))
    for column in candidates:
        values = {_hashable(r.get(column)) for r in records}
        values.discard(None)
        if 2 <= len(values) <= 50:
            columns.append(column)
    return columns


def _hashable(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value == "":
        return None
    return value if isinstance(value, (str, int, float, bool)) else json.dumps(value, default=str)


def breakdown_frame(records_by_name: Mapping[str, Sequence[dict]], column: str) -> pd.DataFrame:
    """stats.breakdown rows of each name, accuracy and interval in percent."""
    rows = []
    for name, records in records_by_name.items():
        for row in stats.breakdown(records, column):
            rows.append({"name": name, **row, "accuracy": 100.0 * row["accuracy"],
                         "ci_lo": 100.0 * row["ci_lo"], "ci_hi": 100.0 * row["ci_hi"]})
    return pd.DataFrame(rows)


def outcome(record: dict) -> str:
    if record["pred"] == record["label"]:
        return "correct"
    return "false positive" if record["pred"] == SPEECH else "false negative"


def _probability(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return math.nan
    return number if math.isfinite(number) else math.nan


def clip_table(records_by_seed: Mapping[Any, Sequence[dict]]) -> pd.DataFrame:
    """One row per clip and seed: outcome, confidence p(predicted class), whether seeds disagree."""
    rows = []
    for key, records in records_by_seed.items():
        for rec in records:
            p = _probability(rec.get("p_speech"))
            confidence = None if math.isnan(p) else (p if rec["pred"] == SPEECH else 1.0 - p)
            rows.append({"clip_id": str(rec["clip_id"]), "seed": seed_text(key), "label": rec["label"],
                         "pred": rec["pred"], "outcome": outcome(rec),
                         "p_speech": None if math.isnan(p) else p, "confidence": confidence,
                         "duration_s": rec.get("duration_s"), "path": rec.get("path")})
    frame = pd.DataFrame(rows, columns=["clip_id", "seed", "label", "pred", "outcome", "p_speech", "confidence",
                                        "duration_s", "path"])
    predictions_per_clip = frame.groupby("clip_id")["pred"].nunique()
    frame["seeds disagree"] = frame["clip_id"].map(predictions_per_clip).fillna(1) > 1
    return frame


def filter_clips(frame: pd.DataFrame, outcomes: Iterable[str] = (), seeds_disagree: bool = False,
                 sort: str = "least confident") -> pd.DataFrame:
    """Clips of the chosen outcomes (all when none chosen), optionally only where seeds disagree,
    sorted by confidence ("least confident" or "most confident" first)."""
    outcomes = list(outcomes)
    keep = pd.Series(True, index=frame.index)
    if outcomes:
        keep &= frame["outcome"].isin(outcomes)
    if seeds_disagree:
        keep &= frame["seeds disagree"]
    out = frame[keep]
    ascending = sort != "most confident"
    return out.sort_values(["confidence", "clip_id", "seed"], ascending=[ascending, True, True],
                           na_position="last", ignore_index=True)


def media_roots(root: Path, side: Side) -> list[Path]:
    """Folders whose audio the clip player may serve: the workspace, and the folder of each test
    manifest (or the test folder itself) that the side's evaluations recorded."""
    roots = [Path(root).resolve()]
    for info in side.runs.values():
        try:
            document = _evaluation_document(info.path, side.evaluation)
        except (OSError, ValueError):
            continue
        data = document.get("data")
        source = document.get("test_data") or (data.get("source") if isinstance(data, dict) else None)
        if isinstance(source, str) and source:
            folder = Path(source).resolve()
            folder = folder if folder.is_dir() else folder.parent
            if folder != Path(folder.anchor) and folder not in roots:  # never the whole filesystem
                roots.append(folder)
    return roots


def playable_audio(path: Any, roots: Sequence[Path]) -> Path | None:
    """The audio file a record names when it lies inside one of `roots` (links resolved) and is
    audio (soundfile can read its header), else None.

    A predictions file is data, not a permission: without this check any file the dashboard's
    user can read (say /etc/shadow) would be served through the player. The roots come from run
    folders too (the test data an evaluation recorded), so the content check stands even when
    someone who can write the workspace points them elsewhere: only audio is ever played.
    """
    if not isinstance(path, str) or not path:
        return None
    try:
        candidate = Path(path).resolve()
        if not candidate.is_file():
            return None
    except (OSError, ValueError, RuntimeError):  # RuntimeError: a link loop
        return None
    if not any(root in candidate.parents for root in roots):
        return None
    import soundfile  # light (no torch); imported here so the review tables do not pay for it

    try:
        soundfile.info(str(candidate))
    except Exception:  # noqa: BLE001 - libsndfile refuses anything that is not audio, in many ways
        return None
    return candidate


# ---------------------------------------------------------------- loss curves

def loss_frame(named_runs: Iterable[tuple[str, Any, rf.RunInfo]]) -> pd.DataFrame:
    """Training loss per step of (name, seed key, run) triples: name, run, seed, step, epoch, loss."""
    rows = []
    for name, key, info in named_runs:
        try:
            metrics = rf.read_metrics(info.path)
        except (OSError, rf.RunFolderError):
            continue
        for m in metrics:
            step, loss = m.get("step"), m.get("loss")
            # Lines of another shape (text where numbers belong) are not points of the curve.
            if _is_number(step) and math.isfinite(step) and _is_number(loss):
                epoch = m.get("epoch") if _is_number(m.get("epoch")) else None
                rows.append({"name": name, "run": info.run_id, "seed": seed_text(key), "step": int(step),
                             "epoch": epoch, "loss": float(loss)})
    return pd.DataFrame(rows, columns=["name", "run", "seed", "step", "epoch", "loss"])


VALIDATION_COLUMNS = ["name", "run", "seed", "step", "epoch", "val_loss", "val_accuracy", "val_balanced_accuracy",
                      "val_clips"]


def validation_frame(named_runs: Iterable[tuple[str, Any, rf.RunInfo]]) -> pd.DataFrame:
    """The validation points of metrics.jsonl (one per epoch of runs trained with val_data) of
    (name, seed key, run) triples; accuracies in percent."""
    rows = []
    for name, key, info in named_runs:
        try:
            points = rf.read_validation_metrics(info.path)
        except (OSError, rf.RunFolderError):
            continue
        for m in points:
            values = [m.get(k) for k in ("step", "val_loss", "val_accuracy")]
            if all(_is_number(v) and math.isfinite(v) for v in values):
                rows.append({"name": name, "run": info.run_id, "seed": seed_text(key), "step": int(m["step"]),
                             "epoch": m.get("epoch") if _is_number(m.get("epoch")) else None,
                             "val_loss": float(m["val_loss"]), "val_accuracy": 100 * float(m["val_accuracy"]),
                             "val_balanced_accuracy": (100 * float(m["val_balanced_accuracy"])
                                                       if _is_number(m.get("val_balanced_accuracy")) else None),
                             "val_clips": m.get("val_clips")})
    return pd.DataFrame(rows, columns=VALIDATION_COLUMNS)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def side_runs(sides: Sequence[Side]) -> list[tuple[str, Any, rf.RunInfo]]:
    return [(side.name, key, info) for side in sides for key, info in side.runs.items()]


def loss_at_steps(losses: pd.DataFrame, points: int = 5) -> pd.DataFrame:
    """Mean training loss over seeds at a few steps shared by every name (first, quartiles, last)."""
    if losses.empty:
        return pd.DataFrame()
    last_common = int(losses.groupby("name")["step"].max().min())
    wanted = sorted({max(1, round(last_common * q)) for q in (0, 0.25, 0.5, 0.75, 1.0)})[:points]
    at = losses[losses["step"].isin(wanted)]
    mean = at.groupby(["step", "name"])["loss"].agg(["mean", "count"]).reset_index()
    mean["cell"] = [f"{m:.4f}" + (f" (mean of {c})" if c > 1 else "") for m, c in zip(mean["mean"], mean["count"])]
    table = mean.pivot(index="step", columns="name", values="cell")
    table.columns.name = None
    return table.reset_index().rename(columns={"step": "Step"})


# ---------------------------------------------------------------- comparison

def side_signature(sides: Sequence[Side]) -> tuple:
    """(predictions file, mtime) of every evaluation of the sides: a cache key for their statistics."""
    return tuple((str(predictions_path(info, side.evaluation)), _mtime_ns(str(predictions_path(info, side.evaluation))))
                 for side in sides for info in side.runs.values())


def evaluation_rows(sides: Sequence[Side]) -> list[dict]:
    """One numeric row per evaluation (configuration x seed): counts, accuracies, intervals."""
    rows = []
    for side in sides:
        for key, records in side.records.items():
            info = side.runs[key]
            summary = stats.evaluation_summary(records)
            row = {"configuration": side.name, "seed": key if isinstance(key, int) else None,
                   "run": info.run_id, "evaluation": side.evaluation, "kind": side.kind,
                   "baseline": side.baseline, "n": summary["n"], "overall_correct": summary["correct"],
                   "overall_accuracy": summary["accuracy"], "overall_ci_lo": (summary["ci"] or [None])[0],
                   "overall_ci_hi": (summary["ci"] or [None, None])[1]}
            for cls in CLASSES:
                part = summary["per_class"][cls]
                prefix = cls.lower()
                row.update({f"{prefix}_n": part["n"], f"{prefix}_correct": part["correct"],
                            f"{prefix}_accuracy": part["accuracy"],
                            f"{prefix}_ci_lo": (part["ci"] or [None])[0],
                            f"{prefix}_ci_hi": (part["ci"] or [None, None])[1]})
            row.update(balanced_accuracy=summary["balanced_accuracy"], roc_auc=summary["roc_auc"], ece=summary["ece"],
                       trainable_percent=info.summary.get("trainable_percent"),
                       adapter_mb=info.summary.get("adapter_mb"), _summary=summary, _key=key)
            rows.append(row)
    return rows


SEED_INTERVAL_NAME = "bootstrap 95%"  # clips within class and seeds: stays inside [0, 100]


def _seed_mean_cell(summary: dict | None) -> str:
    """'93.8% mean of 3 seeds, SD 1.2, bootstrap 95% [90.6, 96.9]' (the interval cannot leave [0, 100])."""
    if not summary:
        return "n/a"
    text = f"{summary['mean']:.1f}% mean of {summary['n_seeds']} seeds"
    if summary.get("sd") is not None:
        text += f", SD {summary['sd']:.1f}"
    if summary.get("bootstrap_ci"):
        text += f", {SEED_INTERVAL_NAME} {format_interval(summary['bootstrap_ci'], 1.0)}"
    if summary.get("sd") == 0:
        text += " (SD 0: every seed scored the same)"
    return text


def comparison_table(rows: Sequence[dict], seed_stats: Mapping[str, dict]) -> pd.DataFrame:
    """Configuration | Overall | SPEECH | NONSPEECH | Trainable % | Adapter size: one row per
    evaluation ('93.8% (30/32) [80.0, 98.3]', Wilson 95%), plus a mean row per multi-seed side."""
    out = []
    names = list(dict.fromkeys(r["configuration"] for r in rows))
    for name in names:
        members = [r for r in rows if r["configuration"] == name]
        for r in members:
            s = r["_summary"]
            label = name if len(members) == 1 and not isinstance(r["_key"], int) else f"{name} · {seed_text(r['_key'])}"
            out.append({"Configuration": label,
                        OVERALL: format_accuracy(s["correct"], s["n"], s["ci"]),
                        SPEECH: format_accuracy(s["per_class"][SPEECH]["correct"], s["per_class"][SPEECH]["n"],
                                                s["per_class"][SPEECH]["ci"]),
                        NONSPEECH: format_accuracy(s["per_class"][NONSPEECH]["correct"],
                                                   s["per_class"][NONSPEECH]["n"], s["per_class"][NONSPEECH]["ci"]),
                        "Trainable %": format_trainable(r["trainable_percent"]),
                        "Adapter size": format_mb(r["adapter_mb"])})
        if len(members) > 1 and name in seed_stats:
            agg = seed_stats[name]
            out.append({"Configuration": f"{name} · mean of {len(members)} seeds",
                        OVERALL: _seed_mean_cell(agg["overall"]), SPEECH: _seed_mean_cell(agg[SPEECH]),
                        NONSPEECH: _seed_mean_cell(agg[NONSPEECH]),
                        "Trainable %": _common(format_trainable(r["trainable_percent"]) for r in members),
                        "Adapter size": _common(format_mb(r["adapter_mb"]) for r in members)})
    return pd.DataFrame(out, columns=["Configuration", OVERALL, SPEECH, NONSPEECH, "Trainable %", "Adapter size"])


def headline_metrics(aggregate: Mapping[str, Any], summaries: Mapping[str, dict]) -> tuple[list[dict], str]:
    """The Results page's headline figures, all aggregated the same way, and a caption saying how.

    One evaluation: its accuracy, balanced accuracy, ROC AUC and ECE. Several seeds: the mean
    over the seeds of each (accuracy with its bootstrap interval), every seed's value in the help.
    Returns ([{label, value, help}], caption); summaries: {seed text: evaluation_summary}.
    """
    first = next(iter(summaries.values()))
    overall, balanced = aggregate["overall"], aggregate["balanced"]
    k = len(summaries)

    def per_seed(key: str, fmt: str) -> tuple[float | None, str]:
        values = {seed: s[key] for seed, s in summaries.items()}
        known = [v for v in values.values() if v is not None]
        listing = ", ".join(f"{seed} {'n/a' if v is None else format(v, fmt)}" for seed, v in values.items())
        return (sum(known) / len(known) if known else None), listing

    if k == 1:
        metrics = [
            {"label": "Accuracy", "value": pct(first["accuracy"]),
             "help": f"{first['correct']}/{first['n']} clips, 95% Wilson {format_interval(first['ci'])}"},
            {"label": "Balanced accuracy", "value": pct(first["balanced_accuracy"]),
             "help": "Mean of the SPEECH and NONSPEECH accuracies"},
            {"label": "ROC AUC", "value": "n/a" if first["roc_auc"] is None else f"{first['roc_auc']:.3f}",
             "help": "Area under the ROC curve of p_speech"},
            {"label": "ECE", "value": "n/a" if first["ece"] is None else f"{first['ece']:.3f}",
             "help": "Expected calibration error (10 bins)"},
        ]
        caption = f"One evaluation ({next(iter(summaries))}): every figure is its own."
    else:
        auc, auc_seeds = per_seed("roc_auc", ".3f")
        ece, ece_seeds = per_seed("ece", ".3f")
        metrics = [
            {"label": f"Mean accuracy, {k} seeds", "value": f"{overall['mean']:.1f}%",
             "help": f"{SEED_INTERVAL_NAME} {format_interval(overall['bootstrap_ci'], 1.0)}; SD {overall['sd']:.2f}; "
                     "per seed: " + ", ".join(f"{v:.1f}%" for v in overall["values"])},
            {"label": f"Mean balanced, {k} seeds", "value": f"{balanced['mean']:.1f}%",
             "help": f"Balanced accuracy; {SEED_INTERVAL_NAME} {format_interval(balanced['bootstrap_ci'], 1.0)}; per seed: "
                     + ", ".join(f"{v:.1f}%" for v in balanced["values"])},
            {"label": f"Mean ROC AUC, {k} seeds", "value": "n/a" if auc is None else f"{auc:.3f}",
             "help": f"per seed: {auc_seeds}"},
            {"label": f"Mean ECE, {k} seeds", "value": "n/a" if ece is None else f"{ece:.3f}",
             "help": f"per seed: {ece_seeds}"},
        ]
        caption = (f"Every figure above is the mean over the {k} seeds ({', '.join(summaries)}); accuracy "
                   f"{SEED_INTERVAL_NAME} {format_interval(overall['bootstrap_ci'], 1.0)}, balanced "
                   f"{format_interval(balanced['bootstrap_ci'], 1.0)} (clips within class and seeds resampled). "
                   "Each figure's help lists the per-seed values.")
        # The headline shows no t-interval, so a note on clipping it would only confuse here.
        notes = sorted({part for n in (overall.get("note"), balanced.get("note")) if n for part in n.split("; ")
                        if not part.startswith("t-interval clipped")})
        if notes:
            caption += " Note: " + "; ".join(notes) + "."
    metrics.append({"label": "Clips", "value": f"{first['n']:,}", "help": None})
    return metrics, caption


def _common(values: Iterable[str]) -> str:
    distinct = list(dict.fromkeys(values))
    return distinct[0] if len(distinct) == 1 else ", ".join(distinct)


def seed_stats_for(side: Side, n_boot: int = stats.DEFAULT_N_BOOT) -> dict:
    """stats.aggregate_seeds of a side (percent; see docs/STATISTICS.md)."""
    return stats.aggregate_seeds(side.records, n_boot=n_boot)


DIFFERENCE_METHODS = {stats.DIFF_CI_NEWCOMBE: "Newcombe's paired score interval",
                      stats.DIFF_CI_BOOTSTRAP: "bootstrap over clips (within class) and seeds"}


def difference_interval(a: Side, b: Side, n_boot: int = stats.DEFAULT_N_BOOT) -> dict[str, Any]:
    """stats.mean_difference of B minus A (points): the mean accuracy difference with its 95%
    interval, overall and per class (Newcombe for one evaluation a side, else the bootstrap)."""
    return stats.mean_difference(b.records, a.records, n_boot=n_boot)


def differences(stats_a: dict, stats_b: dict) -> dict[str, float | None]:
    """B minus A in percentage points: difference of the mean accuracy over seeds (for a single
    evaluation its accuracy), overall and per class."""
    out: dict[str, float | None] = {}
    for metric, key in ((OVERALL, "overall"), (SPEECH, SPEECH), (NONSPEECH, NONSPEECH)):
        a, b = stats_a.get(key), stats_b.get(key)
        out[metric] = None if not a or not b else b["mean"] - a["mean"]
    return out


def difference_line(diff: Mapping[str, float | None], interval: Mapping[str, Any] | None = None) -> str:
    """'+3.1 pts overall (+12.5 SPEECH, -6.2 NONSPEECH)'; with `interval` (difference_interval)
    each figure carries its 95% interval and the line names the method:
    '+3.1 pts overall [-2.0, 8.1] (+12.5 [3.1, 21.9] SPEECH, ...); 95% intervals: ...'."""
    if interval is None:
        return (f"{format_pts(diff[OVERALL])} pts overall ({format_pts(diff[SPEECH])} SPEECH, "
                f"{format_pts(diff[NONSPEECH])} NONSPEECH)")

    def part(metric: str, key: str) -> str:
        found = interval.get(key)
        return format_pts(diff[metric]) + (f" {format_interval(found['ci'], 1.0)}" if found and found["ci"] else "")

    return (f"{part(OVERALL, 'overall')} pts overall ({part(SPEECH, SPEECH)} SPEECH, {part(NONSPEECH, NONSPEECH)} "
            f"NONSPEECH); 95% intervals: {DIFFERENCE_METHODS[interval['method']]}")


SEED_METRICS = ((OVERALL, "overall"), (SPEECH, SPEECH), (NONSPEECH, NONSPEECH), ("Balanced", "balanced"))


def seed_table(seed_stats: Mapping[str, dict]) -> pd.DataFrame:
    """Multi-seed statistics: mean, SD, t-interval (clipped to [0, 100], marked), bootstrap
    interval, range, n and the summary's note (one seed, SD 0, clipping) per metric."""
    rows = []
    for name, agg in seed_stats.items():
        for label, key in SEED_METRICS:
            s = agg.get(key)
            if not s:
                continue
            t_interval = format_interval(s["t_ci"], 1.0) + (" (clipped)" if s.get("t_ci_clipped") else "")
            rows.append({"Configuration": name, "Metric": label, "n seeds": s["n_seeds"],
                         "Mean": f"{s['mean']:.2f}%", "SD": "n/a" if s["sd"] is None else f"{s['sd']:.2f}",
                         "t 95% interval": t_interval,
                         "Bootstrap 95% interval": format_interval(s["bootstrap_ci"], 1.0),
                         "Range": f"{s['min']:.1f} to {s['max']:.1f}",
                         "Per seed": ", ".join(f"{v:.1f}" for v in s["values"]),
                         "Note": s.get("note") or ""})
    return pd.DataFrame(rows, columns=["Configuration", "Metric", "n seeds", "Mean", "SD", "t 95% interval",
                                       "Bootstrap 95% interval", "Range", "Per seed", "Note"])


def seed_points(seed_stats: Mapping[str, dict], metric: str = "overall") -> pd.DataFrame:
    """Every seed's accuracy (percent) for the strip plot: name, seed, accuracy."""
    rows = []
    for name, agg in seed_stats.items():
        s = agg.get(metric)
        if s:
            for seed, value in zip(agg["seeds"], s["values"]):
                rows.append({"name": name, "seed": seed_text(seed), "accuracy": value})
    return pd.DataFrame(rows, columns=["name", "seed", "accuracy"])


def seed_intervals(seed_stats: Mapping[str, dict], metric: str = "overall") -> pd.DataFrame:
    """Mean and interval per name for the strip plot: the bootstrap over clips and seeds (for one
    seed over clips only), the interval the tables' mean rows give; it stays inside [0, 100]
    where a t-interval from few seeds near 100% would not."""
    rows = []
    for name, agg in seed_stats.items():
        s = agg.get(metric)
        if not s:
            continue
        interval = s["bootstrap_ci"]
        rows.append({"name": name, "mean": s["mean"], "lo": interval[0] if interval else None,
                     "hi": interval[1] if interval else None, "interval": SEED_INTERVAL_NAME, "n": s["n_seeds"]})
    return pd.DataFrame(rows, columns=["name", "mean", "lo", "hi", "interval", "n"])


def _pair_label(key_a: Any, key_b: Any) -> str:
    """'seed 42' for a matched pair; 'A seed 7 vs B seed 42' when the keys differ."""
    return seed_text(key_a) if key_a == key_b else f"A {seed_text(key_a)} vs B {seed_text(key_b)}"


def paired_comparison(a: Side, b: Side) -> dict[str, Any]:
    """McNemar of A vs B per matched seed (Holm-adjusted over seeds), the paired t-test and the
    probability of improvement when seeds match (stats.compare_configs); a single evaluation
    against a configuration is paired with each of its seeds instead (rows named "A seed 7 vs
    B seed 42", and a note says the single run is reused). Each row names the records it
    paired: a.records[row["key_a"]] and b.records[row["key_b"]], and carries Newcombe's
    interval of A - B (`diff_ci`). `power` is one sentence for the whole pair."""
    matched = set(a.records) & set(b.records)
    out: dict[str, Any] = {"a": a.name, "b": b.name, "rows": [], "paired": None,
                           "probability_of_improvement": None, "note": None, "power": None}
    if matched:
        # Seed summaries are computed once elsewhere (seed_stats_for); one replicate is enough here.
        result = stats.compare_configs(a.records, b.records, n_boot=1)
        out["rows"] = [dict(row, pair=seed_text(row["seed"]), key_a=row["seed"], key_b=row["seed"])
                       for row in result["per_seed"]]
        out["paired"] = result["paired"]
        if a.n_seeds > 1 and b.n_seeds > 1:  # with one seed a side it is just "which number is larger"
            out["probability_of_improvement"] = result["probability_of_improvement"]
        unmatched = result["only_a_seeds"] + result["only_b_seeds"]
        if unmatched:
            out["note"] = f"seeds without a partner are left out: {', '.join(map(str, unmatched))}"
    elif len(a.records) == 1 or len(b.records) == 1:
        rows = []
        for ka, ra in a.records.items():
            for kb, rb in b.records.items():
                rows.append(dict(stats.mcnemar(ra, rb), seed=None, pair=_pair_label(ka, kb), key_a=ka, key_b=kb))
        for row, p_adj in zip(rows, stats.holm([r["p_value"] for r in rows])):
            row["p_holm"] = p_adj
        out["rows"] = rows
        if len(rows) > 1:
            single, side, other = (a, "A", b) if len(a.records) == 1 else (b, "B", a)
            key = next(iter(single.records))
            out["note"] = (f"no seed in common: {side}'s single run ({seed_text(key)}) is reused against each of "
                           f"the {len(rows)} seeds of {other.name}, so these rows share its predictions and are not "
                           "independent replications; p (Holm) adjusts over them")
    else:
        out["note"] = "no seed in common: McNemar needs the same seed on both sides (or one single evaluation)"
    for row in out["rows"]:
        row["power_caveat"] = stats.power_caveat(row["n"], row["discordant"] / row["n"] if row["discordant"] else None)
    if out["rows"]:
        clips = out["rows"][0]["n"]
        rate = sum(r["discordant"] for r in out["rows"]) / sum(r["n"] for r in out["rows"])
        out["power"] = stats.power_statement(clips, rate)
    return out


def paired_findings(paired: Mapping[str, Any]) -> list[str]:
    """The over-seed results of one pair of configurations as sentences, in the order shown.

    The Compare page and the Markdown report both print exactly these, so a statistic added to
    the comparison is written here once and appears in both.
    """
    over_seeds = paired.get("paired") or {}
    lines = []
    t_test = over_seeds.get("t_test")
    if t_test:
        interval = over_seeds.get("mean_diff_ci")
        ci_text = (f" (95% t-interval over seeds {format_interval(interval, 1.0)}"
                   + (", clipped" if over_seeds.get("mean_diff_ci_clipped") else "") + ")") if interval else ""
        lines.append(f"Paired t-test over {over_seeds['n_seeds']} matched seeds: mean difference A - B "
                     f"{format_pts(over_seeds['mean_diff_pts'])} pts{ci_text}, t({t_test['df']}) = "
                     f"{t_test['statistic']:.3f}, p = {format_p(t_test['p_value'])}")
    wilcoxon = over_seeds.get("wilcoxon")
    if wilcoxon:
        lines.append(f"Wilcoxon signed-rank: W = {wilcoxon['statistic']:.1f}, p = {format_p(wilcoxon['p_value'])}")
    if paired.get("probability_of_improvement") is not None:
        lines.append(f"Probability of improvement P(A > B) over seeds: {paired['probability_of_improvement']:.2f}")
    return lines


def paired_notes(paired: Mapping[str, Any]) -> list[str]:
    """Caveats of one pair: guards that fired, then one power statement for the pair (the
    observed discordance and the best case, each named)."""
    notes = [note for note in ((paired.get("paired") or {}).get("note"), paired.get("note")) if note]
    return notes + ([f"Power: {paired['power']}"] if paired.get("power") else [])


def mcnemar_table(paired: Mapping[str, Any]) -> pd.DataFrame:
    """One row per matched seed: the 2x2 counts (A = paired["a"], B = paired["b"]), method,
    statistic, p and Holm-adjusted p."""
    rows = []
    for row in paired["rows"]:
        t = row["table"]
        rows.append({"Seed": row["pair"], "Both right": t["both_right"], "Only A right": t["only_a"],
                     "Only B right": t["only_b"], "Both wrong": t["both_wrong"], "Clips": row["n"],
                     "Method": row["method"], "Statistic": round(row["statistic"], 4),
                     "p": format_p(row["p_value"]), "p (Holm)": format_p(row.get("p_holm")),
                     "A - B (pts)": format_pts(row["diff_pts"]),
                     "A - B 95% CI (Newcombe)": format_interval(row.get("diff_ci"), 1.0)})
    return pd.DataFrame(rows)


def class_difference_table(paired: Mapping[str, Any]) -> pd.DataFrame:
    """Per seed row and class: A - B in points with Newcombe's paired 95% interval."""
    rows = []
    for row in paired["rows"]:
        for cls in CLASSES:
            part = row["per_class"][cls]
            rows.append({"Seed": row["pair"], "Class": cls, "Clips": part["n"], "Only A right": part["only_a"],
                         "Only B right": part["only_b"], "A - B (pts)": format_pts(part["diff_pts"]),
                         "A - B 95% CI (Newcombe)": format_interval(part.get("diff_ci"), 1.0)})
    return pd.DataFrame(rows, columns=["Seed", "Class", "Clips", "Only A right", "Only B right", "A - B (pts)",
                                       "A - B 95% CI (Newcombe)"])


def cochran(sides: Sequence[Side]) -> dict[str, Any] | None:
    """Cochran's Q that three or more sides are equally accurate on the same clips, per seed
    that every multi-seed side has (a side with one evaluation joins each row, and a note
    says so); Holm-adjusted over the rows. None with fewer than three sides."""
    sides = [s for s in sides if not s.baseline]
    if len(sides) < 3:
        return None
    multi = [s for s in sides if s.n_seeds > 1]
    singles = [s for s in sides if s.n_seeds == 1]
    if multi:
        keys = stats.ordered_seeds(set.intersection(*(set(s.records) for s in multi)))
    else:
        keys = [None]
    out: dict[str, Any] = {"names": [s.name for s in sides], "rows": [], "note": None}
    notes = []
    if not keys:
        out["note"] = (f"no seed is shared by all {len(multi)} multi-seed configurations: Cochran's Q needs one "
                       "evaluation of each configuration on the same clips")
        return out
    for key in keys:
        lists = [s.records[key] if s.n_seeds > 1 else next(iter(s.records.values())) for s in sides]
        out["rows"].append(dict(stats.cochran_q(lists), key=key,
                                pair="single evaluations" if key is None else seed_text(key)))
    for row, p_adj in zip(out["rows"], stats.holm([r["p_value"] for r in out["rows"]])):
        row["p_holm"] = p_adj
    if multi and singles and len(keys) > 1:
        notes.append(f"{', '.join(s.name for s in singles)}: one run, reused in every row")
    notes += sorted({r["note"] for r in out["rows"] if r["note"]})
    out["note"] = "; ".join(notes) or None
    return out


def cochran_table(result: Mapping[str, Any]) -> pd.DataFrame:
    return pd.DataFrame([{"Seed": r["pair"], "Configurations": r["k"], "Clips": r["n"], "Q": round(r["statistic"], 4),
                          "df": r["df"], "p": format_p(r["p_value"]), "p (Holm)": format_p(r["p_holm"])}
                         for r in result["rows"]], columns=["Seed", "Configurations", "Clips", "Q", "df", "p", "p (Holm)"])


def cochran_line(result: Mapping[str, Any]) -> str:
    """One sentence for the page and the report."""
    names = ", ".join(result["names"])
    if not result["rows"]:
        return f"Cochran's Q ({names}): not computed; {result['note']}."
    parts = [f"{r['pair']}: Q({r['df']}) = {r['statistic']:.3f}, p = {format_p(r['p_value'])}"
             + (f", p (Holm) = {format_p(r['p_holm'])}" if len(result["rows"]) > 1 else "") for r in result["rows"]]
    return (f"Cochran's Q that all {len(result['names'])} configurations ({names}) are equally accurate on the "
            f"same clips: " + "; ".join(parts) + (f" ({result['note']})" if result["note"] else ""))


def contingency_frame(row: Mapping[str, Any], name_a: str, name_b: str) -> pd.DataFrame:
    """The 2x2 table of one McNemar test: rows A right/wrong, columns B right/wrong."""
    t = row["table"]
    return pd.DataFrame([[t["both_right"], t["only_a"]], [t["only_b"], t["both_wrong"]]],
                        index=[f"{name_a} right", f"{name_a} wrong"],
                        columns=[f"{name_b} right", f"{name_b} wrong"])


def discordant_frame(row: Mapping[str, Any], records_a: Sequence[dict], records_b: Sequence[dict],
                     name_a: str, name_b: str) -> pd.DataFrame:
    """The clips one side got right and the other wrong, with both predictions and the audio path."""
    by_a = {str(r["clip_id"]): r for r in records_a}
    by_b = {str(r["clip_id"]): r for r in records_b}
    rows = []
    for clip in row["discordant_clips"]:
        ra, rb = by_a[str(clip["clip_id"])], by_b[str(clip["clip_id"])]
        rows.append({"clip_id": str(clip["clip_id"]), "label": clip["label"],
                     "outcome": f"{name_a} right, {name_b} wrong" if clip["a_correct"]
                     else f"{name_a} wrong, {name_b} right",
                     "A pred": ra["pred"], "A p_speech": ra.get("p_speech"),
                     "B pred": rb["pred"], "B p_speech": rb.get("p_speech"),
                     "duration_s": ra.get("duration_s"), "path": ra.get("path") or rb.get("path")})
    return pd.DataFrame(rows, columns=["clip_id", "label", "outcome", "A pred", "A p_speech", "B pred",
                                       "B p_speech", "duration_s", "path"])


def _flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def config_value_text(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value))
    if isinstance(value, Mapping):
        return json.dumps(value, sort_keys=True) if value else "{}"
    return str(value)


def _differing_fields(configs: Sequence[Mapping[str, Any]]) -> list[str]:
    flat = [_flatten(c) for c in configs]
    keys = sorted({k for f in flat for k in f})
    return [k for k in keys if len({config_value_text(f.get(k)) for f in flat}) > 1]


def config_diff(configs: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """Only the config fields whose values differ between the names (rows: field, columns: names)."""
    names = list(configs)
    fields = _differing_fields([configs[n] for n in names])
    flat = {n: _flatten(configs[n]) for n in names}
    return pd.DataFrame([[config_value_text(flat[n].get(f)) for n in names] for f in fields],
                        index=pd.Index(fields, name="field"), columns=names)


@dataclass
class Comparison:
    """Everything the Compare page and the report show for a list of sides."""

    sides: list[Side]
    rows: list[dict]
    seed_stats: dict[str, dict]
    table: pd.DataFrame
    differences: list[dict]
    seed_table: pd.DataFrame
    paired: list[dict]
    config_diff: pd.DataFrame
    losses: pd.DataFrame
    n_clips: int
    power_caveat: str
    notes: list[str] = field(default_factory=list)
    cochran: dict | None = None  # review.cochran of the picked sides (three or more)

    @property
    def picked(self) -> list[Side]:
        return [s for s in self.sides if not s.baseline]


def comparison_statistics(sides: Sequence[Side], baselines: Sequence[Side] = (),
                          n_boot: int = stats.DEFAULT_N_BOOT) -> dict[str, Any]:
    """The statistics of a comparison, without run folders (the Compare page and the `compare`
    command both use these): seed summaries of every side, the difference of each side from
    the first (B - A) with its interval, the paired tests of each pair, Cochran's Q.

    Raises stats.PairingError when the evaluations are not on the same clips.
    """
    sides, baselines = list(sides), list(baselines)
    if len(sides) < 1:
        raise SelectionError("pick at least one configuration or evaluation")
    check_same_clips(sides + baselines)
    seed_stats = {side.name: seed_stats_for(side, n_boot) for side in sides + baselines}
    reference = sides[0]
    diffs = []
    for other in sides[1:]:
        diff = differences(seed_stats[reference.name], seed_stats[other.name])
        interval = difference_interval(reference, other, n_boot)
        diffs.append({"a": reference.name, "b": other.name, "points": diff, "interval": interval,
                      "line": difference_line(diff, interval)})
    first = next(iter(reference.records.values()))
    return {"seed_stats": seed_stats, "differences": diffs,
            "paired": [paired_comparison(reference, other) for other in sides[1:]],
            "cochran": cochran(sides), "n_clips": len(first)}


def build_comparison(sides: Sequence[Side], baselines: Sequence[Side] = (),
                     n_boot: int = stats.DEFAULT_N_BOOT) -> Comparison:
    """Compare the sides (the first is the reference A); baselines only add table rows.

    Raises stats.PairingError when the evaluations are not on the same clips.
    """
    sides, baselines = list(sides), list(baselines)
    computed = comparison_statistics(sides, baselines, n_boot)
    everything = sides + baselines
    seed_stats = computed["seed_stats"]
    rows = evaluation_rows(everything)
    diffs, paired = computed["differences"], computed["paired"]
    n_clips = rows[0]["n"] if rows else 0
    notes = []
    # Demo runs: the tiny model, or (the demo's own) the demo model trained on the demo's data.
    if any(s.kind == rf.KIND_TRAIN and (s.config.get("model") == "tiny"
                                        or ".demo-data" in Path(str(s.config.get("train_data", ""))).parts)
           for s in sides):
        notes.append("Demo runs use the tiny model (random weights, or the demo model pre-trained on synthetic "
                     "sounds) on synthetic clips: the numbers show how "
                     "the dashboard works, not how Qwen2-Audio-7B performs.")
    for side in sides:
        if side.n_seeds < 2 and side.kind != rf.KIND_BASELINE:
            notes.append(f"{side.name}: one run, so no spread over seeds (SD and t-interval need two or more "
                         "seeds); its bootstrap interval covers clip sampling only.")
    return Comparison(
        sides=everything, rows=rows, seed_stats=seed_stats, table=comparison_table(rows, seed_stats),
        differences=diffs, seed_table=seed_table(seed_stats), paired=paired,
        config_diff=config_diff({s.name: s.config for s in sides}),
        losses=loss_frame(side_runs(sides)), n_clips=n_clips,
        power_caveat=stats.power_caveat(n_clips) if n_clips else "", notes=notes, cochran=computed["cochran"])


def compare(runs: Sequence[rf.RunInfo], picks: Sequence[str], evaluation: str = DEFAULT_EVALUATION,
            load: Loader | None = None, include_baselines: bool = True,
            n_boot: int = stats.DEFAULT_N_BOOT) -> Comparison:
    """resolve_picks + baseline_sides + build_comparison, reading predictions with `load`."""
    from engine.runs.predictions import read_predictions

    load = load or read_predictions
    sides = resolve_picks(runs, picks, evaluation, load)
    baselines = baseline_sides(runs, sides, load) if include_baselines else []
    return build_comparison(sides, baselines, n_boot)
