"""Prompt optimisation (OPRO): search a better question for a frozen model on a dev set, follow the
search, read its prompt history, and test the outcome in the 2x2 design (base vs fine-tuned model x
original vs optimised prompt) on the same test clips. The run folder is described in docs/OPRO.md."""

from pathlib import Path

import pandas as pd
import streamlit as st

from engine.dashboard import charts
from engine.ops import disk
from engine import jobs
from engine.dashboard import launch
from engine.dashboard import opro_review
from engine.dashboard import review
from engine.stats import core as stats
from engine.runs import folder as rf
from engine.dashboard.review import workspace_signature
from pages import _ui

PROPOSERS = {"Edit-based search (no model)": launch.PROPOSER_EDIT,
             "The audio model's own language model (text only)": launch.PROPOSER_SELF,
             "Another local causal LM": launch.PROPOSER_MODEL}
NO_TEST = "(none: no test evaluation, no 2x2 cell)"
DEV_STEMS = ("dev", "val", "valid", "validation")
CLI_EXAMPLE = "python -m engine opro --run RUN --dev-csv DEV.csv --test-csv TEST.csv"
PERCENT = st.column_config.NumberColumn(format="%.1f")
LIVE_EVERY = "5s"

root = _ui.workspace()
st.title("Prompt optimisation")
_ui.banner(root)
_ui.job_queue_health(root)

signature = workspace_signature(root)
runs = _ui.cached_runs(root, signature)
scorable = launch.scorable_runs(runs)

st.caption("Searches a better question for a frozen model (a training run's adapter, or the base model): every "
           "candidate prompt is scored by logit scoring on a development set, then the best dev prompt is scored "
           "once on the test set next to the original prompt. Jobs run on the GPU queue like training and "
           "evaluation.")

# ---------------------------------------------------------------- a new search
st.header("New search")
target = _ui.pick_target("opro", scorable, "Search a prompt for")
known = _ui.known_data_sets(root, signature)
dev_index = next((i for i, path in enumerate(known) if Path(path).stem.lower() in DEV_STEMS), 0)
test_index = next((i + 1 for i, path in enumerate(known) if Path(path).stem.lower() == "test"), 0)
left, right = st.columns(2)
with left:
    dev_data = _ui.pick_data("Dev data", "opro_dev", known, dev_index,
                             help="Every candidate prompt is scored on this set and the best one is chosen on it: "
                                  "use a validation set, never the test set.")
with right:
    test_data = _ui.pick_data("Test data", "opro_test", known, test_index, none_option=NO_TEST,
                              help="Scored once at the end with the best dev prompt and with the original prompt "
                                   "(evaluations/test and evaluations/test-original-prompt).")
columns = st.columns(4)
iterations = columns[0].number_input("Iterations", min_value=1, max_value=100, value=3, step=1, key="opro_iterations")
candidates = columns[1].number_input("Candidates per iteration", min_value=1, max_value=64, value=4, step=1,
                                     key="opro_candidates")
seed = columns[2].text_input("Seed", key="opro_seed", placeholder="the target's seed",
                             help="Drives the proposer's sampling and the edit search. Blank: the target run's "
                                  "training seed (0 for the base model).")
batch_size = columns[3].number_input("Batch size", min_value=1, max_value=256, value=8, step=1, key="opro_batch")
proposer_label = st.radio("Proposer", list(PROPOSERS), key="opro_proposer", horizontal=True,
                          help="Who writes new candidates: a deterministic edit search (paraphrase, reorder, add or "
                               "remove a sentence), the scored model's own language model with the adapter off, or "
                               "another local causal LM.")
proposer_model = ""
if PROPOSERS[proposer_label] == launch.PROPOSER_MODEL:
    proposer_model = st.text_input("Proposer model", key="opro_proposer_model",
                                   placeholder="/models/Qwen2-1.5B-Instruct or Qwen/Qwen2-1.5B-Instruct",
                                   help="A local model folder, or a hub id already in the Hugging Face cache "
                                        "(nothing is downloaded).")
run_name = st.text_input("Run name prefix", value="opro", key="opro_run_name",
                         help="Each search writes a new run folder <prefix>-<run> (or <prefix>-base-<model>) in the "
                              "workspace; -2, -3, ... is added when the name is taken.")

planned, problems = launch.plan_opro(
    root, target.runs, dev_data, test_data, iterations=iterations, candidates=candidates,
    proposer=PROPOSERS[proposer_label], proposer_model=proposer_model, seed=seed, batch_size=batch_size,
    base_model=target.base_model, quantization=target.quantization or "4bit", run_name=run_name)
for problem in problems:
    st.error(problem, icon=":material/error:")
if planned:
    if not test_data:
        st.info("Without test data the search stops after the dev set: no test evaluation, no dev-to-test drop "
                "and no cell of the 2x2 design.")
    st.dataframe(pd.DataFrame([{"target": job.target, "run folder": job.run_dir.name, "command": job.command}
                               for job in planned]), hide_index=True, width="stretch")
    st.caption("Commands the queue will run:")
    st.code("\n\n".join(job.command for job in planned), language="bash", wrap_lines=True)
    st.caption(f"Needs about {disk.format_bytes(launch.opro_bytes(planned))} of disk (test predictions and logs; "
               "safety margin included).")

