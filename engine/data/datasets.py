"""Labelled data sets uploaded from the browser, stored in the workspace as named, hashed folders.

An upload is a zip in any layout `engine.data.manifests` reads (a manifest CSV/JSONL beside its
clips, an audiofolder with metadata.csv, or speech/ and nonspeech/ folders), or audio files with
a label each. It becomes

    <workspace>/_datasets/<name>-<sha8>/
        dataset.json    name, content sha256, clip counts, every refused file with its reason
        manifest.csv    clip_id, path (relative: clips/...), label, and the upload's metadata columns
        clips/...       the accepted audio files

which every engine command reads like any other manifest. sha8 starts the sha256 of the content
(clip ids, labels, audio bytes, metadata), so an upload of the same content reuses the stored data
set under any name. The folder is built under a hidden name and renamed when complete: a crash
never leaves a complete-looking data set.

Nothing from an upload is written outside the workspace: zip member names are checked (no
absolute paths, no '..', no symlinks or other special files, no encrypted members), member and
total sizes are capped and checked while decompressing (a zip bomb's headers may lie), and
manifest rows that point outside the upload are refused. Every file that is not used is listed
with its reason (unsafe name, undecodable, too short, unknown label, missing, ...).
No streamlit, no torch: numpy/soundfile through engine.data.audio.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import stat
import tempfile
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Sequence

from engine.data import manifests
from engine.data.audio import AUDIO_EXTENSIONS, AudioError, load_audio
from engine.data.manifests import AUDIOFOLDER_METADATA, DataError, canonical_label
from engine.labels import CLASSES, DEFAULT_LABEL_SET
from engine.runs import folder as rf

DATASETS_DIR = "_datasets"
DATASET_JSON = "dataset.json"
MANIFEST = "manifest.csv"
CLIPS_DIR = "clips"
SHA_CHARS = 8
MAX_NAME_CHARS = 64  # leaves room for -<sha8> and the suffixes evaluation names get (-opro, -silence)
MANIFEST_SUFFIXES = (".csv", ".jsonl", ".ndjson")
# Left out of a zip without comment: what archivers and file browsers add by themselves.
_JUNK_PARTS = ("__MACOSX", ".DS_Store", "Thumbs.db", "desktop.ini")


class DatasetError(ValueError):
    """An upload that cannot be stored at all; the message says why."""


@dataclass(frozen=True)
class Limits:
    """Caps on one upload, checked before and while decompressing."""

    max_upload_bytes: int = 2 << 30
    """The zip (or all files together) as uploaded."""
    max_total_bytes: int = 4 << 30
    """All members together, decompressed."""
    max_member_bytes: int = 512 << 20
    """One member, decompressed."""
    max_members: int = 50_000
    """Files in one zip."""
    max_ratio: float = 200.0
    """Decompressed / compressed size of a member above 1 MiB; audio compresses far less."""


DEFAULT_LIMITS = Limits()


@dataclass
class Refused:
    """A file of the upload that is not in the stored data set, and why."""

    file: str
    reason: str


@dataclass
class Dataset:
    """A stored data set, as dataset.json describes it."""

    dataset_id: str
    """The folder name, <name>-<sha8>; evaluations of the data set are named after it."""
    name: str
    sha256: str
    folder: Path
    n_clips: int
    per_class: dict[str, int]
    layout: str
    """What was uploaded: "csv", "jsonl", "audiofolder", "class-folders" or "files"."""
    created_at: str = ""
    refused: list[Refused] = field(default_factory=list)
    truncated: list[str] = field(default_factory=list)
    reused: bool = False
    """True when an upload found this data set already stored (same content)."""

    @property
    def manifest(self) -> Path:
        return self.folder / MANIFEST

    def describe(self) -> str:
        counts = ", ".join(f"{self.per_class.get(c, 0)} {c}" for c in CLASSES)
        return f"{self.dataset_id} ({self.n_clips} clips: {counts})"

    def to_json(self) -> dict[str, Any]:
        return {"schema_version": 1, "dataset_id": self.dataset_id, "name": self.name, "sha256": self.sha256,
                "n_clips": self.n_clips, "per_class": self.per_class, "layout": self.layout,
                "created_at": self.created_at, "refused": [asdict(r) for r in self.refused],
                "truncated": self.truncated}


@dataclass
class _Candidate:
    """An audio file of the upload that may become a clip."""

    clip_id: str
    staged: Path
    label: str
    metadata: dict[str, Any]
    shown: str
    """The file as the user knows it (zip member name or uploaded file name), for messages."""


# ---------------------------------------------------------------------- public API

def datasets_dir(root: Path) -> Path:
    return Path(root) / DATASETS_DIR


def check_name(name: str) -> str:
    """A data set name follows the run-name rule (one safe path component) and leaves room for -sha8."""
    name = str(name or "").strip()
    try:
        rf.check_run_name(name)
    except rf.RunFolderError as exc:
        raise DatasetError(str(exc).replace("run name", "data set name")) from None
    if len(name) > MAX_NAME_CHARS:
        raise DatasetError(f"data set name {name[:20]!r}...: at most {MAX_NAME_CHARS} characters "
                           f"(the folder adds -<{SHA_CHARS} hex digits>)")
    return name


def list_datasets(root: Path) -> list[Dataset]:
    """Every stored data set of the workspace, newest first; unreadable ones are left out."""
    found = []
    base = datasets_dir(root)
    if not base.is_dir():
        return []
    for folder in base.iterdir():
        if folder.name.startswith(".") or not folder.is_dir():
            continue
        dataset = read_dataset(folder)
        if dataset is not None:
            found.append(dataset)
    found.sort(key=lambda d: (d.created_at, d.dataset_id), reverse=True)
    return found


def read_dataset(folder: Path) -> Dataset | None:
    """The data set stored in `folder`, or None when it is not a complete one."""
    folder = Path(folder)
    try:
        meta = rf.read_json(folder / DATASET_JSON)
        dataset = Dataset(
            dataset_id=folder.name, name=str(meta["name"]), sha256=str(meta["sha256"]), folder=folder,
            n_clips=int(meta["n_clips"]), per_class={str(k): int(v) for k, v in dict(meta["per_class"]).items()},
            layout=str(meta.get("layout", "")), created_at=str(meta.get("created_at", "")),
            refused=[Refused(str(r["file"]), str(r["reason"])) for r in meta.get("refused", [])],
            truncated=[str(t) for t in meta.get("truncated", [])])
    except (OSError, ValueError, KeyError, TypeError, rf.RunFolderError):
        return None
    return dataset if dataset.manifest.is_file() else None


def dataset_of(root: Path, data: str | Path) -> Dataset | None:
    """The stored data set whose manifest (or folder) `data` names, else None."""
    if not data:
        return None
    path = Path(data).expanduser()
    try:
        path = path.resolve()
        base = datasets_dir(root).resolve()
    except OSError:
        return None
    folder = path.parent if path.name == MANIFEST else path
    if folder.parent != base:
        return None
    return read_dataset(folder)


def ingest_zip(root: Path, name: str, data: bytes, label_words: Iterable[str] | None = None,
               limits: Limits = DEFAULT_LIMITS) -> Dataset:
    """Store the zip `data` as data set `name`; the result lists every refused file with its reason.

    Raises DatasetError when the zip cannot be read at all, breaks a total limit, or holds no
    usable clip (every refused file then in the message).
    """
    name = check_name(name)
    if len(data) > limits.max_upload_bytes:
        raise DatasetError(f"the zip is {_size(len(data))}; at most {_size(limits.max_upload_bytes)} per upload")
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as exc:
        raise DatasetError(f"not a readable zip file ({exc})") from None
    with archive, _staging(root) as staging:
        refused: list[Refused] = []
        extracted = _extract(archive, staging / "upload", limits, refused)
        if not extracted:
            raise DatasetError("the zip holds no files that could be used" + _listing(refused))
        base = _dataset_root(staging / "upload")
        layout, candidates = _read_upload(base, label_words, refused, extracted)
        return _store(root, name, layout, candidates, refused, staging)


def ingest_files(root: Path, name: str, files: Sequence[tuple[str, bytes, str]],
                 label_words: Iterable[str] | None = None, limits: Limits = DEFAULT_LIMITS) -> Dataset:
    """Store audio files, each given as (file name, bytes, label), as data set `name`.

    A label is any accepted spelling of a class (or a label word); the clip id is the file name
    (a repeated name gets -2, -3, ...). Raises DatasetError when no file is usable.
    """
    name = check_name(name)
    total = sum(len(data) for _name, data, _label in files)
    if total > limits.max_upload_bytes:
        raise DatasetError(f"the files add up to {_size(total)}; at most {_size(limits.max_upload_bytes)} per upload")
    words = manifests._label_word_map(label_words)
    with _staging(root) as staging:
        refused: list[Refused] = []
        candidates: list[_Candidate] = []
        used: set[str] = set()
        for given, data, label_text in files:
            file_name = PurePosixPath(str(given).replace("\\", "/")).name
            label = canonical_label(label_text, words)
            if not _safe_part(file_name):
                refused.append(Refused(str(given), "unusable file name"))
                continue
            if label is None:
                refused.append(Refused(file_name, f"unknown label {label_text!r}; allowed: "
                                                  f"{DEFAULT_LABEL_SET.describe_spellings()}"))
                continue
            if len(data) > limits.max_member_bytes:
                refused.append(Refused(file_name, f"{_size(len(data))}; at most {_size(limits.max_member_bytes)} "
                                                  "per file"))
                continue
            clip_id = _unique(file_name, used)
            staged = staging / "upload" / label.lower() / clip_id
            staged.parent.mkdir(parents=True, exist_ok=True)
            staged.write_bytes(data)
            candidates.append(_Candidate(clip_id, staged, label, {}, file_name))
        return _store(root, name, "files", candidates, refused, staging)


# ---------------------------------------------------------------------- zip members

def _extract(archive: zipfile.ZipFile, target: Path, limits: Limits, refused: list[Refused]) -> dict[Path, str]:
    """Extract the safe members below `target`; returns {extracted path: member name}."""
    members = archive.infolist()
    if len(members) > limits.max_members:
        raise DatasetError(f"the zip holds {len(members):,} entries; at most {limits.max_members:,}")
    declared = sum(m.file_size for m in members)
    if declared > limits.max_total_bytes:
        raise DatasetError(f"the zip unpacks to {_size(declared)}; at most {_size(limits.max_total_bytes)}")
    extracted: dict[Path, str] = {}
    seen: set[str] = set()
    total = 0
    for member in members:
        shown = member.filename
        if member.is_dir() or _is_junk(shown):
            continue
        reason = _unsafe_member(member, limits)
        parts = _member_parts(shown)
        if reason is None and parts is None:
            reason = "unsafe path (absolute, '..', or an empty or odd component): not extracted"
        if reason is None and "/".join(parts).casefold() in seen:
            reason = "a second member of the same name"
        if reason is not None:
            refused.append(Refused(shown, reason))
            continue
        seen.add("/".join(parts).casefold())
        path = target.joinpath(*parts)
        if not rf.is_inside(path, target):  # cannot happen with checked parts; kept as the last word
            refused.append(Refused(shown, "unsafe path: would land outside the upload folder"))
            continue
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError:  # "a.wav" and then "a.wav/b.wav"
            refused.append(Refused(shown, "its folder clashes with a file of the same name"))
            continue
        written = _copy_bounded(archive, member, path, min(limits.max_member_bytes, limits.max_total_bytes - total))
        if isinstance(written, str):
            refused.append(Refused(shown, written))
            continue
        total += written
        extracted[path] = shown
    return extracted


def _unsafe_member(member: zipfile.ZipInfo, limits: Limits) -> str | None:
    mode = member.external_attr >> 16
    if stat.S_ISLNK(mode):
        return "a symbolic link: not extracted"
    if mode and stat.S_IFMT(mode) and not stat.S_ISREG(mode):
        return "not a regular file (device, pipe or socket): not extracted"
    if member.flag_bits & 0x1:
        return "encrypted: not extracted"
    if member.file_size > limits.max_member_bytes:
        return f"unpacks to {_size(member.file_size)}; at most {_size(limits.max_member_bytes)} per file"
    if member.file_size > (1 << 20) and member.file_size > limits.max_ratio * max(member.compress_size, 1):
        return (f"compressed {member.file_size / max(member.compress_size, 1):.0f}:1 "
                f"(more than {limits.max_ratio:.0f}:1, as in a zip bomb): not extracted")
    return None


def _member_parts(name: str) -> list[str] | None:
    """The member's path components, or None when the name is absolute, climbs out or is odd."""
    text = name.replace("\\", "/")
    if text.startswith("/") or (len(text) > 1 and text[1] == ":"):  # /etc/x, C:/x
        return None
    parts = [p for p in text.split("/") if p not in ("", ".")]
    if not parts or not all(_safe_part(p) for p in parts):
        return None
    return parts


