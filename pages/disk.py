"""Disk: free space, what each run and the model cache hold, and a previewed, confirmed clean-up."""

from pathlib import Path

import pandas as pd
import streamlit as st

from engine.ops import disk
from pages._ui import banner, workspace

ACTION_LABELS = {
    "intermediate_checkpoints": "Intermediate checkpoints of finished runs (final adapter kept)",
    "optimizer_state": "Optimizer, scheduler and RNG state of finished runs",
    "failed_runs": "Failed, cancelled and crashed runs (whole folders)",
    "exported_reports": "Exported reports (_reports/)",
    "upload_leftovers": "Unfinished browser uploads left by a crash (older than an hour)",
    "cache_revisions": "Model cache revisions (chosen below)",
}
MB = disk.MB

root = workspace()
st.title("Disk")
banner(root)


@st.cache_data(show_spinner="Scanning the model cache ...", ttl=60)
def scan_cache(cache_dir: str) -> disk.CacheUsage:
    return disk.cache_usage(Path(cache_dir))


# ---------------------------------------------------------------- volume
volume = disk.volume_usage(root)
runs = disk.workspace_usage(root)
used_fraction = volume["used"] / volume["total"] if volume["total"] else 0.0
free_col, total_col, workspace_col = st.columns(3)
free_col.metric("Free", disk.format_bytes(volume["free"]), help=f"On {volume['mount']}")
total_col.metric("Volume size", disk.format_bytes(volume["total"]))
shared = disk.shared_usage(root)
workspace_col.metric("Workspace", disk.format_bytes(sum(row["total"] for row in runs) + disk.queue_usage(root)
                                                    + sum(shared.values())), help=str(root))
st.progress(min(1.0, used_fraction), text=f"{used_fraction:.0%} used on {volume['mount']}")

# ---------------------------------------------------------------- runs
st.subheader("Runs")
if runs:
    table = pd.DataFrame([{"run": row["run_id"], "kind": row["kind"], "state": row["state"],
                           **{category: row[category] / MB for category in disk.CATEGORIES},
                           "total": row["total"] / MB} for row in runs]).sort_values("total", ascending=False)
    megabytes = st.column_config.NumberColumn(format="%.2f MB")
    st.dataframe(table, hide_index=True, width="stretch",
                 column_config={column: megabytes for column in (*disk.CATEGORIES, "total")})
else:
    st.info(f"No runs in {root}.")
st.caption(f"Job queue (job files and logs): {disk.format_bytes(disk.queue_usage(root))}. "
           + " ".join(f"{what.capitalize()} ({name}/): {disk.format_bytes(shared[name])}."
                      for name, what in disk.SHARED_FOLDERS.items()))

# ---------------------------------------------------------------- model cache
st.subheader("Model cache")
cache_dir = st.text_input("Hugging Face cache folder", value=str(disk.default_cache_dir()), key="disk_cache_dir")
cache = scan_cache(cache_dir)
if cache.note:
    st.caption(cache.note)
if cache.rows:
    st.dataframe(pd.DataFrame([{"model": row["repo_id"], "type": row["repo_type"], "revision": row["revision"][:12],
                                "refs": ", ".join(row["refs"]), "size": row["size"] / MB,
                                "last modified": row["last_modified"]} for row in cache.rows]),
                 hide_index=True, width="stretch",
                 column_config={"size": st.column_config.NumberColumn(format="%.1f MB")})
    st.caption(f"{disk.format_bytes(cache.total)} in total (revisions of one model share files).")
for warning in cache.warnings:
    st.warning(warning)

# ---------------------------------------------------------------- clean-up
st.subheader("Clean up")
st.caption("Nothing is deleted before you preview the exact list and confirm it. Queued and running runs are never "
           "touched, and nothing outside the workspace and the model cache can be deleted.")
actions = st.multiselect("What to remove", list(ACTION_LABELS), format_func=ACTION_LABELS.get, key="disk_actions")
revisions: list[str] = []
if "cache_revisions" in actions:
    by_revision = {row["revision"]: row for row in cache.rows}
    revisions = st.multiselect(
        "Cache revisions", list(by_revision), key="disk_revisions",
        format_func=lambda r: f"{by_revision[r]['repo_id']} {r[:12]} ({disk.format_bytes(by_revision[r]['size'])})")
selection = (str(root), tuple(actions), tuple(revisions), cache_dir)


def make_preview() -> None:
    st.session_state["disk_confirm"] = False
    try:
        plan = disk.plan_cleanup(root, actions, Path(cache_dir), revisions)
    except (ValueError, OSError) as exc:
        st.session_state["disk_plan"] = {"selection": selection, "error": str(exc)}
    else:
        st.session_state["disk_plan"] = {"selection": selection, "plan": plan}


def delete_planned() -> None:
    stored = st.session_state.pop("disk_plan")
    st.session_state["disk_confirm"] = False
    try:
        result = disk.execute_cleanup(stored["plan"], root, Path(cache_dir))
    except (disk.CleanupRefused, OSError) as exc:
        st.session_state["disk_outcome"] = ("error", str(exc))
    else:
        scan_cache.clear()
        missing = f" {len(result['missing'])} were already gone." if result["missing"] else ""
        st.session_state["disk_outcome"] = (
            "success", f"Deleted {len(result['deleted'])} item(s), freed {disk.format_bytes(result['freed_bytes'])}."
            + missing)


st.button("Preview", key="disk_preview", disabled=not actions, on_click=make_preview)
if outcome := st.session_state.pop("disk_outcome", None):
    (st.success if outcome[0] == "success" else st.error)(outcome[1])

stored = st.session_state.get("disk_plan")
if stored and stored["selection"] != selection:
    stored = None  # the choice changed since the preview: preview again
if stored and "error" in stored:
    st.error(stored["error"])
elif stored:
    plan = stored["plan"]
    for note in plan.notes:
        st.caption(note)
    if not plan.items:
        st.info("Nothing to delete for this choice.")
    else:
        st.markdown(f"**{len(plan.items)} item(s), {disk.format_bytes(plan.total)}** would be freed:")
        st.dataframe(pd.DataFrame([{"path": item["path"], "size": item["bytes"] / MB, "reason": item["reason"]}
                                   for item in plan.items]), hide_index=True, width="stretch",
                     column_config={"size": st.column_config.NumberColumn(format="%.2f MB")})
        confirmed = st.checkbox(f"Yes, delete these {len(plan.items)} item(s) ({disk.format_bytes(plan.total)})",
                                key="disk_confirm")
        st.button("Delete", key="disk_delete", type="primary", disabled=not confirmed, on_click=delete_planned)
