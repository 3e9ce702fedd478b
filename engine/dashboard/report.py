"""Report export: a comparison as Markdown and CSV, its figures as PNG images and interactive HTML.

`write_report(root, selection)` writes `<root>/_reports/<timestamp>/` (the leading underscore
keeps it out of run listings) with report.md, comparison.csv, figures/*.png and figures/*.html.
The HTML figures load one plotly.js shared by every report of the workspace
(`_reports/plotly-<version>.min.js`, by relative path, so a report opens offline and an export
is not 4.8 MB heavier each time). The PNGs come from kaleido, which drives a Chrome or Chromium
(found on PATH, e.g. Debian's chromium, or named by $BROWSER_PATH) in a child process with a
time limit; without one the report says that the images were skipped and why. Files are 0644
(less the umask), like files copied by hand. The Markdown follows the order researchers write
these notes in: setup, results, loss, seeds, paired test, caveats, figures.
No streamlit, no torch.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
import plotly
import plotly.graph_objects as go
import plotly.io as pio
from plotly.offline import get_plotlyjs

from engine.dashboard import charts
from engine.dashboard import review
from engine.runs import folder as rf
from engine.dashboard.review import Comparison

REPORTS_DIR = "_reports"
FIGURES_DIR = "figures"
# One copy per plotly version, so reports written before an upgrade keep the plotly.js they were made with.
PLOTLY_JS = f"plotly-{plotly.__version__}.min.js"
IMAGE_FORMAT = "png"
IMAGE_WIDTH, IMAGE_HEIGHT, IMAGE_SCALE = 1000, 560, 2
IMAGE_TIMEOUT_S = 120.0  # starting Chromium takes a few seconds; a broken one must not hang the export
REPO_ROOT = Path(__file__).resolve().parents[2]
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

    baselines = review.comparison_baselines(comparison)
    if not baselines.empty:
        parts += ["### How the baselines label clips", "", markdown_table(baselines), "",
                  "A detector scores short frames; its clip rule turns them into one clip score, SPEECH at or above "
                  "the threshold. Both are chosen on the validation split when one was given (the rule with the best "
                  "balanced accuracy there), else the detector's fixed default.", ""]

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


def shared_plotly_js(root: Path) -> Path:
    """`<root>/_reports/plotly-<version>.min.js`, written once for every report of the workspace."""
    path = Path(root) / REPORTS_DIR / PLOTLY_JS
    if not path.is_file():
        rf.atomic_write_text(path, get_plotlyjs())
    return path


def write_figure_html(fig: go.Figure, path: Path, plotly_js: Path) -> Path:
    """A standalone HTML figure loading `plotly_js` by its path relative to the figure."""
    src = Path(os.path.relpath(plotly_js, Path(path).parent)).as_posix()
    rf.atomic_write_text(path, fig.to_html(include_plotlyjs=src, full_html=True))
    return path


def static_export_problem() -> str | None:
    """Why static images cannot be written here, or None when kaleido is installed."""
    if importlib.util.find_spec("kaleido") is None:
        return "the kaleido package is not installed (pip install -r requirements.txt)"
    return None


def write_images(figs: dict[str, go.Figure], folder: Path, timeout_s: float = IMAGE_TIMEOUT_S,
                 attempts: int = 2) -> tuple[list[Path], str | None]:
    """PNG copies of `figs` in `folder` (stem.png); returns (paths, None), or ([], why none were written).

    kaleido runs in a child process of its own session, killed with its browser after
    `timeout_s`; a figure it did not make (seen on a loaded machine, with exit status 0) is tried
    once more. Images appear (renamed into place) only when all were made.
    """
    if problem := static_export_problem():
        return [], problem
    folder = Path(folder).resolve()  # the child runs in the repository folder
    with tempfile.TemporaryDirectory(prefix=".images-", dir=folder) as scratch:
        work = Path(scratch)
        missing = list(figs)
        for _attempt in range(attempts):
            for stem in missing:
                (work / f"{stem}.json").write_text(figs[stem].to_json(), encoding="utf-8")
            problem = _run_image_child(work, timeout_s)
            if problem:
                return [], problem
            for spec in work.glob("*.json"):
                spec.unlink()
            missing = [stem for stem in figs if not (work / f"{stem}.{IMAGE_FORMAT}").is_file()]
            if not missing:
                break
        else:
            return [], f"kaleido made no image of {', '.join(missing)} (tried {attempts} times)"
        paths = []
        for stem in figs:
            image = folder / f"{stem}.{IMAGE_FORMAT}"
            made = work / image.name
            os.chmod(made, 0o666 & ~rf.current_umask())
            os.replace(made, image)
            paths.append(image)
    return paths, None


def _run_image_child(work: Path, timeout_s: float) -> str | None:
    """Run _images_main on `work` in a child process; None when it ended well, else why not."""
    command = [sys.executable, "-m", "engine.dashboard.report", "--images", str(work)]
    process = subprocess.Popen(command, cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _kill_session(process)
        return (f"making the images took longer than {timeout_s:g} s (kaleido needs a working Chrome or "
                "Chromium; name one with $BROWSER_PATH)")
    if process.returncode != 0:
        lines = [line for line in (output or "").strip().splitlines() if line.strip()]
        return f"kaleido failed: {lines[-1] if lines else f'exit status {process.returncode}'}"
    return None


def _kill_session(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)  # the browser kaleido started goes with it
    except ProcessLookupError:
        pass
    process.wait()


def _images_main(work: Path) -> None:
    """The child of write_images: every <stem>.json in `work` -> <stem>.png beside it, one browser for all."""
    specs = sorted(Path(work).glob("*.json"))
    figs = [pio.from_json(spec.read_text(encoding="utf-8"), skip_invalid=True) for spec in specs]
    pio.write_images(figs, [spec.with_suffix(f".{IMAGE_FORMAT}") for spec in specs], format=IMAGE_FORMAT,
                     width=IMAGE_WIDTH, height=IMAGE_HEIGHT, scale=IMAGE_SCALE)


def figures_markdown(titles: dict[str, str], images: Sequence[Path], html: Sequence[Path],
                     images_skipped: str | None) -> str:
    """The report's Figures section: each image inline with a link to its interactive version."""
    lines = ["## Figures", ""]
    if images_skipped:
        lines += [f"_Static images were skipped: {images_skipped}. The interactive HTML figures below need no "
                  f"extra software; they load ../../{PLOTLY_JS} from the reports folder._", ""]
    by_stem = {Path(p).stem: p for p in images}
    for page in html:
        stem = Path(page).stem
        title = titles.get(stem, stem)
        if stem in by_stem:
            lines += [f"![{title}]({FIGURES_DIR}/{Path(by_stem[stem]).name})", ""]
        lines += [f"- [{title} (interactive)]({FIGURES_DIR}/{Path(page).name})", ""]
    return "\n".join(lines)


