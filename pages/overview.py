"""Overview: every run (or every configuration: seeds, mean, interval) of the workspace in one
sortable, filterable table on one evaluation, with live progress; a click on a row opens it in Results."""

from pathlib import Path

import pandas as pd
import streamlit as st

from engine import jobs
from engine.dashboard import review
from engine.ops.disk import run_usage
from engine.dashboard.review import workspace_signature
from engine.runs.predictions import CLASSES, SPEECH
from pages import _ui

root = _ui.workspace()
st.title("Runs")
_ui.banner(root)
_ui.job_queue_health(root)


RUNS, CONFIGURATIONS = "Runs", "Configurations"


@st.cache_data(show_spinner="Reading the workspace ...", max_entries=8)
def overview(root: str, signature: str, evaluation: str | None) -> pd.DataFrame:
    runs = _ui.cached_runs(Path(root), signature)
    return review.overview_table(runs, {info.run_id: run_usage(info.path)["total"] for info in runs}, evaluation)


@st.cache_data(show_spinner="Computing seed means and bootstrap intervals ...", max_entries=8)
def configuration_table(root: str, signature: str, evaluation: str) -> pd.DataFrame:
    configs = review.configurations(_ui.cached_runs(Path(root), signature))
    return review.configuration_overview(review.seed_aggregates(configs, evaluation, _ui.load_predictions))


signature = workspace_signature(root)
runs = _ui.cached_runs(root, signature)
evaluations = review.evaluation_names(runs)


def queued_jobs() -> list[dict]:
    return jobs.active_jobs(root)


active_jobs = queued_jobs()
active_runs = review.active_progress(runs)
listed_names = review.run_folder_names(root)


@st.fragment(run_every="2s")
def live_progress() -> None:
    """Re-reads only the active runs' status.json and the queue, every 2 s, while anything is active."""
    progress = review.active_progress(runs)
    queue = queued_jobs()
    if (not progress and not queue) or review.run_folder_names(root) != listed_names:
        st.rerun()  # something finished or a new run appeared: refresh the whole page
    for item in progress:
        st.progress(item.fraction, text=item.text)
    listed = {item.run_id for item in progress}
    for job in queue:
        run_id = Path(job["run_dir"]).name if job.get("run_dir") else None
        if run_id in listed:
            continue
        last_line = review.last_log_line(jobs.job_log_tail(root, job["job_id"], 2000))
        st.caption(f"Job {job['job_id']} ({job['state']}): `python -m engine {' '.join(job['argv'][:3])} ...` "
                   f"{last_line}")


if active_runs or active_jobs:
    st.subheader("Active")
    live_progress()

if not runs:
    st.info(f"No runs in **{root}** yet. A run is a folder made by Train, Evaluate, an import of predictions "
            "or a baseline. The demo workspace trains adapters of the built-in tiny model on synthetic clips "
            "(about a minute on a laptop CPU, plus about 50 s once to pre-train the demo model's audio encoder) "
            "so every page has something to show.")
    demo_queued = any(job["argv"][:1] == ["demo"] for job in active_jobs)
    if demo_queued:
        st.success(f"The demo workspace is being made in {root}; runs appear here as they finish.")
    elif st.button("Make the demo workspace", key="make_demo", type="primary"):
        jobs.submit(root, ["demo", "--runs-dir", str(root)], resource="cpu")
        st.rerun()  # the queued job now shows under "Active"
    st.stop()


# ---- what the table shows (mirrored in the URL: ?view=configurations&evaluation=val)
params = st.query_params
if "overview_view" not in st.session_state:
    st.session_state["overview_view"] = CONFIGURATIONS if params.get("view") == "configurations" else RUNS
if evaluations and st.session_state.get("overview_evaluation") not in evaluations:
    wanted = params.get("evaluation")
    st.session_state["overview_evaluation"] = wanted if wanted in evaluations else evaluations[0]
