"""The tables behind the Prompt optimisation page: OPRO run folders read back (docs/OPRO.md).

Pure functions over run folders of kind "opro": the prompt history (tolerant of a search that
is still running, was cancelled or crashed), the best prompt by the search's own rule, the
optimisation curve, the dev-to-test drop, and the 2x2 design (base vs fine-tuned model x
original vs optimised prompt) on the same test clips. Every statistic comes from engine.stats.core
through engine.dashboard.review; this module only picks the evaluations and arranges the numbers.

Imports pandas, runfolder, review, stats, predictions and engine.tasks.opro's torch-free top level
(its ranking rule and names) only: no torch, no streamlit.

Vocabulary:
- an *OPRO run* is one search: its history.jsonl grows by one line per scored prompt and its
  opro.json appears only when the search finished;
- the *best* prompt is the one with the highest dev balanced accuracy, then the highest
  log-likelihood, then the lowest id; without opro.json it is the *best so far*;
- a *cell* of the 2x2 design is one of the four model x prompt combinations, scored on the test
  set by the OPRO runs themselves (evaluations/test and evaluations/test-original-prompt).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import pandas as pd

from engine.dashboard import review
from engine.stats import core as stats
from engine.runs import folder as rf
from engine.tasks.opro import ORIGINAL_SUFFIX, best_entry
from engine.tasks.opro import TEST_NAME as DEFAULT_TEST_EVALUATION
from engine.runs.predictions import CLASSES, NONSPEECH, SPEECH

TARGET_RUN, TARGET_BASE = "run", "base"

BASE_ORIGINAL = "Base · original prompt"
BASE_OPRO = "Base · OPRO prompt"
TUNED_ORIGINAL = "Fine-tuned · original prompt"
TUNED_OPRO = "Fine-tuned · OPRO prompt"
CELLS = (BASE_ORIGINAL, BASE_OPRO, TUNED_ORIGINAL, TUNED_OPRO)
BASE_KEY = "base"  # the base cells' record key: not an int, so it pairs with every fine-tuned seed

# The prompt comes last: it is long, and the scores before it stay in view.
HISTORY_COLUMNS = ("id", "iteration", "candidate", "source", "operation", "parent", "balanced accuracy (%)",
                   "SPEECH (%)", "NONSPEECH (%)", "log-likelihood", "best", "prompt")
CURVE_COLUMNS = ("id", "iteration", "candidate", "position", "source", "operation", "prompt",
                 "balanced_accuracy", "speech_accuracy", "nonspeech_accuracy", "is_best")
BEST_COLUMNS = ("iteration", "balanced_accuracy", "id", "prompt")
DROP_COLUMNS = ("prompt", "id", "dev balanced accuracy (%)", "test balanced accuracy (%)", "drop (pts)",
                "test evaluation")


def original_evaluation_name(test_name: str = DEFAULT_TEST_EVALUATION) -> str:
    """Where an OPRO run stores the original prompt scored on the same test set."""
    return f"{test_name}{ORIGINAL_SUFFIX}"


# ---------------------------------------------------------------- reading one run

def read_history(run_dir: Path) -> list[dict]:
    """The scored prompts of an OPRO run, by id; [] when none was scored yet.

    A partial last line (the engine mid-append, or a crash) is ignored, as are lines that are
    not prompt records (no "id" or no "prompt"). A broken line in the middle raises
    rf.RunFolderError naming the file and line: that file was damaged, not interrupted.
    """
    records = rf.read_jsonl(Path(run_dir) / rf.OPRO_HISTORY)
    usable = [r for r in records if isinstance(r, dict) and isinstance(r.get("id"), int) and "prompt" in r]
    return sorted(usable, key=lambda r: r["id"])


def read_result(run_dir: Path) -> dict | None:
    """opro.json (the outcome of a finished search), or None while it does not exist."""
    try:
        return rf.read_json(Path(run_dir) / rf.OPRO_RESULT)
    except FileNotFoundError:
        return None


@dataclass
class OproRun:
    """One OPRO run folder as the page needs it: the run, its history and its outcome (or None)."""

    info: rf.RunInfo
    history: list[dict] = field(default_factory=list)
    result: dict | None = None
    error: str | None = None  # history.jsonl or opro.json could not be read: why

    @property
    def run_id(self) -> str:
        return self.info.run_id

    @property
    def target(self) -> dict:
        target = self.info.config.get("target")
        return target if isinstance(target, dict) else {}

    @property
    def target_kind(self) -> str | None:
        return self.target.get("kind")

    @property
    def target_label(self) -> str:
        """The target's configuration label ("Base model" for the base model)."""
        return str(self.target.get("config_label") or ("Base model" if self.target_kind == TARGET_BASE else "?"))

    @property
    def target_seed(self) -> int | None:
        try:
            seed = self.target.get("seed")
            return int(seed) if seed is not None else None
        except (TypeError, ValueError):
            return None

    @property
    def final(self) -> bool:
        """True once opro.json exists: the best prompt is the search's answer, not a best so far."""
        return self.result is not None

    @property
    def best(self) -> dict | None:
        """The best prompt record (opro.json's when the search finished, else the best so far)."""
        if self.result and isinstance(self.result.get("best"), dict):
            return self.result["best"]
        return best_entry(self.history)

    @property
    def best_label(self) -> str:
        return "best prompt" if self.final else "best prompt so far"

    @property
    def original(self) -> dict | None:
        """The original prompt's record (id 0)."""
        if self.result and isinstance(self.result.get("original"), dict):
            return self.result["original"]
        return next((r for r in self.history if r["id"] == 0), None)

    @property
    def label_words(self) -> list[str] | None:
        words = self.info.config.get("label_words")
        return [str(w) for w in words] if isinstance(words, (list, tuple)) else None

    @property
    def test_name(self) -> str:
        return str(self.info.config.get("test_name") or DEFAULT_TEST_EVALUATION)

    @property
    def original_test_name(self) -> str:
        return original_evaluation_name(self.test_name)

    @property
    def has_test_pair(self) -> bool:
        """Both test evaluations (best and original prompt) are finished."""
        return self.test_name in self.info.evaluations and self.original_test_name in self.info.evaluations

    def choice_text(self) -> str:
        """How the run reads in a selectbox: id, state, target and the best score so far."""
        best = self.best
        score = f", dev balanced {review.pct(best.get('balanced_accuracy'))}" if best else ""
        return f"{self.run_id} ({self.info.state}, {self.target_label}{score})"