if st.button(f"Queue {len(planned)} search{'es' if len(planned) != 1 else ''}", key="opro_launch", type="primary",
             disabled=not planned):
    try:
        disk.preflight(root, launch.opro_bytes(planned))
        job_ids = launch.queue_opro(root, planned, start_worker=True)
    except (disk.DiskSpaceError, jobs.JobError, rf.RunFolderError, OSError) as exc:
        st.error(f"Nothing queued: {exc}")
    else:
        st.session_state["opro_launched"] = (f"Queued {len(job_ids)} prompt search(es). Follow them below; the "
                                             "runs are listed under Search results at once.")
        st.rerun()  # the queue and the run list now show the queued searches
if launched := st.session_state.pop("opro_launched", None):
    st.success(launched)

# ---------------------------------------------------------------- the queue
st.header("OPRO jobs")


cancel_job = _ui.cancel_callback(root, "opro_cancel_message")


if message := st.session_state.pop("opro_cancel_message", None):
    st.info(message)


_ui.live_job_list(root, "opro", cancel_job, empty_text="No prompt-optimisation jobs yet: queued searches appear here.",
                  cancel_help="Queued: removed from the queue. Running: asked to stop after the current candidate; "
                              "the prompts scored so far stay in history.jsonl (its best so far remains usable).")


# ---------------------------------------------------------------- one search
st.header("Search results")


def outcome_text(result: dict) -> str:
    """One line from opro.json: prompts scored, proposer counts (model proposers only), time."""
    parts = [f"{result.get('candidates_scored', '?')} prompts scored over {result.get('iterations_completed', '?')} "
             "iteration(s)"]
    proposer = result.get("proposer") or {}
    if proposer.get("proposed") is not None:
        parts.append(f"the proposer wrote {proposer['proposed']} candidates, {proposer.get('accepted', '?')} "
                     f"accepted and {proposer.get('rejected', '?')} rejected (reasons in the log)")
    if result.get("seconds_per_candidate") is not None:
        parts.append(f"{float(result['seconds_per_candidate']):.2f} s of dev scoring per candidate")
    if result.get("time_taken_s") is not None:
        parts.append(f"{review.format_eta(result['time_taken_s'])} in all")
    return "; ".join(parts) + "."


def show_search(run: opro_review.OproRun) -> None:
    """Curve, best prompt, dev-to-test drop and history of one OPRO run."""
    target_text = run.target.get("run") or run.info.config.get("model") or "?"
    proposer = run.info.config.get("proposer") or {}
    proposer_text = (str(proposer.get("model")) if proposer.get("kind") == launch.PROPOSER_MODEL
                     else {launch.PROPOSER_SELF: "the model's own LM"}.get(proposer.get("kind"), "edit search"))
    st.markdown(f"**{run.info.config_label}** · target {run.target_label} ({target_text}) · {run.info.state} · "
                f"proposer: {proposer_text} · {len(run.history)} prompt(s) scored")
    if run.error:
        st.error(f"{run.run_id}: cannot read the search's files: {run.error}")
        return
    if run.info.state in (rf.FAILED, rf.CRASHED) and run.info.status.get("error"):
        st.error(f"{run.run_id} {run.info.state}: {run.info.status['error']}")
    if not run.history:
        st.info("No prompt scored yet." if run.info.state in rf.ACTIVE_STATES
                else "This search scored no prompt: see its log below.")
    else:
        st.plotly_chart(charts.opro_curve(opro_review.curve_frame(run.history),
                                          opro_review.best_so_far_frame(run.history), final=run.final),
                        key="opro_curve")
        st.subheader(run.best_label.capitalize())
        if not run.final:
            st.caption("The search has not finished (no opro.json): this is the best prompt so far. A cancelled or "
                       "crashed search keeps it, and the Evaluate page can score it.")
        st.code(str(run.best["prompt"]), language="text", wrap_lines=True)
        st.table(opro_review.dev_scores_table(run))
        st.caption("Dev set: accuracy (correct/clips) [95% Wilson interval]. The best prompt has the highest "
                   "balanced accuracy, then the highest log-likelihood, then the lowest id.")

        st.subheader("Dev to test")
        drop = opro_review.dev_to_test_frame(run)
        st.dataframe(drop, hide_index=True, key="opro_drop", column_config={
            "dev balanced accuracy (%)": PERCENT, "test balanced accuracy (%)": PERCENT,
            "drop (pts)": st.column_config.NumberColumn(format="%+.1f")})
        st.caption("Drop = dev minus test balanced accuracy, in points. A best prompt that drops much more than "
                   "the original prompt fitted the dev clips rather than the task.")

        st.subheader("Prompt history")
        st.dataframe(opro_review.history_table(run.history), hide_index=True, key="opro_history", column_config={
            "prompt": st.column_config.TextColumn(width="large"), "balanced accuracy (%)": PERCENT,
            "SPEECH (%)": PERCENT, "NONSPEECH (%)": PERCENT,
            "log-likelihood": st.column_config.NumberColumn(format="%.4f")})
        if run.result:
            st.caption(outcome_text(run.result))
    with st.expander("Log (engine.log)"):
        st.code(rf.tail_text(run.info.path / rf.LOG, 6000) or "(no log yet)", language="text")


