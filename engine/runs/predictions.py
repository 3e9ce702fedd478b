"""Per-clip prediction records: the format every evaluation, import and baseline writes.

One record per clip (a dict), paired across evaluations by `clip_id`:

    clip_id     stable id: the manifest's id column, else the path relative to the manifest
    path        the audio file as given (absolute when known)
    label       gold class, canonical "SPEECH" or "NONSPEECH"
    pred        predicted class, canonical
    p_speech    probability of SPEECH in [0, 1]
    margin      score(SPEECH) - score(NONSPEECH) (log-probability difference; NaN if unknown)
    correct     pred == label
    duration_s  clip duration in seconds (NaN if unknown)
    ...         every metadata column of the manifest (duration_ms, snr_db, condition, ...)

No torch here: the dashboard reads these through this module.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

from engine.labels import CLASSES, NONSPEECH, SPEECH  # noqa: F401 (re-exported for readers)
from engine.runs import folder as rf

RECORD_FIELDS = ("clip_id", "path", "label", "pred", "p_speech", "margin", "correct", "duration_s")


class PredictionsError(ValueError):
    """A predictions file or folder that cannot be used; the message says what and where."""


def write_evaluation(run_dir: Path, name: str, records: list[dict], meta: dict[str, Any]) -> Path:
    """Store one evaluation in `run_dir/evaluations/<name>/`; returns that folder.

    predictions.jsonl is written first and evaluation.json last, both atomically: a folder
    without evaluation.json is an evaluation that did not finish and readers skip it.
    """
    from engine.stats import core as stats  # here, so that reading records needs no scipy

    out = rf.evaluation_dir(run_dir, name)
    out.mkdir(parents=True, exist_ok=True)
    # Replacing an evaluation: its old document goes first, so a kill before the new one lands
    # leaves an unfinished evaluation, never the old summary beside the new predictions.
    (out / rf.EVALUATION).unlink(missing_ok=True)
    rf.write_jsonl(out / rf.PREDICTIONS, records)
    document = {
        "schema_version": rf.SCHEMA_VERSION,
        "name": name,
        "clip_count": len(records),
        **meta,
        "summary": stats.evaluation_summary(records),
    }
    rf.atomic_write_json(out / rf.EVALUATION, document)
    return out


def save_predictions_file(path: Path, records: list[dict]) -> Path:
    """Write records to .jsonl or .csv, chosen by the file's extension."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        rf.write_jsonl(path, records)
    elif suffix == ".csv":
        columns = list(RECORD_FIELDS) + sorted({k for r in records for k in r} - set(RECORD_FIELDS))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns)
            writer.writeheader()
            writer.writerows(records)
        tmp.replace(path)
    else:
        raise PredictionsError(f"{path}: use a .jsonl or .csv file name for saved predictions")
    return path


def resolve_predictions(target: Path, evaluation: str | None = None) -> Path:
    """The predictions.jsonl behind a predictions file, an evaluation folder or a run folder."""
    target = Path(target)
    if target.is_file():
        return target
    if (target / rf.PREDICTIONS).is_file():
        return target / rf.PREDICTIONS
    if (target / rf.CONFIG).is_file():
        names = rf.list_evaluations(target)
        if evaluation:
            if evaluation not in names:
                raise PredictionsError(f"{target}: no evaluation named {evaluation!r} (has: {', '.join(names) or 'none'})")
            return rf.evaluation_dir(target, evaluation) / rf.PREDICTIONS
        if len(names) == 1:
            return rf.evaluation_dir(target, names[0]) / rf.PREDICTIONS
        if "test" in names:
            return rf.evaluation_dir(target, "test") / rf.PREDICTIONS
        raise PredictionsError(f"{target}: {len(names)} evaluations ({', '.join(names) or 'none'}); name one")
    raise PredictionsError(f"{target}: not a predictions file, an evaluation folder or a run folder")