def read_opro_run(info: rf.RunInfo) -> OproRun:
    """History and outcome of one OPRO run; never raises for a damaged folder (`error` says why)."""
    run = OproRun(info)
    try:
        run.history = read_history(info.path)
        run.result = read_result(info.path)
    except (OSError, json.JSONDecodeError, rf.RunFolderError, UnicodeDecodeError) as exc:
        run.error = str(exc)
    return run


def list_opro_runs(runs: Iterable[rf.RunInfo]) -> list[OproRun]:
    """Every readable run of kind "opro", newest first (by created time, then id)."""
    found = [read_opro_run(info) for info in runs if info.readable and info.kind == rf.KIND_OPRO]
    return sorted(found, key=lambda r: (str(r.info.status.get("created_at") or ""), r.run_id), reverse=True)


def prompt_sources(runs: Iterable[rf.RunInfo]) -> list[OproRun]:
    """OPRO runs whose best (or best so far) prompt can be applied to another evaluation."""
    return [run for run in list_opro_runs(runs) if run.best is not None and run.error is None]


def label_words_mismatch(run: OproRun, target_words: Sequence[str]) -> str | None:
    """A warning when the prompt was optimised for other answer words than the target scores with."""
    words = run.label_words
    if words is None or [str(w) for w in target_words] == words:
        return None
    return (f"{run.run_id} optimised its prompt for the answer words {', '.join(words)}, but this target "
            f"scores {', '.join(map(str, target_words))}: the prompt asks for words the scoring does not read.")


# ---------------------------------------------------------------- curve and history tables

def _class_accuracy(record: Mapping[str, Any], cls: str) -> float | None:
    part = (record.get("per_class") or {}).get(cls) or {}
    if part.get("accuracy") is not None:
        return float(part["accuracy"])
    if part.get("n"):
        return part.get("correct", 0) / part["n"]
    return None


def _percent(fraction: Any) -> float | None:
    try:
        return None if fraction is None else 100.0 * float(fraction)
    except (TypeError, ValueError):
        return None


