"""Uploaded labelled data sets (engine.data.datasets): every layout, every refusal, nothing outside the workspace."""

from __future__ import annotations

import csv
import io
import json
import os
import stat
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from engine.data import datasets as ds
from engine.data.manifests import load_clips
from engine.labels import NONSPEECH, SPEECH


def wav(seconds: float = 0.3, freq: float = 440.0, sr: int = 16000) -> bytes:
    t = np.arange(int(seconds * sr)) / sr
    buffer = io.BytesIO()
    sf.write(buffer, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), sr, format="WAV")
    return buffer.getvalue()


def make_zip(members: dict[str, bytes], symlinks: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, target)
    return buffer.getvalue()


def manifest_rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def files_below(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture()
def root(tmp_path) -> Path:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    return workspace


# ---------------------------------------------------------------- layouts

def test_class_folder_zip_becomes_a_manifest_the_engine_reads(root):
    data = make_zip({"mydata/speech/a.wav": wav(freq=300), "mydata/speech/b.wav": wav(freq=400),
                     "mydata/nonspeech/n1.wav": wav(freq=500), "__MACOSX/mydata/._a.wav": b"junk"})
    dataset = ds.ingest_zip(root, "heldout", data)
    assert dataset.folder.parent == root / ds.DATASETS_DIR
    assert dataset.dataset_id == f"heldout-{dataset.sha256[:8]}" and dataset.folder.name == dataset.dataset_id
    assert (dataset.layout, dataset.n_clips, dataset.per_class) == ("class-folders", 3, {SPEECH: 2, NONSPEECH: 1})
    assert dataset.refused == [] and not dataset.reused
    clips, report = load_clips(dataset.manifest)
    assert sorted((c.clip_id, c.label) for c in clips) == [
        ("nonspeech/n1.wav", NONSPEECH), ("speech/a.wav", SPEECH), ("speech/b.wav", SPEECH)]
    assert all(Path(c.path).is_relative_to(dataset.folder / ds.CLIPS_DIR) for c in clips)
    assert report.n_clips == 3
    assert ds.list_datasets(root)[0].dataset_id == dataset.dataset_id
    assert ds.dataset_of(root, dataset.manifest).dataset_id == dataset.dataset_id
    assert ds.dataset_of(root, root / "elsewhere.csv") is None
    assert not [p for p in (root / ds.DATASETS_DIR).iterdir() if p.name.startswith(".")]  # staging removed


def test_manifest_zip_keeps_ids_and_metadata(root):
    manifest = "path,label,clip_id,snr_db\nclips/x.wav,speech,x-1,5\nclips/y.flac,NON_SPEECH,y-1,20\n"
    flac = io.BytesIO()
    sf.write(flac, np.zeros(8000, dtype=np.float32) + 0.01, 16000, format="FLAC")
    data = make_zip({"test.csv": manifest.encode(), "clips/x.wav": wav(), "clips/y.flac": flac.getvalue()})
    dataset = ds.ingest_zip(root, "with-meta", data)
    assert dataset.layout == "csv" and dataset.per_class == {SPEECH: 1, NONSPEECH: 1}
    rows = manifest_rows(dataset.manifest)
    assert [(r["clip_id"], r["label"], r["snr_db"]) for r in rows] == [("x-1", SPEECH, "5"), ("y-1", NONSPEECH, "20")]
    clips, _ = load_clips(dataset.manifest)
    assert [c.metadata["snr_db"] for c in clips] == [5, 20]


def test_audiofolder_zip(root):
    data = make_zip({"metadata.csv": b"file_name,label\na.wav,SPEECH\nb.wav,NONSPEECH\n",
                     "a.wav": wav(), "b.wav": wav(freq=900)})
    dataset = ds.ingest_zip(root, "af", data)
    assert (dataset.layout, dataset.n_clips) == ("audiofolder", 2)
    assert [c.clip_id for c in load_clips(dataset.manifest)[0]] == ["a.wav", "b.wav"]


def test_files_with_a_label_each(root):
    dataset = ds.ingest_files(root, "by-hand", [("one.wav", wav(), "speech"), ("two.wav", wav(freq=800), "NONSPEECH"),
                                                ("one.wav", wav(freq=600), "speech"),
                                                ("bad.wav", b"not audio", "speech"),
                                                ("three.wav", wav(), "music")])
    assert (dataset.layout, dataset.per_class) == ("files", {SPEECH: 2, NONSPEECH: 1})
    assert sorted(r["clip_id"] for r in manifest_rows(dataset.manifest)) == ["one-2.wav", "one.wav", "two.wav"]
    reasons = {r.file: r.reason for r in dataset.refused}
    assert reasons["bad.wav"].startswith("not an audio file soundfile can decode")
    assert reasons["three.wav"].startswith("unknown label 'music'")


# ---------------------------------------------------------------- refusals, each with its reason

def test_unsafe_and_bad_members_are_refused_with_reasons_and_nothing_escapes(root, tmp_path):
    data = make_zip({
        "speech/good.wav": wav(), "nonspeech/good.wav": wav(freq=700),
        "../evil.wav": wav(), "/abs/evil.wav": wav(), "speech/../../evil2.wav": wav(),
        "speech/corrupt.wav": b"RIFF\x00\x00\x00\x00WAVEjunk",
        "speech/short.wav": wav(seconds=0.005),
        "music/tune.wav": wav(),
        "speech/notes.txt": b"hello",
    }, symlinks={"speech/link.wav": "/etc/passwd"})
    dataset = ds.ingest_zip(root, "mixed", data)
    assert dataset.n_clips == 2 and dataset.per_class == {SPEECH: 1, NONSPEECH: 1}
    reasons = {r.file: r.reason for r in dataset.refused}
    for name in ("../evil.wav", "/abs/evil.wav", "speech/../../evil2.wav"):
        assert reasons[name].startswith("unsafe path"), name
    assert reasons["speech/link.wav"] == "a symbolic link: not extracted"
    assert reasons["speech/corrupt.wav"].startswith("not an audio file soundfile can decode")
    assert reasons["speech/short.wav"].startswith("too short")
    assert reasons["music/tune.wav"].startswith("unknown label: it lies in folder 'music'")
    assert reasons["speech/notes.txt"].startswith("not an audio file (.txt")
    assert len(reasons) == 8
    # nothing landed beside or above the workspace, nothing but the data set inside it
    assert not (tmp_path / "evil.wav").exists() and not (root / "evil.wav").exists()
    assert not Path("/abs/evil.wav").exists()
    assert files_below(tmp_path) == {f"ws/{ds.DATASETS_DIR}/{dataset.dataset_id}/{f}"
                                     for f in files_below(dataset.folder)}
    assert files_below(dataset.folder) == {"dataset.json", "manifest.csv", "clips/speech/good.wav",
                                           "clips/nonspeech/good.wav"}
    stored = json.loads((dataset.folder / ds.DATASET_JSON).read_text())
    assert {r["file"] for r in stored["refused"]} == set(reasons)


def test_manifest_rows_with_wrong_labels_or_paths_outside_are_listed(root):
    manifest = ("path,label\nok.wav,SPEECH\nok2.wav,NONSPEECH\nwrong.wav,laughter\n../../outside.wav,SPEECH\n"
                "/etc/hosts,SPEECH\nmissing.wav,SPEECH\n")
    data = make_zip({"m.csv": manifest.encode(), "ok.wav": wav(), "ok2.wav": wav(freq=900), "wrong.wav": wav(),
                     "extra.wav": wav()})
    dataset = ds.ingest_zip(root, "rows", data)
    assert dataset.n_clips == 2
    reasons = {r.file: r.reason for r in dataset.refused}
    assert "unknown label 'laughter'" in reasons["wrong.wav"] and "m.csv, line 4" in reasons["wrong.wav"]
    assert reasons["../../outside.wav"].endswith("the path points outside the zip")
    assert reasons["/etc/hosts"].endswith("the path points outside the zip")
    assert reasons["missing.wav"].endswith("no such file in the zip")
    assert reasons["extra.wav"] == "not listed in the manifest m.csv"
    assert str(root) not in " ".join(reasons.values())  # messages name the zip's files, not the staging folder


def test_zip_bomb_and_size_limits(root):
    bomb = make_zip({"speech/a.wav": wav(), "speech/zeros.wav": b"\0" * (3 << 20)})  # 3 MiB -> about 3 KiB
    dataset = ds.ingest_zip(root, "bomb", bomb)
    reasons = {r.file: r.reason for r in dataset.refused}
    assert "as in a zip bomb" in reasons["speech/zeros.wav"]
    with pytest.raises(ds.DatasetError, match="unpacks to .*at most"):
        ds.ingest_zip(root, "big", bomb, limits=ds.Limits(max_total_bytes=1 << 20))
    with pytest.raises(ds.DatasetError, match="entries; at most 1"):
        ds.ingest_zip(root, "many", bomb, limits=ds.Limits(max_members=1))
    with pytest.raises(ds.DatasetError, match="per upload"):
        ds.ingest_zip(root, "huge", bomb, limits=ds.Limits(max_upload_bytes=100))


def test_member_that_unpacks_to_more_than_its_header_says_is_refused(root):
    """A zip bomb may declare a small size; decompression stops at the declared size."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("speech/a.wav", wav())
        archive.writestr("speech/liar.wav", wav(seconds=0.5))
    raw = bytearray(buffer.getvalue())
    with zipfile.ZipFile(io.BytesIO(bytes(raw))) as archive:
        liar = archive.getinfo("speech/liar.wav")
    # lower the declared size in both headers (local header: offset 22; central directory entry too)
    true_size = liar.file_size.to_bytes(4, "little")
    small = (1000).to_bytes(4, "little")
    raw = bytes(raw).replace(true_size, small)
    dataset = ds.ingest_zip(root, "liar", raw)
    reasons = {r.file: r.reason for r in dataset.refused}
    assert set(reasons) == {"speech/liar.wav"}
    assert "more than its declared size" in reasons["speech/liar.wav"] or "cannot be unpacked" in reasons[
        "speech/liar.wav"]


def test_names_are_checked_like_run_names(root):
    for bad in ("../up", "a/b", "", ".hidden", "x" * 200):
        with pytest.raises(ds.DatasetError, match="data set name"):
            ds.ingest_zip(root, bad, make_zip({"speech/a.wav": wav()}))
    assert not (root / ds.DATASETS_DIR).exists() or not any((root / ds.DATASETS_DIR).iterdir())


def test_nothing_usable_is_refused_with_every_reason_and_leaves_nothing(root):
    with pytest.raises(ds.DatasetError) as caught:
        ds.ingest_zip(root, "empty", make_zip({"speech/bad.wav": b"junk", "../evil.wav": wav()}))
    message = str(caught.value)
    assert "speech/bad.wav: not an audio file" in message and "../evil.wav: unsafe path" in message
    with pytest.raises(ds.DatasetError, match="not a readable zip"):
        ds.ingest_zip(root, "notzip", b"PK but not really")
    with pytest.raises(ds.DatasetError, match="several manifests"):
        ds.ingest_zip(root, "two", make_zip({"a.csv": b"path,label\n", "b.csv": b"path,label\n", "x.wav": wav()}))
    assert ds.list_datasets(root) == []
    assert not any((root / ds.DATASETS_DIR).iterdir())


def test_same_content_reuses_the_stored_data_set(root):
    members = {"speech/a.wav": wav(), "nonspeech/b.wav": wav(freq=900)}
    first = ds.ingest_zip(root, "first", make_zip(members))
    again = ds.ingest_zip(root, "second-name", make_zip(dict(reversed(members.items()))))  # other order, same content
    assert again.reused and again.dataset_id == first.dataset_id and again.name == "first"
    assert len(ds.list_datasets(root)) == 1
    changed = ds.ingest_zip(root, "first", make_zip({**members, "speech/c.wav": wav(freq=333)}))
    assert not changed.reused and changed.dataset_id != first.dataset_id and changed.name == "first"
    assert len(ds.list_datasets(root)) == 2


def test_stored_files_are_readable_by_others(root):
    old = os.umask(0o022)
    try:
        dataset = ds.ingest_zip(root, "modes", make_zip({"speech/a.wav": wav()}))
    finally:
        os.umask(old)
    assert stat.S_IMODE(dataset.folder.stat().st_mode) == 0o755
    for path in dataset.folder.rglob("*"):
        assert stat.S_IMODE(path.stat().st_mode) == (0o755 if path.is_dir() else 0o644), path


def test_a_datasets_folder_that_links_elsewhere_is_refused(root, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (root / ds.DATASETS_DIR).symlink_to(elsewhere)
    with pytest.raises(ds.DatasetError, match="is a link; uploads are stored only inside the workspace"):
        ds.ingest_zip(root, "linked", make_zip({"speech/a.wav": wav()}))
    assert list(elsewhere.iterdir()) == []
