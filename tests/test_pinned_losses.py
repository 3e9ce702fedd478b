"""The first losses of a short, deterministic CPU training of the tiny model, pinned as numbers.

"Same seed, same loss" passes even when the loss itself changes; these numbers change when the
math does: the model built from config, the synthetic data, the chat template and label tokens,
the loss over the answer tokens, LoRA's initialisation, the optimizer and its schedule.

To regenerate after a change that is meant to alter them (say why in the commit):
    .venv/bin/python -m pytest tests/test_pinned_losses.py -q
prints the measured losses in the failure message; copy them to 4 significant digits.
"""

from __future__ import annotations

import pytest

from engine.config import TrainConfig
from engine.runs import folder as rf
from engine.tasks.train import train

# Step 1 is the untrained adapter's loss (LoRA's B starts at zero); steps 2-3 follow two updates.
PINNED_LOSSES = [6.059, 5.950, 5.924]


@pytest.mark.slow
def test_first_three_losses_of_the_tiny_model(tmp_path, demo_data, tiny_model):
    config = TrainConfig(model="tiny", quantization="4bit", device="cpu", targets="attention", seed=7, epochs=1,
                         max_steps=3, per_device_batch=8, grad_accum=1, learning_rate=2e-3, lora_dropout=0.0,
                         warmup_ratio=0.0, train_data=str(demo_data["train"]))
    train(config, tmp_path / "run")
    losses = [metric["loss"] for metric in rf.read_metrics(tmp_path / "run")]
    assert losses == pytest.approx(PINNED_LOSSES, rel=5e-4), f"measured losses: {losses}"