def _safe_part(part: str) -> bool:
    return bool(part) and part not in (".", "..") and not any(ord(ch) < 32 or ch in '\\:*?"<>|' for ch in part) \
        and len(part.encode("utf-8")) <= 255


def _is_junk(name: str) -> bool:
    parts = name.replace("\\", "/").split("/")
    return any(p in _JUNK_PARTS or p.startswith("._") for p in parts)


def _copy_bounded(archive: zipfile.ZipFile, member: zipfile.ZipInfo, path: Path, limit: int) -> int | str:
    """Decompress `member` into `path`, stopping past `limit` bytes or its declared size.

    Returns the bytes written, or the reason nothing was kept.
    """
    written = 0
    try:
        with archive.open(member) as source, open(path, "xb") as sink:
            while block := source.read(1 << 20):
                written += len(block)
                if written > limit or written > member.file_size:
                    break
                sink.write(block)
    except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, RuntimeError, ValueError) as exc:
        path.unlink(missing_ok=True)
        return f"cannot be unpacked ({exc}): not extracted"
    if written > limit or written > member.file_size:
        path.unlink(missing_ok=True)
        return "unpacks to more than its declared size or the size limits: not extracted"
    return written


# ---------------------------------------------------------------------- layouts

def _dataset_root(upload: Path) -> Path:
    """The folder holding the data: a zip of one folder ("mydata/...") holds it one level down."""
    base = upload
    while True:
        entries = list(base.iterdir())
        if len(entries) == 1 and entries[0].is_dir() and DEFAULT_LABEL_SET.canonical(entries[0].name) is None:
            base = entries[0]
        else:
            return base