opro_runs = {run.run_id: run for run in opro_review.list_opro_runs(runs)}
if not opro_runs:
    st.info(f"No prompt-optimisation runs in {root} yet. Choose a target, dev data and test data above and press "
            f"**Queue**, or from a shell: `{CLI_EXAMPLE}`.")
else:
    if "opro_search" not in st.session_state and st.query_params.get("run") in opro_runs:
        st.session_state["opro_search"] = st.query_params["run"]
    run_id = st.selectbox("OPRO run", list(opro_runs), key="opro_search",
                          format_func=lambda rid: opro_runs[rid].choice_text())
    st.query_params["run"] = run_id
    chosen = opro_runs[run_id]
    if chosen.info.state in rf.ACTIVE_STATES:
        @st.fragment(run_every=LIVE_EVERY)
        def live_search() -> None:
            """The active search re-read every few seconds: new prompts appear as they are scored."""
            run = opro_review.read_opro_run(rf.read_run(chosen.info.path))
            if run.info.state not in rf.ACTIVE_STATES:
                st.rerun()  # it finished: the whole page (queue, 2x2) changes, and polling stops
            show_search(run)

        live_search()
    else:
        show_search(chosen)

# ---------------------------------------------------------------- the 2x2 design
st.header("2x2 design: base vs fine-tuned × original vs OPRO prompt")
st.caption("The four cells are scored on the same test clips by the OPRO runs themselves: the base model and each "
           "seed of a fine-tuned configuration, each with its original prompt (evaluations/test-original-prompt) and "
           "its best dev prompt (evaluations/test).")


@st.cache_data(show_spinner="Computing the 2x2 statistics ...", max_entries=8)
def two_by_two(_runs: list, root: str, label: str, base_run: str | None, files: tuple) -> opro_review.Design:
    """Keyed by the OPRO runs' test predictions (`files`), so activity elsewhere keeps the result."""
    return opro_review.design(_runs, label, _ui.load_predictions, base_run=base_run)


labels = opro_review.fine_tuned_labels(runs)
bases = opro_review.base_runs(runs)
if not labels and not bases:
    st.info("No finished OPRO run has test evaluations yet. The design needs searches with the same test data on "
            "the base model (target 'Base model') and on every seed of a configuration (target 'Every seed of a "
            "configuration').")
    st.stop()

left, right = st.columns(2)
if "opro_design_config" not in st.session_state and st.query_params.get("config") in labels:
    st.session_state["opro_design_config"] = st.query_params["config"]
label = left.selectbox("Fine-tuned configuration", labels, key="opro_design_config",
                       help="Configurations with finished OPRO runs on their training runs (one per seed).") or ""
if label:
    st.query_params["config"] = label
base_run = None
if len(bases) > 1:
    base_run = right.selectbox("Base-model search", [run.run_id for run in bases], key="opro_design_base",
                               help="Several OPRO runs searched the base model; the base cells use this one.")
try:
    result = two_by_two(runs, str(root), label, base_run, opro_review.design_signature(runs))
except stats.PairingError as exc:
    st.error(f"The cells are not on the same test clips, so they cannot be compared clip by clip: {exc}. Run every "
             "search with the same test data.")
    st.stop()
except review.SelectionError as exc:
    st.info(str(exc))
    st.stop()
except (rf.RunFolderError, OSError, ValueError) as exc:
    st.error(f"A test evaluation of an OPRO run cannot be read: {exc}")
    st.stop()

for cell, why in result.missing.items():
    st.warning(f"{cell}: {why}")
st.table(result.grid)
st.caption("Mean over seeds where a cell has several; the fine-tuned cells pair seed by seed, the base cells pair "
           "with every seed.")
st.table(result.table.set_index("Configuration"))
st.caption(f"{result.n_clips:,} clips, the same for every cell. Accuracy (correct/clips) [95% Wilson interval]; "
           "'mean of k seeds' rows give the SD and the 95% bootstrap interval over seeds and clips.")
st.plotly_chart(charts.class_accuracy_bars(review.class_accuracy_frame(opro_review.class_summaries(result))),
                key="opro_design_classes")

st.subheader("Paired tests (McNemar), every pair of cells")
for paired in result.pairs:
    st.markdown(f"**{paired['a']}** (A) vs **{paired['b']}** (B)")
    if paired["rows"]:
        st.table(review.mcnemar_table(paired).set_index("Seed"))
    if t_test := (paired.get("paired") or {}).get("t_test"):
        st.markdown(f"Paired t-test over {paired['paired']['n_seeds']} matched seeds: t({t_test['df']}) = "
                    f"{t_test['statistic']:.3f}, p = {review.format_p(t_test['p_value'])}")
    for note in review.paired_notes(paired):  # guards, then one power statement for the pair
        st.caption(note)
if result.power_caveat:
    st.info(result.power_caveat)
for note in result.notes:
    st.caption(note)
