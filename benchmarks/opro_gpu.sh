#!/usr/bin/env bash
# OPRO timing on a GPU: one iteration of 8 candidates on a dev set, at several batch sizes, plus
# the audio model's own LM as proposer. Figures in docs/PERFORMANCE.md ("Prompt optimisation").
#
#   bash benchmarks/opro_gpu.sh DATA_DIR [MODEL] [OUT_DIR]
#
# DATA_DIR holds val.csv (dev) and test.csv, e.g. made on a machine with espeak-ng by
#   python -c "from engine.data.synth import make_dataset; make_dataset('data', n_train=2, n_test=32, n_val=128, seed=1)"
# MODEL defaults to a random-weight Qwen2-Audio-7B built from its public config (engine.tasks.bench).
set -euo pipefail
data=${1:?usage: bash benchmarks/opro_gpu.sh DATA_DIR [MODEL] [OUT_DIR]}
model=${2:-/tmp/q7b}
out=${3:-opro-bench}
python=${PYTHON:-python3}  # an interpreter with the engine's requirements
mkdir -p "$out"
if [ "$model" = /tmp/q7b ]; then
    "$python" -c "from engine.tasks.bench import build_random_7b; build_random_7b('/tmp/q7b')"
fi
run() {  # name, extra flags...
    local name=$1; shift
    "$python" -m engine opro --base --model "$model" --quantization 4bit --dev-csv "$data/val.csv" \
        --iterations 1 --candidates 8 --runs-dir "$out/runs" --run-name "$name" --json "$@" \
        > "$out/$name.json" 2> "$out/$name.err" || { tail -5 "$out/$name.err"; return 1; }
    "$python" - "$out/runs/$name" <<'PY'
import json, statistics, sys
from pathlib import Path
run = Path(sys.argv[1])
times = [json.loads(line)["time_s"] for line in (run / "history.jsonl").read_text().splitlines() if line.strip()]
result = json.loads((run / "opro.json").read_text())
print(f"{run.name}: median {statistics.median(times[1:]):.2f} s per candidate, first prompt {times[0]:.1f} s, "
      f"run {result['time_taken_s']:.1f} s, peak {result['peak_gpu_memory_gb']} GB, proposer {result['proposer']}")
PY
}
for batch in 16 64 128; do
    run "edit-b$batch" --batch-size "$batch" --test-csv "$data/test.csv"
done
run self-b16 --batch-size 16 --proposer self
