"""Training and evaluation data: manifests and folders -> validated `Clip`s plus a `DataReport`.

Accepted sources (see `load_clips`):

- a manifest CSV or JSONL with a path column (path, audio_path, file, filename or file_name),
  a label column (label, ground_truth or true_label), an optional id column (id or clip_id)
  and any metadata columns (duration_ms, snr_db, condition, ...). Relative paths resolve
  against the manifest's folder.
- a folder with one sub-folder per class: speech/ and nonspeech/ (also non_speech/, non-speech/,
  any case); every audio file below them is a clip.
- a Hugging Face audiofolder: a folder with metadata.csv (file_name, label, ...).

A clip's id is the id column, else its path relative to the manifest's folder (POSIX form), so
ids stay the same when the manifest is reordered or moved with its audio; paired statistics
match evaluations on it. Every problem raises `DataError` saying what and where (file, line,
column). numpy/soundfile only (through engine.data.audio): no torch here.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from engine.data.audio import AUDIO_EXTENSIONS, DEFAULT_MAX_SECONDS, AudioError, load_audio
from engine.config import parse_filter

from engine.labels import CLASSES, DEFAULT_LABEL_SET, NONSPEECH, SPEECH  # noqa: F401 (re-exported)

PATH_COLUMNS = ("path", "audio_path", "file", "filename", "file_name")
LABEL_COLUMNS = ("label", "ground_truth", "true_label")
ID_COLUMNS = ("id", "clip_id")
AUDIOFOLDER_METADATA = "metadata.csv"

# Spellings of the two classes found in the wild; compared after upper-casing and dropping - and _.
_ALLOWED_LABELS_TEXT = DEFAULT_LABEL_SET.describe_spellings()


class DataError(ValueError):
    """Data that cannot be used; the message says what and where (file, line, column)."""


@dataclass
class Clip:
    """One labelled audio clip."""

    clip_id: str
    """Stable id: the manifest's id column, else the path relative to the manifest's folder."""
    path: str
    """Absolute path of the audio file."""
    label: str
    """Canonical class: "SPEECH" or "NONSPEECH"."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """Every extra manifest column; numbers parsed, empty cells None."""
    duration_s: float | None = None
    """Seconds, from the metadata (duration_s / duration_ms) if given, else from decoding."""


@dataclass
class DataReport:
    """What `load_clips` read, dropped and truncated; stored in run summaries."""

    source: str
    layout: str
    """"csv", "jsonl", "class-folders" or "audiofolder"."""
    n_clips: int
    per_class: dict[str, int]
    truncated: list[str] = field(default_factory=list)
    """Ids of clips longer than max_seconds (the model sees their first max_seconds)."""
    bad_files: list[dict[str, str]] = field(default_factory=list)
    """{clip_id, path, reason} of every unreadable clip."""
    skipped: bool = False
    """True when bad files were dropped (skip_bad) rather than refused."""
    filters: dict[str, str] = field(default_factory=dict)
    n_filtered_out: int = 0
    max_seconds: float | None = DEFAULT_MAX_SECONDS
    audio_checked: bool = True
    manifest_sha256: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------- public API

def load_clips(source: str | Path, label_words: Iterable[str] | None = None,
               filters: dict[str, str] | None = None, max_seconds: float | None = DEFAULT_MAX_SECONDS,
               skip_bad: bool = False, check_audio: bool = True) -> tuple[list[Clip], DataReport]:
    """Read, label-check, filter and (with check_audio) decode-check every clip of `source`.

    label_words: the config's [SPEECH word, NONSPEECH word], accepted as labels too.
    filters: column -> "min:max" (inclusive, open ends allowed) or "v1,v2" (numeric values).
    Unreadable files are collected and refused together in one DataError, or with skip_bad
    dropped and listed in the report. Clips longer than max_seconds are listed in
    report.truncated (the model sees their first max_seconds); that is not an error.
    """
    source = Path(source).expanduser()
    if not source.exists():
        raise DataError(f"{source}: not found (expected a manifest .csv/.jsonl, a folder with speech/ "
                        f"and nonspeech/ sub-folders, or an audiofolder with {AUDIOFOLDER_METADATA})")
    source = source.resolve()
    layout, rows, columns = _read_source(source)
    base = source if source.is_dir() else source.parent
    words = _label_word_map(label_words)

    clips: list[Clip] = []
    where_by_id: dict[str, str] = {}
    for row in rows:
        clip = _row_to_clip(row, base, words)
        if clip.clip_id in where_by_id:
            raise DataError(f"{row.where}: duplicate clip id {clip.clip_id!r} "
                            f"(first at {where_by_id[clip.clip_id]})")
        where_by_id[clip.clip_id] = row.where
        clips.append(clip)

    filters = {str(k): str(v) for k, v in (filters or {}).items()}
    kept = _apply_filters(clips, filters, columns, where_by_id, source)
    n_filtered_out = len(clips) - len(kept)
    if not kept:
        raise DataError(f"{source}: the filters {filters} leave no clips (of {len(clips)})")

    bad_files: list[dict[str, str]] = []
    truncated: list[str] = []
    usable: list[Clip] = []
    for clip in kept:
        reason = _check_clip(clip, max_seconds, check_audio, truncated)
        if reason is None:
            usable.append(clip)
        else:
            bad_files.append({"clip_id": clip.clip_id, "path": clip.path, "reason": reason})
    if bad_files and not skip_bad:
        listing = "\n".join(f"  {b['path']}: {b['reason']}" for b in bad_files)
        raise DataError(f"{source}: {len(bad_files)} of {len(kept)} audio files cannot be used "
                        f"(fix them, or skip them: --skip-bad-audio, or skip_bad_audio in the Train form):\n{listing}")
    if not usable:
        listing = "\n".join(f"  {b['path']}: {b['reason']}" for b in bad_files)
        raise DataError(f"{source}: none of the {len(kept)} audio files can be used:\n{listing}")

    report = DataReport(
        source=str(source), layout=layout, n_clips=len(usable),
        per_class={c: sum(1 for clip in usable if clip.label == c) for c in CLASSES},
        truncated=truncated, bad_files=bad_files, skipped=bool(bad_files), filters=filters,
        n_filtered_out=n_filtered_out, max_seconds=max_seconds, audio_checked=check_audio,
        manifest_sha256=manifest_sha256(source))
    return usable, report


def require_both_classes(report: DataReport, role: str = "train_data") -> None:
    """Refuse data with clips of one class only: a classifier trained on it learns one answer."""
    missing = [c for c in CLASSES if not report.per_class.get(c)]
    if missing:
        raise DataError(f"{role} {report.source}: no {' or '.join(missing)} clips among its {report.n_clips} "
                        f"usable clips ({report.per_class}); training needs clips of both classes")


def canonical_label(value: Any, label_words: dict[str, str] | None = None) -> str | None:
    """"SPEECH"/"NONSPEECH" for any accepted spelling of a label, else None."""
    return DEFAULT_LABEL_SET.canonical(value, extra=label_words)


def manifest_sha256(path: str | Path) -> str:
    """sha256 of a manifest file; for a folder, of its sorted relative file list with sizes."""
    path = Path(path)
    digest = hashlib.sha256()
    if path.is_dir():
        entries = sorted((p.relative_to(path).as_posix(), p.stat().st_size)
                         for p in path.rglob("*") if p.is_file())
        for rel, size in entries:
            digest.update(f"{rel}\t{size}\n".encode("utf-8"))
    else:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


class AudioCache:
    """Decoded clips kept in memory (least recently used first out) up to a byte budget.

    Multi-epoch training decodes each clip once. Returned arrays are read-only and shared:
    copy before changing them.
    """

    def __init__(self, max_seconds: float | None = DEFAULT_MAX_SECONDS, max_bytes: int = 1 << 30):
        self.max_seconds = max_seconds
        self.max_bytes = int(max_bytes)
        self.bytes_used = 0
        self.hits = 0
        self.misses = 0
        self._arrays: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def load(self, clip: Clip | str | Path) -> np.ndarray:
        """float32 mono 16 kHz samples of a clip (or a path), truncated to max_seconds."""
        key = str(clip.path if isinstance(clip, Clip) else clip)
        with self._lock:
            cached = self._arrays.get(key)
            if cached is not None:
                self._arrays.move_to_end(key)
                self.hits += 1
                return cached
        samples, _ = load_audio(key, self.max_seconds)
        samples.setflags(write=False)
        with self._lock:
            self.misses += 1
            if key not in self._arrays and samples.nbytes <= self.max_bytes:
                self._arrays[key] = samples
                self.bytes_used += samples.nbytes
                while self.bytes_used > self.max_bytes:
                    _, evicted = self._arrays.popitem(last=False)
                    self.bytes_used -= evicted.nbytes
        return samples

    def __len__(self) -> int:
        return len(self._arrays)

    def clear(self) -> None:
        with self._lock:
            self._arrays.clear()
            self.bytes_used = 0


# ---------------------------------------------------------------------- reading sources

@dataclass
class _Row:
    values: dict[str, Any]
    where: str
    """"<file>, line N" or the audio file itself, for messages."""
    path_column: str
    label_column: str | None
    id_column: str | None
    label: str | None = None
    """Label from the folder layout (class folders) instead of a column."""


def _read_source(source: Path) -> tuple[str, list[_Row], list[str]]:
    """(layout, rows, metadata column names) of any accepted source."""
    if source.is_file():
        suffix = source.suffix.lower()
        if suffix == ".csv":
            return ("csv", *_read_manifest_csv(source))
        if suffix in (".jsonl", ".ndjson"):
            return ("jsonl", *_read_manifest_jsonl(source))
        raise DataError(f"{source}: unsupported manifest type {suffix or '(no extension)'!r}; "
                        "use a .csv or .jsonl manifest, or a folder")
    if (source / AUDIOFOLDER_METADATA).is_file():
        return ("audiofolder", *_read_manifest_csv(source / AUDIOFOLDER_METADATA))
    return ("class-folders", *_read_class_folders(source))


def _read_manifest_csv(path: Path) -> tuple[list[_Row], list[str]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:  # -sig: spreadsheets write a BOM
            reader = csv.DictReader(fh)
            header = [(h or "").strip() for h in (reader.fieldnames or [])]
            raw_rows = []
            for raw in reader:
                if raw.get(None):
                    raise DataError(f"{path}, line {reader.line_num}: more cells than the "
                                    f"{len(header)} header columns")
                values = {h: _parse_cell(v) for h, v in zip(header, raw.values())}
                if any(v is not None for v in values.values()):  # blank lines are not rows
                    raw_rows.append((values, f"{path}, line {reader.line_num}"))
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a UTF-8 text CSV file") from None
    except csv.Error as exc:
        raise DataError(f"{path}: not a readable CSV file ({exc})") from None
    return _rows_from_table(path, header, raw_rows)


def _read_manifest_jsonl(path: Path) -> tuple[list[_Row], list[str]]:
    raw_rows, header = [], []
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a UTF-8 text JSONL file") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}, line {number}: not valid JSON ({exc.msg})") from None
        if not isinstance(obj, dict):
            raise DataError(f"{path}, line {number}: expected a JSON object with path and label")
        values = {str(k).strip(): (_parse_cell(v) if isinstance(v, str) else v) for k, v in obj.items()}
        header.extend(k for k in values if k not in header)
        raw_rows.append((values, f"{path}, line {number}"))
    return _rows_from_table(path, header, raw_rows)


def _rows_from_table(path: Path, header: list[str], raw_rows: list[tuple[dict, str]]) -> tuple[list[_Row], list[str]]:
    if not raw_rows:
        raise DataError(f"{path}: the manifest has no rows (expected a header with path and label "
                        "columns, then one row per clip)")
    path_column = _find_column(header, PATH_COLUMNS)
    label_column = _find_column(header, LABEL_COLUMNS)
    id_column = _find_column(header, ID_COLUMNS)
    if path_column is None:
        raise DataError(f"{path}: no audio path column; name one of {', '.join(PATH_COLUMNS)} "
                        f"(columns found: {', '.join(header) or 'none'})")
    if label_column is None:
        raise DataError(f"{path}: no label column; name one of {', '.join(LABEL_COLUMNS)} "
                        f"(columns found: {', '.join(header) or 'none'})")
    used = {path_column, label_column, id_column}
    columns = [h for h in header if h not in used and h]
    rows = [_Row(values, where, path_column, label_column, id_column) for values, where in raw_rows]
    return rows, columns


def _read_class_folders(folder: Path) -> tuple[list[_Row], list[str]]:
    class_dirs = [(d, DEFAULT_LABEL_SET.canonical(d.name)) for d in sorted(folder.iterdir())
                  if d.is_dir() and d.name not in ("0", "1") and DEFAULT_LABEL_SET.canonical(d.name)]
    if not class_dirs:
        found = ", ".join(sorted(d.name + "/" for d in folder.iterdir() if d.is_dir())) or "none"
        raise DataError(f"{folder}: a data folder needs speech/ and nonspeech/ sub-folders "
                        f"(or {AUDIOFOLDER_METADATA}); sub-folders found: {found}")
    rows = []
    for class_dir, label in class_dirs:
        for file in sorted(class_dir.rglob("*")):
            if file.is_file() and file.suffix.lower() in AUDIO_EXTENSIONS:
                rows.append(_Row({"path": str(file)}, str(file), "path", None, None, label=label))
    if not rows:
        raise DataError(f"{folder}: the class folders hold no audio files "
                        f"({', '.join(sorted(AUDIO_EXTENSIONS))})")
    return rows, []


def _find_column(header: list[str], names: tuple[str, ...]) -> str | None:
    by_lower = {h.lower(): h for h in header}
    return next((by_lower[n] for n in names if n in by_lower), None)


def _parse_cell(value: Any) -> Any:
    """Numbers become int/float, empty cells None, anything else stays text."""
    if value is None:
        return None
    text = str(value).strip()
    if text == "":
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        return text
    return number if math.isfinite(number) else text


# ---------------------------------------------------------------------- rows -> clips

def _label_word_map(label_words: Iterable[str] | None) -> dict[str, str]:
    if not label_words:
        return {}
    words = [str(w).strip() for w in label_words]
    if len(words) != 2:
        raise DataError(f"label_words needs exactly two words, SPEECH first (got {words})")
    return {words[0].casefold(): SPEECH, words[1].casefold(): NONSPEECH}


def _row_to_clip(row: _Row, base: Path, words: dict[str, str]) -> Clip:
    raw_path = row.values.get(row.path_column)
    if raw_path is None:
        raise DataError(f"{row.where}, column {row.path_column!r}: empty audio path")
    given = os.path.expanduser(str(raw_path).replace("\\", "/"))
    absolute = os.path.normpath(os.path.join(base, given))
    if row.label is not None:
        label = row.label
    else:
        value = row.values.get(row.label_column)
        label = canonical_label(value, words)
        if label is None:
            extra = f"; or the label words {', '.join(words)}" if words else ""
            raise DataError(f"{row.where}, column {row.label_column!r}: unknown label {value!r}; "
                            f"allowed: {_ALLOWED_LABELS_TEXT}{extra}")
    raw_id = row.values.get(row.id_column) if row.id_column else None
    if raw_id is not None:
        clip_id = str(raw_id)
    else:
        relative = os.path.relpath(absolute, base)
        clip_id = Path(absolute).as_posix() if relative.startswith("..") else Path(relative).as_posix()
    used = {row.path_column, row.label_column, row.id_column}
    metadata = {k: v for k, v in row.values.items() if k not in used and k}
    return Clip(clip_id=clip_id, path=absolute, label=label, metadata=metadata,
                duration_s=_metadata_duration(metadata))


def _metadata_duration(metadata: dict[str, Any]) -> float | None:
    for key, per_second in (("duration_s", 1), ("duration", 1), ("duration_ms", 1000)):
        value = metadata.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
            return float(value) / per_second
    return None


def _apply_filters(clips: list[Clip], filters: dict[str, str], columns: list[str],
                   where_by_id: dict[str, str], source: Path) -> list[Clip]:
    kept = clips
    for column, spec in filters.items():
        if column not in columns:
            raise DataError(f"{source}: cannot filter on {column!r}: no such column "
                            f"(metadata columns: {', '.join(columns) or 'none'})")
        try:
            accepts = parse_filter(spec)
        except ValueError:
            raise DataError(f"filter {column}={spec!r}: use 'min:max' (open ends allowed, e.g. '200:') "
                            "or 'v1,v2' numbers") from None
        selected = []
        for clip in kept:
            value = clip.metadata.get(column)
            try:
                ok = accepts(value)
            except (TypeError, ValueError):
                raise DataError(f"{where_by_id[clip.clip_id]}, column {column!r}: filter {spec!r} compares "
                                f"numbers but the value is {value!r}") from None
            if ok:
                selected.append(clip)
        kept = selected
    return kept


def _check_clip(clip: Clip, max_seconds: float | None, check_audio: bool, truncated: list[str]) -> str | None:
    """None when the clip is usable (filling duration_s, noting truncation), else the reason."""
    if not check_audio:
        if not os.path.isfile(clip.path):
            return "file not found"
        if clip.duration_s is not None and max_seconds is not None and clip.duration_s > max_seconds:
            truncated.append(clip.clip_id)
        return None
    try:
        _, info = load_audio(clip.path, max_seconds)
    except AudioError as exc:
        return exc.reason
    if clip.duration_s is None:
        clip.duration_s = info.original_seconds
    if info.truncated:
        truncated.append(clip.clip_id)
    return None
