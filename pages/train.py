"""Train: launch one run or a sweep (seeds x ranks x alphas x target presets), and watch the queue."""

from pathlib import Path

import pandas as pd
import streamlit as st

from engine.ops import disk
from engine import jobs
from engine.dashboard import launch
from engine.runs import folder as rf
from engine.config import PRESET_LABELS
from engine.dashboard import charts, review
from engine.dashboard.review import workspace_signature
from pages._ui import (banner, cancel_callback, data_set_shortcut, job_queue_health, known_data_sets,
                       live_job_list, workspace)

MAX_PREVIEW_COMMANDS = 12
LIVE_CURVE_EVERY = "3s"
DATA_FIELDS = ("train_data", "val_data")  # paths typed in, or picked from the workspace's data sets

root = workspace()
st.title("Train")
banner(root)
job_queue_health(root)


def field_widget(spec: launch.FormField, initial):
    """The widget of one TrainConfig field, keyed train_<field>; its help is the field's docstring."""
    key, label = f"train_{spec.name}", spec.name + (" (one run per value)" if spec.kind in ("list", "presets") else "")
    if spec.kind == "presets":
        return st.multiselect(label, spec.options, default=initial, key=key, help=spec.help,
                              format_func=lambda preset: f"{preset} ({PRESET_LABELS.get(preset, preset)})")
    if spec.kind == "choice":
        return st.selectbox(label, spec.options, index=spec.options.index(initial), key=key, help=spec.help)
    if spec.kind == "checkbox":
        return st.checkbox(label, value=initial, key=key, help=spec.help)
    if spec.kind == "text_area":
        return st.text_area(label, value=initial, key=key, help=spec.help, height=80)
    value = st.text_input(label, value=initial, key=key, help=spec.help)
    if spec.name in DATA_FIELDS:
        data_set_shortcut(spec.name, key, known_data)
    return value


# ---------------------------------------------------------------- the form
st.caption("Every field is a TrainConfig field (hover for its meaning). Several comma-separated seeds, ranks or "
           "alphas, or several target presets, launch one run per combination; runs of one configuration that "
           "differ only in the seed are compared together.")
demo = launch.demo_defaults(root)
known_data = known_data_sets(root, workspace_signature(root))
form = {}
for title, specs in launch.form_sections():
    with st.expander(title, expanded=title in ("Configuration", "Data")):
        columns = st.columns(2)
        for i, spec in enumerate(specs):
            with columns[i % 2] if spec.kind != "text_area" else st.container():
                form[spec.name] = field_widget(spec, demo.get(spec.name, spec.initial))

plan = launch.plan_sweep(form, root)

# ---------------------------------------------------------------- preview
st.subheader("Runs to launch")
for error in plan.errors:
    st.error(str(error), icon=":material/error:")
if plan.cells:
    st.markdown(f"**{len(plan.cells)} run{'s' if len(plan.cells) != 1 else ''}** in this launch, "
                f"{len(plan.to_train)} to train (a run of the same name that succeeded, or is queued or running, "
                "is left as it is).")
    st.dataframe(pd.DataFrame(plan.rows()), hide_index=True, width="stretch")
    commands = [launch.train_command(cell["config"], root / cell["run_name"]) for cell in plan.cells]
    st.caption("Equivalent commands (the queue runs each with the run's config.json):")
    st.code("\n\n".join(commands[:MAX_PREVIEW_COMMANDS])
            + (f"\n\n# ... and {len(commands) - MAX_PREVIEW_COMMANDS} more" if len(commands) > MAX_PREVIEW_COMMANDS
               else ""), language="bash")

to_launch = [cell for cell in plan.cells if cell["run_name"] in plan.to_train]
needed = launch.sweep_bytes(to_launch) if plan.launchable else 0
if plan.launchable and to_launch:
    st.caption(f"Needs about {disk.format_bytes(needed)} of disk (adapters, logs, predictions; safety margin "
               "included).")
share_base = st.checkbox(launch.SHARE_BASE_LABEL, value=launch.share_base_default(root), key="train_share_base",
                         help=launch.SHARE_BASE_HELP)
