"""Report export: a comparison as Markdown and CSV, its figures as standalone HTML.

`write_report(root, selection)` writes `<root>/_reports/<timestamp>/` (the leading underscore
keeps it out of run listings) with report.md, comparison.csv and figures/*.html; the figures
share one plotly.min.js in that folder, so the report opens offline. The Markdown follows the
order researchers write these notes in: setup, results, loss, seeds, paired test, caveats.
No streamlit, no torch.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
import plotly.graph_objects as go

from engine.dashboard import charts
from engine.dashboard import review
from engine.runs import folder as rf
from engine.dashboard.review import Comparison

REPORTS_DIR = "_reports"
# Config fields shown in each configuration's setup block, when present (others only in the diff).
SETUP_FIELDS = ("label", "kind", "model", "quantization", "targets", "lora_r", "lora_alpha", "lora_dropout",
                "epochs", "max_steps", "per_device_batch", "grad_accum", "effective_batch", "learning_rate",
                "scheduler", "warmup_ratio", "weight_decay", "prompt", "label_words", "train_data", "method",
                "threshold", "seed")
CSV_DROP = ("_summary", "_key")


def markdown_table(frame: pd.DataFrame, index: bool = False) -> str:
    """A GitHub-flavoured Markdown table (pipes in cells escaped)."""
    if frame is None or frame.empty:
        return "_(none)_"
    if index:
        frame = frame.reset_index()

    def cell(value: Any) -> str:
        text = "" if value is None or (isinstance(value, float) and pd.isna(value)) else str(value)
        return text.replace("|", "\\|").replace("\n", " ")

    header = "| " + " | ".join(cell(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def _setup_block(side: review.Side) -> str:
    runs = ", ".join(f"{info.run_id} ({review.seed_text(key)})" if isinstance(key, int) else info.run_id
                     for key, info in side.runs.items())
    config = {k: side.config[k] for k in SETUP_FIELDS if k in side.config}
    lines = [f"### {side.name}", "", f"- Runs: {runs}", f"- Kind: {side.kind}; evaluation `{side.evaluation}`", ""]
    if config:
        lines += ["```yaml", *(f"{k}: {review.config_value_text(v)}" for k, v in config.items()), "```", ""]
    return "\n".join(lines)


def _paired_section(paired: dict) -> str:
    lines = [f"### {paired['a']} (A) vs {paired['b']} (B)", ""]
    if paired["rows"]:
        lines += [markdown_table(review.mcnemar_table(paired)), ""]
        lines.append("McNemar's test on the clips each side got right and the other wrong; `auto` uses the exact "
                     "binomial test below 25 discordant clips, else the continuity-corrected chi-square. "
                     "p (Holm) adjusts over the seeds of this pair. A - B 95% CI: Newcombe's paired score "
                     "interval (method 10).")
        lines += ["", "Per class:", "", markdown_table(review.class_difference_table(paired)), ""]
    lines += [f"- {line}" for line in review.paired_findings(paired)]
    lines += [f"- Note: {note}" for note in review.paired_notes(paired)]
    return "\n".join(lines) + "\n"


def build_report(comparison: Comparison, workspace: Path | None = None, written_at: str | None = None,
                 figure_links: Sequence[tuple[str, str]] = ()) -> str:
    """The comparison as Markdown."""
    picked = comparison.picked
    title = " vs ".join(s.name for s in picked)
    written_at = written_at or time.strftime("%Y-%m-%d %H:%M")
    evaluation = picked[0].evaluation if picked else review.DEFAULT_EVALUATION
    parts = [f"# Comparison: {title}", "",
             f"Written {written_at}" + (f" from workspace `{workspace}`" if workspace else "") +
             f"; evaluation `{evaluation}`, {comparison.n_clips:,} clips, every evaluation on the same clips "
             "(paired by clip id).", ""]

    parts += ["## Setup", ""]
    parts += [_setup_block(side) for side in picked]
    if len(picked) > 1 and not comparison.config_diff.empty:
        parts += ["Differences between the configurations:", "", markdown_table(comparison.config_diff, index=True), ""]

    parts += ["## Results", "", markdown_table(comparison.table), "",
              "Accuracy (correct/clips) [95% Wilson interval]; rows with several seeds add the mean over seeds "
              "with its SD and a 95% bootstrap interval (clips within class and seeds resampled; it stays inside "
              "[0, 100]). Trainable % and adapter size come from each run's summary.json.", ""]
    for diff in comparison.differences:
        parts.append(f"- **{diff['b']} - {diff['a']}**: {diff['line']}")
    if comparison.differences:
        parts.append("")

    parts += ["## Training loss", ""]
    loss_table = review.loss_at_steps(comparison.losses)
    parts += [markdown_table(loss_table) if not loss_table.empty else
              "_No training metrics: imported predictions and baselines have no loss curve._", ""]

    parts += ["## Multi-seed statistics", "", markdown_table(comparison.seed_table), "",
              "Percent. SD with n - 1; t-interval = mean +/- t(0.975, n - 1) SD / sqrt(n), cut to [0, 100] where it "
              "would leave it (marked clipped); bootstrap: 10,000 replicates resampling seeds and clips within class "
              "(one clip draw shared by the seeds).", ""]

    parts += ["## Paired test", ""]
    if comparison.paired:
        parts += [_paired_section(p) for p in comparison.paired]
    else:
        parts += ["_Pick two or more configurations for a paired test._", ""]
    if comparison.cochran:
        parts += ["### Cochran's Q (all picks)", "", review.cochran_line(comparison.cochran), ""]
        if comparison.cochran["rows"]:
            parts += [markdown_table(review.cochran_table(comparison.cochran)), ""]

    parts += ["## Caveats", ""]
    caveats = [comparison.power_caveat] if comparison.power_caveat else []
    caveats += comparison.notes
    if len(comparison.paired) > 1:
        caveats.append(f"{len(comparison.paired)} pairs are tested against {picked[0].name}; their p-values are not "
                       "adjusted for each other.")
    caveats.append("Intervals describe the uncertainty from the finite test set (and seeds); they do not cover a "
                   "shift to other recording conditions.")
    parts += [f"- {c}" for c in caveats] + [""]

    if figure_links:
        parts += ["## Figures", ""] + [f"- [{title}]({href})" for title, href in figure_links] + [""]
    return "\n".join(parts)


def comparison_csv(comparison: Comparison) -> str:
    """One numeric row per evaluation: counts, accuracies and interval bounds (fractions)."""
    rows = [{k: v for k, v in row.items() if k not in CSV_DROP} for row in comparison.rows]
    frame = pd.DataFrame(rows)
    frame["seed"] = frame["seed"].astype("Int64")  # a baseline has none; keep the others integers
    return frame.to_csv(index=False)


def figures(comparison: Comparison) -> dict[str, go.Figure]:
    """The comparison's figures, keyed by file stem: per-class bars, seed strip plot, loss curves."""
    summaries = {}
    for row in comparison.rows:
        name = row["configuration"]
        if len([r for r in comparison.rows if r["configuration"] == name]) > 1:
            name = f"{name} · {review.seed_text(row['_key'])}"
        summaries[name] = row["_summary"]
    return {
        "class_accuracy": charts.class_accuracy_bars(review.class_accuracy_frame(summaries)),
        "seed_distribution": charts.seed_strip(review.seed_points(comparison.seed_stats),
                                               review.seed_intervals(comparison.seed_stats)),
        "loss": charts.loss_curves(comparison.losses),
    }


