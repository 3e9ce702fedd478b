"""What the Train and Evaluate forms launch, as plain functions (no Streamlit, no torch).

Train: the form's widgets are derived from TrainConfig's fields (`form_sections`); the values
typed in (`plan_sweep`) expand to one run per combination of the list-capable fields (seeds,
LoRA ranks, alphas, target presets), each cell checked by TrainConfig.validate(), the same
check the CLI runs, so the messages name the same fields. `train_command` is the equivalent
`python -m engine train ...` command line of one cell.

Evaluate: `plan_evaluations` turns the form into `python -m engine eval ...` argument lists for
one run, every seed of a configuration, or the base model, optionally with another prompt.

Baseline detector (Evaluate page): `plan_baseline` turns the form into one `python -m engine
baseline ...` job (detectors and their options from the baseline registry), with the clip rule
and threshold chosen on a validation split (by default `sibling_val_split` of the test set) or
fixed; `queue_baseline` queues it on the CPU.

Prompt optimisation: `plan_opro` turns the OPRO form into `python -m engine opro ...` jobs, one
per target run (or one for the base model), each with a new run folder prepared as "queued";
`queue_opro` creates the folders and queues them (docs/OPRO.md).

Queue views: `job_rows`, `job_progress`, `opro_progress` and `sweep_cells` read the job queue and run
folders.
"""

from __future__ import annotations

import glob
import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from engine.ops import disk
from engine import jobs
from engine.runs import folder as rf
from engine.data import datasets
from engine.data.audio import AUDIO_EXTENSIONS
from engine import cliargs
from engine.config import (PRESET_LABELS, QUANTIZATIONS, TARGET_PRESETS, ConfigError, EvalConfig,
                           TrainConfig, config_fields)
from engine.tasks.opro import PROPOSER_EDIT, PROPOSER_MODEL, PROPOSER_SELF, PROPOSERS  # noqa: F401 (pages use them)
from engine.tasks.opro import TEST_NAME as OPRO_TEST_NAME
from engine.tasks.opro import OproSettings
from engine.tasks import baselines
from engine.tasks.train import train_argv
from engine.dashboard.review import pct, run_seed
from engine.tasks.evaluate import CONTROLS

# Fields a sweep may list several values of, with the type of one value.
LIST_FIELDS: dict[str, type] = {"seed": int, "lora_r": int, "lora_alpha": float}
CHOICE_FIELDS: dict[str, tuple[str, ...]] = cliargs.field_choices(TrainConfig)  # the CLI's and validate()'s choices
LONG_TEXT_FIELDS = frozenset({"system_prompt", "prompt"})
DERIVED_KEYS = ("target_modules", "effective_batch")

# Every TrainConfig field in one section; a test flags names that are missing or no longer fields.
FORM_SECTIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Configuration", ("label", "model", "quantization", "targets", "lora_r", "lora_alpha", "lora_dropout", "seed")),
    ("Data", ("train_data", "val_data", "filters", "skip_bad_audio", "max_clip_seconds")),
    ("Optimisation", ("epochs", "max_steps", "per_device_batch", "grad_accum", "learning_rate", "weight_decay",
                      "warmup_ratio", "scheduler", "max_grad_norm")),
    ("Prompt", ("system_prompt", "prompt", "label_words")),
    ("Runtime", ("checkpoints", "device", "dtype", "gradient_checkpointing", "base_cache", "compile", "offload_embeddings",
                 "auto_micro_batch", "num_processes")),
)
OTHER_SECTION = "Other"  # fields added to TrainConfig but not yet placed above

# ---------------------------------------------------------------- the Train form

@dataclass(frozen=True)
class FormField:
    """One TrainConfig field as a form widget: kind is list, presets, choice, checkbox, text_area or text."""

    name: str
    kind: str
    initial: Any
    help: str
    options: tuple[str, ...] = ()


def form_sections() -> list[tuple[str, list[FormField]]]:
    """The Train form, section by section, with each field's docstring as its help text."""
    described = {name: (default, doc) for name, default, doc in config_fields()}
    sections = []
    for title, names in FORM_SECTIONS:
        sections.append((title, [_form_field(name, *described[name]) for name in names if name in described]))
    placed = {name for _title, names in FORM_SECTIONS for name in names}
    others = [_form_field(name, *described[name]) for name in described if name not in placed]
    if others:
        sections.append((OTHER_SECTION, others))
    return sections


def _form_field(name: str, default: Any, doc: str) -> FormField:
    if name in LIST_FIELDS:
        return FormField(name, "list", cliargs.format_value(default),
                         f"{doc} Several values, comma-separated, train one run each (e.g. 42, 123, 456).")
    if name == "targets":
        return FormField(name, "presets", [default] if isinstance(default, str) else list(default),
                         f"{doc} Choose several to train each.", tuple(TARGET_PRESETS))
    if name in CHOICE_FIELDS:
        return FormField(name, "choice", default, doc, CHOICE_FIELDS[name])
    if isinstance(default, bool):
        return FormField(name, "checkbox", default, doc)
    if name == "label_words":
        return FormField(name, "text", ", ".join(default), f"{doc} Comma-separated.")
    if name == "filters":
        return FormField(name, "text", format_filters(default),
                         f"{doc} Write column=spec pairs separated by ';', e.g. duration_ms=500:3000; snr_db=0:20.")
    if name in LONG_TEXT_FIELDS:
        return FormField(name, "text_area", default, doc)
    return FormField(name, "text", "" if default is None else cliargs.format_value(default), doc)


def demo_defaults(runs_root: Path) -> dict[str, Any]:
    """Starting values for a demo workspace (one holding .demo-data/): its data and the demo runs' model."""
    data = Path(runs_root) / ".demo-data"
    if not (data / "train.csv").is_file():
        return {}
    try:  # new runs start on the demo runs' base model (the demo model, or tiny in older workspaces)
        model = str(rf.read_json(Path(runs_root) / "demo-attention-s42" / rf.CONFIG).get("model") or "tiny")
    except (OSError, ValueError, AttributeError):
        model = "tiny"
    values: dict[str, Any] = {"model": model,
                              "train_data": str((data / "train.csv").resolve())}
    if (data / "val.csv").is_file():
        values["val_data"] = str((data / "val.csv").resolve())
    return values


