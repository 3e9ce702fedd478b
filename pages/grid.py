"""Grid: a sweep's configurations as a heatmap of mean accuracy over two swept fields (rank x
alpha, say), one panel per value of a third (the target set); a click on a cell opens that
configuration in Results."""

from pathlib import Path

import streamlit as st

from engine.dashboard import charts
from engine.dashboard import grid
from engine.dashboard import review
from engine.dashboard.review import workspace_signature
from engine.runs import folder as rf
from pages import _ui

root = _ui.workspace()
st.title("Grid")
_ui.banner(root)
NONE = "(none)"


@st.cache_data(show_spinner=False, max_entries=4)
def configurations(root: str, signature: str) -> list[review.Configuration]:
    return review.configurations(_ui.cached_runs(Path(root), signature))


@st.cache_data(show_spinner="Computing seed means and bootstrap intervals ...", max_entries=8)
def aggregates(root: str, signature: str, evaluation: str) -> dict[str, review.SeedAggregate]:
    trained = grid.training_configurations(configurations(root, signature), evaluation)
    return review.seed_aggregates(trained, evaluation, _ui.load_predictions)


signature = workspace_signature(root)
configs = configurations(str(root), signature)
evaluations = review.evaluation_names(r for c in configs if c.kind == rf.KIND_TRAIN for r in c.runs)
if not evaluations:
    st.info(f"No evaluated training runs in {root} yet. A sweep (Train: lists such as ranks `8, 16, 32` and "
            "alphas `16, 32, 64`), evaluated on a test set, shows here as a grid.")
    st.stop()

# ---- what the grid shows (mirrored in the URL: ?evaluation=test&x=lora_r&y=lora_alpha&panel=targets&sweep=TEXT)
params = st.query_params
if st.session_state.get("grid_evaluation") not in evaluations:
    wanted = params.get("evaluation")
    st.session_state["grid_evaluation"] = wanted if wanted in evaluations else evaluations[0]
if "grid_search" not in st.session_state:
    st.session_state["grid_search"] = params.get("sweep", "")
top = st.columns([2, 3, 2], vertical_alignment="bottom")
evaluation = top[0].selectbox("Evaluation", evaluations, key="grid_evaluation",
                              help="Each cell is the mean over the configuration's seeds on this evaluation.")
search = top[1].text_input("Configurations containing", key="grid_search", placeholder="e.g. My sweep",
                           help="Narrow the grid to one sweep by (part of) its label.")
metric = top[2].selectbox("Accuracy", list(grid.METRICS), key="grid_metric", format_func=grid.METRICS.get)

candidates = [c for c in grid.training_configurations(configs, evaluation)
              if search.strip().lower() in c.name.lower()]
fields = grid.swept_fields(candidates)
if not fields:
    st.info(f"{len(candidates)} training configuration(s) with a {evaluation} evaluation"
            + (f" containing '{search}'" if search.strip() else "")
            + ": no setting differs between them, so there is no grid to draw. Compare their seeds on Compare.")
    st.stop()

default_x, default_y, default_panel = grid.default_axes(fields)
for key, default, options in (("grid_x", default_x, fields), ("grid_y", default_y, [NONE, *fields]),
                              ("grid_panel", default_panel, [NONE, *fields])):
    if st.session_state.get(key) not in options:
        wanted = params.get(key.removeprefix("grid_"))
        st.session_state[key] = wanted if wanted in options else (default or NONE)
axes = st.columns(3)
x = axes[0].selectbox("Columns", fields, key="grid_x", format_func=grid.field_title)
y_choice = axes[1].selectbox("Rows", [NONE, *fields], key="grid_y", format_func=lambda f: f if f == NONE
                             else grid.field_title(f))
panel_choice = axes[2].selectbox("Panels side by side", [NONE, *fields], key="grid_panel",
                                 format_func=lambda f: f if f == NONE else grid.field_title(f))
y = None if y_choice == NONE else y_choice
panel = None if panel_choice == NONE else panel_choice
params.update({"evaluation": evaluation, "x": x})
for name, value in (("y", y), ("panel", panel), ("sweep", search.strip() or None)):
    if value:
        params[name] = value
    else:
        params.pop(name, None)
if len({x, y, panel} - {None}) != len([f for f in (x, y, panel) if f]):
    st.error("Columns, rows and panels each need a field of their own.")
    st.stop()

others = [f for f in fields if f not in (x, y, panel)]
previous = {name[len("grid_fixed_"):]: value for name, value in st.session_state.items()
            if isinstance(name, str) and name.startswith("grid_fixed_")}
held = grid.fixed_fields(candidates, others, previous)
fixed = {item.name: item.value for item in held}
if held:
    summary = ", ".join(f"{grid.field_title(item.name)} {review.config_value_text(item.value)}" for item in held)
    with st.expander(f"Other settings that differ, one value each shown: {summary}"):
        for column, item in zip(st.columns(min(len(held), 4)) * 8, held):
            texts = [review.config_value_text(v) for v in item.values]
            key = f"grid_fixed_{item.name}"
            if st.session_state.get(key) not in texts:
                st.session_state[key] = review.config_value_text(item.value)
            column.selectbox(grid.field_title(item.name), texts, key=key)
        fixed = {item.name: item.values[[review.config_value_text(v) for v in item.values].index(
            st.session_state[f"grid_fixed_{item.name}"])] for item in held}

all_aggregates = aggregates(str(root), signature, evaluation)
layout = grid.build_grid({c.name: all_aggregates[c.name] for c in candidates}, x, y, panel, fixed, metric)
figure = charts.grid_heatmap(layout.cells, layout.x_values, layout.y_values, layout.panel_values,
                             grid.field_title(x), grid.field_title(y) if y else "", grid.METRICS[metric],
                             review.INTERVAL_NAME)
event = st.plotly_chart(figure, key="grid_chart", on_select="rerun", selection_mode="points")
st.caption(f"{len(layout.cells)} configuration(s) on the **{evaluation}** evaluation. Each cell: mean "
           f"{grid.METRICS[metric]} over the seeds, its {review.INTERVAL_NAME} (percentile, so inside [0, 100]) "
           "and the number of seeds. Click a cell to open the configuration in Results.")
for line in layout.clashes:
    st.warning(f"Two or more configurations share a cell: {line}. Pick another field for rows or panels to "
               "tell them apart.")
if layout.unreadable:
    st.warning("Left out: " + "; ".join(layout.unreadable))


def open_configuration(name: str) -> None:
    query = {"config": name, "evaluation": evaluation}
    if _ui.WORKSPACE_PARAM in st.query_params:
        query[_ui.WORKSPACE_PARAM] = st.query_params[_ui.WORKSPACE_PARAM]
    st.switch_page(review.RESULTS_PAGE, query_params=query)


points = event.selection.points if event is not None and hasattr(event, "selection") else []
if points:
    point = points[0]
    custom = point.get("customdata")
    name = custom[0] if isinstance(custom, (list, tuple)) and custom and custom[0] else None
    if name is None:  # a click event without customdata: find the cell by its coordinates
        curve = point.get("curve_number") or 0
        panel_value = layout.panel_values[curve] if curve < len(layout.panel_values) else None
        name = layout.configuration_at(point.get("x"), point.get("y"), panel_value)
    if name:
        open_configuration(name)

choices = grid.cell_choices(layout)
if choices:
    left, right = st.columns([5, 1], vertical_alignment="bottom")
    picked = left.selectbox("Or pick a cell", list(choices), key="grid_cell")
    if right.button("Open in Results", key="grid_open"):
        open_configuration(choices[picked])
