"""Evaluate: queue logit-scoring of a run, every seed of a configuration, or the base model, with the
run's own prompt, the best prompt of an OPRO run, or a prompt typed in."""

from pathlib import Path

import pandas as pd
import streamlit as st

from engine.ops import disk
from engine import jobs
from engine.dashboard import launch
from engine.dashboard import opro_review
from engine.dashboard import review
from engine.config import DEFAULT_LABELS
from engine.dashboard.review import workspace_signature
from engine.data import datasets
from pages._ui import (BASE, OTHER_PATH, banner, cached_runs, cancel_callback, job_queue_health, known_data_sets,
                       live_job_list, pick_data, pick_target, upload_data_set, workspace)

AUDIO_CHOICES = {"real audio": None, "silence control": "silence", "shuffle control": "shuffle"}
OWN_PROMPT, OPRO_PROMPT, CUSTOM_PROMPT = "The run's own prompt", "The best prompt of an OPRO run", "Custom text"
DEFAULT_NAME, OTHER_PROMPT_NAME = "test", "test-opro"

root = workspace()
st.title("Evaluate")
banner(root)
job_queue_health(root)

signature = workspace_signature(root)
runs = cached_runs(root, signature)
scorable = launch.scorable_runs(runs)

st.caption("Scores clips by the log-probability of the two answer words (one forward pass per batch, no text "
           "generation) and stores one prediction per clip in the run's evaluations/<name>/. Jobs run on the "
           "GPU queue, one at a time per GPU.")

# ---------------------------------------------------------------- what to score
target = pick_target("eval", scorable, "Score")
chosen, base_model, quantization = target.runs, target.base_model, target.quantization
run_name = None
if target.choice == BASE:
    run_name = st.text_input("Run name", value=f"base-{Path(base_model or 'model').name}", key="eval_run_name",
                             help="The evaluation run to create (a suffix is added if the name is taken).")

# ---------------------------------------------------------------- with which prompt


def chosen_test_data() -> str:
    choice = st.session_state.get("eval_test_choice") or ""
    return st.session_state.get("eval_test_path", "") if choice == OTHER_PATH else choice


def default_name() -> str:
    """test / test-opro, or for an uploaded data set its id (and id-opro): Compare then lists it by name."""
    own = st.session_state.get("eval_prompt_choice", OWN_PROMPT) == OWN_PROMPT
    dataset = datasets.dataset_of(root, chosen_test_data())
    if dataset is not None:
        return dataset.dataset_id if own else f"{dataset.dataset_id}-opro"
    return DEFAULT_NAME if own else OTHER_PROMPT_NAME


def suggest_name() -> None:
    """Another prompt or another uploaded data set gets its own evaluation name by default, so no
    evaluation is replaced silently; a name the user typed is left alone."""
    automatic = {DEFAULT_NAME, OTHER_PROMPT_NAME}
    for dataset in datasets.list_datasets(root):
        automatic |= {dataset.dataset_id, f"{dataset.dataset_id}-opro"}
    if st.session_state.get("eval_name", DEFAULT_NAME) in automatic:
        st.session_state["eval_name"] = default_name()


def use_uploaded(dataset: datasets.Dataset) -> None:
    st.session_state["eval_test_choice"] = str(dataset.manifest)
    suggest_name()


prompt_choice = st.radio("Prompt", [OWN_PROMPT, OPRO_PROMPT, CUSTOM_PROMPT], key="eval_prompt_choice",
                         horizontal=True, on_change=suggest_name,
                         help="The question asked with every clip. An OPRO run's best prompt was chosen on its dev "
                              "set; score it on a held-out test set.")