def _read_upload(base: Path, label_words: Iterable[str] | None, refused: list[Refused],
                 extracted: dict[Path, str]) -> tuple[str, list[_Candidate]]:
    """(layout, candidate clips) of an unpacked zip; files not used go to `refused`."""
    shown = {path.resolve(): name for path, name in extracted.items()}
    listed = [p for p in base.iterdir() if p.is_file() and p.suffix.lower() in MANIFEST_SUFFIXES]
    if (base / AUDIOFOLDER_METADATA).is_file():
        layout, source = "audiofolder", base / AUDIOFOLDER_METADATA
    elif len(listed) == 1:
        layout, source = listed[0].suffix.lower().lstrip(".").replace("ndjson", "jsonl"), listed[0]
    elif len(listed) > 1:
        raise DatasetError(f"the zip holds several manifests ({', '.join(sorted(p.name for p in listed))}); "
                           "put one manifest (path,label) beside the clips, or speech/ and nonspeech/ folders")
    else:
        return "class-folders", _class_folder_candidates(base, shown, refused)
    try:
        _layout, rows, _columns = manifests._read_source(source)
    except DataError as exc:
        raise DatasetError(f"{shown.get(source.resolve(), source.name)}: "
                           f"{str(exc).split(': ', 1)[-1]}") from None
    words = manifests._label_word_map(label_words)
    candidates: list[_Candidate] = []
    used_paths: set[Path] = {source.resolve()}
    ids: set[str] = set()
    for row in rows:
        where = row.where.replace(str(source), shown.get(source.resolve(), source.name))
        raw = row.values.get(row.path_column)
        try:
            clip = manifests._row_to_clip(row, source.parent, words)
        except DataError as exc:
            refused.append(Refused(str(raw or where), str(exc).replace(str(source), source.name)))
            if raw is not None:  # the file is accounted for by this refusal, not "not listed"
                used_paths.add((source.parent / str(raw).replace("\\", "/")).resolve())
            continue
        path = Path(clip.path).resolve()
        if not rf.is_inside(path, base):
            refused.append(Refused(str(raw), f"{where}: the path points outside the zip"))
            continue
        if path not in shown or not path.is_file():
            refused.append(Refused(str(raw), f"{where}: no such file in the zip"))
            continue
        if clip.clip_id in ids:
            refused.append(Refused(str(raw), f"{where}: duplicate clip id {clip.clip_id!r}"))
            continue
        ids.add(clip.clip_id)
        used_paths.add(path)
        candidates.append(_Candidate(clip.clip_id, path, clip.label, clip.metadata, shown[path]))
    for path, name in shown.items():
        if path not in used_paths:
            refused.append(Refused(name, f"not listed in the manifest {source.name}"))
    return layout, candidates


