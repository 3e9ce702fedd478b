import time, sys
from pathlib import Path
from engine.config import TrainConfig
from engine.tasks.train import train
from engine.runs import folder as rf
from engine.data import synth
out = Path("/tmp/cc"); import shutil; shutil.rmtree(out, ignore_errors=True)
paths = synth.make_dataset(out / "data", n_train=32, n_test=4, seed=0)
res = {}
for mode in ("off", "on"):
    t = time.time()
    cfg = TrainConfig(model="tiny", quantization="4bit", device="cpu", targets="attention+mlp", seed=7, epochs=1,
                      max_steps=3, per_device_batch=8, grad_accum=1, learning_rate=2e-3, lora_dropout=0.0,
                      warmup_ratio=0.0, base_cache="on", compile=mode, train_data=str(paths["train"]))
    s = train(cfg, out / mode)
    res[mode] = [r["loss"] for r in rf.read_metrics(out / mode)]
    print(mode, res[mode], s["compiled_layers"], round(time.time() - t, 1), flush=True)
print(max(abs(a - b) / abs(a) for a, b in zip(res["off"], res["on"])))