prompt = None
if prompt_choice == OPRO_PROMPT:
    sources = {source.run_id: source for source in opro_review.prompt_sources(runs)}
    if sources:
        source = sources[st.selectbox("OPRO run", list(sources), key="eval_prompt_opro",
                                      format_func=lambda run_id: sources[run_id].choice_text(),
                                      help="Prompt optimisation runs with at least one scored prompt.")]
        best = source.best
        prompt = str(best["prompt"])
        st.code(prompt, language="text", wrap_lines=True)
        state = ("final: the search finished" if source.final
                 else f"best so far: the search is {source.info.state} and has no opro.json")
        st.caption(f"Prompt {best['id']} of {source.run_id} ({state}); dev balanced accuracy "
                   f"{review.pct(best.get('balanced_accuracy'))}; optimised for {source.target_label}.")
        target_words = {tuple(info.config.get("label_words") or DEFAULT_LABELS) for info in chosen} or {DEFAULT_LABELS}
        for words in sorted(target_words):
            if warning := opro_review.label_words_mismatch(source, words):
                st.warning(warning)
    else:
        st.info("No OPRO run with a scored prompt in this workspace yet: start one on the Prompt optimisation page.")
        prompt = ""
elif prompt_choice == CUSTOM_PROMPT:
    prompt = st.text_area("Prompt text", key="eval_prompt_custom", height=80,
                          help="Sent as --prompt; keep both answer words in it (e.g. SPEECH or NONSPEECH).")

# ---------------------------------------------------------------- on what, how
upload_data_set(root, "eval_upload", on_stored=use_uploaded)
test_data = pick_data("Test data", "eval_test", known_data_sets(root, signature), on_change=suggest_name,
                      help="Test sets this workspace was evaluated on, the uploaded data sets, or any manifest "
                           "(CSV/JSONL) or folder.")
if "eval_name" not in st.session_state:
    st.session_state["eval_name"] = default_name()
left, middle, right = st.columns([2, 1, 3])
name = left.text_input("Evaluation name", key="eval_name",
                       help="Stored as evaluations/<name>/ in the run; controls add -silence / -shuffle. Another "
                            "prompt than the run's own defaults to test-opro; an uploaded data set to its name.")
batch_size = middle.number_input("Batch size", min_value=1, max_value=256, value=8, step=1, key="eval_batch")
audio = right.multiselect("Audio", list(AUDIO_CHOICES), default=["real audio"], key="eval_audio",
                          help="The audio-is-used controls replace every clip with silence of the same length, or "
                               "shuffle clips between labels: a model that still scores well is not listening.")
threshold_from_val = st.checkbox("Threshold chosen on the run's val evaluation", key="eval_threshold",
                                 disabled=target.choice == BASE,
                                 help="The p(SPEECH) cut that maximises balanced accuracy on 'val' (made when the "
                                      "run was trained with val_data); otherwise 0.5 (arg-max).")

planned, problems = launch.plan_evaluations(
    root, chosen, test_data or "", name=name, batch_size=batch_size, controls=[AUDIO_CHOICES[a] for a in audio],
    threshold_from_val=threshold_from_val and target.choice != BASE, base_model=base_model,
    quantization=quantization or "4bit", run_name=run_name, prompt=prompt)

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
        job_ids = [jobs.submit(root, job.argv, resource="gpu", run_dir=job.run_dir) for job in planned]
    except (disk.DiskSpaceError, jobs.JobError, OSError) as exc:
        st.error(f"Nothing queued: {exc}")
    else:
        st.success(f"Queued {len(job_ids)} evaluation job(s). Results appear in the runs' evaluations when done.")

# ---------------------------------------------------------------- evaluation jobs
st.header("Evaluation jobs")
cancel_job = cancel_callback(root, "eval_cancel_message")
if message := st.session_state.pop("eval_cancel_message", None):
    st.info(message)


def evaluation_columns(job: dict) -> dict:
    argv = job.get("argv", [])
    return {"evaluation": argv[argv.index("--name") + 1] if "--name" in argv else "",
            "control": argv[argv.index("--control") + 1] if "--control" in argv else "",
            "prompt": argv[argv.index("--prompt") + 1] if "--prompt" in argv else "(the run's own)"}


live_job_list(root, "eval", cancel_job, columns=evaluation_columns, empty_text="No evaluation jobs yet.",
              cancel_help="Queued: removed from the queue. Running: stopped at once; the evaluation it was writing "
                          "is not stored (an older one of the same name stays).")