def write_report(root: Path, selection: Sequence[str], evaluation: str = review.DEFAULT_EVALUATION,
                 include_baselines: bool = True, comparison: Comparison | None = None,
                 runs: Sequence[rf.RunInfo] | None = None, load: review.Loader | None = None) -> dict[str, Any]:
    """Write the comparison of `selection` (configuration names or 'run/evaluation') into
    <root>/_reports/<timestamp>/; returns {"folder", "markdown", "csv", "figures": [html paths],
    "images": [png paths], "images_skipped": why there are none ("" when there are), "plotly_js"}.

    Pass `comparison` when it is already built (the dashboard caches it); otherwise it is
    built from the run folders. Raises review.SelectionError or stats.PairingError.
    """
    root = Path(root)
    if comparison is None:
        runs = rf.list_runs(root) if runs is None else runs
        comparison = review.compare(runs, selection, evaluation, load, include_baselines)
    folder = rf.unique_run_dir(Path(root) / REPORTS_DIR, time.strftime("%Y%m%d-%H%M%S"))
    os.chmod(folder, 0o777 & ~rf.current_umask())
    figure_dir = folder / FIGURES_DIR
    figure_dir.mkdir()
    figs = figures(comparison)
    plotly_js = shared_plotly_js(root)
    html = [write_figure_html(fig, figure_dir / f"{stem}.html", plotly_js) for stem, fig in figs.items()]
    images, images_skipped = write_images(figs, figure_dir)
    titles = {stem: fig.layout.title.text or stem for stem, fig in figs.items()}
    markdown_path, csv_path = folder / "report.md", folder / "comparison.csv"
    rf.atomic_write_text(csv_path, comparison_csv(comparison))
    markdown = build_report(comparison, root).rstrip("\n") + "\n\n" + figures_markdown(titles, images, html,
                                                                                        images_skipped)
    rf.atomic_write_text(markdown_path, markdown)
    return {"folder": folder, "markdown": markdown_path, "csv": csv_path, "figures": html, "images": images,
            "images_skipped": images_skipped or "", "plotly_js": plotly_js}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Internal: the static-image child of write_report.")
    parser.add_argument("--images", type=Path, required=True, help="folder of <stem>.json figures")
    _images_main(parser.parse_args().images)