def curve_frame(history: Sequence[dict]) -> pd.DataFrame:
    """One point per scored prompt for charts.opro_curve: dev accuracies in percent.

    `position` spreads an iteration's candidates over [iteration - 0.3, iteration + 0.3] so
    equal scores stay visible side by side; `is_best` marks the best (or best so far) prompt.
    """
    best = best_entry(history)
    per_iteration: dict[int, list[dict]] = {}
    for record in history:
        per_iteration.setdefault(int(record.get("iteration") or 0), []).append(record)
    rows = []
    for iteration, members in sorted(per_iteration.items()):
        for rank, record in enumerate(sorted(members, key=lambda r: r["id"])):
            offset = 0.0 if len(members) == 1 else 0.6 * rank / (len(members) - 1) - 0.3
            rows.append({"id": record["id"], "iteration": iteration, "candidate": record.get("candidate"),
                         "position": iteration + offset, "source": record.get("source") or "?",
                         "operation": record.get("operation") or "", "prompt": str(record.get("prompt", "")),
                         "balanced_accuracy": _percent(record.get("balanced_accuracy")),
                         "speech_accuracy": _percent(_class_accuracy(record, SPEECH)),
                         "nonspeech_accuracy": _percent(_class_accuracy(record, NONSPEECH)),
                         "is_best": best is not None and record["id"] == best["id"]})
    return pd.DataFrame(rows, columns=list(CURVE_COLUMNS))


def best_so_far_frame(history: Sequence[dict]) -> pd.DataFrame:
    """The best prompt after each iteration (same rule as best_entry): the curve's step line."""
    iterations = sorted({int(r.get("iteration") or 0) for r in history})
    rows = []
    for iteration in iterations:
        best = best_entry(r for r in history if int(r.get("iteration") or 0) <= iteration)
        rows.append({"iteration": iteration, "balanced_accuracy": _percent(best.get("balanced_accuracy")),
                     "id": best["id"], "prompt": str(best.get("prompt", ""))})
    return pd.DataFrame(rows, columns=list(BEST_COLUMNS))


