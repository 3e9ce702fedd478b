"""Evaluate: queue logit-scoring of a run, every seed of a configuration, or the base model."""

from collections import Counter
from pathlib import Path

import pandas as pd
import streamlit as st

from engine import disk, jobs, launch
from engine import runfolder as rf
from engine.config import DEFAULT_MODEL, QUANTIZATIONS
from engine.review import workspace_signature
from pages._ui import banner, cached_runs, workspace

ONE_RUN, CONFIGURATION, BASE = "One run", "Every seed of a configuration", "Base model"
AUDIO_CHOICES = {"real audio": None, "silence control": "silence", "shuffle control": "shuffle"}
OTHER_PATH = "Another path ..."

root = workspace()
st.title("Evaluate")
banner(root)

signature = workspace_signature(root)
runs = cached_runs(root, signature)
scorable = launch.scorable_runs(runs)


@st.cache_data(show_spinner=False, max_entries=4)
def test_sets(root: str, signature: str) -> list[str]:
    """Test data the workspace's evaluations used (re-read only when a run folder changed)."""
    return launch.known_test_sets(cached_runs(Path(root), signature), Path(root))


st.caption("Scores clips by the log-probability of the two answer words (one forward pass per batch, no text "
           "generation) and stores one prediction per clip in the run's evaluations/<name>/. Jobs run on the "
           "GPU queue, one at a time per GPU.")

# ---------------------------------------------------------------- what to score
target = st.radio("Score", [ONE_RUN, CONFIGURATION, BASE], key="eval_target", horizontal=True)
chosen: list[rf.RunInfo] = []
base_model = quantization = run_name = None
if target == ONE_RUN:
    if scorable:
        run_id = st.selectbox("Run", [info.run_id for info in scorable], key="eval_run",
                              help="Succeeded training runs with a saved adapter.")
        chosen = [info for info in scorable if info.run_id == run_id]
    else:
        st.info("No finished training runs with an adapter in this workspace yet.")
elif target == CONFIGURATION:
    labels = sorted({info.config_label for info in scorable})
    if labels:
        label = st.selectbox("Configuration", labels, key="eval_config",
                             help="Runs sharing a configuration label: usually the seeds of one recipe.")
        chosen = [info for info in scorable if info.config_label == label]
        st.caption(f"{len(chosen)} run(s): " + ", ".join(f"{info.run_id} (seed {info.seed})" for info in chosen))
    else:
        st.info("No finished training runs with an adapter in this workspace yet.")
else:
    used = Counter(str(info.config.get("model")) for info in scorable if info.config.get("model"))
    default_model = used.most_common(1)[0][0] if used else DEFAULT_MODEL
    left, middle, right = st.columns([3, 1, 2])
    base_model = left.text_input("Base model", value=default_model, key="eval_base_model",
                                 help="Hub id (from the local cache; nothing is downloaded), a model folder, or tiny.")
    quantization = middle.selectbox("Quantization", QUANTIZATIONS, key="eval_quantization")
    run_name = right.text_input("Run name", value=f"base-{Path(base_model or 'model').name}", key="eval_run_name",
                                help="The evaluation run to create (a suffix is added if the name is taken).")

# ---------------------------------------------------------------- on what, how
known = test_sets(str(root), signature)
test_choice = st.selectbox("Test data", [*known, OTHER_PATH], key="eval_test_choice",
                           help="Test sets this workspace was evaluated on, or any manifest (CSV/JSONL) or folder.")
test_data = (st.text_input("Test data path", key="eval_test_path", placeholder="/data/test.csv")
             if test_choice == OTHER_PATH else test_choice)
left, middle, right = st.columns([2, 1, 3])
name = left.text_input("Evaluation name", value="test", key="eval_name",
                       help="Stored as evaluations/<name>/ in the run; controls add -silence / -shuffle.")
batch_size = middle.number_input("Batch size", min_value=1, max_value=256, value=8, step=1, key="eval_batch")
audio = right.multiselect("Audio", list(AUDIO_CHOICES), default=["real audio"], key="eval_audio",
                          help="The audio-is-used controls replace every clip with silence of the same length, or "
                               "shuffle clips between labels: a model that still scores well is not listening.")
threshold_from_val = st.checkbox("Threshold chosen on the run's val evaluation", key="eval_threshold",
                                 disabled=target == BASE,
                                 help="The p(SPEECH) cut that maximises balanced accuracy on 'val' (made when the "
                                      "run was trained with val_data); otherwise 0.5 (arg-max).")

planned, problems = launch.plan_evaluations(
    root, chosen, test_data or "", name=name, batch_size=batch_size, controls=[AUDIO_CHOICES[a] for a in audio],
    threshold_from_val=threshold_from_val and target != BASE, base_model=base_model,
    quantization=quantization or "4bit", run_name=run_name)

for problem in problems:
    st.error(problem, icon=":material/error:")
existing = {info.path: info.evaluations for info in chosen}
replaced = [f"{job.target}/{job.evaluation}" for job in planned if job.evaluation in existing.get(job.run_dir, [])]
if replaced:
    st.warning(f"These evaluations exist and will be replaced: {', '.join(replaced)}")
if planned:
    st.dataframe(pd.DataFrame([{"target": job.target, "evaluation": job.evaluation, "command": job.command}
                               for job in planned]), hide_index=True, width="stretch")

if st.button(f"Queue {len(planned)} evaluation{'s' if len(planned) != 1 else ''}", key="eval_launch",
             type="primary", disabled=not planned):
    needed = len(planned) * disk.estimate_job_bytes("eval", n_eval_clips=launch.count_clips(test_data))
    try:
        disk.preflight(root, needed)
        job_ids = [jobs.enqueue(root, job.argv, resource="gpu", run_dir=job.run_dir) for job in planned]
        jobs.ensure_worker(root)
    except (disk.DiskSpaceError, jobs.JobError, OSError) as exc:
        st.error(f"Nothing queued: {exc}")
    else:
        st.success(f"Queued {len(job_ids)} evaluation job(s). Results appear in the runs' evaluations when done.")

# ---------------------------------------------------------------- evaluation jobs
st.header("Evaluation jobs")
eval_jobs = [job for job in (jobs.read_jobs(root) if (root / jobs.JOBS_DIR).is_dir() else [])
             if (job.get("argv") or [None])[0] == "eval"]
if eval_jobs:
    rows = launch.job_rows(eval_jobs)
    for row, job in zip(rows, sorted(eval_jobs, key=lambda j: j.get("job_id", ""), reverse=True)):
        argv = job.get("argv", [])
        row["evaluation"] = argv[argv.index("--name") + 1] if "--name" in argv else ""
        row["control"] = argv[argv.index("--control") + 1] if "--control" in argv else ""
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
    running = [job for job in eval_jobs if job.get("state") == rf.RUNNING]
    for job in running:
        with st.expander(f"Log of {job['job_id']}"):
            st.code(jobs.job_log_tail(root, job["job_id"], 4000) or "(no output yet)", language="text")
else:
    st.info("No evaluation jobs yet.")