def format_filters(filters: dict[str, str]) -> str:
    return "; ".join(f"{column}={spec}" for column, spec in filters.items())


def parse_filters(text: str) -> dict[str, str]:
    """"duration_ms=500:3000; snr_db=0:20" -> {"duration_ms": "500:3000", "snr_db": "0:20"}."""
    filters: dict[str, str] = {}
    for part in str(text or "").split(";"):
        if not part.strip():
            continue
        column, eq, spec = part.partition("=")
        if not eq or not column.strip() or not spec.strip():
            raise ConfigError("filters", f"{part.strip()!r} is not column=spec (e.g. duration_ms=500:3000)")
        filters[column.strip()] = spec.strip()
    return filters


def _read_form(form: dict[str, Any]) -> tuple[dict[str, Any], dict[str, list], list[ConfigError]]:
    """Widget values -> (base config fields, swept lists with more than one value, problems)."""
    base: dict[str, Any] = {}
    lists: dict[str, list] = {}
    problems: list[ConfigError] = []
    defaults = TrainConfig()
    for name, _default, _doc in config_fields():
        raw = form.get(name, getattr(defaults, name))
        try:
            if name in LIST_FIELDS:
                try:
                    values = jobs.parse_list(raw, LIST_FIELDS[name])
                except ValueError as exc:
                    raise ConfigError(name, str(exc)) from None
            elif name == "targets":
                values = [raw] if isinstance(raw, str) else list(raw or [])
                if not values:
                    raise ConfigError("targets", "choose at least one target preset")
            else:
                base[name] = _field_value(name, raw)
                continue
        except ConfigError as exc:
            problems.append(exc)
            continue
        if len(values) == 1:
            base[name] = values[0]
        else:
            lists[name] = values
    return base, lists, problems


def _field_value(name: str, raw: Any) -> Any:
    """One plain field from its widget; numbers stay as typed so validate() words the errors."""
    if name == "filters":
        return parse_filters(raw) if isinstance(raw, str) else dict(raw or {})
    if name == "label_words":
        return [w.strip() for w in raw.split(",")] if isinstance(raw, str) else list(raw)
    if isinstance(raw, str):
        raw = raw.strip() if name not in LONG_TEXT_FIELDS else raw
        if name == "max_steps" and raw == "":
            return None
    return raw


@dataclass
class SweepPlan:
    """The runs a Train form would launch: cells (expand_sweep's, configs validated) and problems."""

    cells: list[dict] = field(default_factory=list)
    errors: list[ConfigError] = field(default_factory=list)  # distinct, each naming its field
    cell_errors: dict[str, str] = field(default_factory=dict)  # run name -> message
    existing: dict[str, str] = field(default_factory=dict)  # run name -> state of a folder already there

    @property
    def launchable(self) -> bool:
        return bool(self.cells) and not self.errors

    @property
    def to_train(self) -> list[str]:
        """Names that launching would queue: a succeeded run of the same name is kept, not redone, and
        a queued or running one is left to finish."""
        busy = {rf.SUCCEEDED, *rf.ACTIVE_STATES}
        return [c["run_name"] for c in self.cells if self.existing.get(c["run_name"]) not in busy]

    def rows(self) -> list[dict]:
        """The preview table: one row per run."""
        out = []
        for cell in self.cells:
            config = cell["config"]
            targets = config.get("targets", "attention")
            out.append({
                "run": cell["run_name"], "configuration": config.get("label") or PRESET_LABELS.get(targets, targets),
                "targets": targets if isinstance(targets, str) else ",".join(targets),
                "lora_r": config.get("lora_r"), "lora_alpha": config.get("lora_alpha"), "seed": config.get("seed"),
                "check": self.cell_errors.get(cell["run_name"], "ok"),
                "folder": _existing_note(self.existing.get(cell["run_name"]))})
        return out


def _existing_note(state: str | None) -> str:
    if state is None:
        return "new"
    if state == rf.SUCCEEDED:
        return "succeeded: skipped"
    if state in rf.ACTIVE_STATES:
        return f"{state}: skipped"
    return f"{state}: retried (old attempt kept)"


def plan_sweep(form: dict[str, Any], runs_root: Path | None = None, check_paths: bool = True) -> SweepPlan:
    """Expand the form to its cells and validate each one as the CLI would."""
    plan = SweepPlan()
    base, lists, problems = _read_form(form)
    if problems:
        plan.errors = problems
        return plan
    try:
        cells = jobs.expand_sweep(base, lists)
    except (ValueError, rf.RunFolderError) as exc:
        plan.errors = [exc if isinstance(exc, ConfigError) else ConfigError("label", str(exc))]
        return plan
    seen: dict[str, ConfigError] = {}
    for cell in cells:
        try:
            cfg = TrainConfig.from_dict(cell["config"]).validate(check_paths=check_paths)
        except ConfigError as exc:
            plan.cell_errors[cell["run_name"]] = str(exc)
            seen.setdefault(str(exc), exc)
        else:
            label = cell["config"].get("label")
            cell["config"] = {k: v for k, v in cfg.to_dict().items() if k not in DERIVED_KEYS}
            if not label:  # keep a derived label derived, as expand_sweep left it
                cell["config"].pop("label", None)
    plan.cells = cells
    plan.errors = list(seen.values())
    if runs_root is not None:
        for cell in cells:
            state = _run_state(Path(runs_root) / cell["run_name"])
            if state is not None:
                plan.existing[cell["run_name"]] = state
    return plan


def _run_state(run_dir: Path) -> str | None:
    try:
        return rf.read_status(run_dir).get("state")
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        return None


def train_command(config: dict[str, Any], run_dir: str | Path | None = None) -> str:
    """`python -m engine train ...` giving the same run as `config` (fields left at defaults omitted).

    The flags are the CLI's own (engine.tasks.train.train_argv). Fields the CLI has no flag for
    are listed on a comment line: the queued job reads them from the run's config.json.
    """
    cfg = TrainConfig.from_dict({k: v for k, v in config.items() if k not in DERIVED_KEYS})
    if cfg.label and cfg.label == PRESET_LABELS.get(cfg.target_preset or ""):
        cfg.label = ""  # the preset's own label is what the run derives anyway
    flags, leftovers = train_argv(cfg)
    argv = ["python", "-m", "engine", "train", *flags]
    if run_dir is not None:
        argv += ["--run-dir", str(run_dir)]
    command = shlex.join(argv)
    if leftovers:
        command += "\n# no flag for " + ", ".join(leftovers) + " (the queued job reads them from config.json)"
    return command