view_column, evaluation_column, _, columns_column = st.columns([3, 2, 4, 1.4], vertical_alignment="bottom")
kind_column, status_column, search_column = st.columns([2, 2, 3], vertical_alignment="bottom")
view = view_column.segmented_control("Show", [RUNS, CONFIGURATIONS], key="overview_view",
                                     help="Configurations: one row per configuration (its seeds together).") or RUNS
if evaluations:
    evaluation = evaluation_column.selectbox(
        "Evaluation", evaluations, key="overview_evaluation",
        help="The accuracy columns are this evaluation's (e.g. test or val); runs without one show —.")
else:
    evaluation = None
    evaluation_column.selectbox("Evaluation", ["(none yet)"], disabled=True, key="overview_no_evaluation")
params["view"] = "configurations" if view == CONFIGURATIONS else "runs"
if evaluation:
    params["evaluation"] = evaluation
shown_evaluation = evaluation or "evaluation"

if view == CONFIGURATIONS and not evaluation:
    st.info("No run has an evaluation yet: configuration rows need one (Evaluate, or an import of predictions).")
    st.stop()
if view == CONFIGURATIONS:
    table = configuration_table(str(root), signature, evaluation)
else:
    table = overview(str(root), signature, evaluation)
kinds = kind_column.multiselect("Kind", sorted(table["kind"].dropna().unique()), key="overview_kinds")
if view == RUNS:
    statuses = status_column.multiselect("Status", sorted(table["status"].map(review.status_group).unique()),
                                         key="overview_status")
else:
    statuses = []
search = search_column.text_input("Name or configuration contains", key="overview_search")
shown = review.filter_overview(table, kinds, statuses, search)

RUN_COLUMNS = {  # key -> header; the first accuracy header names the evaluation all of them show
    "name": st.column_config.TextColumn("Run", pinned=True, width=180),
    "configuration": st.column_config.TextColumn("Configuration", width=200),
    "seed": st.column_config.NumberColumn("Seed", format="%d", width=55),
    "kind": st.column_config.TextColumn("Kind", width=70),
    "status": st.column_config.TextColumn("Status", width=85),
    "attempts": st.column_config.NumberColumn("Attempts", format="%d", width=70,
                                              help="Tries of this run: a resumed sweep keeps failed ones aside"),
    "overall": st.column_config.NumberColumn(f"{shown_evaluation} accuracy", format="%.1f%%", width=110,
                                             help=f"Accuracy on the {shown_evaluation} evaluation"),
    **{cls: st.column_config.NumberColumn(cls, format="%.1f%%", width=80 if cls == SPEECH else 92,
                                          help=f"{shown_evaluation} accuracy on the {cls} clips")
       for cls in CLASSES},
    "clips": st.column_config.NumberColumn("Clips", format="%d", width=60,
                                           help=f"Clips in the {shown_evaluation} evaluation"),
    "trainable %": st.column_config.NumberColumn("Trainable", format="%.4f%%", width=85),
    "adapter MB": st.column_config.NumberColumn("Adapter", format="%.3f MB", width=85),
    "created": st.column_config.TextColumn("Created", width=190),
    "size MB": st.column_config.NumberColumn("On disk", format="%.2f MB", width=85,
                                             help="Earlier attempts included"),
    "slurm job": st.column_config.TextColumn("Slurm job", width=85),
}
CONFIGURATION_COLUMNS = {
    "configuration": st.column_config.TextColumn("Configuration", pinned=True, width=270),
    "kind": st.column_config.TextColumn("Kind", width=70),
    "seeds": st.column_config.NumberColumn("Seeds", format="%d", width=60,
                                           help=f"Runs with a {shown_evaluation} evaluation"),
    "seed list": st.column_config.TextColumn("Seed list", width=110),
    "mean": st.column_config.NumberColumn(f"{shown_evaluation} accuracy, mean", format="%.1f%%", width=145),
    "interval": st.column_config.TextColumn("95% bootstrap interval", width=175,
                                            help=f"{review.INTERVAL_NAME}: percentile interval of the mean over "
                                                 "seeds, resampling seeds and clips within class "
                                                 "(docs/STATISTICS.md); always inside [0, 100]"),
    **{f"{cls} mean": st.column_config.NumberColumn(f"{cls}, mean", format="%.1f%%", width=120,
                                                    help=f"Mean {shown_evaluation} accuracy on the {cls} clips")
       for cls in CLASSES},
    "balanced mean": st.column_config.NumberColumn("Balanced, mean", format="%.1f%%", width=110),
    "trainable %": st.column_config.NumberColumn("Trainable", format="%.4f%%", width=85),
    "adapter MB": st.column_config.NumberColumn("Adapter", format="%.3f MB", width=85),
    "runs": st.column_config.NumberColumn("Runs", format="%d", width=55),
    "note": st.column_config.TextColumn("Note", width=200),
}
if view == RUNS:
    available = {k: v for k, v in RUN_COLUMNS.items()
                 if k != "slurm job" or shown["slurm job"].notna().any()}  # never used Slurm: no column
    # what fits at 1440 px; Kind, Created, sizes and Slurm are a click away in Columns
    default = ["name", "configuration", "seed", "status", "overall", *CLASSES, "clips"]
    if (shown["attempts"] > 1).any():
        default.insert(4, "attempts")
    picker_key = "overview_run_columns"
