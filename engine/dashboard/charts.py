"""Charts: pure functions from the review tables (engine.dashboard.review) to plotly figures.

Used by the dashboard pages and by the report export alike. Numbers come in already computed
(engine.stats.core through engine.dashboard.review); the only arithmetic here is the ROC curve's points.
Each figure carries `layout.meta["chart"]`, so tests and the report can tell them apart.
"""

from __future__ import annotations

import html
import math
import textwrap
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative

from engine.runs.predictions import CLASSES, SPEECH

PALETTE = qualitative.Plotly
HEIGHT = 380


def _colors(names: Sequence[str]) -> dict[str, str]:
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(dict.fromkeys(names))}


def _layout(fig: go.Figure, chart: str, title: str, **extra: Any) -> go.Figure:
    # Legend under the plot: above it, long configuration names collide with the title.
    fig.update_layout(title=dict(text=title, x=0, xanchor="left"), height=HEIGHT, meta={"chart": chart},
                      margin=dict(l=50, r=20, t=50, b=40),
                      legend=dict(orientation="h", yanchor="top", y=-0.18, xanchor="left", x=0), **extra)
    return fig


def _empty(chart: str, title: str, message: str) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return _layout(fig, chart, title)


def class_accuracy_bars(frame: pd.DataFrame, title: str = "Accuracy per class (95% Wilson intervals)") -> go.Figure:
    """Grouped bars per class (Overall, SPEECH, NONSPEECH) with interval whiskers and 'k/n' labels.

    frame: review.class_accuracy_frame (name, class, accuracy, ci_lo, ci_hi in percent, correct, n).
    """
    if frame.empty:
        return _empty("class_accuracy", title, "no evaluations")
    fig = go.Figure()
    colors = _colors(frame["name"])
    for name, part in frame.groupby("name", sort=False):
        fig.add_trace(go.Bar(
            name=str(name), x=part["class"], y=part["accuracy"], marker_color=colors[name],
            error_y=dict(type="data", symmetric=False, array=part["ci_hi"] - part["accuracy"],
                         arrayminus=part["accuracy"] - part["ci_lo"], thickness=1.5),
            text=[f"{c}/{n}" for c, n in zip(part["correct"], part["n"])], textposition="inside",
            insidetextanchor="start",
            customdata=np.stack([part["ci_lo"], part["ci_hi"], part["correct"], part["n"]], axis=1),
            hovertemplate="%{x}: %{y:.1f}% (%{customdata[2]}/%{customdata[3]}) "
                          "[%{customdata[0]:.1f}, %{customdata[1]:.1f}]<extra>" + str(name) + "</extra>"))
    return _layout(fig, "class_accuracy", title, barmode="group", yaxis=dict(title="accuracy (%)", range=[0, 105]))


def confusion_heatmap(confusion: Mapping[str, Mapping[str, int]], title: str = "Confusion matrix") -> go.Figure:
    """Gold class (rows) x predicted class (columns), counts and row percentages."""
    z = [[int(confusion[gold][pred]) for pred in CLASSES] for gold in CLASSES]
    text = []
    for row in z:
        total = sum(row)
        text.append([f"{v}<br>{100.0 * v / total:.1f}%" if total else str(v) for v in row])
    fig = go.Figure(go.Heatmap(z=z, x=[f"pred {c}" for c in CLASSES], y=[f"gold {c}" for c in CLASSES],
                               text=text, texttemplate="%{text}", colorscale="Blues", showscale=False,
                               hovertemplate="%{y}, %{x}: %{z}<extra></extra>"))
    fig.update_yaxes(autorange="reversed")
    return _layout(fig, "confusion", title)


