"""The Grid page's logic: a sweep's configurations laid out over two swept fields (say rank x
alpha), one panel per value of a third (say the target set), each cell the mean accuracy over
the configuration's seeds with its interval.

Pure functions over review.Configuration and review.SeedAggregate: the statistics are
stats.aggregate_seeds' (review.seed_aggregates), only arranged here. No streamlit, no torch.

Vocabulary:
- a *field* is a flattened config key ("lora_r", "targets", "proposer.kind");
- the *swept* fields are those whose value differs between the training configurations shown;
- *fixed* fields are swept fields that are neither axis nor panel: one value of each is shown,
  so that a cell never holds two configurations;
- a *clash* is two configurations left in one cell anyway (same settings, different labels).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import pandas as pd

from engine.dashboard import review
from engine.runs import folder as rf
from engine.runs.predictions import CLASSES

# Fields a sweep usually varies, in the order a researcher reads them; other swept fields follow.
PREFERRED_FIELDS = ("lora_r", "lora_alpha", "targets", "learning_rate", "lora_dropout", "epochs", "max_steps",
                    "quantization")
# Derived from other fields, or names rather than settings: never an axis.
NOT_SETTINGS = frozenset({"label", "config_label", "target_modules", "effective_batch", "kind"})
FIELD_TITLES = {"lora_r": "rank r", "lora_alpha": "alpha α", "targets": "target set", "learning_rate": "learning rate",
                "lora_dropout": "LoRA dropout", "epochs": "epochs", "max_steps": "max steps",
                "quantization": "quantization"}
# Accuracy the cells can show: aggregate_seeds key -> title.
METRICS = {"overall": "accuracy", "balanced": "balanced accuracy", **{cls: f"{cls} accuracy" for cls in CLASSES}}
NO_PANELS = None
CELL_COLUMNS = ("panel", "x", "y", "configuration", "mean", "ci low", "ci high", "seeds", "seed list", "interval")


def field_title(name: str) -> str:
    return FIELD_TITLES.get(name, name)


def value_of(config: Mapping[str, Any], name: str) -> Any:
    """A field's value as an axis shows it: whole floats as ints (32.0 -> 32), lists joined with '+'."""
    value = review._flatten(config).get(name)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, (list, tuple)):
        return "+".join(map(str, value))
    return value


def _order_key(value: Any) -> tuple:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, float(value), "")
    return (1, 0.0, review.config_value_text(value))


def sorted_values(values: Iterable[Any]) -> list[Any]:
    """Distinct values, numbers ascending before text (text by name)."""
    distinct: dict[str, Any] = {}
    for value in values:
        distinct.setdefault(review.config_value_text(value), value)
    return sorted(distinct.values(), key=_order_key)


def training_configurations(configs: Iterable[review.Configuration], evaluation: str) -> list[review.Configuration]:
    """Training configurations with at least one run evaluated under `evaluation`."""
    return [c for c in configs if c.kind == rf.KIND_TRAIN and c.runs_with(evaluation)]


def swept_fields(configs: Sequence[review.Configuration]) -> list[str]:
    """Fields whose value differs between the configurations: preferred fields first, then by name."""
    keys = sorted({k for c in configs for k in review._flatten(c.config)} - NOT_SETTINGS)
    varying = [k for k in keys if len({review.config_value_text(value_of(c.config, k)) for c in configs}) > 1]
    return [k for k in PREFERRED_FIELDS if k in varying] + [k for k in varying if k not in PREFERRED_FIELDS]


def default_axes(fields: Sequence[str]) -> tuple[str | None, str | None, str | None]:
    """(columns, rows, panels): rank across, alpha down, target sets side by side, where swept."""
    x = fields[0] if fields else None
    y = fields[1] if len(fields) > 1 else None
    panel = fields[2] if len(fields) > 2 else NO_PANELS
    if "targets" in fields and len(fields) > 2 and "targets" in (x, y):
        rest = [f for f in fields if f != "targets"]
        x, y, panel = rest[0], rest[1], "targets"
    return x, y, panel


def default_fixed(configs: Sequence[review.Configuration], name: str) -> Any:
    """The value of a fixed field shown first: the one most configurations have (ties: the first)."""
    counts: dict[str, list] = {}
    for c in configs:
        value = value_of(c.config, name)
        counts.setdefault(review.config_value_text(value), []).append(value)
    best = max(sorted_values(v[0] for v in counts.values()),
               key=lambda v: len(counts[review.config_value_text(v)]))
    return best


@dataclass
class FixedField:
    """A swept field held at one value: the values there are to choose from, and the one shown."""

    name: str
    values: list[Any]
    value: Any


def fixed_fields(configs: Sequence[review.Configuration], names: Sequence[str],
                 chosen: Mapping[str, Any] | None = None) -> list[FixedField]:
    """The fields among `names` that still need a value once the earlier ones are fixed.

    Fields are fixed in order; each narrows the configurations the next one is chosen from, so a
    field that is constant among the configurations left asks for nothing (a separate sweep or
    the demo runs differ in many settings, but one choice usually settles them all). A value in
    `chosen` (as value or text) is kept when it is still there, else the most common one is taken.
    """
    chosen = dict(chosen or {})
    text = review.config_value_text
    pool = list(configs)
    out = []
    for name in names:
        values = sorted_values(value_of(c.config, name) for c in pool)
        if len(values) < 2:
            continue
        wanted = text(chosen[name]) if name in chosen else None
        value = next((v for v in values if text(v) == wanted), None)
        if value is None:
            value = default_fixed(pool, name)
        out.append(FixedField(name, values, value))
        pool = [c for c in pool if text(value_of(c.config, name)) == text(value)]
    return out


