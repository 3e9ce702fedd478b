#!/bin/bash
# Measurements: train() variants (1 s, 3 s), eval, memory caps. Results under $OUT.
set -o pipefail
# ENGINE_ROOT: the checkout measured (default: here). Wheels in .whl/ are installed first (a GPU box
# without bitsandbytes); results go to $OUT (default /tmp/perf-out).
E=${ENGINE_ROOT:-$PWD}; OUT=${OUT:-/tmp/perf-out}; mkdir -p $OUT
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=$E:/tmp/site PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false; cd $E
W=/tmp/bench-work; mkdir -p $W
B="python3 -m engine bench --model-dir /tmp/q7b --work $W --warmup-steps 3"
F="grep -v Loading\|warn\|INFO:.step"
python3 -m engine bench --build --model-dir /tmp/q7b --what none --out $OUT/build.json 2>&1 | tail -1
QLORA_PROFILE_STEPS=17:19 $B --what engine --clip-seconds 1 --train-steps 20 --engine-variants "base_cache=on,compile=graphs" --out $OUT/a1.json 2>&1 | $F | tee $OUT/logA.txt
$B --what engine --clip-seconds 3 --train-steps 16 --engine-variants "base_cache=on,compile=on;base_cache=on,compile=graphs" --out $OUT/a3.json 2>&1 | $F | tee -a $OUT/logA.txt
$B --what eval --clip-seconds 1,3 --eval-clips 1024 --score-batch 128 "--eval-variants=--base-cache on" --out $OUT/ev.json 2>&1 | $F | tee -a $OUT/logA.txt
$B --what engine --clip-seconds 1 --train-steps 12 --memory-cap-gb 8 --engine-variants "compile=off;compile=on" --out $OUT/cap8.json 2>&1 | $F | tee -a $OUT/logA.txt
$B --what engine --clip-seconds 1 --train-steps 12 --memory-cap-gb 24 --engine-variants "compile=on" --out $OUT/cap24.json 2>&1 | $F | tee -a $OUT/logA.txt
cd $W && tar czf $OUT/profA.tgz profile-*.txt 2>/dev/null; head -1 $W/profile-*.txt
