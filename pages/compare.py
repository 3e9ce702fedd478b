"""Compare configurations (or single evaluations) on the same test clips: table, differences,
seeds, McNemar per matched seed, power, discordant clips, config diff, report export."""

from pathlib import Path

import streamlit as st

from engine.dashboard import report
from engine.dashboard import review
from engine.stats import core as stats
from engine.runs import folder as rf
from engine.dashboard.review import workspace_signature
from pages import _ui

root = _ui.workspace()
st.title("Compare")
_ui.banner(root)


@st.cache_data(show_spinner=False, max_entries=4)
def configurations(root: str, signature: str) -> list[review.Configuration]:
    return review.configurations(_ui.cached_runs(Path(root), signature))


@st.cache_data(show_spinner="Computing the comparison ...", max_entries=16)
def comparison(_runs: list, root: str, picks: tuple[str, ...], evaluation: str, baselines: bool,
               files: str) -> review.Comparison:
    """Keyed by the picked runs' files only (`files`), so activity elsewhere keeps the result."""
    return review.compare(_runs, picks, evaluation, _ui.load_predictions, baselines)


@st.cache_resource(show_spinner=False, max_entries=16)
def figures(_result: review.Comparison, key: tuple) -> dict:
    """Built once per comparison (plotly's validation makes building them the slowest step);
    shared, never modified."""
    return report.figures(_result)


signature = workspace_signature(root)
runs = _ui.cached_runs(root, signature)
configs = configurations(str(root), signature)

# ---- picks (mirrored in the URL: ?configs=A&configs=B&evaluation=test)
evaluations = sorted({e for c in configs for e in c.evaluations})
if not evaluations:
    st.info(f"No evaluations in {root} yet: train and evaluate, import predictions, or make the demo (Overview).")
    st.stop()
if "compare_evaluation" not in st.session_state:
    wanted = st.query_params.get("evaluation", review.DEFAULT_EVALUATION)
    st.session_state["compare_evaluation"] = wanted if wanted in evaluations else (
        review.preferred_evaluation(evaluations))
left, right = st.columns([4, 1])
evaluation = right.selectbox("Evaluation (test set)", evaluations, key="compare_evaluation",
                             help="Configurations are compared on their evaluation of this name.")
options = [c.name for c in configs if c.runs_with(evaluation)] + review.evaluation_options(runs)
if "compare_picks" not in st.session_state:
    wanted = st.query_params.get_all("configs")
    unknown = [p for p in wanted if p not in options]
    if unknown:
        st.warning(f"Not in this workspace (left out): {', '.join(unknown)}")
    st.session_state["compare_picks"] = [p for p in wanted if p in options]
else:
    st.session_state["compare_picks"] = [p for p in st.session_state["compare_picks"] if p in options]
seed_counts = {c.name: len(c.runs_with(evaluation)) for c in configs}


def option_text(option: str) -> str:
    """A configuration with its seed count ("OPRO of X · 3 seeds"); a single evaluation as run / evaluation."""
    if option in seed_counts:
        return f"{option} · {seed_counts[option]} seed{'s' if seed_counts[option] != 1 else ''}"
    run_id, _, name = option.rpartition("/")
    return f"{run_id} / {name} (one evaluation)"


picks = left.multiselect("Configurations (every seed; OPRO searches of one configuration's seeds are one) or single "
                         "evaluations; the first is the reference A", options, key="compare_picks",
                         format_func=option_text)
include_baselines = st.checkbox("Add baseline detectors scored on the same clips", value=True, key="compare_baselines")
st.query_params["configs"] = picks
st.query_params["evaluation"] = evaluation

if len(picks) < 2:
    st.info("Pick two or more configurations (every seed of each) or single evaluations.")
    st.stop()

try:
    files = review.selection_signature(configs, runs, picks, evaluation)
    result = comparison(runs, str(root), tuple(picks), evaluation, include_baselines, files)
except stats.PairingError as exc:
    st.error(f"These evaluations cannot be compared clip by clip: {exc}")
    st.stop()
except review.SelectionError as exc:
    st.error(str(exc))
    st.stop()
except (rf.RunFolderError, OSError, ValueError) as exc:
    st.error(f"A picked evaluation cannot be read: {exc}")
    st.stop()

picked = result.picked
reference = picked[0]

# ---- results
st.subheader("Results")
st.table(result.table.set_index("Configuration"))
st.caption(f"{result.n_clips:,} clips, the same for every row. Accuracy (correct/clips) [95% Wilson interval]; "
           "'mean of k seeds' rows give the SD over seeds and a 95% bootstrap interval (clips within class and "
           "seeds resampled), which stays inside [0, 100].")
if not (baselines := review.comparison_baselines(result)).empty:
    st.dataframe(baselines, hide_index=True, key="compare_baseline_rules")
    st.caption("Baselines: the clip rule and threshold that label a clip SPEECH, how they were chosen, and the "
               "ROC AUC of the clip score (over every threshold).")