else:
    available = CONFIGURATION_COLUMNS
    default = ["configuration", "seeds", "mean", "interval", *(f"{cls} mean" for cls in CLASSES)]
    picker_key = "overview_configuration_columns"
pinned = "name" if view == RUNS else "configuration"
with columns_column.popover("Columns", icon=":material/view_column:"):
    chosen = st.multiselect("Columns shown", [k for k in available if k != pinned], key=picker_key,
                            default=[k for k in default if k in available and k != pinned],
                            format_func=lambda key: available[key]["label"] or key)
column_order = [pinned, *chosen]

what = "runs" if view == RUNS else "configurations"
if view == RUNS:
    unreadable = shown[shown["status"].str.startswith("unreadable", na=False)]
    if not unreadable.empty:
        st.warning(f"{len(unreadable)} run folder(s) could not be read; they are listed with the reason.")
    folded = int((shown["attempts"] - 1).clip(lower=0).sum())
    note = f" {folded} earlier attempt(s) of resumed sweeps are counted in their run's row." if folded else ""
    st.caption(f"{len(shown)} of {len(table)} runs. Accuracy columns: the **{shown_evaluation}** evaluation "
               f"(— where a run has none).{note} Click a column header to sort, a row to open it in Results.")
else:
    st.caption(f"{len(shown)} of {len(table)} configurations on the **{shown_evaluation}** evaluation: mean over "
               f"the seeds evaluated and its {review.INTERVAL_NAME}. Click a row to open the configuration.")
event = st.dataframe(shown, hide_index=True, width="stretch", key=f"overview_{what}_table", on_select="rerun",
                     selection_mode=["single-row", "single-cell"], column_order=column_order, column_config=available,
                     placeholder="—", height=min(36 * (len(shown) + 1) + 3, 700))

selection = event.selection if event is not None and hasattr(event, "selection") else None
# A click on any cell opens its row, as does the row's box on the left.
selected = (list(selection.rows) or [cell[0] for cell in selection.cells]) if selection else []
if selected:
    query, problem = review.results_link(shown.iloc[selected[0]].to_dict(), evaluation)
    if problem:
        st.warning(problem)
    else:
        if _ui.WORKSPACE_PARAM in st.query_params:
            query[_ui.WORKSPACE_PARAM] = st.query_params[_ui.WORKSPACE_PARAM]
        st.switch_page(review.RESULTS_PAGE, query_params=query)