def roc_points(records: Sequence[dict]) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate) at every distinct p_speech threshold, from (0, 0).

    Records without a finite p_speech are left out, as in stats.roc_auc.
    """
    scored = [(r["label"] == SPEECH, float(r["p_speech"])) for r in records
              if r.get("p_speech") is not None and math.isfinite(float(r["p_speech"]))]
    if not scored:
        return np.array([0.0]), np.array([0.0])
    positive = np.array([y for y, _ in scored], dtype=float)
    score = np.array([s for _, s in scored])
    order = np.argsort(-score, kind="mergesort")
    score, positive = score[order], positive[order]
    last_of_threshold = np.r_[np.flatnonzero(np.diff(score)), len(score) - 1]
    true_pos = np.cumsum(positive)[last_of_threshold]
    false_pos = last_of_threshold + 1 - true_pos
    n_pos, n_neg = positive.sum(), len(positive) - positive.sum()
    tpr = np.r_[0.0, true_pos / n_pos] if n_pos else np.zeros(len(true_pos) + 1)
    fpr = np.r_[0.0, false_pos / n_neg] if n_neg else np.zeros(len(false_pos) + 1)
    return fpr, tpr


def roc_curve(records_by_name: Mapping[str, Sequence[dict]], aucs: Mapping[str, float | None],
              title: str = "ROC curve (p_speech)") -> go.Figure:
    """One ROC curve per name; the legend gives stats.roc_auc."""
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dot", color="grey"),
                             name="chance", hoverinfo="skip"))
    for name, records in records_by_name.items():
        fpr, tpr = roc_points(records)
        auc = aucs.get(name)
        label = f"{name} (AUC {auc:.3f})" if auc is not None else f"{name} (AUC n/a)"
        fig.add_trace(go.Scatter(x=fpr, y=tpr, mode="lines", name=label, line=dict(shape="hv")))
    return _layout(fig, "roc", title, xaxis=dict(title="false positive rate", range=[0, 1]),
                   yaxis=dict(title="true positive rate", range=[0, 1.02]))


def epoch_boundaries(losses: pd.DataFrame) -> list[tuple[int, int]]:
    """(step, epoch) where each whole epoch ends, from the first run's logged epoch fractions."""
    if losses.empty or losses["epoch"].isna().all():
        return []
    first = losses[losses["run"] == losses["run"].iloc[0]].sort_values("step")
    marks, done = [], 0
    for step, epoch in zip(first["step"], first["epoch"]):
        if epoch is not None and not pd.isna(epoch) and math.floor(float(epoch) + 1e-9) > done:
            done = math.floor(float(epoch) + 1e-9)
            marks.append((int(step), done))
    return marks[:-1] if marks and marks[-1][0] == int(first["step"].max()) else marks


def loss_curves(losses: pd.DataFrame, validation: pd.DataFrame | None = None,
                title: str | None = None) -> go.Figure:
    """Loss per optimizer step, one line per run (colour per configuration, dash per seed), with
    dotted lines where the first run's epochs end. losses: review.loss_frame.

    validation (review.validation_frame): each run's validation loss, diamonds at the step where
    each epoch ended, on a second axis (right): it is the two-class log loss of the decision, not
    the training loss's full-vocabulary cross-entropy, so the scales differ. Its accuracy is
    validation_accuracy_chart's. Every trace's `meta["series"]` is "train_loss" or "val_loss".
    """
    has_validation = validation is not None and not validation.empty
    title = title or ("Training loss per step, validation loss after each epoch" if has_validation
                      else "Training loss per step")
    if losses.empty:
        return _empty("loss", title, "no training metrics (imported predictions and baselines have none)")
    fig = go.Figure()
    colors = _colors(list(losses["name"]) + (list(validation["name"]) if has_validation else []))
    for name, part in losses.groupby("name", sort=False):
        for i, (run, curve) in enumerate(part.groupby("run", sort=False)):
            curve = curve.sort_values("step")
            fig.add_trace(go.Scatter(
                x=curve["step"], y=curve["loss"], mode="lines", name=f"{name} · {curve['seed'].iloc[0]}",
                line=dict(color=colors[name], dash=DASHES[i % len(DASHES)]), customdata=curve["epoch"],
                legendgroup=str(run), meta={"series": "train_loss", "run": str(run)},
                hovertemplate="step %{x}, epoch %{customdata:.2f}: loss %{y:.4f}<extra>" + str(run) + "</extra>"))
    if has_validation:
        for name, part in validation.groupby("name", sort=False):
            for i, (run, points) in enumerate(part.groupby("run", sort=False)):
                points = points.sort_values("step")
                fig.add_trace(go.Scatter(
                    x=points["step"], y=points["val_loss"], mode="lines+markers", yaxis="y2",
                    name=f"{name} · {points['seed'].iloc[0]} validation",
                    line=dict(color=colors[name], dash=DASHES[i % len(DASHES)], width=1), legendgroup=str(run),
                    marker=dict(symbol="diamond", size=10, color=colors[name], line=dict(width=1, color="white")),
                    customdata=np.c_[points["epoch"].astype(float), points["val_clips"].astype(float)],
                    meta={"series": "val_loss", "run": str(run)},
                    hovertemplate="validation after epoch %{customdata[0]:.2f} (step %{x}, %{customdata[1]:.0f} "
                                  "clips): log loss %{y:.4f}<extra>" + str(run) + "</extra>"))
    _epoch_lines(fig, losses)
    if not has_validation:
        return _layout(fig, "loss", title, xaxis=dict(title="optimizer step"), yaxis=dict(title="loss"))
    fig = _layout(fig, "loss", title, xaxis=dict(title="optimizer step", range=_step_range(losses)),
                  yaxis=dict(title="training loss"),
                  yaxis2=dict(title="validation log loss (two-class)", overlaying="y", side="right", showgrid=False,
                              rangemode="tozero", tickformat=".2f", zeroline=False))
    fig.update_layout(margin=dict(r=60))
    return fig


