"""Import per-clip predictions made by another tool as a run folder of kind "imported".

`import_predictions()` reads a CSV, JSON (a list of objects or {"predictions": [...]}) or
JSONL file, recognises the usual column names, canonicalises labels, checks every row, and
only then writes the run folder (config.json, status.json, evaluations/test/). Every refusal
raises ImportError_ naming the file, the row and the column, and leaves nothing on disk.
`python -m engine import-predictions` is the thin command over it.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import math
import os
import re
import shutil
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from engine.labels import DEFAULT_LABEL_SET
from engine.runs import folder as rf
from engine.runs.lifecycle import run_lifecycle
from engine.runs.predictions import NONSPEECH, RECORD_FIELDS, SPEECH, write_evaluation

EVALUATION_NAME = "test"
THRESHOLD = 0.5  # pred from p_speech when the file has no prediction column

# Record field -> column names recognised for it (first match wins, case-insensitive).
FIELD_COLUMNS: dict[str, tuple[str, ...]] = {
    "clip_id": ("clip_id", "id"),
    "path": ("audio_path", "path", "file", "filename"),
    "label": ("ground_truth", "label", "true_label", "gold"),
    "pred": ("prediction", "pred", "predicted"),
    "p_speech": ("p_first_token", "p_speech", "prob", "probability", "score"),
    "correct": ("correct",),
    "margin": ("margin",),
    "duration_s": ("duration_s",),
}

_TRUE, _FALSE = {"true", "1", "yes", "y", "t"}, {"false", "0", "no", "n", "f"}
_INT = re.compile(r"^[+-]?(0|[1-9][0-9]*)$")
_FLOAT = re.compile(r"^[+-]?([0-9]+\.[0-9]*|\.[0-9]+|[0-9]+)([eE][+-]?[0-9]+)?$")


class ImportError_(ValueError):
    """Predictions that cannot be imported; the message names the file, row and column."""


# ---------------------------------------------------------------- reading the file

def _read_rows(file: Path, data: bytes) -> tuple[list[str], list[tuple[str, dict]]]:
    """(columns in first-seen order, [(where, row)]) for a CSV, JSON or JSONL file."""
    suffix = file.suffix.lower()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ImportError_(f"{file}: not UTF-8 text ({exc})") from None
    if suffix == ".csv":
        return _read_csv(file, text)
    if suffix in (".jsonl", ".ndjson"):
        rows = []
        for lineno, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    rows.append((f"line {lineno}", json.loads(line)))
                except json.JSONDecodeError as exc:
                    raise ImportError_(f"{file}: line {lineno} is not valid JSON ({exc.msg})") from None
        return _objects(file, rows)
    if suffix == ".json":
        try:
            document = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ImportError_(f"{file}: not valid JSON ({exc})") from None
        if isinstance(document, dict) and isinstance(document.get("predictions"), list):
            document = document["predictions"]
        if not isinstance(document, list):
            raise ImportError_(f"{file}: expected a list of objects or {{\"predictions\": [...]}}")
        return _objects(file, [(f"item {i}", item) for i, item in enumerate(document, start=1)])
    raise ImportError_(f"{file}: unsupported file type {suffix or '(none)'}; use .csv, .json or .jsonl")


def _read_csv(file: Path, text: str) -> tuple[list[str], list[tuple[str, dict]]]:
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise ImportError_(f"{file}: the file is empty") from None
    duplicated = sorted({h for h in header if header.count(h) > 1})
    if duplicated:
        raise ImportError_(f"{file}: the header repeats column(s) {', '.join(map(repr, duplicated))}")
    rows = []
    for i, values in enumerate(reader, start=1):
        if not any(v.strip() for v in values):
            continue
        where = f"row {i} (line {reader.line_num})"
        if len(values) > len(header):
            raise ImportError_(f"{file}: {where} has {len(values)} fields, the header {len(header)}")
        rows.append((where, dict(zip(header, values + [""] * (len(header) - len(values))))))
    return header, rows


def _objects(file: Path, rows: list[tuple[str, Any]]) -> tuple[list[str], list[tuple[str, dict]]]:
    columns: dict[str, None] = {}
    for where, row in rows:
        if not isinstance(row, dict):
            raise ImportError_(f"{file}: {where} is not an object ({type(row).__name__})")
        columns.update(dict.fromkeys(str(k) for k in row))
    return list(columns), [(where, {str(k): v for k, v in row.items()}) for where, row in rows]


# ---------------------------------------------------------------- columns

def _find_column(columns: list[str], name: str) -> str | None:
    if name in columns:
        return name
    folded = [c for c in columns if c.strip().lower() == name.strip().lower()]
    return folded[0] if folded else None


def resolve_columns(file: Path, columns: list[str], mapping: dict[str, str] | None = None) -> dict[str, str]:
    """Record field -> column of the file; explicit `mapping` entries win over recognised names."""
    chosen: dict[str, str] = {}
    for field_name, column in (mapping or {}).items():
        if field_name not in FIELD_COLUMNS:
            raise ImportError_(f"--map {field_name}={column}: unknown field {field_name!r}; "
                               f"use one of {', '.join(FIELD_COLUMNS)}")
        found = _find_column(columns, column)
        if found is None:
            raise ImportError_(f"{file}: --map {field_name}={column}: no column {column!r} "
                               f"(columns: {', '.join(columns)})")
        chosen[field_name] = found
    used = set(chosen.values())
    for field_name, candidates in FIELD_COLUMNS.items():
        if field_name in chosen:
            continue
        for name in candidates:
            found = _find_column(columns, name)
            if found is not None and found not in used:
                chosen[field_name] = found
                used.add(found)
                break
    if "label" not in chosen:
        raise ImportError_(f"{file}: no label column (looked for {', '.join(FIELD_COLUMNS['label'])}; "
                           f"columns: {', '.join(columns)}); name one with --map label=COLUMN")
    if "pred" not in chosen and "p_speech" not in chosen:
        raise ImportError_(f"{file}: no prediction column ({', '.join(FIELD_COLUMNS['pred'])}) and no "
                           f"probability column ({', '.join(FIELD_COLUMNS['p_speech'])}); "
                           "name one with --map pred=COLUMN or --map p_speech=COLUMN")
    if "clip_id" not in chosen:
        if "path" not in chosen:
            raise ImportError_(f"{file}: no clip id column (clip_id, id) and no path column "
                               f"({', '.join(FIELD_COLUMNS['path'])}); name one with --map clip_id=COLUMN")
        chosen["clip_id"] = chosen["path"]
    return {f: chosen[f] for f in FIELD_COLUMNS if f in chosen}


# ---------------------------------------------------------------- values

def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip()) or (
        isinstance(value, float) and math.isnan(value))


def canonical_label(value: Any) -> str | None:
    """'SPEECH'/'NONSPEECH' for the accepted spellings (any case, '-', '_', 1/0), else None."""
    return None if _blank(value) else DEFAULT_LABEL_SET.canonical(value)


def _to_number(value: Any) -> Any:
    """Numeric strings become int/float (not ids with leading zeros); blanks become None."""
    if _blank(value):
        return None
    if not isinstance(value, str):
        return value
    text = value.strip()
    if _INT.match(text):
        return int(text)
    if _FLOAT.match(text) and not re.match(r"^[+-]?0[0-9]", text):
        return float(text)
    return value


def _to_probability(value: Any, where: str) -> float:
    if _blank(value):
        return math.nan
    try:
        p = float(value)
    except (TypeError, ValueError):
        raise ImportError_(f"{where}: {value!r} is not a number") from None
    if math.isnan(p):
        return p
    if not 0.0 <= p <= 1.0:
        raise ImportError_(f"{where}: {p} is not a probability in [0, 1]; "
                           "if this column is not P(SPEECH), map another with --map p_speech=COLUMN")
    return p


def _to_bool(value: Any, where: str) -> bool | None:
    if _blank(value):
        return None
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ImportError_(f"{where}: {value!r} is not true/false")


def _to_float(value: Any, where: str) -> float:
    if _blank(value):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ImportError_(f"{where}: {value!r} is not a number") from None


# ---------------------------------------------------------------- records

def build_records(file: Path, rows: list[tuple[str, dict]], columns: dict[str, str]) -> list[dict]:
    """Prediction records for every row, checked; raises ImportError_ at the first bad row."""
    if not rows:
        raise ImportError_(f"{file}: no predictions (the file has no data rows)")
    used = set(columns.values())
    records, seen = [], {}
    for where, row in rows:
        def at(field_name: str) -> str:
            return f"{file}: {where}, column {columns[field_name]!r}"

        def get(field_name: str) -> Any:
            return row.get(columns[field_name]) if field_name in columns else None

        raw_label = get("label")
        label = canonical_label(raw_label)
        if label is None:
            raise ImportError_(f"{at('label')}: unknown label {raw_label!r}; "
                               "use SPEECH/NONSPEECH (also NON-SPEECH, non_speech, 1/0)")
        p_speech = _to_probability(get("p_speech"), at("p_speech")) if "p_speech" in columns else math.nan
        pred = None
        if "pred" in columns and not _blank(get("pred")):
            pred = canonical_label(get("pred"))
            if pred is None:
                raise ImportError_(f"{at('pred')}: unknown prediction {get('pred')!r}; use SPEECH/NONSPEECH")
        elif not math.isnan(p_speech):
            pred = SPEECH if p_speech >= THRESHOLD else NONSPEECH
        else:
            column = columns.get("pred") or columns.get("p_speech")
            raise ImportError_(f"{file}: {where}, column {column!r}: no prediction and no probability")
        correct = pred == label
        if "correct" in columns:
            stated = _to_bool(get("correct"), at("correct"))
            if stated is not None and stated != correct:
                raise ImportError_(f"{at('correct')}: says {get('correct')!r} but label {label} and "
                                   f"prediction {pred} {'agree' if correct else 'disagree'}")
        clip_id = get("clip_id")
        if _blank(clip_id):
            raise ImportError_(f"{at('clip_id')}: empty clip id")
        clip_id = str(clip_id).strip()
        if clip_id in seen:
            first_where, first_label = seen[clip_id]
            differ = f" with different labels ({first_label} vs {label})" if first_label != label else ""
            raise ImportError_(f"{at('clip_id')}: clip id {clip_id!r} repeats {first_where}{differ}; "
                               "clip ids must be unique (map another with --map clip_id=COLUMN)")
        seen[clip_id] = (where, label)
        metadata = {_metadata_key(k): _to_number(v) for k, v in row.items() if k not in used}
        duration_s = _to_float(get("duration_s"), at("duration_s")) if "duration_s" in columns else math.nan
        if math.isnan(duration_s) and isinstance(metadata.get("duration_ms"), (int, float)):
            duration_s = metadata["duration_ms"] / 1000.0
        path = get("path")
        record = {
            "clip_id": clip_id,
            "path": None if _blank(path) else str(path),
            "label": label,
            "pred": pred,
            "p_speech": p_speech,
            "margin": _to_float(get("margin"), at("margin")) if "margin" in columns else math.nan,
            "correct": correct,
            "duration_s": duration_s,
        }
        record.update(metadata)
        records.append(record)
    return records


def _metadata_key(column: str) -> str:
    """A leftover column named like a record field (e.g. a second 'label') keeps its value apart."""
    return f"orig_{column}" if column in RECORD_FIELDS else column


def read_export(file: str | os.PathLike, mapping: dict[str, str] | None = None) -> tuple[list[dict], dict[str, str]]:
    """(records, column mapping) of another tool's predictions file, checked exactly as
    import_predictions checks them, without writing anything (the statistics commands read
    such files directly). Raises ImportError_ naming the file, row and column."""
    _, records, column_mapping = _load_export(Path(file), mapping)
    return records, column_mapping


def _load_export(file: Path, mapping: dict[str, str] | None) -> tuple[bytes, list[dict], dict[str, str]]:
    """(the file's bytes, records, column mapping): read and checked, nothing written."""
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise ImportError_(f"{file}: cannot read ({exc.strerror or exc})") from None
    columns, rows = _read_rows(file, data)
    column_mapping = resolve_columns(file, columns, mapping)
    return data, build_records(file, rows, column_mapping), column_mapping


# ---------------------------------------------------------------- the run folder

def import_predictions(file: str | os.PathLike, name: str, runs_root: str | os.PathLike,
                       config_label: str | None = None, seed: int | None = None,
                       mapping: dict[str, str] | None = None) -> Path:
    """Store the predictions in `file` as run `name` under `runs_root`; returns the run folder.

    Everything is read and checked in memory first; the folder is built under a hidden
    temporary name and renamed into place, so a failure leaves nothing behind.
    """
    started = time.monotonic()
    file = Path(file)
    data, records, column_mapping = _load_export(file, mapping)
    if "pred" not in column_mapping:
        column_mapping["pred"] = f"{column_mapping['p_speech']} >= {THRESHOLD}"
    root = Path(runs_root)
    try:
        run_dir = rf.resolve_in_root(root, name)
    except rf.RunFolderError as exc:
        raise ImportError_(str(exc)) from None
    if run_dir.exists():
        raise ImportError_(f"run folder {run_dir} already exists; choose another --name")
    config = {
        "schema_version": rf.SCHEMA_VERSION,
        "kind": rf.KIND_IMPORTED,
        "label": config_label or name,
        "seed": seed,
        "source_file": str(file.resolve()),
        "source_sha256": hashlib.sha256(data).hexdigest(),
        "column_mapping": column_mapping,
    }
    meta = {
        "producer": {"kind": rf.KIND_IMPORTED, "source": str(file.resolve())},
        "manifest_sha256": None,
        "time_taken_s": time.monotonic() - started,
    }
    root.mkdir(parents=True, exist_ok=True)
    staging = root / f".import-{name}-{uuid.uuid4().hex[:8]}"  # hidden: run listings skip it
    staging.mkdir()
    try:
        with run_lifecycle(staging, rf.KIND_IMPORTED, config=config, log=False, interruptible=True) as run:
            write_evaluation(staging, EVALUATION_NAME, records, meta)
            run.set_result(message=f"imported {len(records)} predictions from {file.name}")
        if run.state != rf.SUCCEEDED:
            raise ImportError_(f"import into {run_dir.name} was {run.state}")
        if run_dir.exists():
            raise ImportError_(f"run folder {run_dir} already exists; choose another --name")
        os.rename(staging, run_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return run_dir


# ---------------------------------------------------------------- command line

def import_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", type=Path, help="predictions as .csv, .json or .jsonl")
    parser.add_argument("--name", required=True, help="run folder name (letters, digits, . _ + -)")
    parser.add_argument("--config-label", default=None, help="configuration label (default: NAME)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the run that made the predictions")
    parser.add_argument("--runs-dir", default=None,
                        help=f"workspace (default: ${rf.RUNS_ROOT_ENV}, else ./runs)")
    parser.add_argument("--map", action="append", default=[], metavar="FIELD=COLUMN",
                        help=f"use COLUMN for FIELD ({', '.join(FIELD_COLUMNS)}); repeatable")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def _parse_maps(items: list[str]) -> dict[str, str]:
    mapping = {}
    for item in items:
        field_name, eq, column = item.partition("=")
        if not eq or not field_name.strip() or not column.strip():
            raise ImportError_(f"--map {item!r}: write FIELD=COLUMN, e.g. --map label=ground_truth")
        mapping[field_name.strip()] = column.strip()
    return mapping


def import_main(args: argparse.Namespace) -> int:
    try:
        run_dir = import_predictions(args.file, args.name, rf.runs_root(args.runs_dir),
                                     config_label=args.config_label, seed=args.seed,
                                     mapping=_parse_maps(args.map))
    except (ImportError_, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    evaluation = rf.read_json(rf.evaluation_dir(run_dir, EVALUATION_NAME) / rf.EVALUATION)
    config = rf.read_json(run_dir / rf.CONFIG)
    summary = evaluation["summary"]
    if args.json:
        print(json.dumps({"run_dir": str(run_dir), "run_id": run_dir.name,
                          "clip_count": evaluation["clip_count"], "column_mapping": config["column_mapping"],
                          "summary": summary}))
    else:
        mapping = ", ".join(f"{k} <- {v}" for k, v in config["column_mapping"].items())
        print(f"imported {evaluation['clip_count']} predictions into {run_dir}\n"
              f"columns: {mapping}\n"
              f"accuracy {100 * summary['accuracy']:.1f}% ({summary['correct']}/{summary['n']})")
    return 0
