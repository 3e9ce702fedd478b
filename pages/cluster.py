"""Cluster: where this workspace's jobs run (this machine or a Slurm cluster), the Slurm settings,
and the jobs handed to Slurm with their state, pending reason and node."""

import pandas as pd
import streamlit as st

from engine.jobs import executor as job_settings
from engine.jobs import slurm
from engine.jobs import store as jobs_store
from pages import _ui

root = _ui.workspace()
st.title("Cluster")
_ui.banner(root)
_ui.job_queue_health(root)

try:
    executor, settings = slurm.read_workspace_settings(root)
except slurm.SlurmError as exc:
    st.error(f"The workspace's job settings cannot be used: {exc}. Saving the form below replaces them.")
    executor, settings = "local", slurm.SlurmSettings()



@st.cache_data(ttl=30, show_spinner="Asking Slurm ...")
def probe_cluster() -> tuple[bool, str]:
    return slurm.cluster_reachable()  # sinfo can take seconds when no controller answers


if executor == "slurm" or st.button("Check for a Slurm cluster", key="cluster_probe"):
    reachable, sinfo = probe_cluster()
    if reachable:
        st.success(f"Slurm answers: `{sinfo.splitlines()[0] if sinfo else 'no partitions'}`")
    else:
        st.warning(f"No Slurm cluster reachable from here ({sinfo}).")
else:
    st.caption("Jobs run on this machine.")

st.subheader("Settings")
st.caption("Saved in the workspace (`.jobs/settings.json`); new jobs use them, running jobs keep theirs. "
           "The workspace must be on a file system that the compute nodes share with this machine.")
with st.form("cluster_settings"):
    choice = st.radio("Run jobs", ["local", "slurm"], index=1 if executor == "slurm" else 0, horizontal=True,
                      format_func={"local": "On this machine", "slurm": "On the Slurm cluster"}.get,
                      key="cluster_executor")
    left, middle, right = st.columns(3)
    partition = left.text_input("Partition", settings.partition, key="cluster_partition",
                                help="Empty: the cluster's default partition")
    account = middle.text_input("Account", settings.account, key="cluster_account")
    qos = right.text_input("QoS", settings.qos, key="cluster_qos")
    gpus = left.number_input("GPUs per job", 0, 16, settings.gpus_per_job, key="cluster_gpus",
                             help="--gres=gpu:N; a job with --num-gpus N asks for N")
    gpu_type = middle.text_input("GPU type", settings.gpu_type, key="cluster_gpu_type", help="Empty: any")
    cpus = right.number_input("CPUs per job", 1, 256, settings.cpus_per_job, key="cluster_cpus")
    mem = left.text_input("Memory per job", settings.mem, key="cluster_mem", help="e.g. 32G")
    time_limit = middle.text_input("Time limit", settings.time_limit, key="cluster_time", help="[D-]HH:MM:SS")
    notice = right.number_input("Stop this many seconds before the limit", 0, 3600, settings.timeout_notice_s,
                                key="cluster_notice", help="The job saves its adapter and ends 'timeout'")
    parallelism = left.number_input("Sweep jobs at once", 1, 1000, settings.array_parallelism,
                                    key="cluster_parallelism", help="K in --array=0-N%K")
    extra = st.text_area("Extra #SBATCH lines", "\n".join(settings.extra_sbatch), key="cluster_extra",
                         help="One option per line, e.g. --constraint=a100")
    setup = st.text_input("Setup line", settings.setup, key="cluster_setup",
                          help="Run before each job, e.g. module load cuda; source venv/bin/activate")
    python = st.text_input("Python on the nodes", settings.python, key="cluster_python",
                           help="Empty: the dashboard's interpreter path (the same venv on the shared disk)")
    saved = st.form_submit_button("Save")
if saved:
    try:
        new = slurm.SlurmSettings(partition=partition.strip(), account=account.strip(), qos=qos.strip(),
                                  gpus_per_job=int(gpus), gpu_type=gpu_type.strip(), cpus_per_job=int(cpus),
                                  mem=mem.strip(), time_limit=time_limit.strip(), timeout_notice_s=int(notice),
                                  array_parallelism=int(parallelism), extra_sbatch=extra, setup=setup.strip(),
                                  python=python.strip())
        path = slurm.write_workspace_settings(root, choice, new)
        st.success(f"Saved to {path}. New jobs run {'on Slurm' if choice == 'slurm' else 'on this machine'}.")
    except slurm.SlurmError as exc:
        st.error(str(exc))

st.subheader("This machine")
try:
    sharing = job_settings.jobs_per_gpu(root)
except jobs_store.JobError as exc:
    st.error(f"{exc}. Saving below replaces it.")
    sharing = 1
with st.form("local_settings"):
    per_gpu = st.number_input("Jobs per GPU", 1, job_settings.MAX_JOBS_PER_GPU, sharing, key="cluster_jobs_per_gpu",
                              help="Runs of a sweep side by side on one GPU. Each keeps to 1/N of the GPU's memory, "
                                   "and its automatic choices (micro-batch, base cache, compiled graphs) follow "
                                   "from that share (docs/PERFORMANCE.md: 8 runs on one H200 took 3.2x less time "
                                   "than one after another).")
    if st.form_submit_button("Save"):
        try:
            job_settings.write_jobs_per_gpu(root, int(per_gpu))
            st.success(f"Saved: up to {int(per_gpu)} job(s) per GPU from the next job on.")
        except jobs_store.JobError as exc:
            st.error(str(exc))

st.subheader("Slurm jobs")
message_key = "cluster_cancel_message"
if st.session_state.get(message_key):
    st.info(st.session_state.pop(message_key))
rows = slurm.slurm_jobs(root)
if not rows:
    st.caption("No job of this workspace has been handed to Slurm yet.")
else:
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch", key="cluster_jobs")
    for row in rows:
        if row["slurm state"] == "PENDING":
            where = f", position {row['queue position']} in the queue" if row["queue position"] else ""
            st.caption(f"{row['run'] or row['job']} waits: {row['reason'] or 'no reason given'}{where}")
    active = [row for row in rows if row["state"] in ("queued", "running")]
    if active:
        cancel = _ui.cancel_callback(root, message_key)
        left, right = st.columns([4, 1])
        chosen = left.selectbox("Job", [row["job"] for row in active], key="cluster_cancel_job",
                                format_func=lambda job_id: next(f"{r['run'] or job_id} (Slurm {r['slurm job']})"
                                                                for r in active if r["job"] == job_id))
        right.button("Cancel", key="cluster_cancel", on_click=lambda: cancel(st.session_state["cluster_cancel_job"]),
                     help="SIGTERM to the job: it saves its adapter and ends 'cancelled'")