def validation_accuracy_chart(validation: pd.DataFrame, losses: pd.DataFrame | None = None,
                              title: str = "Validation accuracy after each epoch") -> go.Figure:
    """Each run's validation accuracy (markers) and balanced accuracy (open markers, dotted) in percent at
    the step where each epoch ended; x axis and epoch lines as loss_curves' when `losses` is given, so the
    two charts line up. validation: review.validation_frame."""
    if validation.empty:
        return _empty("validation_accuracy", title, "no validation data (train with val_data)")
    fig = go.Figure()
    colors = _colors(list(losses["name"]) if losses is not None and not losses.empty else validation["name"])
    for name, part in validation.groupby("name", sort=False):
        for i, (run, points) in enumerate(part.groupby("run", sort=False)):
            points = points.sort_values("step")
            label, color = f"{name} · {points['seed'].iloc[0]}", colors.get(name, PALETTE[0])
            fig.add_trace(go.Scatter(
                x=points["step"], y=points["val_accuracy"], mode="lines+markers", name=f"{label} accuracy",
                line=dict(color=color, dash=DASHES[i % len(DASHES)], width=1.5),
                marker=dict(symbol="square", size=9, color=color), customdata=points["epoch"].astype(float),
                meta={"series": "val_accuracy", "run": str(run)},
                hovertemplate="after epoch %{customdata:.2f} (step %{x}): accuracy %{y:.1f}%<extra>" + str(run)
                              + "</extra>"))
            if points["val_balanced_accuracy"].notna().any():
                fig.add_trace(go.Scatter(
                    x=points["step"], y=points["val_balanced_accuracy"], mode="markers",
                    name=f"{label} balanced accuracy", marker=dict(symbol="square-open", size=11, color=color,
                                                                   line=dict(width=2)),
                    customdata=points["epoch"].astype(float), meta={"series": "val_balanced_accuracy", "run": str(run)},
                    hovertemplate="after epoch %{customdata:.2f} (step %{x}): balanced accuracy %{y:.1f}%<extra>"
                                  + str(run) + "</extra>"))
    if losses is not None and not losses.empty:
        _epoch_lines(fig, losses, annotate=False)
    fig = _layout(fig, "validation_accuracy", title,
                  xaxis=dict(range=_step_range(losses if losses is not None and not losses.empty else validation)),
                  yaxis=dict(title="accuracy (%)", range=[0, 104], tickvals=[0, 25, 50, 75, 100]))
    fig.update_layout(height=VALIDATION_HEIGHT, margin=dict(r=60), legend=dict(y=-0.15))
    return fig


DASHES = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")
VALIDATION_HEIGHT = 260


