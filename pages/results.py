"""Results of one evaluation or one configuration (all its seeds): accuracy per class, confusion,
ROC, training loss, seeds, breakdown by metadata, and a clip browser with audio."""

from pathlib import Path

import streamlit as st

from engine.dashboard import charts
from engine.dashboard import review
from engine.stats import core as stats
from engine.runs import folder as rf
from engine.dashboard.review import workspace_signature
from pages import _ui

root = _ui.workspace()
st.title("Results")
_ui.banner(root)

MODES = ("Configuration", "One evaluation")
LIVE_LOSS_EVERY = "3s"


@st.cache_data(show_spinner=False, max_entries=4)
def configurations(root: str, signature: str) -> list[review.Configuration]:
    return review.configurations(_ui.cached_runs(Path(root), signature))


@st.cache_data(show_spinner="Computing seed statistics ...", max_entries=32)
def seed_stats(_side: review.Side, key: tuple) -> dict:
    return review.seed_stats_for(_side)


signature = workspace_signature(root)
runs = _ui.cached_runs(root, signature)
configs = {c.name: c for c in configurations(str(root), signature)}
readable = {r.run_id: r for r in runs if r.readable}
if not readable:
    st.info(f"No readable runs in {root} yet: see Overview.")
    st.stop()

# ---- what to show (mirrored in the URL: ?config=NAME or ?run=ID, plus &evaluation=NAME)
params = st.query_params
if "results_mode" not in st.session_state:
    st.session_state["results_mode"] = MODES[1] if params.get("run") in readable else MODES[0]
    wanted = params.get("config")
    if wanted and wanted not in configs:  # a label from the Overview: its first configuration
        wanted = next((c.name for c in configs.values() if c.label == wanted), None)
    if wanted in configs:
        st.session_state["results_config"] = wanted
    if params.get("run") in readable:
        st.session_state["results_run"] = params["run"]
mode = st.radio("Show", MODES, key="results_mode", horizontal=True)
left, right = st.columns([3, 1])
if mode == MODES[0]:
    name = left.selectbox("Configuration", list(configs), key="results_config")
    members = configs[name].runs
    evaluations = configs[name].evaluations
else:
    run_id = left.selectbox("Run", sorted(readable), key="results_run")
    members = [readable[run_id]]
    evaluations = members[0].evaluations
if evaluations:
    preferred = params.get("evaluation")
    if st.session_state.get("results_evaluation") not in evaluations:
        st.session_state["results_evaluation"] = (preferred if preferred in evaluations
                                                  else review.preferred_evaluation(evaluations))
    evaluation = right.selectbox("Evaluation", evaluations, key="results_evaluation")
else:
    evaluation = None
    right.selectbox("Evaluation", ["(none yet)"], disabled=True, key="results_no_evaluation")

params.pop("config", None)
params.pop("run", None)
if mode == MODES[0]:
    params["config"] = name
else:
    params["run"] = run_id
if evaluation:
    params["evaluation"] = evaluation



def loss_section(members: list[rf.RunInfo]) -> None:
    """Training loss per step and validation after each epoch; re-read every 3 s while a member trains."""
    named = [(m.config_label, review.run_seed(m) if review.run_seed(m) is not None else m.run_id, m) for m in members]

    def draw() -> None:
        losses, validation = review.loss_frame(named), review.validation_frame(named)
        st.plotly_chart(charts.loss_curves(losses, validation), key="results_loss")
        if not validation.empty:
            st.plotly_chart(charts.validation_accuracy_chart(validation, losses), key="results_validation")

    if not any(m.state in rf.ACTIVE_STATES for m in members):
        draw()
        return

    @st.fragment(run_every=LIVE_LOSS_EVERY)
    def live() -> None:
        if not any(rf.run_is_active(m.path) for m in members):
            st.rerun()  # training ended: the page (evaluations, headline) changes, and polling stops
        draw()
        st.caption("Updating while training runs.")

    live()


if evaluation is None:
    st.info("No evaluation in this selection yet; the training loss is shown while it runs.")
    loss_section(members)
    st.stop()

pick = name if mode == MODES[0] else f"{run_id}/{evaluation}"
try:
    side = review.resolve_picks(runs, [pick], evaluation, _ui.load_predictions)[0]
except (review.SelectionError, rf.RunFolderError, OSError, ValueError) as exc:
    st.error(f"Cannot read {pick}: {exc}")
    st.stop()
if mode == MODES[0] and len(side.runs) < len(members):
    st.caption(f"{len(members) - len(side.runs)} run(s) of this configuration have no `{evaluation}` evaluation.")