def sweep_bytes(cells: Iterable[dict]) -> int:
    """What the cells may write to disk (disk.train_bytes each, epoch checkpoints counted)."""
    return sum(disk.train_bytes(cell["config"]) for cell in cells)


# ---------------------------------------------------------------- the Evaluate form

@dataclass
class EvalJob:
    """One `python -m engine eval` job the Evaluate form would queue."""

    target: str  # what is scored, for the preview
    evaluation: str  # the evaluation's name inside the run
    argv: list[str]
    run_dir: Path | None  # the training run scored (None for the base model: eval makes a run)

    @property
    def command(self) -> str:
        return engine_command(self.argv)


def engine_command(argv: Iterable[str]) -> str:
    """The shell-quoted `python -m engine ...` line of a job's argument list (for previews)."""
    return shlex.join(["python", "-m", "engine", *argv])


def eval_argv(test_data: str, name: str = "test", batch_size: int = 8, control: str | None = None,
              run_dir: Path | None = None, base_model: str | None = None, quantization: str | None = None,
              runs_root: Path | None = None, run_name: str | None = None,
              threshold_from: str | None = None, prompt: str | None = None) -> list[str]:
    """The argument list of `python -m engine eval` (after "engine") for a run or the base model.

    `prompt` replaces the run's own question (e.g. an OPRO run's best prompt); None keeps it.
    runs_root and run_name apply to the base model only (a run's evaluation goes into the run).
    """
    if (run_dir is None) == (base_model is None):
        raise ValueError("give exactly one of run_dir and base_model")
    base = base_model is not None
    cfg = EvalConfig(run=None if base else str(run_dir), base=base, model=str(base_model) if base else None,
                     runs_dir=Path(runs_root) if base and runs_root is not None else None,
                     run_name=(run_name or None) if base else None, quantization=quantization or None,
                     test_data=str(test_data), name=name, batch_size=int(batch_size), control=control or None,
                     threshold_from=threshold_from or None, prompt=prompt).validate()
    return ["eval", *cliargs.config_to_argv(cfg, always=("name", "batch_size"))]


def scorable_runs(runs: Iterable[rf.RunInfo]) -> list[rf.RunInfo]:
    """Succeeded training runs holding a complete adapter."""
    return [info for info in runs if info.kind == rf.KIND_TRAIN and info.state == rf.SUCCEEDED
            and all((info.path / rf.ADAPTER_DIR / name).is_file() for name in rf.ADAPTER_FILES)]


def _data_problem(what: str, value: str | Path | None, required: bool) -> str | None:
    if not str(value or "").strip():
        return f"{what}: give a manifest (CSV/JSONL) or a folder" if required else None
    if not Path(str(value)).expanduser().exists():
        return f"{what}: not found: {Path(str(value)).expanduser()}"
    return None


def _name_problem(what: str, name: str) -> str | None:
    """Why `name` cannot be a run or evaluation folder name (it must stay one folder inside), or None."""
    try:
        rf.check_run_name(name)
    except rf.RunFolderError as exc:
        return f"{what}: {exc}"
    return None


def _target_problems(runs: list[rf.RunInfo], base_model: str | None) -> list[str]:
    """What is wrong with the form's target: no finished run picked, or an empty base model."""
    if base_model is None:
        return [] if runs else ["target: choose a run or a configuration with finished runs"]
    return [] if str(base_model).strip() else ["base model: give a model id, a model folder or tiny"]


def plan_evaluations(runs_root: Path, runs: list[rf.RunInfo], test_data: str, name: str = "test",
                     batch_size: int = 8, controls: Iterable[str | None] = (None,),
                     threshold_from_val: bool = False, base_model: str | None = None,
                     quantization: str = "4bit", run_name: str | None = None,
                     prompt: str | None = None) -> tuple[list[EvalJob], list[str]]:
    """Eval jobs for `runs` (their adapters) or, with base_model, for the base model; plus problems.

    controls: None scores the real audio, "silence"/"shuffle" the audio-is-used controls; each
    gives one evaluation ("<name>" or "<name>-<control>"). threshold_from_val chooses each run's
    threshold on its "val" evaluation (made when the run was trained with val_data). prompt:
    None scores with each run's own prompt; a text is passed as `--prompt` to every job.
    """
    problems = [p for p in (_data_problem("test data", test_data, True), _name_problem("evaluation name", name)) if p]
    if whole_number(batch_size, 1) is None:
        problems.append(f"batch size: must be a whole number >= 1 (got {batch_size!r})")
    controls = list(controls)
    if not controls:
        problems.append("audio: choose the real audio, a control, or both")
    unknown = [c for c in controls if c is not None and c not in CONTROLS]
    if unknown:
        problems.append(f"control: {', '.join(map(str, unknown))} is not one of {', '.join(CONTROLS)}")
    problems += _target_problems(runs, base_model)
    if prompt is not None and not str(prompt).strip():
        problems.append("prompt: the prompt is empty (choose the run's own prompt, or write one)")
    if run_name and (problem := _name_problem("run name", run_name)):
        problems.append(problem)
    if problems:
        return [], problems

    if threshold_from_val and base_model is None:
        for info in runs:
            if "val" not in info.evaluations:
                problems.append(f"{info.run_id}: no 'val' evaluation to choose a threshold on "
                                "(train with val_data, or untick the option)")
        if problems:
            return [], problems

    test_data = str(Path(test_data).expanduser().resolve())
    threshold_from = "val" if threshold_from_val else None
    planned: list[EvalJob] = []
    for control in controls:
        evaluation = f"{name}-{control}" if control else name
        if base_model is not None:
            stem = run_name or f"base-{_safe_stem(base_model)}"
            stem = f"{stem}-{control}" if control else stem
            planned.append(EvalJob(f"base model {base_model}", evaluation, eval_argv(
                test_data, name, int(batch_size), control, base_model=base_model, quantization=quantization,
                runs_root=Path(runs_root), run_name=stem, prompt=prompt), None))
            continue
        for info in runs:
            planned.append(EvalJob(info.run_id, evaluation, eval_argv(
                test_data, name, int(batch_size), control, run_dir=info.path, threshold_from=threshold_from,
                prompt=prompt), info.path))
    return planned, problems


