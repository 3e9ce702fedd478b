"""Try a clip's table: clips x adapters, columns grouped by configuration, a mean over seeds per configuration.

`clip_matrix(rows, columns)` turns the clip worker's rows ({clip, adapter, p_speech, pred, ...})
into p(SPEECH) values and cell texts ("0.812 SPEECH"); `cell_colours` gives each cell a background
that says the prediction (hue) and how sure it is (strength). No streamlit, no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from engine.dashboard import review
from engine.labels import NONSPEECH, SPEECH
from engine.runs import folder as rf

BASE_CONFIGURATION = "Base model"
THRESHOLD = 0.5  # the clip worker predicts SPEECH at p(SPEECH) >= 0.5
# Background colours: SPEECH blue, NONSPEECH orange (the charts' class colours), white at p = 0.5.
SPEECH_RGB, NONSPEECH_RGB = (31, 119, 180), (255, 127, 14)


@dataclass(frozen=True)
class MatrixColumn:
    """Where one adapter's scores go: its configuration (the column group) and the column's own name."""

    adapter: str
    """The clip worker's adapter label (a run id, or "base model (<model>)")."""
    configuration: str
    name: str
    seed: int | None = None


@dataclass
class ClipMatrix:
    """p(SPEECH) per clip (rows) and column, and the texts shown in the cells."""

    values: pd.DataFrame
    """Float p(SPEECH); NaN where a clip was not scored with that adapter."""
    texts: pd.DataFrame
    """"0.812 SPEECH" cells (empty where not scored); same index and columns as values."""
    groups: dict[str, list[str]]
    """Configuration -> its columns, in display order; a group of several seeds ends with its mean column."""


def matrix_columns(adapters: Sequence[str], runs: Iterable[rf.RunInfo]) -> list[MatrixColumn]:
    """The column of each adapter: runs by configuration label and seed, anything else its own group."""
    by_id = {info.run_id: info for info in runs}
    columns = []
    for adapter in adapters:
        info = by_id.get(adapter)
        if info is None:
            configuration = BASE_CONFIGURATION if adapter.startswith("base model") else adapter
            columns.append(MatrixColumn(adapter, configuration, adapter))
            continue
        seed = info.seed if isinstance(info.seed, int) else None
        name = f"{info.config_label} · {review.seed_text(seed)}" if seed is not None else info.run_id
        columns.append(MatrixColumn(adapter, info.config_label, name, seed))
    names = [c.name for c in columns]
    # two runs of one configuration and seed (a re-run): tell them apart by run id
    return [MatrixColumn(c.adapter, c.configuration, f"{c.name} ({c.adapter})", c.seed) if names.count(c.name) > 1
            else c for c in columns]


def mean_column_name(configuration: str, n: int) -> str:
    return f"{configuration} · mean of {n} seeds"


def clip_matrix(rows: Sequence[dict], columns: Sequence[MatrixColumn], clips: Sequence[str] | None = None) -> ClipMatrix:
    """Rows of the clip worker -> the matrix; configurations in the order of their first column,
    seeds ascending within one, then the mean over its seeds (mean p(SPEECH), label at 0.5)."""
    clips = list(clips) if clips is not None else list(dict.fromkeys(str(row["clip"]) for row in rows))
    groups: dict[str, list[MatrixColumn]] = {}
    for column in columns:
        groups.setdefault(column.configuration, []).append(column)
    found = {(str(row["clip"]), str(row["adapter"])): float(row["p_speech"]) for row in rows}
    values: dict[str, list[float]] = {}
    layout: dict[str, list[str]] = {}
    for configuration, members in groups.items():
        members = sorted(members, key=lambda c: (c.seed is None, c.seed if c.seed is not None else 0, c.name))
        layout[configuration] = []
        for column in members:
            values[column.name] = [found.get((clip, column.adapter), np.nan) for clip in clips]
            layout[configuration].append(column.name)
        if len(members) > 1:
            block = np.array([values[c.name] for c in members], dtype=float)
            scored = ~np.isnan(block)
            # mean over the seeds that scored the clip; a clip no seed scored stays empty
            with np.errstate(invalid="ignore"):
                mean = np.where(scored.any(axis=0), np.nansum(block, axis=0) / np.maximum(scored.sum(axis=0), 1),
                                np.nan)
            name = mean_column_name(configuration, len(members))
            values[name] = list(mean)
            layout[configuration].append(name)
    frame = pd.DataFrame(values, index=pd.Index(clips, name="clip"))
    texts = frame.map(cell_text)
    return ClipMatrix(values=frame, texts=texts, groups=layout)


def cell_text(p_speech: float) -> str:
    if p_speech is None or np.isnan(p_speech):
        return ""
    return f"{p_speech:.3f} {SPEECH if p_speech >= THRESHOLD else NONSPEECH}"


def cell_colour(p_speech: float) -> str:
    """CSS for one cell: the predicted class's colour, stronger the further p(SPEECH) is from 0.5."""
    if p_speech is None or np.isnan(p_speech):
        return ""
    rgb = SPEECH_RGB if p_speech >= THRESHOLD else NONSPEECH_RGB
    strength = 0.15 + 0.6 * min(1.0, abs(p_speech - THRESHOLD) * 2)
    return f"background-color: rgba({rgb[0]}, {rgb[1]}, {rgb[2]}, {strength:.2f})"


def cell_colours(matrix: ClipMatrix) -> pd.DataFrame:
    """CSS per cell (for pandas' Styler.apply(axis=None)); mean columns also get a bold face."""
    colours = matrix.values.map(cell_colour)
    means = [name for names in matrix.groups.values() for name in names[-1:] if len(names) > 1]
    for name in means:
        colours[name] = colours[name].map(lambda css: f"{css}; font-weight: bold" if css else "font-weight: bold")
    return colours