def _class_folder_candidates(base: Path, shown: dict[Path, str], refused: list[Refused]) -> list[_Candidate]:
    candidates = []
    for path in sorted(shown):
        relative = path.relative_to(base.resolve()) if rf.is_inside(path, base) else None
        if relative is None:
            refused.append(Refused(shown[path], "outside the data folder"))
            continue
        if path.suffix.lower() not in AUDIO_EXTENSIONS:
            refused.append(Refused(shown[path], f"not an audio file ({path.suffix or 'no extension'}; "
                                                f"expected {', '.join(sorted(AUDIO_EXTENSIONS))})"))
            continue
        folder = relative.parts[0] if len(relative.parts) > 1 else None
        label = DEFAULT_LABEL_SET.canonical(folder) if folder and folder not in ("0", "1") else None
        if label is None:
            where = f"folder {folder!r}" if folder else "the top folder"
            refused.append(Refused(shown[path], f"unknown label: it lies in {where}; put clips in speech/ and "
                                                "nonspeech/ folders (or add a manifest with path,label)"))
            continue
        candidates.append(_Candidate(relative.as_posix(), path, label, {}, shown[path]))
    return candidates


# ---------------------------------------------------------------------- storing

def _store(root: Path, name: str, layout: str, candidates: list[_Candidate], refused: list[Refused],
           staging: Path) -> Dataset:
    """Decode-check the candidates, hash the content, and move the data set into place (or reuse it)."""
    usable, truncated = [], []
    for candidate in candidates:
        try:
            _, info = load_audio(candidate.staged)
        except AudioError as exc:
            refused.append(Refused(candidate.shown, exc.reason))
            continue
        if info.truncated:
            truncated.append(candidate.clip_id)
        usable.append(candidate)
    if not usable:
        raise DatasetError("no usable clips in the upload" + _listing(refused))
    usable.sort(key=lambda c: c.clip_id)
    sha256 = _content_sha256(usable)
    for stored in list_datasets(root):
        if stored.sha256 == sha256:
            stored.reused, stored.refused = True, refused  # what this upload left out, not the first one
            return stored

    dataset_id = f"{name}-{sha256[:SHA_CHARS]}"
    building = staging / dataset_id
    columns: list[str] = []
    for candidate in usable:
        columns.extend(k for k in candidate.metadata if k not in columns and k not in ("clip_id", "path", "label"))
    rows, stored_paths = [], set()
    for candidate in usable:
        relative = _stored_path(candidate, stored_paths)
        destination = building / CLIPS_DIR / relative
        destination.parent.mkdir(parents=True, exist_ok=True)
        os.replace(candidate.staged, destination)
        rows.append({"clip_id": candidate.clip_id, "path": f"{CLIPS_DIR}/{relative}", "label": candidate.label,
                     **{c: candidate.metadata.get(c) for c in columns}})
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["clip_id", "path", "label", *columns], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    rf.atomic_write_text(building / MANIFEST, buffer.getvalue())
    dataset = Dataset(dataset_id=dataset_id, name=name, sha256=sha256, folder=datasets_dir(root) / dataset_id,
                      n_clips=len(usable), per_class={c: sum(1 for u in usable if u.label == c) for c in CLASSES},
                      layout=layout, created_at=rf.now_iso(), refused=refused, truncated=truncated)
    rf.atomic_write_json(building / DATASET_JSON, dataset.to_json())
    _make_shareable(building)
    try:
        os.rename(building, dataset.folder)
    except OSError:
        existing = read_dataset(dataset.folder)
        if existing is not None and existing.sha256 == sha256:  # stored meanwhile by another upload
            existing.reused, existing.refused = True, refused
            return existing
        raise DatasetError(f"cannot store the data set: {dataset.folder} exists and holds something else") from None
    return dataset


