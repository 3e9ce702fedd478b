#!/bin/bash
# Round-3 measurements on one GPU: score_audio's steady rate and profile (system-prefix cache off/on),
# `engine eval` itself, OPRO per candidate (audio-prefix cache; BASELINE_ROOT = a checkout of the
# previous main for the same clips), and train() under an 8 GB cap. Results under $OUT.
# PARTS (default all): any of scoring, opro, cap8. Wheels in .whl/ are installed first (a GPU box
# without bitsandbytes).
PARTS=${PARTS:-scoring,opro,cap8}
set -o pipefail
E=${ENGINE_ROOT:-$PWD}; OUT=${OUT:-/tmp/perf-out}; mkdir -p $OUT
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=$E:/tmp/site PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false; cd $E
W=/tmp/bench-work; mkdir -p $W
F="grep -v Loading\|warn\|INFO:.step"
B="python3 -m engine bench --model-dir /tmp/q7b --work $W"
python3 -m engine bench --build --model-dir /tmp/q7b --what none --out $OUT/build.json 2>&1 | tail -1
if [[ $PARTS == *scoring* ]]; then
python3 benchmarks/sdpa_new_shapes.py 2>&1 | tee $OUT/sdpa.json
$B --what evalprofile --clip-seconds 1,3 --eval-clips 2048 --score-batch 128 --out $OUT/evalprofile.json 2>&1 | $F | tee $OUT/log.txt
$B --what eval --clip-seconds 1 --eval-clips 2048 --score-batch 128 "--eval-variants=--prefix-cache off;--prefix-cache on" --out $OUT/eval1.json 2>&1 | $F | tee -a $OUT/log.txt
$B --what eval --clip-seconds 1 --eval-clips 2048 --score-batch 256 "--eval-variants=--prefix-cache on" --out $OUT/eval1-256.json 2>&1 | $F | tee -a $OUT/log.txt
$B --what eval --clip-seconds 3 --eval-clips 2048 --score-batch 128 "--eval-variants=--prefix-cache on" --out $OUT/eval3.json 2>&1 | $F | tee -a $OUT/log.txt
fi
# OPRO: 128 dev clips of 1.5 s, one iteration of 8 candidates, batch 128; median time per candidate
if [[ $PARTS == *opro* ]]; then
python3 -c "from pathlib import Path; from engine.tasks import bench; print(bench.write_manifest(Path('$W/dev'), 128, 1.5, seed=3))"
opro() {  # root name
    (cd $1 && PYTHONPATH=$1:/tmp/site python3 -m engine opro --base --model /tmp/q7b --quantization 4bit \
        --dev-csv $W/dev/manifest.csv --iterations 1 --candidates 8 --batch-size 128 --runs-dir $W/opro --run-name $2 \
        > $OUT/$2.out 2> $OUT/$2.err) || tail -5 $OUT/$2.err
    python3 - $W/opro/$2 <<'PY' | tee -a $OUT/log.txt
import json, statistics, sys
from pathlib import Path
run = Path(sys.argv[1])
times = [json.loads(line)["time_s"] for line in (run / "history.jsonl").read_text().splitlines() if line.strip()]
result = json.loads((run / "opro.json").read_text())
print(json.dumps({"opro": run.name, "median_candidate_s": round(statistics.median(times[1:]), 3), "first_prompt_s": times[0],
                  "candidates_s": times, "search_s": result.get("time_taken_s"), "peak_gpu_memory_gb": result.get("peak_gpu_memory_gb")}))
PY
}
opro $E opro-new
[ -n "$BASELINE_ROOT" ] && opro $BASELINE_ROOT opro-baseline
fi
[[ $PARTS == *cap8* ]] && $B --what engine --clip-seconds 1 --train-steps 12 --warmup-steps 3 --memory-cap-gb 8 --engine-variants "" --out $OUT/cap8.json 2>&1 | $F | tee -a $OUT/log.txt
cp $W/profile-eval-*.txt $OUT/ 2>/dev/null; true
