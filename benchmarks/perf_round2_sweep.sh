#!/bin/bash
# A sweep: a sweep of 8 runs (4 seeds x 2 target sets, 512 clips, 3 epochs) from the queue with 8 jobs
# on the GPU, against one run of today's main (the repo root's engine) alone.
set -o pipefail
# ENGINE_ROOT: the checkout measured (default: here). Wheels in .whl/ are installed first (a GPU box
# without bitsandbytes); results go to $OUT (default /tmp/perf-out).
E=${ENGINE_ROOT:-$PWD}; OUT=${OUT:-/tmp/perf-out}; mkdir -p $OUT
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
ROOT=$PWD; W=/tmp/sweep; mkdir -p $W
(cd $E && PYTHONPATH=$E:/tmp/site python3 -m engine bench --build --model-dir /tmp/q7b --what none 2>&1 | tail -1)
PYTHONPATH=$E:/tmp/site python3 -c "
from pathlib import Path; from engine.tasks import bench; print(bench.write_manifest(Path('$W/data'), 512, 1.0))"
M=$W/data/manifest.csv
# the baseline: BASELINE_ROOT, a checkout of the previous main (default: the root the script runs
# from); SKIP_SOLO=1 leaves it out (when it was measured before on the same kind of GPU)
if [ -z "$SKIP_SOLO" ]; then
t0=$(date +%s.%N)
(cd ${BASELINE_ROOT:-$ROOT} && PYTHONPATH=/tmp/site python3 -m engine train --model /tmp/q7b --train-data $M --targets attention+mlp --seed 42 --epochs 3 --runs-dir $W/main --name solo-main) 2>&1 | grep -v "Loading\|warn\|INFO: step" | tail -4
t1=$(date +%s.%N); python3 -c "print('SOLO_MAIN_S', $t1 - $t0)"
cp $W/main/solo-main/summary.json $OUT/solo_main_summary.json
fi
# the sweep through the queue, JOBS per GPU (default 8); TARGETS, SEEDS and SWEEP_TIMEOUT narrow it
cd $E; export PYTHONPATH=$E:/tmp/site
mkdir -p $W/ws/.jobs && echo '{"executor": "local", "jobs_per_gpu": '${JOBS:-8}'}' > $W/ws/.jobs/settings.json
for t in ${TARGETS:-attention attention+mlp}; do for s in ${SEEDS:-42 123 456 789}; do
  python3 -m engine queue --runs-dir $W/ws --no-worker -- train --model /tmp/q7b --train-data $M --targets $t --seed $s --epochs 3 --runs-dir $W/ws --name sweep-$t-$s >/dev/null; done; done
t0=$(date +%s.%N)
timeout ${SWEEP_TIMEOUT:-3600} python3 -m engine worker --runs-dir $W/ws --once --idle-grace 0 > $OUT/worker.log 2>&1
t1=$(date +%s.%N); python3 -c "print('SWEEP_S', $t1 - $t0)"
python3 - <<PY > $OUT/sweep.json
import json, glob, os
out = {}
for d in sorted(glob.glob("$W/ws/sweep-*")):
    st = json.load(open(d + "/status.json")); sm = json.load(open(d + "/summary.json")) if os.path.exists(d + "/summary.json") else {}
    out[os.path.basename(d)] = {"state": st.get("state"), "files": sorted(os.listdir(d)), **{k: sm.get(k) for k in ("samples_per_s", "runtime_s", "train_time_s", "micro_batch", "compile", "base_cache", "peak_gpu_memory_mb", "final_train_loss", "steps")}}
print(json.dumps(out, indent=1))
PY
python3 -c "import json; d=json.load(open('$OUT/sweep.json')); [print(k, v['state'], v['runtime_s'], v['samples_per_s'], v['compile'], (v['base_cache'] or {}).get('used'), v['peak_gpu_memory_mb']) for k, v in d.items()]"
tail -5 $OUT/worker.log
for d in $W/ws/sweep-*; do cp $d/engine.log $OUT/$(basename $d).engine.log; cp $d/status.json $OUT/$(basename $d).status.json; done