def _stored_path(candidate: _Candidate, taken: set[str]) -> str:
    """Where below clips/ the clip is kept: its id when that is a safe relative path, else a made-up name."""
    parts = _member_parts(candidate.clip_id)
    relative = "/".join(parts) if parts else f"{hashlib.sha256(candidate.clip_id.encode()).hexdigest()[:12]}"
    if PurePosixPath(relative).suffix.lower() != candidate.staged.suffix.lower():
        relative += candidate.staged.suffix.lower()
    stem, n = relative, 1
    while relative.casefold() in taken:
        n += 1
        path = PurePosixPath(stem)
        relative = str(path.with_name(f"{path.stem}-{n}{path.suffix}"))
    taken.add(relative.casefold())
    return relative


def _content_sha256(usable: list[_Candidate]) -> str:
    """sha256 over every clip's id, label, metadata and audio bytes: equal content, equal hash."""
    digest = hashlib.sha256()
    for candidate in usable:
        audio = hashlib.sha256(candidate.staged.read_bytes()).hexdigest()
        metadata = json.dumps(candidate.metadata, sort_keys=True, default=str)
        digest.update(f"{candidate.clip_id}\t{candidate.label}\t{audio}\t{metadata}\n".encode("utf-8"))
    return digest.hexdigest()