def whole_number(value: Any, minimum: int) -> int | None:
    """`value` as an int when it is a whole number >= minimum (5, 5.0, "5"), else None."""
    try:
        number = int(value)
        whole = float(value) == number
    except (TypeError, ValueError, OverflowError):
        return None
    return number if whole and number >= minimum else None


def _safe_stem(model: str) -> str:
    import re

    stem = re.sub(r"[^A-Za-z0-9._+-]+", "-", Path(str(model)).name).strip("-._+")
    return stem or "model"


def count_clips(test_data: str | Path) -> int:
    """A quick upper bound of the clips in a manifest or folder (for the disk estimate)."""
    path = Path(test_data).expanduser()
    if path.is_dir():
        return sum(1 for p in path.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS)
    try:
        with open(path, "rb") as fh:
            return sum(1 for line in fh if line.strip())
    except OSError:
        return 0


def known_test_sets(runs: Iterable[rf.RunInfo], runs_root: Path) -> list[str]:
    """Test data the workspace's evaluations used, plus the demo manifests: choices for the form."""
    found: list[str] = []
    demo = Path(runs_root) / ".demo-data"
    for name in ("test.csv", "val.csv"):
        if (demo / name).is_file():
            found.append(str((demo / name).resolve()))
    for info in runs:
        for evaluation in info.evaluations:
            try:
                source = rf.read_json(rf.evaluation_dir(info.path, evaluation) / rf.EVALUATION).get("test_data")
            except (OSError, json.JSONDecodeError, rf.RunFolderError):
                continue
            if source and source not in found and Path(source).exists():
                found.append(source)
    return found


# ---------------------------------------------------------------- the baseline detectors

BASELINE_COMMAND = "baseline"
BASELINE_RESOURCE = "cpu"  # the VADs score on the CPU: a baseline never waits for a GPU slot
BASELINE_DEFAULT_THRESHOLD = baselines.DEFAULT_THRESHOLD  # the fixed rule's cut, without a validation split
_TEST_WORD = re.compile(r"(?<![A-Za-z])test(?![A-Za-z])")  # test.csv, demo_test/, not latest.csv
VAL_SPLIT_WORDS = ("val", "validation", "dev")


@dataclass
class BaselineJob:
    """The `python -m engine baseline` job the Evaluate page's Baseline detector form would queue."""

    method: str
    label: str  # the detector's display name
    run_name: str
    run_dir: Path  # the new run folder the job makes (free when planned)
    test_data: str
    val_data: str | None  # chooses the clip rule and threshold; None: the fixed rule and `threshold`
    threshold: float | None
    argv: list[str]

    @property
    def command(self) -> str:
        return engine_command(self.argv)

    def preview(self) -> dict[str, str]:
        """The form's one-row preview table."""
        rule = (f"chosen on {self.val_data}" if self.val_data is not None
                else f"fixed: the detector's default rule, threshold {self.threshold:g}")
        return {"run": self.run_name, "detector": self.label, "test data": self.test_data,
                "clip rule and threshold": rule, "command": self.command}


def baseline_methods() -> dict[str, str]:
    """The registered detectors: --method value -> display name, in registration order."""
    return {name: detector.label for name, detector in baselines.registry.detectors().items()}


def baseline_options(method: str) -> tuple[baselines.Option, ...]:
    """The detector's own settings (webrtc: aggressiveness), each a CLI flag with default and choices."""
    return baselines.registry.detector(method).options


def sibling_val_split(test_data: str | Path, runs_root: Path | None = None) -> str | None:
    """The validation split stored beside a test split, or None.

    test.csv -> val.csv (then validation.csv, dev.csv) in the same folder, a class folder test/ ->
    val/; an uploaded data set named like "heldout-test" -> the newest uploaded "heldout-val".
    "test" counts as a word only (latest.csv has no sibling).
    """
    if not str(test_data or "").strip():
        return None
    if runs_root is not None and (dataset := datasets.dataset_of(runs_root, test_data)) is not None:
        if not _TEST_WORD.search(dataset.name):
            return None
        for word in VAL_SPLIT_WORDS:
            wanted = _TEST_WORD.sub(word, dataset.name)
            match = next((d for d in datasets.list_datasets(runs_root) if d.name == wanted), None)  # newest first
            if match is not None:
                return str(match.manifest)
        return None
    path = Path(str(test_data)).expanduser()
    if not _TEST_WORD.search(path.name) or not path.exists():
        return None
    for word in VAL_SPLIT_WORDS:
        candidate = path.with_name(_TEST_WORD.sub(word, path.name))
        if candidate.exists() and candidate.is_dir() == path.is_dir():
            return str(candidate.resolve())
    return None


def same_data(first: str | Path, second: str | Path) -> bool:
    """Whether two data paths name the same manifest or folder (links and relative paths resolved)."""
    a, b = Path(str(first)).expanduser(), Path(str(second)).expanduser()
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and a.samefile(b))
    except OSError:
        return False


def baseline_run_name(runs_root: Path, method: str, test_data: str | Path, job_list: Iterable[dict] = ()) -> str:
    """A free run name for a baseline of `method` on `test_data`: "<method>-<data set>" (the demo's
    test.csv gives silero-test, an uploaded set its id), with -2, -3, ... when taken by a folder
    or by a queued or running job."""
    data = str(test_data or "").strip()
    dataset = datasets.dataset_of(runs_root, data) if data else None
    stem = dataset.dataset_id if dataset is not None else (Path(data).expanduser().stem if data else "")
    name = _safe_stem(f"{method}-{stem}" if stem else str(method))
    taken = _baseline_targets(job_list)
    candidate, n = name, 1
    while (Path(runs_root) / candidate).exists() or candidate in taken:
        n += 1
        candidate = f"{name}-{n}"
    return candidate


def _baseline_targets(job_list: Iterable[dict]) -> dict[str, str]:
    """Run folder name -> state, for every queued or running job that writes a run folder."""
    return {Path(job["run_dir"]).name: job["state"] for job in job_list
            if job.get("run_dir") and job.get("state") in rf.ACTIVE_STATES}


