"""Evaluate: queue logit-scoring of a run, every seed of a configuration, or the base model, with the
run's own prompt, the best prompt of an OPRO run, or a prompt typed in; and queue a baseline
detector (Silero, WebRTC) on a test set, its clip rule and threshold chosen on a validation split."""

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
NO_VAL_SPLIT = "None: the detector's default rule, at the threshold below"

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

# ---------------------------------------------------------------- a baseline detector
st.header("Baseline detector")
st.caption("Scores test clips with a classic voice-activity detector (no model, on the CPU) into a new baseline "
           "run; Results shows it, and Compare adds it as a reference row beside configurations scored on the "
           "same clips. A detector judges short frames: a clip rule turns them into one score, SPEECH at or "
           "above a threshold.")


def keep_or_suggest(key: str, suggestion: str) -> None:
    """Set widget `key` to `suggestion` unless the user changed it from the previous suggestion."""
    previous = st.session_state.get(f"_{key}_suggested")
    if key not in st.session_state or st.session_state[key] == previous:
        st.session_state[key] = suggestion
    st.session_state[f"_{key}_suggested"] = suggestion


methods = launch.baseline_methods()
known = known_data_sets(root, signature)
what_row, data_row, settings_row = st.columns(2), st.columns(2), st.columns(2)  # filled in dependency order
method = what_row[0].selectbox("Method", list(methods), key="baseline_method", format_func=methods.get,
                               help="The detectors registered in engine/tasks/baselines (python -m engine "
                                    "baseline --method).")
with data_row[0]:
    baseline_test = pick_data("Test data", "baseline_test", known,
                              help="The clips to score: the same choices as the evaluations above (the "
                                   "workspace's test sets, the uploaded data sets, or any manifest or folder).")
with data_row[1]:
    sibling = launch.sibling_val_split(baseline_test, root) if baseline_test else None
    current_val = st.session_state.get("baseline_val_choice")
    val_choices = known + [path for path in dict.fromkeys([sibling, current_val])
                           if path and path not in known and path not in (NO_VAL_SPLIT, OTHER_PATH)]
    keep_or_suggest("baseline_val_choice", sibling or NO_VAL_SPLIT)
    baseline_val = pick_data("Validation data", "baseline_val", val_choices, none_option=NO_VAL_SPLIT,
                             help="Choose the clip rule and threshold on this split: the pair with the highest "
                                  "balanced accuracy on its clips (recorded in the run). Defaults to the test "
                                  "set's sibling val split when there is one (val.csv beside test.csv).")
threshold = settings_row[1].number_input(  # under the split it stands in for
    "Threshold (without a validation split)", min_value=0.0, max_value=1.0, value=launch.BASELINE_DEFAULT_THRESHOLD,
    step=0.05, key="baseline_threshold", disabled=bool(baseline_val),
    help="SPEECH when the clip score (the detector's default rule) is at least this.")
options = {}
detector_options = launch.baseline_options(method)
option_columns = ([settings_row[0]] if len(detector_options) == 1
                  else settings_row[0].columns(len(detector_options)) if detector_options else [])
for column, option in zip(option_columns, detector_options):
    label = option.name.replace("_", " ").capitalize()
    if option.choices:
        options[option.name] = column.selectbox(label, list(option.choices), key=f"baseline_option_{option.name}",
                                                index=list(option.choices).index(option.default), help=option.help)
    else:
        options[option.name] = column.text_input(label, value=str(option.default),
                                                 key=f"baseline_option_{option.name}", help=option.help)
job_list = jobs.read_jobs(root)
keep_or_suggest("baseline_name", launch.baseline_run_name(root, method, baseline_test, job_list))
baseline_name = what_row[1].text_input("Run name", key="baseline_name",
                                       help="The baseline run to create: one folder in the workspace, which must "
                                            "not exist yet.")

baseline_job, baseline_problems = (None, [])
if not str(baseline_test or "").strip():
    st.info("Choose the test data to score the detector on.")
else:
    baseline_job, baseline_problems = launch.plan_baseline(
        root, method, baseline_test, baseline_val or None, baseline_name,
        threshold=None if baseline_val else threshold, options=options, job_list=job_list)
for problem in baseline_problems:
    st.error(problem, icon=":material/error:")
if baseline_job is not None:
    st.dataframe(pd.DataFrame([baseline_job.preview()]), hide_index=True, width="stretch", key="baseline_preview")
if st.button("Queue the baseline", key="baseline_launch", disabled=baseline_job is None):
    try:
        disk.preflight(root, disk.estimate_job_bytes("eval", n_eval_clips=launch.count_clips(baseline_test)))
        job_id = launch.queue_baseline(root, baseline_job)
    except (disk.DiskSpaceError, jobs.JobError, OSError) as exc:
        st.error(f"Nothing queued: {exc}")
    else:
        st.success(f"Queued {baseline_job.label} as run {baseline_job.run_name} (job {job_id}); it is listed below "
                   "and on the Overview once it starts.")

# ---------------------------------------------------------------- evaluation and baseline jobs
st.header("Evaluation and baseline jobs")
cancel_job = cancel_callback(root, "eval_cancel_message")
if message := st.session_state.pop("eval_cancel_message", None):
    st.info(message)

live_job_list(root, ("eval", launch.BASELINE_COMMAND), cancel_job, columns=launch.evaluate_job_columns,
              empty_text="No evaluation or baseline jobs yet.",
              cancel_help="Queued: removed from the queue. Running: stopped at once; the evaluation it was writing "
                          "is not stored (an older one of the same name stays); a baseline's run reads cancelled.")