def _make_shareable(folder: Path) -> None:
    """Folders 0755 / files 0644 less the umask, like a copy made in a shell (temp dirs start 0700)."""
    mask = rf.current_umask()
    for path in [folder, *folder.rglob("*")]:
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)


class _staging:
    """A hidden scratch folder inside <workspace>/_datasets, removed on exit whatever happens."""

    def __init__(self, root: Path):
        self.base = datasets_dir(root)

    def __enter__(self) -> Path:
        self.base.mkdir(parents=True, exist_ok=True)
        if self.base.is_symlink() or not rf.is_inside(self.base, self.base.parent):
            raise DatasetError(f"{self.base} is a link; uploads are stored only inside the workspace")
        self.path = Path(tempfile.mkdtemp(prefix=".upload-", dir=self.base))
        return self.path

    def __exit__(self, *exc_info) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def _unique(name: str, used: set[str]) -> str:
    candidate, n = name, 1
    while candidate.casefold() in used:
        n += 1
        path = PurePosixPath(name)
        candidate = f"{path.stem}-{n}{path.suffix}"
    used.add(candidate.casefold())
    return candidate


def _listing(refused: list[Refused]) -> str:
    return (":\n" + "\n".join(f"  {r.file}: {r.reason}" for r in refused)) if refused else ""


def _size(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"