for diff in result.differences:
    st.markdown(f"**{diff['b']}** − **{diff['a']}**: {diff['line']}")
    if diff["interval"].get("note"):
        st.caption(diff["interval"]["note"])

charts = figures(result, (str(root), tuple(picks), evaluation, include_baselines, files))
left, right = st.columns(2)
left.plotly_chart(charts["class_accuracy"], key="compare_classes")
right.plotly_chart(charts["seed_distribution"], key="compare_seeds")
st.plotly_chart(charts["loss"], key="compare_loss")

# ---- seeds
st.subheader("Multi-seed statistics")
st.dataframe(result.seed_table, hide_index=True, height="content", key="seed_table")
st.caption("Percent. t-interval: mean ± t(0.975, n−1)·SD/√n, cut to [0, 100] where it would leave it (marked "
           "'clipped'). Bootstrap: 10,000 replicates resampling seeds and clips within class. See docs/STATISTICS.md.")

# ---- paired tests
st.subheader("Paired test (McNemar)")
for i, paired in enumerate(result.paired):
    st.markdown(f"**{paired['a']}** (A) vs **{paired['b']}** (B)")
    if paired["rows"]:
        st.table(review.mcnemar_table(paired).set_index("Seed"))
        columns = st.columns(min(len(paired["rows"]), 4))
        for column, row in zip(columns * 8, paired["rows"]):
            column.caption(f"{row['pair']}: {row['method']}, p = {review.format_p(row['p_value'])}")
            column.table(review.contingency_frame(row, "A", "B"))
        st.caption("A − B per class, with Newcombe's paired 95% interval:")
        st.dataframe(review.class_difference_table(paired), hide_index=True, key=f"class_differences_{i}")
    for line in review.paired_findings(paired):
        st.markdown(line)
    for note in review.paired_notes(paired):
        st.caption(note)

if result.cochran:
    st.subheader("Cochran's Q (all picks)")
    st.markdown(review.cochran_line(result.cochran))
    if result.cochran["rows"]:
        st.dataframe(review.cochran_table(result.cochran), hide_index=True, key="cochran_table")

st.info(result.power_caveat)
for note in result.notes:
    st.caption(note)

# ---- discordant clips
pairs_with_rows = [p for p in result.paired if p["rows"]]
if pairs_with_rows:
    st.subheader("Discordant clips")
    names = [p["b"] for p in pairs_with_rows]
    other = st.selectbox("B", names, key="discordant_pair") if len(names) > 1 else names[0]
    paired = pairs_with_rows[names.index(other)]
    labels = [row["pair"] for row in paired["rows"]]
    which = st.selectbox("Seed", labels, key="discordant_seed") if len(labels) > 1 else labels[0]
    row = paired["rows"][labels.index(which)]
    side_b = next(s for s in picked if s.name == paired["b"])
    records_a, records_b = reference.records[row["key_a"]], side_b.records[row["key_b"]]
    clips = review.discordant_frame(row, records_a, records_b, "A", "B")
    st.caption(f"A = {paired['a']}, B = {paired['b']}: {len(clips)} clips where exactly one is right.")
    st.dataframe(clips, hide_index=True, key="discordant_table")
    if not clips.empty:
        clip_id = st.selectbox("Play a clip", list(clips["clip_id"]), key="discordant_play")
        path = clips.loc[clips["clip_id"] == clip_id, "path"].iloc[0]
        if isinstance(path, str) and Path(path).is_file():
            st.audio(path)
        else:
            st.caption(f"Audio not found at `{path}`.")

# ---- configuration differences
st.subheader("Configuration differences")
if result.config_diff.empty:
    st.caption("The configurations' recorded settings are identical (apart from seeds).")
else:
    st.dataframe(result.config_diff, key="config_diff")

# ---- export
st.subheader("Report")
if st.button("Export report", key="export_report", type="primary"):
    written = report.write_report(root, picks, evaluation, include_baselines, comparison=result)
    st.session_state["report_written"] = {k: str(v) if not isinstance(v, list) else [str(x) for x in v]
                                          for k, v in written.items()}
written = st.session_state.get("report_written")
if written and Path(written["markdown"]).is_file():
    st.success(f"Report written to {written['folder']} (report.md, comparison.csv, figures/*.html"
               + (", figures/*.png)." if written.get("images") else ")."))
    if written.get("images_skipped"):
        st.warning(f"No PNG figures: {written['images_skipped']}. The HTML figures and the report are complete.")
    left, right = st.columns(2)
    left.download_button("Download report.md", Path(written["markdown"]).read_bytes(), file_name="report.md",
                         mime="text/markdown", key="download_md")
    right.download_button("Download comparison.csv", Path(written["csv"]).read_bytes(), file_name="comparison.csv",
                          mime="text/csv", key="download_csv")