def baseline_argv(method: str, test_data: str | Path, run_name: str, runs_root: str | Path,
                  val_data: str | Path | None = None, threshold: float | None = None,
                  options: dict[str, Any] | None = None) -> list[str]:
    """The argument list of `python -m engine baseline` (after "engine"): the detector's options
    (its defaults filled in) as their flags; a threshold only without a validation split."""
    detector = baselines.registry.detector(method)
    if val_data is not None and threshold is not None:
        raise ValueError("give either a validation split (which chooses the threshold) or a threshold, not both")
    argv = [BASELINE_COMMAND, "--method", method, "--test-csv", str(test_data), "--name", run_name,
            "--runs-dir", str(runs_root)]
    if val_data is not None:
        argv += ["--val-csv", str(val_data)]
    elif threshold is not None:
        argv += ["--threshold", repr(float(threshold))]
    given = dict(options or {})
    for option in detector.options:
        argv += [option.flag, str(option.parse(given.get(option.name, option.default)))]
    return argv


def plan_baseline(runs_root: Path, method: str, test_data: str, val_data: str | None = None,
                  run_name: str = "", threshold: Any = None, options: dict[str, Any] | None = None,
                  job_list: Iterable[dict] = ()) -> tuple[BaselineJob | None, list[str]]:
    """The baseline job of the form, or None and the problems (each naming its input).

    val_data blank: the detector's default rule at `threshold` (blank: 0.5); a validation split
    may not be the test data itself. The run name must be free: no folder of that name, no queued
    or running job writing one (the baseline refuses an existing folder when it starts).
    """
    problems: list[str] = []
    methods = baseline_methods()
    if method not in methods:
        problems.append(f"method: {method!r} is not a registered baseline detector (one of {', '.join(methods)})")
    val_given = bool(str(val_data or "").strip())
    problems += [p for p in (_data_problem("test data", test_data, True),
                             _data_problem("validation data", val_data, False)) if p]
    if not problems and val_given and same_data(test_data, str(val_data)):
        problems.append("validation data: the same as the test data; the clip rule and threshold must be chosen "
                        "on other clips than they are scored on (choose the val split, or none for the fixed rule)")
    cut = None
    if not val_given and str(threshold if threshold is not None else "").strip():
        try:
            cut = float(threshold)
        except (TypeError, ValueError):
            cut = float("nan")
        if not 0.0 <= cut <= 1.0:  # NaN fails too
            problems.append(f"threshold: must be a number from 0 to 1 (got {threshold!r})")
    values: dict[str, Any] = {}
    if method in methods:
        for option in baseline_options(method):
            try:
                values[option.name] = option.parse((options or {}).get(option.name, option.default))
            except ValueError as exc:
                problems.append(str(exc))
    run_name = str(run_name or "").strip()
    if problem := _name_problem("run name", run_name):
        problems.append(problem)
    elif (Path(runs_root) / run_name).exists():
        problems.append(f"run name: {run_name!r} already exists in the workspace; choose another name")
    elif state := _baseline_targets(job_list).get(run_name):
        problems.append(f"run name: a {state} job already writes the run {run_name!r}; choose another name")
    if problems:
        return None, problems

    test = str(Path(test_data).expanduser().resolve())
    val = str(Path(str(val_data)).expanduser().resolve()) if val_given else None
    root = Path(runs_root).resolve()
    argv = baseline_argv(method, test, run_name, root, val_data=val, threshold=cut, options=values)
    job = BaselineJob(method, methods[method], run_name, root / run_name, test, val,
                      None if val else (cut if cut is not None else BASELINE_DEFAULT_THRESHOLD), argv)
    return job, []


def queue_baseline(runs_root: Path, job: BaselineJob, start_worker: bool = True) -> str:
    """Queue the baseline job on the CPU (with `start_worker`, make sure a worker serves it); returns
    its job id. The run folder is made by the job itself (a baseline refuses an existing one), so a
    name taken since planning is refused here rather than failing in the queue."""
    if job.run_dir.exists():
        raise jobs.JobError(f"run {job.run_name!r} was made since the form was filled in; choose another name")
    queue = jobs.submit if start_worker else jobs.enqueue
    return queue(runs_root, job.argv, resource=BASELINE_RESOURCE, run_dir=job.run_dir)


def evaluate_job_columns(job: dict) -> dict[str, str]:
    """The Evaluate page's job-list columns: evaluation, control and prompt of an eval job; a
    baseline job's evaluation and its detector in place of a prompt."""
    argv = [str(a) for a in job.get("argv") or []]
    if argv[:1] == [BASELINE_COMMAND]:
        method = _flag(argv, "--method") or "?"
        label = baseline_methods().get(method, method)
        rule = "rule chosen on val" if "--val-csv" in argv else "fixed rule"
        return {"evaluation": baselines.EVALUATION_NAME, "control": "",
                "prompt": f"none: {label} ({rule})"}
    return {"evaluation": _flag(argv, "--name") or "", "control": _flag(argv, "--control") or "",
            "prompt": _flag(argv, "--prompt") or "(the run's own)"}


# ---------------------------------------------------------------- the Prompt optimisation form

@dataclass
class OproJob:
    """One `python -m engine opro` job the Prompt optimisation form would queue."""

    target: str  # what is searched, for the preview
    name: str  # the run folder's name as asked for; queue_opro adds -2, -3, ... if it is taken by then
    run_dir: Path  # the folder it will write, as free at planning time
    argv: list[str]
    config: dict  # the preliminary config.json (kind "opro"), so the queued run is listed at once

    @property
    def command(self) -> str:
        return engine_command(self.argv)


