#!/bin/bash
# Why train() with CUDA graphs runs ~9 s a step with LoRA dropout (0.13 s without; PERFORMANCE.md
# round 4). One process per variant (compiled code must not carry over), 1-s clips, attention+MLP r16,
# the default recipe otherwise; steady samples/s from each variant's JSON line. Results under $OUT.
# About 7 minutes on an H200 (build ~60 s; each variant loads ~25 s and compiles ~30 s).
set -o pipefail
E=${ENGINE_ROOT:-$PWD}; OUT=${OUT:-/tmp/perf-out}; mkdir -p $OUT
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=$E:/tmp/site PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false; cd $E
W=/tmp/graphs-work; mkdir -p $W
[ -d /tmp/q7b ] || python3 -m engine bench --build --model-dir /tmp/q7b --what none 2>&1 | tail -1
variant() {  # name, engine variant, steps, extra env
  env $4 timeout 300 python3 -m engine bench --model-dir /tmp/q7b --work $W/$1 --what engine --clip-seconds 1 \
      --train-steps $3 --warmup-steps 3 --engine-variants "$2" --out $OUT/$1.json > $OUT/$1.log 2>&1
  python3 -c "
import json, sys
for r in json.load(open('$OUT/$1.json')).get('engine', []):
    print('$1', r.get('steady_samples_per_s'), r.get('steady_step_s'), r.get('compile'), r.get('peak_gpu_memory_mb'), r.get('error', ''))
" 2>/dev/null || tail -3 $OUT/$1.log
}
variant graphs-dropout0 "compile=graphs,lora_dropout=0" 20
variant on-dropout005 "compile=on" 20
variant graphs-dropout005-mark "compile=graphs" 12 QLORA_CUDAGRAPH_MARK_STEP=1
variant graphs-dropout005 "compile=graphs" 8
