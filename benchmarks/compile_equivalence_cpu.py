"""Compiled layers (`--compile on`) against eager ones: the same losses, on the CPU.

    PYTHONPATH=. .venv/bin/python benchmarks/compile_equivalence_cpu.py

Trains the tiny model (4-bit, base cache on, fp32, attention+MLP, dropout 0) for 3 steps twice,
compiled and not, on the same synthetic clips, and prints both loss lists and their largest
relative difference (2026-12-01, 2 cores: 0.0, bitwise; compilation took about 250 s).
"""

import shutil
import time
from pathlib import Path

from engine.config import TrainConfig
from engine.data import synth
from engine.runs import folder as rf
from engine.tasks.train import train

out = Path("/tmp/compile-equivalence")
shutil.rmtree(out, ignore_errors=True)
paths = synth.make_dataset(out / "data", n_train=32, n_test=4, seed=0)
losses = {}
for mode in ("off", "on"):
    started = time.time()
    config = TrainConfig(model="tiny", quantization="4bit", device="cpu", targets="attention+mlp", seed=7, epochs=1,
                         max_steps=3, per_device_batch=8, grad_accum=1, learning_rate=2e-3, lora_dropout=0.0,
                         warmup_ratio=0.0, base_cache="on", compile=mode, train_data=str(paths["train"]))
    summary = train(config, out / mode)
    losses[mode] = [r["loss"] for r in rf.read_metrics(out / mode)]
    print(mode, losses[mode], f"{summary['compiled_layers']} layers compiled, {time.time() - started:.1f} s", flush=True)
print("largest relative difference:", max(abs(a - b) / abs(a) for a, b in zip(losses["off"], losses["on"])))
