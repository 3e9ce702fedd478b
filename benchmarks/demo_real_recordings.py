"""How the demo's adapters call real recordings: p(SPEECH) per file, per demo run.

    python benchmarks/demo_real_recordings.py --runs-dir runs [--sounds DIR ...] [--json OUT]

The real recordings are Debian's own (not part of this repository; nothing is copied into it):
alsa-utils' speaker-test voices (/usr/share/sounds/alsa: a person saying "Front left", ...;
Noise.wav is noise), sound-theme-freedesktop (bells, alerts, a camera shutter; its audio-channel-*
files are the same recordings as alsa's and are left out) and sound-icons (recorded instruments, a canary, water,
percussion). Without the packages installed, fetch them without installing:

    mkdir -p /tmp/real && cd /tmp/real && apt-get download alsa-utils sound-theme-freedesktop sound-icons \
        && for f in *.deb; do dpkg -x "$f" root; done
    python benchmarks/demo_real_recordings.py --runs-dir runs --sounds /tmp/real/root/usr/share/sounds

Each demo training run (demo-attention-s*, demo-attention-mlp-s*) scores them with
`python -m engine eval --threshold-from val` (the cut its test evaluation used) into an evaluation
named `real`; the script prints the matrix and, per run, accuracy and ROC AUC.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SOUND_SUFFIXES = (".wav", ".oga", ".ogg", ".flac")


def label_of(path: Path) -> str:
    """What a person hears in these Debian files: the speaker-test voices and channel names are speech."""
    name = path.stem.lower()
    if path.parent.name == "alsa":
        return "NONSPEECH" if name == "noise" else "SPEECH"
    return "SPEECH" if name.startswith("audio-channel-") else "NONSPEECH"


def find_recordings(roots: list[Path]) -> list[Path]:
    found = []
    for root in roots:
        for sub in ("alsa", "freedesktop", "sound-icons"):
            folder = root / sub
            if folder.is_dir():
                found += sorted(p for p in folder.rglob("*") if p.suffix.lower() in SOUND_SUFFIXES
                                and not p.name.startswith("audio-channel-"))  # = alsa's voice files
    return found


def roc_auc(labels: list[int], scores: list[float]) -> float:
    pos = [s for y, s in zip(labels, scores) if y]
    neg = [s for y, s in zip(labels, scores) if not y]
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs-dir", type=Path, required=True, help="a demo workspace")
    parser.add_argument("--sounds", type=Path, action="append", default=None,
                        help="folder holding alsa/, freedesktop/, sound-icons/ (default /usr/share/sounds)")
    parser.add_argument("--json", type=Path, default=None, help="write the per-file p(SPEECH) here")
    args = parser.parse_args()
    recordings = find_recordings(args.sounds or [Path("/usr/share/sounds")])
    if not recordings:
        raise SystemExit("no recordings found; see this script's docstring for how to fetch them")
    runs = sorted(p for p in args.runs_dir.glob("demo-attention*-s*") if (p / "adapter").is_dir())
    if not runs:
        raise SystemExit(f"{args.runs_dir}: no demo training runs")
    with tempfile.TemporaryDirectory(prefix="real-recordings-") as tmp:
        manifest = Path(tmp) / "real.csv"
        with open(manifest, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["path", "label", "source"])
            for path in recordings:
                writer.writerow([str(path), label_of(path), path.parent.name])
        table: dict[str, dict[str, float]] = {}
        for run in runs:
            subprocess.run([sys.executable, "-m", "engine", "eval", "--run", str(run), "--test-csv", str(manifest),
                            "--name", "real", "--threshold-from", "val", "--device", "cpu"],
                           cwd=REPO, check=True, stdout=subprocess.DEVNULL)
            records = [json.loads(line) for line in (run / "evaluations" / "real" / "predictions.jsonl")
                       .read_text(encoding="utf-8").splitlines() if line.strip()]
            table[run.name] = {r["clip_id"]: (r["p_speech"], r["label"], r["pred"]) for r in records}
    clips = sorted(next(iter(table.values())))
    print("clip".ljust(36) + "label      " + "  ".join(name.removeprefix("demo-")[:18].rjust(18) for name in table))
    for clip in clips:
        label = next(iter(table.values()))[clip][1]
        cells = "  ".join(f"{t[clip][0]:.2f} {t[clip][2][:2]}".rjust(18) for t in table.values())
        print(f"{'/'.join(Path(clip).parts[-2:])[-36:]:36}{label:11}{cells}")
    print()
    for name, t in table.items():
        labels = [int(v[1] == "SPEECH") for v in t.values()]
        scores = [v[0] for v in t.values()]
        accuracy = sum(v[1] == v[2] for v in t.values()) / len(t)
        print(f"{name}: accuracy {100 * accuracy:.1f}% on {len(t)} files ({sum(labels)} speech), "
              f"ROC AUC {roc_auc(labels, scores):.3f}")
    if args.json:
        args.json.write_text(json.dumps({name: {c: v[0] for c, v in t.items()} for name, t in table.items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