def history_table(history: Sequence[dict]) -> pd.DataFrame:
    """The prompt history, one row per scored prompt in scoring order; dev accuracies in percent."""
    best = best_entry(history)
    rows = [{"id": r["id"], "iteration": r.get("iteration"), "candidate": r.get("candidate"),
             "source": r.get("source"), "operation": r.get("operation"), "parent": r.get("parent"),
             "prompt": str(r.get("prompt", "")),
             "balanced accuracy (%)": _percent(r.get("balanced_accuracy")),
             "SPEECH (%)": _percent(_class_accuracy(r, SPEECH)),
             "NONSPEECH (%)": _percent(_class_accuracy(r, NONSPEECH)),
             "log-likelihood": r.get("log_likelihood"),
             "best": best is not None and r["id"] == best["id"]} for r in history]
    frame = pd.DataFrame(rows, columns=list(HISTORY_COLUMNS))
    for column in ("iteration", "candidate", "parent"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("Int64")
    return frame


def dev_scores_table(run: OproRun) -> pd.DataFrame:
    """Dev-set scores of the original and the best prompt: balanced accuracy, then overall and per
    class as '93.8% (30/32) [80.0, 98.3]' (Wilson 95%, stats.proportion_ci)."""
    columns = {}
    for title, record in (("original prompt (id 0)", run.original),
                          (f"{run.best_label} (id {run.best['id']})" if run.best else run.best_label, run.best)):
        if record is None:
            continue
        cells = {"balanced accuracy": review.pct(record.get("balanced_accuracy"))}
        parts = [("overall", record.get("correct"), record.get("n"))]
        parts += [(cls, ((record.get("per_class") or {}).get(cls) or {}).get("correct"),
                   ((record.get("per_class") or {}).get(cls) or {}).get("n")) for cls in CLASSES]
        for name, correct, n in parts:
            cells[name] = ("n/a" if correct is None or not n
                           else review.format_accuracy(int(correct), int(n), stats.proportion_ci(int(correct), int(n))))
        columns[title] = cells
    return pd.DataFrame(columns)


def _test_balanced(run: OproRun, evaluation: str) -> float | None:
    if evaluation not in run.info.evaluations:
        return None
    try:
        summary = rf.read_json(rf.evaluation_dir(run.info.path, evaluation) / rf.EVALUATION)["summary"]
        return _percent(summary.get("balanced_accuracy"))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def dev_to_test_frame(run: OproRun) -> pd.DataFrame:
    """Dev vs test balanced accuracy of the best and of the original prompt, in percent, and the
    drop (dev minus test, points; positive: the dev score did not carry over to the test set).

    Test numbers come from the run's test evaluations (evaluation.json), so they are blank until
    the finished search scored the test set.
    """
    rows = []
    for title, record, evaluation in ((run.best_label, run.best, run.test_name),
                                      ("original prompt", run.original, run.original_test_name)):
        if record is None:
            continue
        dev = _percent(record.get("balanced_accuracy"))
        test = _test_balanced(run, evaluation)
        rows.append({"prompt": title, "id": record["id"], "dev balanced accuracy (%)": dev,
                     "test balanced accuracy (%)": test,
                     "drop (pts)": None if dev is None or test is None else dev - test,
                     "test evaluation": evaluation if test is not None else "not scored on test (yet)"})
    return pd.DataFrame(rows, columns=list(DROP_COLUMNS))


# ---------------------------------------------------------------- the 2x2 design

def fine_tuned_labels(runs: Iterable[rf.RunInfo]) -> list[str]:
    """Configurations with at least one finished OPRO run on a fine-tuned target (both test evaluations)."""
    return sorted({r.target_label for r in list_opro_runs(runs) if r.target_kind == TARGET_RUN and r.has_test_pair})


def base_runs(runs: Iterable[rf.RunInfo]) -> list[OproRun]:
    """OPRO runs on the base model with both test evaluations, newest first."""
    return [r for r in list_opro_runs(runs) if r.target_kind == TARGET_BASE and r.has_test_pair]


@dataclass
class Design:
    """The 2x2 design on one test set: the cells found, their statistics and all pairwise tests."""

    fine_tuned_label: str
    sides: list[review.Side]  # the cells present, in CELLS order
    missing: dict[str, str]  # cell -> why it has no evaluation
    rows: list[dict]  # review.evaluation_rows: one per cell and seed
    seed_stats: dict[str, dict]  # cell -> review.seed_stats_for
    table: pd.DataFrame  # per-class accuracy with Wilson intervals; seed means with bootstrap intervals (inside [0, 100])
    grid: pd.DataFrame  # model (rows) x prompt (columns): overall and balanced accuracy
    pairs: list[dict]  # review.paired_comparison for every pair of cells (6 with all four)
    n_clips: int
    power_caveat: str
    notes: list[str] = field(default_factory=list)


def _cell_side(name: str, evaluation: str, members: Mapping[Any, OproRun], load: review.Loader) -> review.Side:
    infos = {key: run.info for key, run in members.items()}
    records = {key: load(review.predictions_path(info, evaluation)) for key, info in infos.items()}
    config = review.shared_config(next(iter(infos.values())).config)
    single = len(members) == 1 and not isinstance(next(iter(members)), int)
    return review.Side(name, rf.KIND_OPRO, evaluation, infos, records, config, single=single)


def _grid(seed_stats: Mapping[str, dict]) -> pd.DataFrame:
    def cell(name: str) -> str:
        agg = seed_stats.get(name)
        if not agg:
            return "—"
        k = agg["overall"]["n_seeds"]
        text = f"{agg['overall']['mean']:.1f}% overall · {agg['balanced']['mean']:.1f}% balanced"
        return text + (f" (mean of {k} seeds)" if k > 1 else "")

    return pd.DataFrame({"original prompt": [cell(BASE_ORIGINAL), cell(TUNED_ORIGINAL)],
                         "OPRO prompt": [cell(BASE_OPRO), cell(TUNED_OPRO)]},
                        index=pd.Index(["Base model", "Fine-tuned"], name="model"))


def design(runs: Sequence[rf.RunInfo], fine_tuned_label: str, load: review.Loader | None = None,
           test_name: str = DEFAULT_TEST_EVALUATION, base_run: str | None = None,
           n_boot: int = stats.DEFAULT_N_BOOT) -> Design:
    """The 2x2 design for one fine-tuned configuration, from the OPRO runs' test evaluations.

    Cells: "Base · original/OPRO prompt" are evaluations <test_name>-original-prompt and
    <test_name> of an OPRO run on the base model (`base_run`, else the newest), keyed "base" so
    they pair with every fine-tuned seed; "Fine-tuned · ..." are the same two evaluations of the
    OPRO runs whose target is a run of `fine_tuned_label`, keyed by the target's training seed
    (one OPRO run per seed: the newest). Every pair of cells gets McNemar per matched seed
    (Holm-adjusted over seeds) through review.paired_comparison.

    Raises stats.PairingError when the cells are not on the same clips, review.SelectionError
    when no cell has an evaluation.
    """
    from engine.runs.predictions import read_predictions

    load = load or read_predictions
    original = original_evaluation_name(test_name)
    opro = [r for r in list_opro_runs(runs) if r.error is None]
    finished = [r for r in opro if test_name in r.info.evaluations and original in r.info.evaluations]
    notes: list[str] = []
    missing: dict[str, str] = {}

    bases = [r for r in finished if r.target_kind == TARGET_BASE]
    base = None
    if base_run is not None:
        base = next((r for r in bases if r.run_id == base_run), None)
        if base is None:
            raise review.SelectionError(f"{base_run!r} is not an OPRO run on the base model with evaluations "
                                        f"{test_name!r} and {original!r}")
    elif bases:
        base = bases[0]
        if len(bases) > 1:
            notes.append(f"{len(bases)} OPRO runs on the base model; the base cells use the newest, {base.run_id}.")

    tuned: dict[Any, OproRun] = {}
    for run in finished:  # newest first: the first run of a seed is kept
        if run.target_kind != TARGET_RUN or run.target_label != fine_tuned_label:
            continue
        key = run.target_seed if run.target_seed is not None else run.run_id
        if key in tuned:
            notes.append(f"{run.run_id} left out: {tuned[key].run_id} is a newer OPRO run of {review.seed_text(key)}.")
            continue
        tuned[key] = run
    tuned = dict(sorted(tuned.items(), key=lambda kv: (not isinstance(kv[0], int),
                                                       kv[0] if isinstance(kv[0], int) else 0, str(kv[0]))))

    sides: list[review.Side] = []
    if base is not None:
        sides.append(_cell_side(BASE_ORIGINAL, original, {BASE_KEY: base}, load))
        sides.append(_cell_side(BASE_OPRO, test_name, {BASE_KEY: base}, load))
    else:
        why = (f"no OPRO run on the base model has the test evaluations {test_name!r} and {original!r} "
               "(queue one with the target 'Base model' and test data)")
        missing.update({BASE_ORIGINAL: why, BASE_OPRO: why})
    if tuned:
        sides.append(_cell_side(TUNED_ORIGINAL, original, tuned, load))
        sides.append(_cell_side(TUNED_OPRO, test_name, tuned, load))
    else:
        why = (f"no finished OPRO run on a run of {fine_tuned_label!r} has the test evaluations {test_name!r} and "
               f"{original!r}")
        missing.update({TUNED_ORIGINAL: why, TUNED_OPRO: why})
    if not sides:
        raise review.SelectionError("no cell of the 2x2 design has test evaluations yet: " + "; ".join(
            dict.fromkeys(missing.values())))

    review.check_same_clips(sides)
    if base is not None and tuned:
        base_model = base.info.config.get("model")
        tuned_models = {run.info.config.get("model") for run in tuned.values()}
        if base_model and tuned_models != {base_model}:
            notes.append(f"The base cells use model {base_model}; the fine-tuned runs were trained on "
                         f"{', '.join(map(str, sorted(tuned_models, key=str)))}.")
    seed_stats = {side.name: review.seed_stats_for(side, n_boot) for side in sides}
    rows = review.evaluation_rows(sides)
    table = review.comparison_table(rows, seed_stats).drop(columns=["Trainable %", "Adapter size"])
    pairs = [review.paired_comparison(a, b) for a, b in combinations(sides, 2)]
    n_clips = rows[0]["n"] if rows else 0
    notes.append("p (Holm) adjusts over the seeds within one pair of cells; the pairs are not adjusted "
                 "against each other.")
    return Design(fine_tuned_label=fine_tuned_label, sides=sides, missing=missing, rows=rows,
                  seed_stats=seed_stats, table=table, grid=_grid(seed_stats), pairs=pairs, n_clips=n_clips,
                  power_caveat=stats.power_caveat(n_clips) if n_clips else "", notes=notes)


def design_signature(runs: Iterable[rf.RunInfo], test_name: str = DEFAULT_TEST_EVALUATION) -> tuple:
    """A cache key for `design`: the test predictions of every OPRO run, with their mtimes."""
    parts = []
    for info in runs:
        if info.readable and info.kind == rf.KIND_OPRO:
            for evaluation in (test_name, original_evaluation_name(test_name)):
                if evaluation in info.evaluations:
                    path = review.predictions_path(info, evaluation)
                    parts.append((str(path), path.stat().st_mtime_ns if path.exists() else 0))
    return tuple(parts)


def class_summaries(result: Design) -> dict[str, dict]:
    """Cell (and seed) -> stats.evaluation_summary, for review.class_accuracy_frame's bars."""
    out = {}
    for row in result.rows:
        name = row["configuration"]
        several = sum(1 for r in result.rows if r["configuration"] == name) > 1
        out[f"{name} · {review.seed_text(row['_key'])}" if several or isinstance(row["_key"], int) else name] = \
            row["_summary"]
    return out