def opro_argv(dev_data: str | Path, run_dir: str | Path, run: str | Path | None = None,
              base_model: str | None = None, test_data: str | Path | None = None, iterations: int = 3,
              candidates: int = 4, proposer: str = PROPOSER_EDIT, proposer_model: str | None = None,
              seed: int | None = None, batch_size: int = 8, quantization: str | None = None) -> list[str]:
    """The argument list of `python -m engine opro` (after "engine") for a run or the base model.

    proposer: "edit" (no flag: the edit-based search), "self" (the audio model's own language
    model) or "model" with `proposer_model` a local folder or cached hub id. seed None leaves
    the engine's default (the target run's seed, else 0).
    """
    if (run is None) == (base_model is None):
        raise ValueError("give exactly one of run and base_model")
    if proposer not in PROPOSERS:
        raise ValueError(f"proposer must be one of {', '.join(PROPOSERS)} (got {proposer!r})")
    proposer_flag = None
    if proposer == PROPOSER_SELF:
        proposer_flag = "self"
    elif proposer == PROPOSER_MODEL:
        if not proposer_model or not str(proposer_model).strip():
            raise ValueError("the proposer 'model' needs proposer_model (a folder or a hub id)")
        proposer_flag = str(proposer_model).strip()
    settings = OproSettings(run=str(run) if run is not None else None, base=run is None,
                            model=str(base_model) if base_model is not None else None, dev_data=str(dev_data),
                            test_data=str(test_data) if test_data else None, iterations=int(iterations),
                            candidates=int(candidates), proposer=proposer_flag,
                            seed=int(seed) if seed is not None else None, run_dir=Path(run_dir),
                            batch_size=int(batch_size), quantization=quantization or None)
    settings.check()
    return ["opro", *cliargs.config_to_argv(settings, always=("iterations", "candidates", "batch_size"))]


def _free_run_dir(runs_root: Path, name: str, taken: set[Path]) -> Path:
    """The folder rf.unique_run_dir would pick now (name, name-2, ...), without creating it."""
    candidate, n = Path(runs_root) / name, 1
    while candidate.exists() or candidate in taken:
        n += 1
        candidate = Path(runs_root) / f"{name}-{n}"
    return candidate


def plan_opro(runs_root: Path, runs: list[rf.RunInfo], dev_data: str, test_data: str | None = "",
              iterations: Any = 3, candidates: Any = 4, proposer: str = PROPOSER_EDIT, proposer_model: str = "",
              seed: Any = "", batch_size: Any = 8, base_model: str | None = None, quantization: str = "4bit",
              run_name: str = "opro") -> tuple[list[OproJob], list[str]]:
    """OPRO jobs for `runs` (one search per run, on its frozen adapter) or, with base_model, one
    for the base model; plus problems (each naming its input), and no jobs when there are any.

    Each job gets a new run folder "<run_name>-<run id>" (or "<run_name>-base-<model>") inside
    the workspace; seed blank uses the target's seed; test data blank skips the test evaluations
    (and so the 2x2 design).
    """
    problems = [p for p in (_data_problem("dev data", dev_data, True),
                            _data_problem("test data", test_data, False)) if p]
    if not problems and str(test_data or "").strip() and \
            Path(str(test_data)).expanduser().resolve() == Path(str(dev_data)).expanduser().resolve():
        problems.append("test data: the same as the dev data; the best prompt must be tested on clips it was "
                        "not chosen on (give another set, or none)")
    n_iterations, n_candidates = whole_number(iterations, 1), whole_number(candidates, 1)
    if n_iterations is None:
        problems.append(f"iterations: must be a whole number >= 1 (got {iterations!r})")
    if n_candidates is None:
        problems.append(f"candidates per iteration: must be a whole number >= 1 (got {candidates!r})")
    search_seed = None
    if str(seed if seed is not None else "").strip():
        search_seed = whole_number(str(seed).strip(), 0)
        if search_seed is None:
            problems.append(f"seed: must be a whole number >= 0, or blank for the target's seed (got {seed!r})")
    if whole_number(batch_size, 1) is None:
        problems.append(f"batch size: must be a whole number >= 1 (got {batch_size!r})")
    if proposer not in PROPOSERS:
        problems.append(f"proposer: must be one of {', '.join(PROPOSERS)} (got {proposer!r})")
    elif proposer == PROPOSER_MODEL:
        model = str(proposer_model or "").strip()
        if not model:
            problems.append("proposer model: give a local causal LM folder or a Hugging Face hub id in the cache")
        elif model.startswith(("/", "~", ".")) and not Path(model).expanduser().exists():
            problems.append(f"proposer model: folder not found: {Path(model).expanduser()}")
    problems += _target_problems(runs, base_model)
    if base_model is not None and quantization not in QUANTIZATIONS:
        problems.append(f"quantization: must be one of {', '.join(QUANTIZATIONS)} (got {quantization!r})")
    if problem := _name_problem("run name", run_name):
        problems.append(problem)
    if problems:
        return [], problems

    dev = str(Path(dev_data).expanduser().resolve())
    test = str(Path(str(test_data)).expanduser().resolve()) if str(test_data or "").strip() else None
    proposer_spec = {"kind": proposer, "model": str(proposer_model).strip() if proposer == PROPOSER_MODEL else None}
    settings = {"dev_data": dev, "test_data": test, "test_name": OPRO_TEST_NAME, "iterations": n_iterations,
                "candidates": n_candidates, "proposer": proposer_spec, "batch_size": int(batch_size)}
    if base_model is not None:
        targets = [_opro_base_target(str(base_model).strip(), quantization, run_name, search_seed)]
    else:
        targets = [_opro_run_target(info, run_name, search_seed) for info in runs]

    planned: list[OproJob] = []
    taken: set[Path] = set()
    for preview, name, target_args, config in targets:
        if problem := _name_problem("run name", name):
            problems.append(problem)
            continue
        run_dir = _free_run_dir(Path(runs_root), name, taken)
        taken.add(run_dir)
        config = {"kind": rf.KIND_OPRO, **config, **settings,
                  "search_seed": search_seed if search_seed is not None else config["seed"]}
        argv = opro_argv(dev, run_dir, test_data=test, iterations=n_iterations, candidates=n_candidates,
                         proposer=proposer, proposer_model=proposer_spec["model"], seed=search_seed,
                         batch_size=int(batch_size), **target_args)
        planned.append(OproJob(preview, name, run_dir, argv, config))
    if problems:
        return [], problems
    return planned, problems


def _opro_base_target(model: str, quantization: str, run_name: str,
                      search_seed: int | None) -> tuple[str, str, dict, dict]:
    """(preview, folder name, opro_argv target arguments, config fields) of a search on the base model."""
    config = {"label": f"OPRO · base {Path(model).name}", "model": model, "quantization": quantization,
              "target": {"kind": "base", "run": None, "run_dir": None, "config_label": "Base model", "seed": None},
              "seed": search_seed if search_seed is not None else 0}
    return (f"base model {model}", f"{run_name}-base-{_safe_stem(model)}",
            {"base_model": model, "quantization": quantization}, config)