def _step_range(frame: pd.DataFrame) -> list[float]:
    """The x range of a step axis, half a step of room at each end."""
    return [float(frame["step"].min()) - 0.5, float(frame["step"].max()) + 0.5]


def _epoch_lines(fig: go.Figure, losses: pd.DataFrame, annotate: bool = True) -> None:
    for step, epoch in epoch_boundaries(losses):
        fig.add_vline(x=step, line=dict(dash="dot", color="grey", width=1),
                      **(dict(annotation_text=f"epoch {epoch}", annotation_position="top") if annotate else {}))


def seed_strip(points: pd.DataFrame, intervals: pd.DataFrame, title: str | None = None) -> go.Figure:
    """Every seed as a point, the mean as a bar with its interval as whiskers, 'n = k' above.

    points: review.seed_points (name, seed, accuracy %); intervals: review.seed_intervals.
    """
    if title is None:  # name the interval the whiskers show (review.seed_intervals says which)
        methods = sorted(set(intervals["interval"].dropna())) if "interval" in intervals else []
        title = f"Accuracy per seed (mean, {' / '.join(methods) or '95%'} interval)"
    if points.empty:
        return _empty("seed_distribution", title, "no evaluations")
    fig = go.Figure()
    colors = _colors(points["name"])
    counts = dict(zip(intervals["name"], intervals["n"]))
    tick = {name: f"{name}<br>n = {counts.get(name, len(part))}"
            for name, part in points.groupby("name", sort=False)}
    for name, part in points.groupby("name", sort=False):
        fig.add_trace(go.Scatter(
            x=[tick[name]] * len(part), y=part["accuracy"], mode="markers", name=f"{name} seeds",
            marker=dict(size=11, color=colors[name], line=dict(width=1, color="white")),
            text=part["seed"], hovertemplate="%{text}: %{y:.2f}%<extra></extra>", showlegend=False))
    for row in intervals.itertuples(index=False):
        has_interval = row.lo is not None and not pd.isna(row.lo)
        color = colors.get(row.name, "black")
        fig.add_trace(go.Scatter(
            x=[tick.get(row.name, row.name)], y=[row.mean], mode="markers", name=f"{row.name} mean",
            marker=dict(symbol="line-ew-open", size=36, color=color, line=dict(width=3, color=color)),
            error_y=dict(type="data", symmetric=False, array=[row.hi - row.mean] if has_interval else [0],
                         arrayminus=[row.mean - row.lo] if has_interval else [0], width=10, thickness=1.5,
                         color=color),
            hovertemplate=(f"mean %{{y:.2f}}% [{row.lo:.1f}, {row.hi:.1f}] ({row.interval})"
                           if has_interval else "mean %{y:.2f}%") + f", n = {row.n}<extra></extra>",
            showlegend=False))
    low = min(points["accuracy"].min(), intervals["lo"].dropna().min() if intervals["lo"].notna().any() else 100)
    return _layout(fig, "seed_distribution", title,
                   yaxis=dict(title="accuracy (%)", range=[max(0, low - 8), 106]), xaxis=dict(title=None))


def breakdown_chart(frame: pd.DataFrame, column: str, title: str | None = None) -> go.Figure:
    """Accuracy against the values of a metadata column, with the 95% interval as a band.

    frame: review.breakdown_frame (name, value, n, accuracy, ci_lo, ci_hi in percent).
    """
    title = title or f"Accuracy by {column} (95% Wilson band)"
    if frame.empty:
        return _empty("breakdown", title, f"no values for {column}")
    fig = go.Figure()
    colors = _colors(frame["name"])
    numeric = pd.to_numeric(frame["value"].dropna(), errors="coerce").notna().all()
    for name, part in frame.groupby("name", sort=False):
        part = part[part["value"].notna()]
        x = list(part["value"]) if numeric else [str(v) for v in part["value"]]
        color = colors[name]
        fig.add_trace(go.Scatter(x=x + x[::-1], y=list(part["ci_hi"]) + list(part["ci_lo"])[::-1],
                                 mode="lines", fill="toself", fillcolor=_transparent(color), line=dict(width=0),
                                 hoverinfo="skip", showlegend=False, name=f"{name} interval"))
        fig.add_trace(go.Scatter(
            x=x, y=part["accuracy"], mode="lines+markers", name=str(name), line=dict(color=color),
            customdata=np.stack([part["correct"], part["n"], part["ci_lo"], part["ci_hi"]], axis=1),
            hovertemplate=f"{column} %{{x}}: %{{y:.1f}}% (%{{customdata[0]}}/%{{customdata[1]}}) "
                          "[%{customdata[2]:.1f}, %{customdata[3]:.1f}]<extra>" + str(name) + "</extra>"))
    xaxis: dict[str, Any] = dict(title=column)
    if not numeric:
        xaxis["type"] = "category"
    return _layout(fig, "breakdown", title, xaxis=xaxis, yaxis=dict(title="accuracy (%)", range=[0, 105]))