if st.button(f"Launch {len(to_launch)} run{'s' if len(to_launch) != 1 else ''}", key="train_launch", type="primary",
             disabled=not (plan.launchable and to_launch)):
    try:
        disk.preflight(root, needed)
        result = launch.submit_sweep(root, to_launch, share_base)
    except disk.DiskSpaceError as exc:
        st.error(f"Nothing launched: {exc}")
    except (jobs.JobError, rf.RunFolderError, OSError) as exc:
        st.error(f"Nothing launched: {exc}")
    else:
        st.session_state["train_launched"] = launch.sweep_launch_message(result)
        st.rerun()  # the preview and the queue now show the queued runs
if launched := st.session_state.pop("train_launched", None):
    st.success(launched)

# ---------------------------------------------------------------- the queue
st.header("Queue")


cancel_job = cancel_callback(root, "train_cancel_message")


def resume_sweep(sweep_id: str, names: list[str]) -> None:
    cells, lost = launch.sweep_cells(root, names)
    message = ""
    if cells:
        result = launch.submit_sweep(root, cells, st.session_state.get("train_share_base", launch.share_base_default(root)), sweep_id=sweep_id)
        message = f"Sweep {sweep_id}: re-queued {len(result['enqueued'])} unfinished run(s)."
    if lost:
        message += f" Cannot resume {', '.join(lost)}: the run folder is gone."
    st.session_state["train_cancel_message"] = message.strip() or f"Sweep {sweep_id}: nothing to resume."


if message := st.session_state.pop("train_cancel_message", None):
    st.info(message)


job_list = live_job_list(root, None, cancel_job, empty_text="No jobs yet: launched runs appear here.",
                         cancel_help="Queued: removed from the queue. Running: asked to stop (a training run at the "
                                     "next step, saving its adapter); killed if it has not stopped after 20 s.")
active = [job for job in job_list if job.get("state") in rf.ACTIVE_STATES]

sweeps = launch.sweep_runs(job_list)
active_runs = {Path(job["run_dir"]).name for job in active if job.get("run_dir")}
for sweep_id, names in sweeps.items():
    unfinished = [name for name in jobs.sweep_pending(root, names) if name not in active_runs]
    if unfinished:
        st.button(f"Resume sweep {sweep_id} ({len(unfinished)} of {len(names)} runs unfinished)",
                  key=f"resume_{sweep_id}", on_click=resume_sweep, args=(sweep_id, names),
                  help="Queues again only the runs that have not succeeded; a failed attempt is kept as "
                       "<run>.attemptN.")

# ---------------------------------------------------------------- training curves
st.header("Training curves")


def draw_curves(run_dir: Path) -> None:
    info = rf.read_run(run_dir)
    named = [(info.config_label, info.seed if info.seed is not None else info.run_id, info)]
    losses, validation = review.loss_frame(named), review.validation_frame(named)
    st.plotly_chart(charts.loss_curves(losses, validation), key="train_curves")
    if not validation.empty:
        st.plotly_chart(charts.validation_accuracy_chart(validation, losses), key="train_validation")
    elif not info.config.get("val_data"):
        st.caption("Trained without val_data: no validation points. With a validation set, each epoch ends with "
                   "a scoring pass over it (validation loss and accuracy, drawn here).")


watchable = launch.training_runs(job_list)
if not watchable:
    st.info("The loss curve of a training run appears here once it is queued.")
else:
    watched = {path.name: path for path in watchable}
    shown = st.selectbox("Run", list(watched), key="train_watch",
                         help="Running runs first; the curve follows metrics.jsonl while the run trains.")
    if rf.run_is_active(watched[shown]):
        @st.fragment(run_every=LIVE_CURVE_EVERY)
        def live_curves() -> None:
            """The chosen run's metrics.jsonl re-read every few seconds while it trains."""
            if not rf.run_is_active(watched[shown]):
                st.rerun()  # it ended: redraw once from the finished run, and stop polling
            draw_curves(watched[shown])

        live_curves()
    else:
        draw_curves(watched[shown])