def _opro_run_target(info: rf.RunInfo, run_name: str, search_seed: int | None) -> tuple[str, str, dict, dict]:
    """The same for a search on a training run's frozen adapter: seed = the run's training seed, so
    the OPRO run pairs with its training run seed by seed."""
    target_seed = run_seed(info)
    config = {"label": f"OPRO · {info.config_label}", "model": info.config.get("model"),
              "quantization": info.config.get("quantization"),
              "target": {"kind": "run", "run": info.run_id, "run_dir": str(info.path),
                         "config_label": info.config_label, "seed": target_seed},
              "seed": target_seed if target_seed is not None else search_seed}
    config.update({k: info.config[k] for k in ("system_prompt", "prompt", "label_words") if k in info.config})
    return info.run_id, f"{run_name}-{info.run_id}", {"run": info.path}, config


def opro_bytes(planned: Iterable[OproJob]) -> int:
    """What the jobs may write: two test evaluations each (best and original prompt), history and log."""
    return sum(disk.estimate_job_bytes("eval", n_eval_clips=2 * count_clips(job.config["test_data"])
                                       if job.config.get("test_data") else 0) for job in planned)


def queue_opro(runs_root: Path, planned: Iterable[OproJob], start_worker: bool = False) -> list[str]:
    """Create each job's run folder (rf.unique_run_dir: a name taken since planning gets -2, -3, ...),
    prepare it as a queued OPRO run and queue the job on the GPU; returns the job ids.

    With `start_worker` each job is submitted (a worker is ensured), as the page does; without,
    only queued. A job that cannot be queued leaves no empty folder.
    """
    queue = jobs.submit if start_worker else jobs.enqueue
    job_ids = []
    for job in planned:
        run_dir = rf.unique_run_dir(Path(runs_root), job.name)
        argv = list(job.argv)
        argv[argv.index("--run-dir") + 1] = str(run_dir)
        try:
            job_ids.append(queue(runs_root, argv, resource="gpu", run_dir=run_dir,
                                 prepare_run=(run_dir, job.config)))
        except BaseException:
            if run_dir.is_dir() and not any(run_dir.iterdir()):
                run_dir.rmdir()
            raise
    return job_ids


# ---------------------------------------------------------------- the queue

SHARE_BASE_LABEL = "Train the sweep in one process over one loaded base model (faster; GPU, local queue)"
SHARE_BASE_HELP = ("The local queue trains the sweep's runs one after another in one process that loads the base "
                   "model (about 25 s for the 7B) and, where it compiles, compiles once, instead of once per run. "
                   "The group takes one GPU slot; each run is still its own job (cancel, log, state). A single "
                   "run, a run on several GPUs and a Slurm workspace run each job alone. Unticked at first when "
                   "the workspace runs several jobs per GPU: then the runs side by side may finish sooner.")


def share_base_default(runs_root: Path) -> bool:
    """The Train form's first value for the checkbox: on, unless the workspace runs several jobs per
    GPU (8 side by side gave 3.2x on an H200; a group takes one slot and trains one run at a time)."""
    from engine.jobs.executor import jobs_per_gpu

    try:
        return jobs_per_gpu(runs_root) == 1
    except jobs.JobError:
        return True


def submit_sweep(runs_root: Path, cells: list[dict], share_base: bool, sweep_id: str | None = None) -> dict:
    """Queue a sweep's cells and ensure a worker (`jobs.submit_sweep`). With `share_base` (the Train
    form's checkbox) a launch of several runs is one shared-base group; a single run runs alone."""
    return jobs.submit_sweep(runs_root, cells, sweep_id=sweep_id, share_base=share_base and len(cells) > 1)


def job_wait_note(job: dict) -> str:
    """What an active job waits for, for the job lists: a free slot (queued), or its turn in a
    shared-base group's process (claimed, not started: its run folder still says queued)."""
    if job.get("state") == rf.QUEUED:
        return " (waiting for a free slot)"
    if jobs.waiting_in_group(job):
        return " (waiting in shared-base group)"
    return ""


def sweep_launch_message(result: dict) -> str:
    """What the Train page says after a launch (`jobs.submit_sweep`'s result). When another browser
    session queued the same sweep first, every cell is skipped as already queued: say so."""
    skipped = result["skipped"]
    if not result["enqueued"] and jobs.ALREADY_QUEUED in skipped.values():
        return (f"Nothing new queued: this sweep is already queued (by this or another session); its "
                f"{len(skipped)} run(s) are queued, running or succeeded.")
    listed = "; ".join(f"{name} ({why})" for name, why in skipped.items())
    return f"Queued {len(result['enqueued'])} run(s) as {result['sweep_id']}." + (f" Skipped: {listed}." if listed else "")


def job_rows(job_list: Iterable[dict]) -> list[dict]:
    """The queue table: newest first."""
    rows = []
    for job in sorted(job_list, key=lambda j: j.get("job_id", ""), reverse=True):
        argv = job.get("argv") or ["?"]
        rows.append({
            "job": job.get("job_id"), "command": argv[0], "run": Path(job["run_dir"]).name if job.get("run_dir") else "",
            "state": job.get("state"), "sweep": job.get("sweep_id") or "", "created": job.get("created_at") or "",
            "started": job.get("started_at") or "", "ended": job.get("ended_at") or "",
            "cancel": job.get("cancel_outcome") or ("dequeued" if job.get("cancel_requested_at")
                                                    and not job.get("started_at") else ""),
            "error": job.get("error") or ""})
    return rows


def _recorded_progress(job: dict) -> dict | None:
    """The `progress` of the job's run (rf.read_progress), or None."""
    return rf.read_progress(Path(job["run_dir"])) if job.get("run_dir") else None


def _steps(progress: dict) -> dict:
    step, total = int(progress.get("step") or 0), int(progress["total_steps"])
    return {"step": step, "total_steps": total, "fraction": min(1.0, step / total) if total else 0.0}


def job_progress(job: dict) -> dict | None:
    """Live progress of a running training job from its run's status.json, or None.

    {step, total_steps, fraction, loss, samples_per_s, eta_s}
    """
    progress = _recorded_progress(job)
    if progress is None:
        return None
    return {**_steps(progress), "loss": progress.get("loss"), "samples_per_s": progress.get("samples_per_s"),
            "eta_s": progress.get("eta_s")}


