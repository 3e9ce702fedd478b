"""Overview: every run of the workspace in one sortable, filterable table, with live progress."""

from pathlib import Path

import pandas as pd
import streamlit as st

from engine import jobs
from engine.dashboard import review
from engine.ops.disk import run_usage
from engine.dashboard.review import workspace_signature
from pages import _ui

root = _ui.workspace()
st.title("Runs")
_ui.banner(root)
_ui.job_queue_health(root)


@st.cache_data(show_spinner="Reading the workspace ...", max_entries=4)
def overview(root: str, signature: str) -> pd.DataFrame:
    runs = _ui.cached_runs(Path(root), signature)
    return review.overview_table(runs, {info.run_id: run_usage(info.path)["total"] for info in runs})


signature = workspace_signature(root)
runs = _ui.cached_runs(root, signature)
table = overview(str(root), signature)


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

if table.empty:
    st.info(f"No runs in **{root}** yet. A run is a folder made by Train, Evaluate, an import of predictions "
            "or a baseline. The demo workspace trains the built-in tiny model on synthetic clips (a few "
            "minutes on a CPU) so every page has something to show.")
    demo_queued = any(job["argv"][:1] == ["demo"] for job in active_jobs)
    if demo_queued:
        st.success(f"The demo workspace is being made in {root}; runs appear here as they finish.")
    elif st.button("Make the demo workspace", key="make_demo", type="primary"):
        jobs.submit(root, ["demo", "--runs-dir", str(root)], resource="cpu")
        st.rerun()  # the queued job now shows under "Active"
    st.stop()

left, middle, right = st.columns([2, 2, 3])
kinds = left.multiselect("Kind", sorted(table["kind"].dropna().unique()), key="overview_kinds")
statuses = middle.multiselect("Status", sorted(table["status"].map(review.status_group).unique()),
                              key="overview_status")
search = right.text_input("Name or configuration contains", key="overview_search")
shown = review.filter_overview(table, kinds, statuses, search)
if shown["slurm job"].isna().all():
    shown = shown.drop(columns="slurm job")  # a workspace that never used Slurm looks as before

st.caption(f"{len(shown)} of {len(table)} runs. Accuracies are on each run's `test` evaluation "
           "(else its first one); click a column header to sort, a row to open it.")
event = st.dataframe(
    shown, hide_index=True, width="stretch", key="overview_table", on_select="rerun",
    selection_mode="single-row",
    column_config={
        "name": st.column_config.TextColumn("Name", pinned=True),
        "configuration": "Configuration",
        "seed": st.column_config.NumberColumn("Seed", format="%d"),
        "kind": "Kind",
        "status": "Status",
        "evaluation": "Evaluation",
        "created": "Created",
        "clips": st.column_config.NumberColumn("Clips", format="%d"),
        "overall": st.column_config.NumberColumn("Overall", format="%.1f%%"),
        "SPEECH": st.column_config.NumberColumn("SPEECH", format="%.1f%%"),
        "NONSPEECH": st.column_config.NumberColumn("NONSPEECH", format="%.1f%%"),
        "trainable %": st.column_config.NumberColumn("Trainable", format="%.4f%%"),
        "adapter MB": st.column_config.NumberColumn("Adapter", format="%.3f MB"),
        "size MB": st.column_config.NumberColumn("On disk", format="%.2f MB"),
        "slurm job": "Slurm job",
    })

unreadable = shown[shown["status"].str.startswith("unreadable", na=False)]
if not unreadable.empty:
    st.warning(f"{len(unreadable)} run folder(s) could not be read; they are listed with the reason.")

selected = event.selection.rows if event is not None and hasattr(event, "selection") else []
if selected:
    row = shown.iloc[selected[0]]
    if not str(row["status"]).startswith("unreadable"):
        params = {"run": row["name"]}
        if isinstance(row["evaluation"], str):
            params["evaluation"] = row["evaluation"]
        st.page_link("pages/results.py", label=f"Open {row['name']} in Results", icon=":material/bar_chart:",
                     query_params=params)
        if isinstance(row["configuration"], str):
            st.page_link("pages/results.py", label=f"Open configuration {row['configuration']}",
                         icon=":material/stacked_bar_chart:", query_params={"config": row["configuration"]})