def _transparent(color: str, alpha: float = 0.18) -> str:
    color = color.lstrip("#")
    r, g, b = (int(color[i:i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


def _hover_prompt(prompt: str, width: int = 70) -> str:
    """A prompt as hover text: HTML-escaped (a '<' in a prompt must not read as markup), wrapped."""
    return "<br>".join(textwrap.wrap(html.escape(str(prompt)), width)) or "(empty)"


def opro_curve(points: pd.DataFrame, best: pd.DataFrame, final: bool = True,
               title: str = "Dev balanced accuracy per candidate prompt") -> go.Figure:
    """Every scored prompt as a point at its iteration (colour per source, hover shows the prompt),
    the best-so-far line over iterations and the best prompt ringed.

    points: opro_review.curve_frame; best: opro_review.best_so_far_frame. `final` False labels the
    ringed prompt "best so far" (the search has not finished: no opro.json).
    """
    if points.empty:
        return _empty("opro_curve", title, "no prompt scored yet")
    fig = go.Figure()
    colors = _colors(points["source"])
    for source, part in points.groupby("source", sort=False):
        fig.add_trace(go.Scatter(
            x=part["position"], y=part["balanced_accuracy"], mode="markers", name=str(source),
            marker=dict(size=10, color=colors[source], line=dict(width=1, color="white")),
            # a list of rows, not np.stack: the mixed columns must keep their own types
            customdata=list(zip(part["id"], part["iteration"], part["operation"].fillna(""),
                                part["speech_accuracy"], part["nonspeech_accuracy"],
                                [_hover_prompt(p) for p in part["prompt"]])),
            hovertemplate="prompt %{customdata[0]} (iteration %{customdata[1]}, %{customdata[2]})<br>"
                          "balanced %{y:.1f}% · SPEECH %{customdata[3]:.1f}% · NONSPEECH %{customdata[4]:.1f}%"
                          "<br><br>%{customdata[5]}<extra>" + str(source) + "</extra>"))
    if not best.empty:
        fig.add_trace(go.Scatter(
            x=best["iteration"], y=best["balanced_accuracy"], mode="lines", name="best so far",
            line=dict(shape="hv", color="black", width=2, dash="dot"),
            customdata=list(zip(best["id"], [_hover_prompt(p) for p in best["prompt"]])),
            hovertemplate="best after iteration %{x}: prompt %{customdata[0]}, %{y:.1f}%<br><br>"
                          "%{customdata[1]}<extra>best so far</extra>"))
    chosen = points[points["is_best"]]
    if not chosen.empty:
        fig.add_trace(go.Scatter(
            x=chosen["position"], y=chosen["balanced_accuracy"], mode="markers",
            name="best prompt" if final else "best prompt so far",
            marker=dict(symbol="circle-open", size=20, color="black", line=dict(width=2)), hoverinfo="skip"))
    iterations = sorted(int(i) for i in points["iteration"].unique())
    low = points["balanced_accuracy"].dropna().min() if points["balanced_accuracy"].notna().any() else 0
    return _layout(fig, "opro_curve", title,
                   xaxis=dict(title="iteration (0 = original prompt)", tickmode="array", tickvals=iterations),
                   yaxis=dict(title="dev balanced accuracy (%)", range=[max(0, low - 10), 102]))


def grid_heatmap(cells: pd.DataFrame, x_values: Sequence[Any], y_values: Sequence[Any],
                 panel_values: Sequence[Any] = (None,), x_title: str = "", y_title: str = "",
                 metric_title: str = "accuracy", interval_name: str = "95% interval") -> go.Figure:
    """Mean accuracy per configuration as a heatmap over two fields, one panel per value of a third.

    cells: engine.dashboard.grid's CELL_COLUMNS (panel, x, y, configuration, mean, ci low, ci high,
    seeds, seed list, interval; percent). Each cell is written "81.2%" over its interval; hovering
    gives the configuration, the interval and the seeds. Every cell carries its configuration's
    name as customdata[0], so a click (a point selection) says which configuration it was. One
    colour scale for all panels.
    """
    title = f"Mean {metric_title} over seeds, {interval_name}"
    if cells.empty:
        return _empty("grid", title, "no configuration with this evaluation")
    from plotly.subplots import make_subplots

    def text(value: Any) -> str:
        return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)

    panels = list(panel_values) or [None]
    fig = make_subplots(rows=1, cols=len(panels), shared_yaxes=True, horizontal_spacing=0.04,
                        subplot_titles=[text(p) for p in panels] if panels != [None] else None)
    xs, ys = [text(v) for v in x_values], [text(v) for v in y_values]
    low, high = float(cells["mean"].min()), float(cells["mean"].max())
    for column, panel in enumerate(panels, start=1):
        part = cells if panel is None else cells[cells["panel"].map(text) == text(panel)]
        z = [[None] * len(xs) for _ in ys]
        labels = [[""] * len(xs) for _ in ys]
        custom = [[["", "", "", "", ""]] * len(xs) for _ in ys]
        for row in part.to_dict("records"):
            i, j = ys.index(text(row["y"])), xs.index(text(row["x"]))
            z[i][j] = row["mean"]
            seeds = f"{row['seeds']} seed{'s' if row['seeds'] != 1 else ''}"
            labels[i][j] = f"<b>{row['mean']:.1f}%</b><br>{row['interval']}<br>{seeds}"
            custom[i][j] = [row["configuration"], row["interval"], row["seed list"], row["seeds"], f"{row['mean']:.1f}"]
        hover = ("<b>%{customdata[0]}</b><br>mean %{customdata[4]}% over %{customdata[3]} seed(s)<br>"
                 f"{interval_name} " "%{customdata[1]}<br>seeds %{customdata[2]}<extra></extra>")
        fig.add_trace(go.Heatmap(
            x=xs, y=ys, z=z, text=labels, texttemplate="%{text}", customdata=custom, coloraxis="coloraxis",
            xgap=3, ygap=3, name=text(panel), hoverinfo="skip"), row=1, col=column)
        # Heatmaps take no point selections: an invisible square marker on each cell carries the
        # hover and the click (customdata[0] = the configuration).
        shown = part.to_dict("records")
        fig.add_trace(go.Scatter(
            x=[text(r["x"]) for r in shown], y=[text(r["y"]) for r in shown], mode="markers", name=f"{text(panel)} cells",
            marker=dict(symbol="square", size=70, color="rgba(0,0,0,0)"), showlegend=False,
            customdata=[[r["configuration"], r["interval"], r["seed list"], r["seeds"], f"{r['mean']:.1f}"] for r in shown],
            hovertemplate=hover), row=1, col=column)
        fig.update_xaxes(title_text=x_title, type="category", categoryorder="array", categoryarray=xs,
                         row=1, col=column)
    fig.update_yaxes(title_text=y_title, type="category", categoryorder="array", categoryarray=ys, row=1, col=1)
    fig.update_yaxes(type="category", categoryorder="array", categoryarray=ys, autorange="reversed")  # rows read down
    _layout(fig, "grid", title, coloraxis=dict(colorscale="Viridis", cmin=low, cmax=high if high > low else low + 1,
                                               colorbar=dict(title=dict(text="%"))))
    fig.update_layout(height=max(HEIGHT, 140 + 110 * len(ys)), clickmode="event+select")
    return fig