def opro_progress(job: dict) -> dict | None:
    """Live progress of a running OPRO job (candidates scored), or None.

    {step, total_steps, fraction, iteration, iterations, best_balanced_accuracy, eta_s}
    """
    progress = _recorded_progress(job)
    if progress is None:
        return None
    return {**_steps(progress), "iteration": progress.get("iteration"), "iterations": progress.get("iterations"),
            "best_balanced_accuracy": progress.get("best_balanced_accuracy"), "eta_s": progress.get("eta_s")}


def _flag(argv: list[str], flag: str) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv[:-1] else None


def evaluation_progress(job: dict) -> dict | None:
    """Live progress of a running evaluation job (clips scored), from evaluations/<name>/progress.json
    of the run it scores, or of the base-model run it made (<run-name> or <run-name>-N); or None.

    {step, total_steps, fraction, eta_s, clips_per_s}: steps are clips.
    """
    argv = [str(a) for a in job.get("argv") or []]
    name = _flag(argv, "--name")
    if not name:
        return None
    if control := _flag(argv, "--control"):
        name = f"{name}-{control}"
    if job.get("run_dir"):
        candidates = [Path(job["run_dir"])]
    elif (stem := _flag(argv, "--run-name")) and (runs_dir := _flag(argv, "--runs-dir")):
        candidates = [Path(runs_dir) / stem, *Path(runs_dir).glob(f"{glob.escape(stem)}-[0-9]*")]
    else:
        return None
    found = [p for p in (rf.read_evaluation_progress(c, name) for c in candidates if c.is_dir()) if p]
    if not found:
        return None
    progress = max(found, key=lambda p: str(p.get("updated_at") or ""))  # the newest, if a name was reused
    total = progress["total_clips"]
    scored = min(int(progress.get("clips_scored") or 0), total)
    return {"step": scored, "total_steps": total, "fraction": scored / total if total else 0.0,
            "eta_s": progress.get("eta_s"), "clips_per_s": progress.get("clips_per_s")}


def _job_label(job: dict) -> str:
    return Path(job["run_dir"]).name if job.get("run_dir") else str(job.get("job_id"))


def progress_line(job: dict) -> tuple[float, str] | None:
    """(fraction done, one line) of a running train, eval or OPRO job from what its run records,
    or None when it records nothing countable yet (the job lists then show its state)."""
    command = (job.get("argv") or [None])[0]
    if command == "train" and (progress := job_progress(job)):
        loss = f"{progress['loss']:.4f}" if progress["loss"] is not None else "?"
        speed = f"{progress['samples_per_s']:.2f}" if progress["samples_per_s"] else "?"
        return progress["fraction"], (f"{_job_label(job)}: step {progress['step']}/{progress['total_steps']}, "
                                      f"loss {loss}, {speed} samples/s, ETA {format_eta(progress['eta_s'])}")
    if command == "eval" and (progress := evaluation_progress(job)):
        argv = [str(a) for a in job.get("argv") or []]
        name = "-".join(filter(None, (_flag(argv, "--name"), _flag(argv, "--control"))))
        speed = f", {progress['clips_per_s']:.1f} clips/s" if progress["clips_per_s"] else ""
        return progress["fraction"], (f"{_job_label(job)} / {name}: {progress['step']}/{progress['total_steps']} "
                                      f"clips scored{speed}, ETA {format_eta(progress['eta_s'])}")
    if command == "opro" and (progress := opro_progress(job)):
        iteration = f", iteration {progress['iteration']}/{progress['iterations']}" if progress["iterations"] else ""
        return progress["fraction"], (
            f"{_job_label(job)}: prompt {progress['step']}/{progress['total_steps']}{iteration}, best dev balanced "
            f"accuracy {pct(progress['best_balanced_accuracy'])}, ETA {format_eta(progress['eta_s'])}")
    return None


def format_eta(seconds: float | None) -> str:
    """The Overview's spelling ("1 min 15 s"), so one job reads the same on every page."""
    from engine.dashboard.review import format_eta as review_format_eta

    return review_format_eta(None if seconds is None else float(seconds))


def training_runs(job_list: Iterable[dict], limit: int = 30) -> list[Path]:
    """Run folders of the queue's training jobs that exist: running first, then queued, then the
    rest newest first (at most `limit`); each once."""
    rank = {rf.RUNNING: 0, rf.QUEUED: 1}
    ordered = sorted((job for job in job_list if (job.get("argv") or [None])[0] == "train" and job.get("run_dir")),
                     key=lambda job: job.get("job_id", ""), reverse=True)
    ordered.sort(key=lambda job: rank.get(job.get("state"), 2))  # stable: newest first within each group
    seen: dict[str, Path] = {}
    for job in ordered:
        path = Path(job["run_dir"])
        if path.name not in seen and path.is_dir():
            seen[path.name] = path
    return list(seen.values())[:limit]


def sweep_runs(job_list: Iterable[dict]) -> dict[str, list[str]]:
    """sweep id -> run names of its training jobs, in launch order."""
    sweeps: dict[str, list[str]] = {}
    for job in sorted(job_list, key=lambda j: j.get("job_id", "")):
        if job.get("sweep_id") and job.get("run_dir") and (job.get("argv") or [None])[0] == "train":
            names = sweeps.setdefault(job["sweep_id"], [])
            if Path(job["run_dir"]).name not in names:
                names.append(Path(job["run_dir"]).name)
    return sweeps


def sweep_cells(runs_root: Path, names: Iterable[str]) -> tuple[list[dict], list[str]]:
    """Cells to re-enqueue the unfinished runs of a sweep, from their config.json; plus the names
    whose config is gone (their folder was deleted), which cannot be resumed."""
    cells, lost = [], []
    for name in jobs.sweep_pending(runs_root, names):
        try:
            config = rf.read_json(rf.resolve_in_root(Path(runs_root), name) / rf.CONFIG)
        except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
            lost.append(name)
            continue
        cells.append({"run_name": name, "config": {k: v for k, v in config.items()
                                                   if k not in (*DERIVED_KEYS, "kind", "schema_version")}})
    return cells, lost
