"""The dequantize-once base cache computes exactly what bitsandbytes computes.

bitsandbytes' CPU path for these shapes is dequantize + F.linear, so on the tiny 4-bit model in
fp32 the cached forward and backward must agree bitwise (the GPU's fused kernel for small batches
is compared on the random 7B by `python -m engine bench`, docs/PERFORMANCE.md).
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("bitsandbytes")

from engine.config import TrainConfig  # noqa: E402
from engine.labels import CLASSES  # noqa: E402
from engine.models import base_cache  # noqa: E402
from engine.models.qwen2_audio import runtime as m  # noqa: E402
from engine.runs import folder as rf  # noqa: E402
from engine.tasks.train import train  # noqa: E402

ATTENTION_MLP = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture()
def lora_4bit(tiny_model):
    loaded = m.load_model(str(tiny_model), "4bit", "cpu", "float32")
    torch.manual_seed(0)
    m.attach_lora(loaded, 8, 16, 0.0, ATTENTION_MLP, gradient_checkpointing=False)
    with torch.no_grad():  # LoRA's B starts at zero; give it values so the adapter path counts
        for name, param in loaded.model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.02)
    return loaded


def _batches(loaded):
    plan = m.label_plan(loaded.processor.tokenizer, list(CLASSES))
    rng = np.random.default_rng(0)
    audios = [0.1 * rng.standard_normal(4000 * k).astype(np.float32) for k in (2, 3, 4, 5)]
    scoring = m.make_batch(loaded.processor, audios, "system", "Is this speech?", plan)
    training = m.make_batch(loaded.processor, audios, "system", "Is this speech?", plan, answers=[0, 1, 0, 1],
                            padding_side="right")
    return plan, scoring, training


def _scores_loss_grads(loaded, plan, scoring, training):
    loaded.model.eval()
    with torch.no_grad():
        scores = m.class_scores(loaded.model, scoring, plan)
    loaded.model.train()
    loaded.model.zero_grad(set_to_none=True)
    loss, _ = m.answer_loss(loaded.model, training)
    loss.backward()
    grads = [p.grad.clone() for p in loaded.model.parameters() if p.requires_grad]
    return scores, loss.detach(), grads


def test_cached_forward_and_backward_equal_bitsandbytes_bitwise(lora_4bit):
    plan, scoring, training = _batches(lora_4bit)
    before = _scores_loss_grads(lora_4bit, plan, scoring, training)
    decision = base_cache.prepare(lora_4bit.model, "on", torch.device("cpu"))
    assert decision.used and decision.layers == len(base_cache.quantized_layers(lora_4bit.model)) > 0
    after = _scores_loss_grads(lora_4bit, plan, scoring, training)

    assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1])
    assert all(torch.equal(a, b) for a, b in zip(before[2], after[2]))
    assert any(bool(g.abs().sum()) for g in after[2])  # the comparison covers real gradients


def test_the_cache_is_what_changes_the_forward_and_release_restores_it(lora_4bit):
    plan, scoring, training = _batches(lora_4bit)
    layers = base_cache.quantized_layers(lora_4bit.model)
    base_cache.apply(lora_4bit.model)
    with torch.no_grad():  # a poisoned copy must change the scores: the cache is really used
        layers[0]._dequantized_weight.add_(1.0)
    poisoned = _scores_loss_grads(lora_4bit, plan, scoring, training)[0]
    base_cache.release(lora_4bit.model)
    assert all("_dequantized_weight" not in layer.__dict__ for layer in layers)
    base_cache.apply(lora_4bit.model)
    cached = _scores_loss_grads(lora_4bit, plan, scoring, training)[0]
    base_cache.release(lora_4bit.model)
    restored = _scores_loss_grads(lora_4bit, plan, scoring, training)[0]
    assert not torch.equal(poisoned, restored) and torch.equal(cached, restored)


def test_auto_plans_by_device_and_mode(lora_4bit, tiny_model):
    cpu = torch.device("cpu")
    assert not base_cache.plan(lora_4bit.model, "auto", cpu).used  # only on a GPU
    assert "GPU" in base_cache.plan(lora_4bit.model, "auto", cpu).reason
    assert not base_cache.plan(lora_4bit.model, "off", cpu).used
    assert base_cache.plan(lora_4bit.model, "on", cpu).to_dict()["used"] is True
    plain = m.load_model(str(tiny_model), "none", "cpu", "float32")
    assert base_cache.plan(plain.model, "on", cpu).reason == "the base is not 4-bit quantized"
    with pytest.raises(ValueError, match="auto, on, off"):
        base_cache.plan(lora_4bit.model, "sometimes", cpu)


@pytest.mark.slow
def test_training_with_the_cache_gives_the_same_losses_and_adapter(tmp_path, demo_data, tiny_model):
    runs = {}
    for mode in ("off", "on"):
        config = TrainConfig(model="tiny", quantization="4bit", device="cpu", targets="attention+mlp", seed=3,
                             epochs=1, max_steps=3, per_device_batch=8, grad_accum=1, learning_rate=2e-3,
                             lora_dropout=0.0, warmup_ratio=0.0, base_cache=mode, train_data=str(demo_data["train"]))
        summary = train(config, tmp_path / mode)
        assert summary["base_cache"]["used"] is (mode == "on")
        runs[mode] = [r["loss"] for r in rf.read_metrics(tmp_path / mode)]
    assert runs["off"] == runs["on"]  # bitwise: the same floats
    from safetensors.torch import load_file

    off = load_file(tmp_path / "off" / rf.ADAPTER_DIR / "adapter_model.safetensors")
    on = load_file(tmp_path / "on" / rf.ADAPTER_DIR / "adapter_model.safetensors")
    assert off.keys() == on.keys() and all(torch.equal(off[k], on[k]) for k in off)


def test_auto_leaves_the_cache_off_on_a_gpu_shared_with_other_jobs(lora_4bit):
    """4 jobs with the cache and CUDA graphs on one H200 each ran 9-13 s a step (alone 0.13 s)."""
    decision = base_cache.plan(lora_4bit.model, "auto", torch.device("cuda"), usable_bytes=80 * 2**30, shared_by=4)
    assert not decision.used and "shared by 4 jobs" in decision.reason
    assert base_cache.plan(lora_4bit.model, "on", torch.device("cuda"), shared_by=4).used  # asked for: kept
