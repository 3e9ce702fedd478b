#!/bin/bash
# Round-4 scoring measurements on one GPU (issue 15: eval >= 550 clips/s on 1-s clips, >= 300 on 3-s):
# `python -m engine eval --base` on the random-weight 7B (4-bit, base cache auto = on on an H200),
# 2,048 clips of 1 s and of 3 s, batch 128, with the compiled scoring forward off and on (--compile).
# Per variant (one JSON line each, and $OUT/eval1.json, $OUT/eval3.json):
#   steady_clips_per_s    score_audio's rate after 2 batches (the first pays the compilation)
#   clips_per_s           evaluation.json's: decoding (now overlapped) + scoring, first CUDA calls included
#   end_to_end_s          the command's wall time, model load included
#   first_batches_extra_s how much longer the first 2 batches took than the steady rate gives (on - off = compilation)
#   graphs_compiled       dynamo graphs (expected 2 with --compile on: one encoder layer, one decoder layer)
# then a summary: compile time, the number of clips from which compiling pays (for evaluate.py's
# SCORING_COMPILE_MIN_CLIPS) and how far the compiled predictions are from the eager ones (bf16).
# The 1-s run compiles cold; the 3-s run (a new process) finds inductor's on-disk cache.
# About 6 minutes on an H200 (7B build ~60 s, four loads ~25 s each). Results under $OUT.
set -o pipefail
E=${ENGINE_ROOT:-$PWD}; OUT=${OUT:-/tmp/perf-out}; mkdir -p $OUT
if ls .whl/*.whl >/dev/null 2>&1; then  # a GPU box without bitsandbytes: the wheels in .whl/
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
fi
export PYTHONPATH=$E:/tmp/site PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false; cd $E
W=/tmp/bench-work; mkdir -p $W
F="grep -v Loading\|warn\|INFO:.step"
B="python3 -m engine bench --model-dir /tmp/q7b --work $W"
python3 -m engine bench --build --model-dir /tmp/q7b --what none --out $OUT/build.json 2>&1 | tail -1
for S in 1 3; do
    $B --what eval --clip-seconds $S --eval-clips 2048 --score-batch 128 "--eval-variants=--compile off;--compile on" \
        --out $OUT/eval$S.json 2>&1 | $F | tee -a $OUT/log.txt
done
python3 - $OUT <<'PY' | tee -a $OUT/log.txt
import json, sys
from pathlib import Path

def predictions(folder):
    return {r["clip_id"]: r for r in map(json.loads, (Path(folder) / "predictions.jsonl").read_text().splitlines())}

for name in ("eval1.json", "eval3.json"):
    path = Path(sys.argv[1]) / name
    if not path.is_file():
        print(f"{name}: missing"); continue
    runs = {r["compile"]: r for r in json.loads(path.read_text())["eval"] if "compile" in r}
    for r in runs.values():
        print(f"{r['clip_s']:g}-s clips, compile {r['compile']}: steady {r['steady_clips_per_s']} clips/s, eval "
              f"{r['clips_per_s']} clips/s ({r['scoring_s']} s), end to end {r['end_to_end_s']} s, first batches "
              f"+{r['first_batches_extra_s']} s, graphs {r['graphs_compiled']}, correct {r['correct']}")
    if {"off", "on"} <= set(runs):
        off, on = runs["off"], runs["on"]
        compile_s = on["first_batches_extra_s"] - off["first_batches_extra_s"]
        saved = 1 / off["steady_clips_per_s"] - 1 / on["steady_clips_per_s"]
        pays = f"{compile_s / saved:,.0f} clips" if saved > 0 else "never (not faster)"
        a, b = predictions(off["evaluation"]), predictions(on["evaluation"])
        same = sum(a[k]["pred"] == b[k]["pred"] for k in a)
        dp = max(abs(a[k]["p_speech"] - b[k]["p_speech"]) for k in a)
        print(f"  compile ~{compile_s:.1f} s, {saved * 1e3:.3f} ms saved per clip: pays from {pays}; "
              f"predictions equal {same}/{len(a)}, largest p_speech difference {dp:.4f}")
PY
