#!/usr/bin/env bash
# Data-parallel check on ONE GPU: two ranks sharing it through gloo (each its own 4-bit copy of the
# random-weight Qwen2-Audio-7B) against one process at the same effective batch (16), 20 steps.
# Losses per step must agree within bf16 noise; only rank 0 writes the run folder.
#
#   bash benchmarks/ddp_one_gpu.sh [OUT_DIR]
set -euo pipefail
out=${1:-ddp-check}
python=${PYTHON:-python3}
mkdir -p "$out"
model=${MODEL:-/tmp/q7b}
[ "$model" = /tmp/q7b ] && "$python" -c "from engine.tasks.bench import build_random_7b; build_random_7b('/tmp/q7b')"
"$python" -c "from pathlib import Path; from engine.tasks.bench import write_manifest; write_manifest(Path('/tmp/ddp-data'), 320, 1.0)"
common=(train --model "$model" --train-csv /tmp/ddp-data/manifest.csv --runs-dir "$out/runs" --max-steps 20
        --learning-rate 1e-5 --warmup-ratio 0 --targets attention+mlp --seed 7 --gradient-checkpointing off)
run() {  # name, config yaml body, extra flags...
    local name=$1 yaml=$2; shift 2
    printf '%s\n' "$yaml" > "$out/$name.yaml"
    local t0=$(date +%s)
    "$python" -m engine "${common[@]}" --config "$out/$name.yaml" --name "$name" "$@" > "$out/$name.log" 2>&1 \
        || { tail -30 "$out/$name.log"; return 1; }
    echo "$name: $(( $(date +%s) - t0 )) s wall"
}
run one "auto_micro_batch: false
per_device_batch: 8
grad_accum: 2"
ENGINE_DIST_BACKEND=gloo run two "auto_micro_batch: false
per_device_batch: 8
grad_accum: 1" --num-gpus 2
"$python" - "$out/runs" <<'PY'
import json, sys
from pathlib import Path
runs = Path(sys.argv[1])
def losses(name):
    return [json.loads(l)["loss"] for l in (runs / name / "metrics.jsonl").read_text().splitlines() if l.strip()]
one, two = losses("one"), losses("two")
rel = [abs(a - b) / abs(a) for a, b in zip(one, two)]
print("steps", len(one), len(two))
for i, (a, b, r) in enumerate(zip(one, two, rel), 1):
    print(f"step {i:2d}  one {a:.5f}  two {b:.5f}  rel {r:.4%}")
print(f"max relative difference {max(rel):.4%} (bound 2%)")
print("two-rank run folder:", sorted(str(p.relative_to(runs / 'two')) for p in (runs / 'two').rglob('*') if p.is_file()))
for name in ("one", "two"):
    s = json.loads((runs / name / "summary.json").read_text())
    print(name, {k: s.get(k) for k in ("samples_per_s", "peak_gpu_memory_gb", "runtime_s", "micro_batch", "grad_accum", "num_processes")})
PY
