#!/bin/bash
# Round-4 sweep on one GPU: 8 runs (4 seeds x attention / attention+MLP, 512 one-second clips,
# 3 epochs) over one loaded base. MODE=direct (default): train_group.train_runs from
# benchmarks/sweep_shared_base.py; MODE=queue: a sweep queued with share_base through
# engine.jobs.submit_sweep, served by the worker (what the Train page does); DROPOUT (default the
# recipe's 0.05; 0 lets auto record CUDA graphs, PERFORMANCE.md round 4). SOLO=1 also trains
# SOLO_TARGETS/SOLO_SEED alone with this checkout, for the per-run comparison. Results under $OUT.
set -o pipefail
E=${ENGINE_ROOT:-$PWD}; OUT=${OUT:-/tmp/perf-out}; mkdir -p $OUT
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=$E:/tmp/site PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false; cd $E
W=/tmp/sweep4; mkdir -p $W; TAG=$(date +%s)  # fresh run folders on a machine used before
F="grep -v Loading\|warn\|INFO:.step\|Writing"
[ -d /tmp/q7b ] || python3 -m engine bench --build --model-dir /tmp/q7b --what none 2>&1 | tail -1
[ -f $W/data/manifest.csv ] || python3 -c "from pathlib import Path; from engine.tasks import bench; print(bench.write_manifest(Path('$W/data'), 512, 1.0))"
M=$W/data/manifest.csv
if [ "${MODE:-direct}" = direct ]; then
  t0=$(date +%s.%N)
  python3 benchmarks/sweep_shared_base.py --model /tmp/q7b --train-data $M --runs-dir $W/direct-$TAG --epochs 3 \
      ${TARGETS:+--targets $TARGETS} ${SEEDS:+--seeds $SEEDS} --out $OUT/group.json 2>&1 | $F | tee $OUT/group.log | tail -12
  t1=$(date +%s.%N); python3 -c "print('PROCESS_S', round($t1 - $t0, 1))"
else
  WS=$W/ws-$TAG
  python3 - $WS $M <<'PY'
import os, sys
from pathlib import Path
from engine import jobs
from engine.jobs.sweep import expand_sweep
root, manifest = Path(sys.argv[1]), sys.argv[2]
cells = expand_sweep({"model": "/tmp/q7b", "train_data": manifest, "epochs": 3,
                      "lora_dropout": float(os.environ.get("DROPOUT", "0.05"))},
                     {"targets": ["attention", "attention+mlp"], "seed": [42, 123, 456, 789]})
print(jobs.enqueue_sweep(root, cells, share_base=True))
PY
  t0=$(date +%s.%N)
  timeout ${SWEEP_TIMEOUT:-1200} python3 -m engine worker --runs-dir $WS --once --idle-grace 0 > $OUT/worker.log 2>&1
  t1=$(date +%s.%N); python3 -c "print('SWEEP_S', round($t1 - $t0, 1))"
  python3 - $WS <<'PY' | tee $OUT/queue.json
import json, sys
from pathlib import Path
from engine.jobs import read_jobs
from engine.runs import folder as rf
root = Path(sys.argv[1])
out = {}
for job in read_jobs(root):
    run = Path(job["run_dir"])
    summary = rf.read_json(run / rf.SUMMARY) if (run / rf.SUMMARY).is_file() else {}
    out[run.name] = {"job": job["state"], "run": rf.read_status(run).get("state"), "pid": job.get("pid"),
                     "files": sorted(p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_file()),
                     **{k: summary.get(k) for k in ("runtime_s", "samples_per_s", "compile", "shared_base", "final_train_loss")}}
print(json.dumps(out, indent=1))
PY
  tail -5 $OUT/worker.log
  cp $WS/.jobs/*/output.log $OUT/group-output.log 2>/dev/null
fi
if [ -n "$SOLO" ]; then
  python3 -m engine train --model /tmp/q7b --train-data $M --targets ${SOLO_TARGETS:-attention+mlp} --seed ${SOLO_SEED:-123} --epochs 3 \
      --runs-dir $W/solo-$TAG --name solo --json 2>&1 | $F | tail -2 | cut -c1-400
  python3 -c "
import json; from engine.runs import folder as rf; from pathlib import Path
print('SOLO_LOSSES', [round(m['loss'], 6) for m in rf.read_metrics(Path('$W/solo-$TAG/solo'))][:12])"
fi
true