summaries = {review.seed_text(key): stats.evaluation_summary(records) for key, records in side.records.items()}
aggregate = seed_stats(side, review.side_signature([side]))

# ---- headline numbers: every one aggregated the same way (one evaluation, or the mean over seeds)
headline, headline_caption = review.headline_metrics(aggregate, summaries)
for column, metric in zip(st.columns(len(headline)), headline):
    column.metric(metric["label"], metric["value"], help=metric["help"])
st.caption(headline_caption)
for key, info in side.runs.items():  # a baseline: how its clip scores became labels
    if decision := review.baseline_decision(info.path, evaluation):
        line = review.baseline_decision_line(decision, summaries[review.seed_text(key)]["roc_auc"])
        st.markdown(line if len(side.runs) == 1 else f"{review.seed_text(key)}: {line}")

accuracy_tab, errors_tab, training_tab, seeds_tab, breakdown_tab, clips_tab = st.tabs(
    ["Accuracy", "Confusion and ROC", "Training loss", "Seeds", "Breakdown", "Clips"])

with accuracy_tab:
    st.plotly_chart(charts.class_accuracy_bars(review.class_accuracy_frame(summaries)), key="results_classes")
    rows = review.evaluation_rows([side])
    st.table(review.comparison_table(rows, {side.name: aggregate}).set_index("Configuration"))

with errors_tab:
    seed_labels = list(summaries)
    shown_seed = (st.selectbox("Seed for the confusion matrix", seed_labels, key="results_seed")
                  if len(seed_labels) > 1 else seed_labels[0])
    left, right = st.columns(2)
    left.plotly_chart(charts.confusion_heatmap(summaries[shown_seed]["confusion"],
                                               title=f"Confusion matrix ({shown_seed})"), key="results_confusion")
    right.plotly_chart(charts.roc_curve({review.seed_text(k): r for k, r in side.records.items()},
                                        {label: s["roc_auc"] for label, s in summaries.items()}), key="results_roc")

with training_tab:
    loss_section(members)

with seeds_tab:
    st.plotly_chart(charts.seed_strip(review.seed_points({side.name: aggregate}),
                                      review.seed_intervals({side.name: aggregate})), key="results_seeds")
    st.dataframe(review.seed_table({side.name: aggregate}), hide_index=True, key="results_seed_table")

with breakdown_tab:
    first_records = next(iter(side.records.values()))
    columns = review.metadata_columns(first_records)
    if columns:
        default = next((c for c in ("snr_db", "duration_ms") if c in columns), columns[0])
        column = st.selectbox("Break accuracy down by", columns, index=columns.index(default), key="results_breakdown")
        frame = review.breakdown_frame({review.seed_text(k): r for k, r in side.records.items()}, column)
        st.plotly_chart(charts.breakdown_chart(frame, column), key="results_breakdown_chart")
        with st.expander("Breakdown table"):
            st.dataframe(frame, hide_index=True, key="results_breakdown_table")
    else:
        st.caption("The clips carry no metadata column with 2 to 50 distinct values.")

with clips_tab:
    clips = review.clip_table(side.records)
    left, middle, right = st.columns([3, 2, 2])
    outcomes = left.multiselect("Outcome", review.CLIP_OUTCOMES, default=["false positive", "false negative"],
                                key="clip_outcomes")
    disagree = middle.checkbox("Only clips where seeds disagree", key="clip_disagree", disabled=side.n_seeds < 2)
    order = right.radio("Sort by confidence", ["least confident", "most confident"], key="clip_sort")
    shown = review.filter_clips(clips, outcomes, disagree, order)
    st.caption(f"{len(shown)} of {len(clips)} clip predictions. False positive: NONSPEECH predicted as SPEECH.")
    st.dataframe(shown, hide_index=True, key="clip_table", column_config={
        "p_speech": st.column_config.NumberColumn(format="%.3f"),
        "confidence": st.column_config.ProgressColumn(min_value=0.5, max_value=1.0, format="%.3f")})
    if not shown.empty:
        choices = list(dict.fromkeys(shown["clip_id"].head(500)))
        clip_id = st.selectbox("Play a clip", choices, key="clip_play")
        path = shown.loc[shown["clip_id"] == clip_id, "path"].iloc[0]
        playable = review.playable_audio(path, review.media_roots(root, side))
        if playable is not None:
            st.audio(str(playable))
        elif isinstance(path, str) and Path(path).is_file():
            st.caption(f"Not played: `{path}` lies outside the workspace and the test data folders this "
                       "evaluation recorded.")
        else:
            st.caption(f"Audio not found at `{path}` (imported predictions often point at another machine).")