def write_report(root: Path, selection: Sequence[str], evaluation: str = review.DEFAULT_EVALUATION,
                 include_baselines: bool = True, comparison: Comparison | None = None,
                 runs: Sequence[rf.RunInfo] | None = None, load: review.Loader | None = None) -> dict[str, Any]:
    """Write the comparison of `selection` (configuration names or 'run/evaluation') into
    <root>/_reports/<timestamp>/; returns {"folder", "markdown", "csv", "figures": [paths]}.

    Pass `comparison` when it is already built (the dashboard caches it); otherwise it is
    built from the run folders. Raises review.SelectionError or stats.PairingError.
    """
    root = Path(root)
    if comparison is None:
        runs = rf.list_runs(root) if runs is None else runs
        comparison = review.compare(runs, selection, evaluation, load, include_baselines)
    folder = rf.unique_run_dir(Path(root) / REPORTS_DIR, time.strftime("%Y%m%d-%H%M%S"))
    figure_dir = folder / "figures"
    figure_dir.mkdir()
    figure_paths, links = [], []
    for stem, fig in figures(comparison).items():
        path = figure_dir / f"{stem}.html"
        # "directory": one plotly.min.js beside the figures, loaded by relative path (works offline).
        fig.write_html(path, include_plotlyjs="directory", full_html=True)
        figure_paths.append(path)
        links.append((fig.layout.title.text or stem, f"figures/{path.name}"))
    markdown_path, csv_path = folder / "report.md", folder / "comparison.csv"
    rf.atomic_write_text(csv_path, comparison_csv(comparison))
    rf.atomic_write_text(markdown_path, build_report(comparison, root, figure_links=links))
    return {"folder": folder, "markdown": markdown_path, "csv": csv_path, "figures": figure_paths}