@dataclass
class Grid:
    """The cells of one layout, the axis values in order, and what the layout left out."""

    x: str
    y: str | None
    panel: str | None
    metric: str
    cells: pd.DataFrame  # CELL_COLUMNS, one row per configuration shown
    x_values: list[Any]
    y_values: list[Any]
    panel_values: list[Any]
    fixed: dict[str, Any] = field(default_factory=dict)
    left_out: list[str] = field(default_factory=list)  # configurations of other fixed values
    clashes: list[str] = field(default_factory=list)  # sentences: which cell holds which configurations
    unreadable: list[str] = field(default_factory=list)

    def configuration_at(self, x: Any, y: Any = None, panel: Any = None) -> str | None:
        """The configuration shown in a cell (axis values as text or as values), else None."""
        text = review.config_value_text
        for row in self.cells.itertuples(index=False):
            if (text(row.x) == text(x) and (self.y is None or text(row.y) == text(y))
                    and (self.panel is None or text(row.panel) == text(panel))):
                return row.configuration
        return None


def build_grid(aggregates: Mapping[str, review.SeedAggregate], x: str, y: str | None = None,
               panel: str | None = None, fixed: Mapping[str, Any] | None = None,
               metric: str = "overall") -> Grid:
    """Lay the configurations of `aggregates` out over x (columns), y (rows) and panel.

    Configurations whose fixed fields have other values are left out (named in `left_out`); a
    cell that still gets two configurations shows the one with more seeds (then the first by
    name) and says so in `clashes`. A configuration without statistics (no such evaluation, or
    unreadable predictions) is left out and named in `unreadable`.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)} (got {metric!r})")
    axes = [f for f in (x, y, panel) if f]
    if len(set(axes)) != len(axes):
        raise ValueError(f"each of columns, rows and panels needs its own field (got {', '.join(axes)})")
    fixed = dict(fixed or {})
    text = review.config_value_text
    rows, left_out, unreadable = [], [], []
    for name, entry in aggregates.items():
        config = entry.configuration.config
        if entry.stats is None:
            unreadable.append(f"{name}: {entry.error or 'no such evaluation'}")
            continue
        if any(text(value_of(config, f)) != text(v) for f, v in fixed.items()):
            left_out.append(name)
            continue
        summary = entry.stats.get(metric)
        if not summary:
            unreadable.append(f"{name}: no {METRICS[metric]} (a class without clips)")
            continue
        ci = summary.get("bootstrap_ci")
        rows.append({"panel": value_of(config, panel) if panel else None, "x": value_of(config, x),
                     "y": value_of(config, y) if y else None, "configuration": name, "mean": summary["mean"],
                     "ci low": ci[0] if ci else math.nan, "ci high": ci[1] if ci else math.nan,
                     "seeds": len(entry.seeds), "seed list": ", ".join(map(str, entry.seeds)),
                     "interval": review.format_interval(ci, 1.0) if ci else "n/a"})
    frame = pd.DataFrame(rows, columns=list(CELL_COLUMNS))
    clashes = []
    if not frame.empty:
        frame["_cell"] = [(text(p), text(a), text(b)) for p, a, b in zip(frame["panel"], frame["x"], frame["y"])]
        frame = frame.sort_values(["seeds", "configuration"], ascending=[False, True], kind="stable")
        for cell, members in frame.groupby("_cell", sort=False):
            if len(members) > 1:
                names = list(members["configuration"])
                where = " × ".join(part for part in cell if part != "—")
                clashes.append(f"{where}: {len(names)} configurations ({', '.join(names)}); showing {names[0]}")
        frame = frame.drop_duplicates("_cell").drop(columns="_cell").reset_index(drop=True)
    return Grid(x=x, y=y, panel=panel, metric=metric, cells=frame,
                x_values=sorted_values(frame["x"]), y_values=sorted_values(frame["y"]) if y else [None],
                panel_values=sorted_values(frame["panel"]) if panel else [None], fixed=fixed,
                left_out=left_out, clashes=clashes, unreadable=unreadable)


def cell_choices(grid: Grid) -> dict[str, str]:
    """How each shown configuration reads in the cell picker -> its name ("r8 · α16 · attention: 81.2% ...")."""
    out = {}
    for row in grid.cells.itertuples(index=False):
        where = [f"{field_title(grid.x)} {review.config_value_text(row.x)}"]
        if grid.y:
            where.append(f"{field_title(grid.y)} {review.config_value_text(row.y)}")
        if grid.panel:
            where.append(review.config_value_text(row.panel))
        out[f"{' · '.join(where)}: {row.mean:.1f}% {row.interval}, {row.seeds} seed(s) — {row.configuration}"] = \
            row.configuration
    return out