def read_predictions(target: Path, evaluation: str | None = None) -> list[dict]:
    """Records from a .jsonl/.csv predictions file, an evaluation folder or a run folder.

    Every record is checked (an object with a clip id, label and pred among CLASSES, numbers
    where numbers belong); PredictionsError names the file, the record's line and the reason.
    """
    path = resolve_predictions(target, evaluation)
    try:
        if path.suffix.lower() == ".csv":
            with open(path, newline="", encoding="utf-8") as fh:
                # Line 1 is the header, so record i sits on line i + 2 (without quoted newlines).
                records = [_coerce(dict(row), path, i + 2) for i, row in enumerate(csv.DictReader(fh))]
        else:
            records = rf.read_jsonl(path)
    except UnicodeDecodeError as exc:
        raise PredictionsError(f"{path}: not UTF-8 text (byte {exc.start}): not a predictions file") from None
    except (rf.RunFolderError, csv.Error) as exc:
        raise PredictionsError(str(exc) if isinstance(exc, rf.RunFolderError) else f"{path}: {exc}") from None
    if not records:
        raise PredictionsError(f"{path}: holds no prediction records (an empty file)")
    for i, rec in enumerate(records):
        _check_record(rec, path, i + 1)
    return records


_NUMBER_FIELDS = ("p_speech", "margin", "duration_s")


def _check_record(rec: dict, path: Path, number: int) -> None:
    where = f"{path}: record {number}"
    missing = [k for k in ("clip_id", "label", "pred") if k not in rec]
    if missing:
        raise PredictionsError(f"{where} lacks {', '.join(missing)}")
    if isinstance(rec["clip_id"], bool) or not isinstance(rec["clip_id"], (str, int)) or rec["clip_id"] == "":
        raise PredictionsError(f"{where}: clip_id must be a non-empty text or whole number, got {rec['clip_id']!r}")
    for key in ("label", "pred"):
        if rec[key] not in CLASSES:
            raise PredictionsError(f"{where}: {key} {rec[key]!r} is not one of {', '.join(CLASSES)}")
    for key in _NUMBER_FIELDS:
        value = rec.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise PredictionsError(f"{where}: {key} must be a number or null, got {value!r}")
    p = rec.get("p_speech")
    if p is not None and math.isfinite(p) and not 0.0 <= p <= 1.0:
        raise PredictionsError(f"{where}: p_speech {p!r} is not a probability in [0, 1]")
    if "correct" in rec and not isinstance(rec["correct"], bool):
        raise PredictionsError(f"{where}: correct must be true or false, got {rec['correct']!r}")
    if "path" in rec and rec["path"] is not None and not isinstance(rec["path"], str):
        raise PredictionsError(f"{where}: path must be text, got {rec['path']!r}")


def _coerce(row: dict[str, str], path: Path, line: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in row.items():
        if key is None:  # DictReader puts extra cells of a row under None
            raise PredictionsError(f"{path}: line {line} has more cells than the header")
        if key in _NUMBER_FIELDS:
            try:
                out[key] = float(value) if value not in ("", None) else math.nan
            except ValueError:
                raise PredictionsError(f"{path}: line {line}: {key} {value!r} is not a number") from None
        elif key == "correct":
            out[key] = str(value).strip().lower() in ("true", "1", "yes")
        else:
            out[key] = value
    return out


def make_record(clip_id: str, path: str, label: str, p_speech: float, margin: float,
                duration_s: float, metadata: dict[str, Any] | None = None,
                threshold: float = 0.5) -> dict[str, Any]:
    """One prediction record; pred is SPEECH when p_speech >= threshold."""
    pred = SPEECH if p_speech >= threshold else NONSPEECH
    record = {
        "clip_id": clip_id, "path": path, "label": label, "pred": pred,
        "p_speech": float(p_speech), "margin": float(margin), "correct": pred == label,
        "duration_s": float(duration_s),
    }
    for key, value in (metadata or {}).items():
        record.setdefault(key, value)
    return record
