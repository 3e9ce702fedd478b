"""The demo's base model: the tiny Qwen2-Audio with learned audio features.

A random base has no audio features, so on varied data a LoRA adapter would have to build them
from random projections in the demo's 96 steps, which the tiny model cannot (docs/PERFORMANCE.md,
"The demo's adapters"). So the demo builds its base as an audio LLM is built, in miniature: the
tiny random model (engine.models.qwen2_audio.tiny, same tokenizer and sizes) has its audio encoder
and projector pre-trained on a different task, naming the kind of a synthetic sound ("voice",
"music", "rain", "traffic", ...) with its own prompt, through the frozen random language model.
The demo's adapters still have to learn the SPEECH / NONSPEECH answer with the demo's prompt.

Built once on the CPU (about 50 s on 2 cores), deterministic, and cached like the tiny model
(atomically, in a folder versioned by DEMO_MODEL_VERSION). The tests' random `tiny` model is not
changed by any of this; `python -m engine demo` builds it on first use.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from engine.labels import SPEECH
from engine.models.qwen2_audio import QWEN2_AUDIO as FAMILY
# the folder, version and marker live in demo_folder (torch-free; the runtime resolves `tiny-demo` there)
from engine.models.qwen2_audio.demo_folder import (  # noqa: F401 (re-exported)
    DEMO_MODEL_MARKER, DEMO_MODEL_VERSION, default_demo_model_dir, is_demo_model)
from engine.models.qwen2_audio.tiny import TINY_VERSION, build_once, build_tiny_model
from engine.runs import folder as rf


# The pre-training task: name the kind of sound. Speech of every voice is one kind ("voice").
PRETRAIN_PROMPT = "What kind of sound is this? Answer with its name."
PRETRAIN = dict(
    seed=0,            # of the random weights, the batch order and the pre-training data's stream
    data_seed=1000,    # the pre-training clips' stream (the demo's own data uses seed 0)
    clips=1536,        # synthetic clips in the varied style: half voices, half the 14 other kinds
    synth_processes=2,  # made in 2 processes side by side (the bytes depend on this number)
    epochs=6,
    batch=32,
    learning_rate=4e-3,  # AdamW, linear decay to 0, gradients clipped at norm 1
    min_s=0.8, max_s=2.0,
    sizes={},          # widths and depths other than the tiny model's (TINY_SIZES)
    # Only the audio encoder and projector learn; the language model stays the random tiny one.
    # Training it too made it name kinds well (loss 0.24) but left LoRA unable to re-purpose it
    # for SPEECH / NONSPEECH in the demo's 96 steps (docs/PERFORMANCE.md, "The demo's adapters").
    train_lm=False,
)


def kind_word(item: dict[str, Any]) -> str:
    """The pre-training answer for a planned clip: "voice" for speech, else its kind in words."""
    return "voice" if item["label"] == SPEECH else item["condition"].replace("_", " ")


def ensure_demo_model(path: Path | None = None, say: Callable[[str], None] = lambda msg: None) -> Path:
    """Build the demo model folder once (in a temp folder, then renamed into place)."""
    return build_once(Path(path) if path else default_demo_model_dir(), DEMO_MODEL_MARKER,
                      lambda tmp: build_demo_model(tmp, say=say), prefix=".demo-model-build-")


def build_demo_model(out_dir: Path, recipe: dict[str, Any] | None = None,
                     say: Callable[[str], None] = lambda msg: None) -> Path:
    """The tiny model with its audio encoder and projector pre-trained (fp32, CPU) to name sound
    kinds (with recipe={"train_lm": True} the language model too); written to out_dir."""
    import numpy as np
    import torch

    from engine.data.synth import plan_clips, synthesize_clips
    from engine.models.qwen2_audio import runtime

    recipe = {**PRETRAIN, **(recipe or {})}
    started = time.time()
    out_dir = Path(out_dir)
    build_tiny_model(out_dir, seed=recipe["seed"], sizes=recipe["sizes"])
    say(f"pre-training the demo model on {recipe['clips']} synthetic clips (once; cached in {out_dir.parent}) ...")
    plan = plan_clips(recipe["clips"], recipe["data_seed"], 0, recipe["min_s"], recipe["max_s"], style="varied")
    audios = synthesize_clips(plan, processes=recipe["synth_processes"])
    say(f"  {len(audios)} clips synthesised in {time.time() - started:.0f} s")
    words = [kind_word(item) for item in plan]
    vocabulary = sorted(set(words))
    loaded = runtime.load_model(str(out_dir), quantization="none", device="cpu", dtype="float32")
    tokenizer = loaded.processor.tokenizer
    end = tokenizer.convert_tokens_to_ids(FAMILY.turn_end_token)

    class _Answers:  # make_batch reads answer_ids[class index] only
        answer_ids = [tokenizer(word, add_special_tokens=False).input_ids + [end] for word in vocabulary]
        shared_prefix: list[int] = []

    answers = [vocabulary.index(word) for word in words]
    hf = loaded.hf
    hf.train()
    torch.manual_seed(recipe["seed"])
    if not recipe["train_lm"]:
        for module in (hf.model.language_model, hf.lm_head):
            module.requires_grad_(False)
    trainable = [p for p in hf.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=recipe["learning_rate"], weight_decay=0.0)
    order_rng = np.random.default_rng(recipe["seed"])
    batch_size = recipe["batch"]
    steps_per_epoch = len(audios) // batch_size
    total = steps_per_epoch * recipe["epochs"]
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 - step / max(1, total))
    losses = []
    for epoch in range(recipe["epochs"]):
        order = order_rng.permutation(len(audios))
        for step in range(steps_per_epoch):
            rows = order[step * batch_size:(step + 1) * batch_size]
            batch = runtime.make_batch(loaded.processor, [audios[i] for i in rows], FAMILY.default_system_prompt,
                                       PRETRAIN_PROMPT, _Answers, answers=[answers[i] for i in rows])
            loss, _ = runtime.answer_loss(hf, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            schedule.step()
            losses.append(float(loss.detach()))
        say(f"  epoch {epoch + 1}/{recipe['epochs']}: mean loss {np.mean(losses[-steps_per_epoch:]):.3f} "
            f"({time.time() - started:.0f} s)")
    hf.eval()
    hf.save_pretrained(out_dir)
    seconds = round(time.time() - started, 1)
    rf.atomic_write_json(out_dir / DEMO_MODEL_MARKER, {
        "demo_model_version": DEMO_MODEL_VERSION, "tiny_version": TINY_VERSION, "recipe": recipe,
        "prompt": PRETRAIN_PROMPT, "kinds": vocabulary, "final_loss": round(float(np.mean(losses[-steps_per_epoch:])), 4),
        "build_seconds": seconds,
        "note": "Demo model: the tiny Qwen2-Audio pre-trained on synthetic sound kinds. Not Qwen2-Audio's weights."})
    return out_dir
