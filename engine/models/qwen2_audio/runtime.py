"""The torch side of the Qwen2-Audio family: loading, quantization, LoRA, prompts, label tokens,
and the forward passes used for training and scoring. Every constant (chat template, audio
front end, presets, the 7B's public config) comes from the family description, `QWEN2_AUDIO`.

Qwen2-Audio's traps are handled here and nowhere else:
- transformers 5 matches quantization skip-modules against full names (`model.audio_tower`,
  `model.multi_modal_projector`); the audio encoder and projector stay in bf16.
- gradient checkpointing is always non-reentrant (reentrant starves the encoder's LoRA of grads).
- the processor is called with `audio=`, never the silently ignored `audios=`.
- bf16 compute (fp16 gives NaN losses with Qwen2); fp32 on CPU, where bitsandbytes' bf16-only
  AVX512 4-bit kernel is switched off so that fp32 holds for the 4-bit layers too.
- embeddings and lm_head are not upcast to fp32 unless asked (+2.6 GB on the 7B).

The forward pass (`encode`, `hidden_states`) is the engine's fast path and is exact:
- the audio encoder gets only the mel frames the batch needs (longest clip + 2 frames for the
  convolution edge, even length) with the positional table sliced to match; the padding mask
  makes the real frames' outputs identical to the 3000-frame stock input;
- the lm_head runs only at the positions that are scored or trained on.
`stock_*` functions run the unmodified Hugging Face forward, for equivalence tests and benchmarks.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from transformers.cache_utils import Cache, DynamicLayer

from engine.config import ConfigError
from engine.models.family import ModelError, ModelFamily  # callers catch ModelError as runtime.ModelError
from engine.models.qwen2_audio import QWEN2_AUDIO as FAMILY


# ----------------------------------------------------------------------------- loading

def resolve_model_path(model: str) -> Path:
    """`tiny` -> the locally built tiny model; `tiny-demo` -> the demo model's cached folder (built
    by `python -m engine demo`); a folder -> itself; a hub id -> the local hub cache. The two local
    names keep run configs portable: another machine resolves them to its own cached folder.

    Nothing is downloaded: a hub id must already be in the Hugging Face cache.
    """
    model = FAMILY.canonical_name(model) if isinstance(model, str) else model
    if model == FAMILY.tiny_model:
        from engine.models.qwen2_audio.tiny import ensure_tiny_model

        return ensure_tiny_model()
    if model == FAMILY.demo_model:
        from engine.models.qwen2_audio import demo_folder

        folder = demo_folder.default_demo_model_dir()
        if not demo_folder.is_built(folder):
            raise ModelError(f"the demo model ({FAMILY.demo_model}) is not built on this machine yet "
                             f"(expected in {folder}): {demo_folder.BUILD_HINT}")
        return folder
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"{path} is a folder but has no config.json: not a Hugging Face model folder")
        return path
    if path.is_absolute() or str(model).startswith((".", "~")):
        raise ModelError(f"model folder not found: {path}")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(model, local_files_only=True))
    except Exception as exc:  # noqa: BLE001 - hub raises several types for "not cached"
        raise ModelError(
            f"model {model!r} is not in the local Hugging Face cache ({type(exc).__name__}). "
            "Nothing is downloaded at run time: download it once with `huggingface-cli download "
            f"{model}` or pass a local folder with --model") from None


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device", "cuda was asked for but no CUDA GPU is visible")
    return torch.device(device)


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"bfloat16": torch.bfloat16, "float32": torch.float32}[dtype]


def quantization_config(quantization: str, compute_dtype: torch.dtype):
    from transformers import BitsAndBytesConfig

    if quantization == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=compute_dtype,
                                  llm_int8_skip_modules=list(FAMILY.quantization_skip_modules))
    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=list(FAMILY.quantization_skip_modules))
    return None


def keep_4bit_cpu_compute_in_fp32(hf) -> int:
    """Keep bitsandbytes' 4-bit layers on the dequantize + fp32 matmul path on the CPU.

    On a CPU with AVX512-BF16, bitsandbytes repacks each Linear4bit at its first inference call
    and from then on multiplies in bf16 whatever the compute dtype. bf16 rounding turns the
    ~1e-6 float noise between a clip scored alone and in a batch into class-score differences
    of up to 2.5e-4 on the tiny model with an adapter (3.8e-4 in a margin; 5e-7 on this path),
    and scores would depend on which CPU ran them. Returns how many layers were switched.
    """
    switched = 0
    for module in hf.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
            switched += 1
    return switched


@dataclass
class LoadedModel:
    """A loaded model with its processor and what scoring/training need to know about it."""

    model: Any  # Qwen2AudioForConditionalGeneration, possibly wrapped by peft
    processor: Any
    device: torch.device
    dtype: torch.dtype
    model_path: Path
    quantization: str
    family: ModelFamily = FAMILY  # the description: sample rate, chat template, runtime()
    base_cache: dict | None = None  # engine.models.base_cache's decision, once one was made

    @property
    def hf(self):
        """The underlying Qwen2AudioForConditionalGeneration (through a peft wrapper if any)."""
        return unwrap(self.model)


def unwrap(model):
    from peft import PeftModel

    if isinstance(model, PeftModel):
        return model.base_model.model
    return model


def gpu_share() -> int:
    """How many jobs the queue runs on this process's GPU ($QLORA_GPU_SHARE, set by the worker; 1 alone)."""
    try:
        return max(1, int(os.environ.get("QLORA_GPU_SHARE", "1")))
    except ValueError:
        return 1


def apply_gpu_share(device: torch.device) -> float:
    """Keep to 1/N of the GPU's memory when the job queue runs N jobs on this GPU ($QLORA_GPU_SHARE,
    set by the worker), so that automatic choices (micro-batch, base cache) leave the others room.
    Returns the fraction in force."""
    share = gpu_share()
    if device.type != "cuda" or share <= 1:
        return 1.0
    torch.cuda.set_per_process_memory_fraction(1.0 / share, device.index if device.index is not None else 0)
    return 1.0 / share


def load_model(model: str, quantization: str = "4bit", device: str = "auto", dtype: str = "auto") -> LoadedModel:
    """Load processor + Qwen2AudioForConditionalGeneration, 4/8-bit through bitsandbytes or plain."""
    from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

    path = resolve_model_path(model)
    dev = pick_device(device)
    apply_gpu_share(dev)
    torch_dtype = pick_dtype(dtype, dev)
    processor = AutoProcessor.from_pretrained(path)
    kwargs: dict[str, Any] = dict(dtype=torch_dtype)
    qconfig = quantization_config(quantization, torch_dtype)
    if qconfig is not None:
        kwargs["quantization_config"] = qconfig
        kwargs["device_map"] = {"": dev.index or 0} if dev.type == "cuda" else {"": "cpu"}
    try:
        hf = Qwen2AudioForConditionalGeneration.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelError(f"could not load {path}: {exc}") from exc
    if qconfig is None:
        hf.to(dev)
    elif dev.type == "cpu" and torch_dtype == torch.float32:
        keep_4bit_cpu_compute_in_fp32(hf)
    hf.config.use_cache = False
    return LoadedModel(hf, processor, dev, torch_dtype, path, quantization)


def attach_lora(loaded: LoadedModel, r: int, alpha: float, dropout: float, targets: Sequence[str],
                gradient_checkpointing: bool, upcast_non_quantized: bool = False) -> None:
    """Freeze the base, attach LoRA adapters (trainable), and prepare for k-bit training."""
    from peft import LoraConfig, get_peft_model

    hf = loaded.hf
    present = {name.rsplit(".", 1)[-1] for name, mod in hf.named_modules() if isinstance(mod, torch.nn.Linear)
               or type(mod).__name__ in ("Linear4bit", "Linear8bitLt")}
    missing = sorted(set(targets) - present)
    if missing:
        raise ConfigError("targets", f"this model has no module named {', '.join(missing)} "
                          f"(linear layers present: {', '.join(sorted(present))})")
    for param in hf.parameters():
        param.requires_grad_(False)
    if upcast_non_quantized:
        for param in hf.parameters():
            if param.dtype in (torch.float16, torch.bfloat16):
                param.data = param.data.float()
    if gradient_checkpointing:
        hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        hf.enable_input_require_grads()
    lora = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets),
                      bias="none", task_type="CAUSAL_LM")
    loaded.model = get_peft_model(hf, lora)


def detach_lora(loaded: LoadedModel) -> None:
    """Take the LoRA layers off again (peft's unload: the base modules go back in place, the
    frozen base and its dequantized cache untouched), so a differently shaped LoRA can be attached."""
    from peft import PeftModel

    if isinstance(loaded.model, PeftModel):
        loaded.model = loaded.model.unload()


def reinit_lora(model, seed: int) -> int:
    """Give every LoRA layer of `model` the values a fresh `attach_lora` after
    `torch.manual_seed(seed)` gives it, in place; returns the number of layers.

    In place, so the parameters keep their storage: compiled layers and their CUDA graphs stay
    valid, which is what lets runs of a group train one after another without recompiling.
    This replays the random draws of peft's creation of each layer, in creation order (the
    modules' order): `nn.Linear(in, r)` then `nn.Linear(r, out)` are created with their default
    initialisation (kaiming-uniform, a=sqrt(5), on the CPU), then `reset_lora_parameters` draws
    A once more and zeroes B. The global RNG ends in the state the attach leaves it in, so dropout
    masks follow as in a run started alone. `tests/test_train_group.py` checks both against peft.
    """
    from peft.tuners.lora import LoraLayer

    torch.manual_seed(seed)
    layers = 0
    for module in model.modules():
        if not isinstance(module, LoraLayer):
            continue
        for name in module.lora_A:
            a_weight, b_weight = module.lora_A[name].weight, module.lora_B[name].weight
            a = torch.nn.init.kaiming_uniform_(torch.empty(a_weight.shape), a=math.sqrt(5))
            torch.nn.init.kaiming_uniform_(torch.empty(b_weight.shape), a=math.sqrt(5))  # B's default init, then zeroed
            torch.nn.init.kaiming_uniform_(a, a=math.sqrt(5))
            with torch.no_grad():
                a_weight.copy_(a)
                b_weight.zero_()
            layers += 1
    return layers


def compile_layers(loaded: LoadedModel, cuda_graphs: bool = False) -> int:
    """torch.compile each decoder layer of the language model and of the audio encoder in place.

    Layers of one stack share their compiled code (parameters are graph inputs), so the cost is
    one compilation per stack and shape; returns the number of layers wrapped.
    """
    hf = loaded.hf
    layers = list(hf.model.language_model.layers) + list(hf.model.audio_tower.layers)
    if cuda_graphs:
        import torch._inductor.config as inductor

        # Clips of varying length give a new shape per batch; once a layer is recompiled for dynamic
        # shapes, do not record a CUDA graph per shape (memory and time grow with each): those
        # batches run compiled without graphs. Fixed-length batches keep their graphs.
        inductor.triton.cudagraph_skip_dynamic_graphs = True
    for layer in layers:
        layer.compile(dynamic=None, mode="reduce-overhead" if cuda_graphs else None)
    return len(layers)


def input_embedding_bytes(loaded: LoadedModel) -> int:
    weight = loaded.hf.model.get_input_embeddings().weight
    return weight.numel() * weight.element_size()


def offload_input_embeddings(loaded: LoadedModel) -> None:
    """Move the (frozen) input embedding table to the CPU; `hidden_states` looks rows up there.

    Only the engine's forward supports this; the stock HF forward expects it on the GPU.
    """
    loaded.hf.model.get_input_embeddings().to("cpu")


def load_adapter(loaded: LoadedModel, adapter_dir: Path) -> None:
    """Wrap the loaded base model with a saved PEFT adapter (inference only)."""
    from peft import PeftModel

    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise ModelError(f"{adapter_dir} has no adapter_config.json: not a PEFT adapter folder")
    loaded.model = PeftModel.from_pretrained(loaded.hf, adapter_dir, is_trainable=False)


def parameter_counts(model) -> dict[str, Any]:
    """Trainable and total parameters (4-bit weights counted at their logical size)."""
    trainable = total = 0
    for param in model.parameters():
        n = param.numel()
        if param.__class__.__name__ == "Params4bit":
            n *= 2  # two 4-bit values per stored byte
        total += n
        if param.requires_grad:
            trainable += n
    return {"trainable": trainable, "total": total, "percent": 100.0 * trainable / total if total else 0.0,
            "adapter_mb": trainable * 4 / 1e6}


# ----------------------------------------------------------------------------- prompts & labels

def prompt_text(system_prompt: str, prompt: str) -> str:
    """The chat text before the answer: Qwen2-Audio-Instruct's turn format with one audio."""
    return FAMILY.prompt_text(system_prompt, prompt)


@dataclass
class LabelPlan:
    """How the two answers are tokenized and where they first differ.

    Scoring appends the shared prefix (often empty) to the prompt and compares the
    log-probabilities of the first token where the answers differ: one forward pass, and
    sub-tokens are never pooled across classes (`SPEECH` = S|PE|ECH, `NONSPEECH` = N|ONS|PE|ECH).
    """

    words: tuple[str, str]
    answer_ids: tuple[list[int], list[int]]  # each answer + <|im_end|>
    shared_prefix: list[int]
    decision_ids: tuple[int, int]


def label_plan(tokenizer, label_words: Sequence[str]) -> LabelPlan:
    end = tokenizer.convert_tokens_to_ids(FAMILY.turn_end_token)
    ids = [tokenizer(w, add_special_tokens=False).input_ids + [end] for w in label_words]
    k = 0
    while k < min(len(ids[0]), len(ids[1])) and ids[0][k] == ids[1][k]:
        k += 1
    if k == min(len(ids[0]), len(ids[1])):
        raise ConfigError("label_words", f"{label_words} tokenize identically")
    return LabelPlan(tuple(label_words), (ids[0], ids[1]), ids[0][:k], (ids[0][k], ids[1][k]))


# ----------------------------------------------------------------------------- batching

@dataclass
class Batch:
    input_ids: torch.Tensor          # (B, S)
    attention_mask: torch.Tensor     # (B, S)
    position_ids: torch.Tensor       # (B, S)
    # Both None in a batch that continues an audio prefix (instruction_batch): no audio left to encode.
    input_features: torch.Tensor | None  # (B, 128, T) mel; T = 3000 with full_features, else longest + 4
    feature_attention_mask: torch.Tensor | None  # (B, T)
    target_positions: torch.Tensor   # (N,) flat indices b*S+s of positions that predict a target
    target_ids: torch.Tensor         # (N,) token ids predicted there
    target_rows: torch.Tensor        # (N,) batch row of each target
    score_positions: torch.Tensor    # (B,) flat index of the position that decides the class

    def to(self, device, non_blocking: bool = False) -> "Batch":
        return Batch(**{k: None if v is None else v.to(device, non_blocking=non_blocking)
                        for k, v in self.__dict__.items()})

    def pin_memory(self) -> "Batch":
        """Page-locked copies, so `to(cuda, non_blocking=True)` does not wait for the device."""
        return Batch(**{k: None if v is None else v.pin_memory() for k, v in self.__dict__.items()})


def mel_features(feature_extractor, audios: Sequence[np.ndarray], full: bool = False, device: str = "cpu"):
    """Log-mel features and frame mask, as the processor computes them.

    full=True pads every clip to 30 s (3000 frames), exactly like Qwen2AudioProcessor. Otherwise
    only to the longest clip + 4 frames: Whisper's log-mel clamps each clip at (its own max - 8 dB),
    and padding frames are zeros either way, so every frame the encoder reads is identical while
    the STFT work shrinks with the clip (30 s of STFT per 1-s clip otherwise). `device="cuda"`
    runs the STFT on the GPU.
    """
    longest = max(len(a) for a in audios)
    samples = FAMILY.full_mel_frames * FAMILY.hop_length
    if not full:
        samples = min(samples, (math.ceil(longest / FAMILY.hop_length) + 4) * FAMILY.hop_length)
    out = feature_extractor(list(audios), sampling_rate=FAMILY.sample_rate, padding="max_length", max_length=samples,
                            truncation=True, return_attention_mask=True, return_tensors="pt", device=device)
    return out["input_features"], out["attention_mask"]


def make_batch(processor, audios: Sequence[np.ndarray], system_prompt: str, prompt: str, plan: LabelPlan,
               answers: Sequence[int] | None = None, padding_side: str = "left", full_features: bool = False,
               feature_device: str = "cpu", after_system_prefix: bool = False) -> Batch:
    """Tokens and mel features for a batch of clips.

    answers=None -> scoring batch: prompt + the answers' shared prefix; score at its last token.
    answers=[class index per clip] -> training batch: prompt + full answer; targets = answer tokens.
    The prompt ids equal what `processor(text=..., audio=...)` produces (tested). The stock
    forward needs full_features=True (3000 frames); the engine's path does not.
    after_system_prefix=True leaves out the tokens before the audio (scored on `system_prefix`).
    """
    tok = processor.tokenizer
    input_features, frame_mask = mel_features(processor.feature_extractor, audios, full_features, feature_device)
    feats = {"input_features": input_features, "attention_mask": frame_mask}
    ids_before, ids_after = _ids_around_audio(tok, system_prompt, prompt)
    if after_system_prefix:
        ids_before = []
    audio_id = tok.convert_tokens_to_ids(FAMILY.audio_token)
    mel_lengths = feats["attention_mask"].sum(-1).tolist()
    rows, targets = [], []
    for i, mel_len in enumerate(mel_lengths):
        n_audio = FAMILY.audio_tokens_for_frames(int(mel_len))
        seq = ids_before + [audio_id] * n_audio + ids_after
        if answers is None:
            seq = seq + plan.shared_prefix
            targets.append([])
        else:
            answer = plan.answer_ids[answers[i]]
            targets.append(list(range(len(seq) - 1, len(seq) - 1 + len(answer))))
            seq = seq + answer
        rows.append(seq)
    width = max(len(r) for r in rows)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    t_pos, t_ids, t_rows, s_pos = [], [], [], []
    for b, seq in enumerate(rows):
        offset = width - len(seq) if padding_side == "left" else 0
        input_ids[b, offset:offset + len(seq)] = torch.tensor(seq)
        attention[b, offset:offset + len(seq)] = 1
        for p in targets[b]:
            t_pos.append(b * width + offset + p)
            t_ids.append(seq[p + 1])
            t_rows.append(b)
        s_pos.append(b * width + offset + len(seq) - 1)
    position_ids = (attention.cumsum(-1) - 1).clamp(min=0)
    return Batch(input_ids, attention, position_ids, feats["input_features"], feats["attention_mask"],
                 torch.tensor(t_pos, dtype=torch.long), torch.tensor(t_ids, dtype=torch.long),
                 torch.tensor(t_rows, dtype=torch.long), torch.tensor(s_pos, dtype=torch.long))


def _ids_around_audio(tok, system_prompt: str, prompt: str) -> tuple[list[int], list[int]]:
    """Token ids of the chat text before and after the audio frames (the template has one audio)."""
    before, after = FAMILY.prompt_text(system_prompt, prompt).split(FAMILY.audio_token)
    return tok(before, add_special_tokens=False).input_ids, tok(after, add_special_tokens=False).input_ids


# ----------------------------------------------------------------------------- fast forward

def encode_audio(hf, input_features: torch.Tensor, feature_attention_mask: torch.Tensor,
                 trim: bool = True, compiled: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Audio features (B, T_out, hidden) after the projector, and per-clip valid lengths.

    With trim=True only the first `longest + 2` mel frames (even) go through the encoder; the
    last real output reads at most frame length+1 through the two convolutions, and the
    attention mask hides everything after each clip, so the kept outputs equal the full ones.
    compiled=True runs each encoder layer through the compiled scoring function (`_encoder_layer`).
    """
    from transformers.masking_utils import create_bidirectional_mask

    tower = hf.model.audio_tower
    lengths = feature_attention_mask.sum(-1)
    frames = input_features.shape[-1]
    if trim:
        longest = int(lengths.max())
        frames = min(frames, longest + 2 + (longest % 2))
    elif frames != FAMILY.full_mel_frames:
        raise ValueError(f"the untrimmed encoder needs {FAMILY.full_mel_frames} mel frames (got {frames}): "
                         "make the batch with full_features=True")
    feats = input_features[:, :, :frames].to(dtype=tower.conv1.weight.dtype, device=tower.conv1.weight.device)
    # The family's length arithmetic, equal to the tower's private _get_feat_extract_output_lengths.
    conv_lengths, out_lengths = FAMILY.encoder_output_lengths(lengths.to(feats.device))
    x = F.gelu(tower.conv1(feats))
    x = F.gelu(tower.conv2(x)).permute(0, 2, 1)
    x = x + tower.embed_positions.weight[: x.shape[1]]
    x = F.dropout(x, p=tower.dropout, training=tower.training)
    valid = (torch.arange(x.shape[1], device=x.device)[None, :] < conv_lengths[:, None]).long()
    mask = create_bidirectional_mask(config=tower.config, inputs_embeds=x[..., :1], attention_mask=valid)
    if compiled:
        call = _compiled_scoring(_encoder_layer)
        _dynamic(x, 0, 1)
        _dynamic(mask, 0, 2, 3)
        for layer in tower.layers:
            x = call(layer, x, mask)
    else:
        for layer in tower.layers:
            x = layer(x, mask)
    x = tower.avg_pooler(x.permute(0, 2, 1)).permute(0, 2, 1)
    x = tower.layer_norm(x)
    return hf.model.multi_modal_projector(x), out_lengths


def hidden_states(hf, batch: Batch, trim: bool = True, prefix: "SharedPrefix | None" = None,
                  compiled: bool = False) -> torch.Tensor:
    """Last hidden states (B, S, H) of the language model with the audio features merged in.

    With `prefix`, the batch's tokens continue the cached prefix: its keys and values are
    prepended in every layer and the positions go on from where it ends. compiled=True runs the
    encoder's and the language model's layers through the compiled scoring functions (scoring
    only: see `compiled_scoring_unsupported`).
    """
    embed = hf.model.get_input_embeddings()
    device = batch.input_ids.device
    inputs_embeds = embed(batch.input_ids.to(embed.weight.device)).to(device)
    if batch.input_features is not None:
        audio, out_lengths = encode_audio(hf, batch.input_features, batch.feature_attention_mask, trim=trim,
                                          compiled=compiled)
        keep = torch.arange(audio.shape[1], device=audio.device)[None, :] < out_lengths[:, None]
        audio = audio[keep]
        audio_mask = (batch.input_ids == hf.config.audio_token_id).unsqueeze(-1)
        if int(audio_mask.sum()) != audio.shape[0]:
            raise RuntimeError(f"audio tokens ({int(audio_mask.sum())}) != audio features ({audio.shape[0]})")
        inputs_embeds = inputs_embeds.to(audio.device).masked_scatter(audio_mask, audio.to(inputs_embeds.dtype))
    attention_mask, position_ids, cache = batch.attention_mask, batch.position_ids, None
    if prefix is not None:
        rows = batch.input_ids.shape[0]
        attention_mask = torch.cat([prefix.attention_mask.expand(rows, -1), attention_mask], dim=1)
        position_ids = position_ids + prefix.next_position.expand(rows)[:, None]
        cache = prefix.cache()
    lm = hf.model.language_model
    if compiled:
        return _language_model_by_layer(lm, inputs_embeds, attention_mask, position_ids, cache)
    past = {} if cache is None else {_cache_argument(lm): cache}
    out = lm(inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids, use_cache=False,
             **past)
    return out.last_hidden_state


def _cache_argument(module) -> str:
    """The forward's name for the key/value cache (of the language model or one of its layers):
    `cache` from transformers 5.2x on, `past_key_values` before (the old name warns, and goes in 5.40)."""
    import inspect

    parameters = inspect.signature(type(module).forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def answer_loss(model, batch: Batch, trim: bool = True) -> tuple[torch.Tensor, int]:
    """Mean cross-entropy over the answer tokens; the lm_head runs only at those positions."""
    hf = unwrap(model)
    h = hidden_states(hf, batch, trim=trim)
    picked = h.reshape(-1, h.shape[-1])[batch.target_positions]
    logits = hf.lm_head(picked).float()
    return F.cross_entropy(logits, batch.target_ids), int(batch.target_ids.numel())


def class_scores(model, batch: Batch, plan: LabelPlan, trim: bool = True,
                 prefix: "SharedPrefix | None" = None, compiled: bool = False) -> torch.Tensor:
    """(B, 2) log-probabilities of the first token where the two answers differ (compiled: see
    `hidden_states`)."""
    hf = unwrap(model)
    h = hidden_states(hf, batch, trim=trim, prefix=prefix, compiled=compiled)
    picked = h.reshape(-1, h.shape[-1])[batch.score_positions]
    logp = torch.log_softmax(hf.lm_head(picked).float(), dim=-1)
    return logp[:, list(plan.decision_ids)]


def scoring_attention(device: torch.device):
    """Attention kernels for scoring: cuDNN's attention builds a plan for most new batch shapes
    (first call 0.7-1.3 s against 0.3 ms for the memory-efficient kernel, H200, 2026-12-02,
    benchmarks/sdpa_new_shapes.py), and scoring meets a new shape with every clip length or
    candidate prompt length, so it uses the flash / memory-efficient kernels. Training, whose
    shapes repeat, keeps the default choice."""
    import contextlib

    if device.type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


# ----------------------------------------------------------------------------- compiled scoring
#
# About a third of scoring's GPU time is element-wise work between the matmuls (RMSNorm's fp32
# round trip, RoPE's halves and concatenations, SiLU, casts, residual adds: docs/PERFORMANCE.md,
# round 3), which inductor fuses. Scoring compiles its own two functions, one encoder layer and one
# decoder layer, called with the layer as an argument: layers of a stack share the compiled code
# (their parameters are graph inputs), and nothing in the model is changed, so training's in-place
# compiled layers (`compile_layers`) and every eager caller (validation, Try a clip, OPRO) are
# untouched. No CUDA graphs: the shapes change with the clips and the batch.

_COMPILED_SCORING: dict[str, Any] = {}


def _compiled_scoring(fn):
    """torch.compile(fn), made once per process (dynamo keeps its compiled code per function)."""
    compiled = _COMPILED_SCORING.get(fn.__name__)
    if compiled is None:
        compiled = _COMPILED_SCORING[fn.__name__] = torch.compile(fn, dynamic=None)
    return compiled


def _dynamic(tensor: torch.Tensor | None, *dims: int) -> None:
    """Compile the batch and length dimensions as symbols from the first call on, so that a new clip
    length or a short last batch reuses the code instead of recompiling (dynamic=None alone compiles
    a static version first, then a dynamic one at the first new shape)."""
    if tensor is not None:
        for dim in dims:
            torch._dynamo.maybe_mark_dynamic(tensor, dim)


def compiled_scoring_unsupported(loaded: LoadedModel) -> str | None:
    """Why the compiled scoring forward cannot serve this model, or None when it can: it builds
    the decoder's attention mask itself, in the form the sdpa attention takes, for full attention."""
    config = loaded.hf.model.language_model.config
    if config._attn_implementation != "sdpa":
        return f"the language model's attention is {config._attn_implementation!r}, not sdpa"
    if any(kind != "full_attention" for kind in getattr(config, "layer_types", None) or ()):
        return "the language model has sliding-window layers"
    return None


def _encoder_layer(layer, hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    return layer(hidden, mask)


def _decoder_layer(layer, hidden: torch.Tensor, mask: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                   position_ids: torch.Tensor, past: "_PrefixLayer | None", cache_name: str) -> torch.Tensor:
    # `past` is this layer's prefix alone, which ignores the layer number the attention passes:
    # a whole Cache is indexed by it, and the compiled code would specialise on (and be compiled
    # again for) every layer.
    return layer(hidden, attention_mask=mask, position_ids=position_ids, position_embeddings=(cos, sin),
                 use_cache=False, **{cache_name: past})


def _language_model_by_layer(lm, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                             position_ids: torch.Tensor, past: Cache | None) -> torch.Tensor:
    """`lm(...).last_hidden_state` for scoring, each decoder layer through the compiled `_decoder_layer`:
    Qwen2Model.forward's steps (rotary table, causal mask, layers, final norm) with the mask built here
    (`_causal_mask`) and each layer given its own prefix keys and values."""
    cos, sin = lm.rotary_emb(inputs_embeds, position_ids)
    mask = _causal_mask(attention_mask, inputs_embeds.shape[1])
    layers = lm.layers[: lm.config.num_hidden_layers]
    pasts = list(past.layers) if past is not None else [None] * len(layers)
    _dynamic(inputs_embeds, 0, 1)
    _dynamic(mask, 0, 2, 3)
    for tensor in (cos, sin, position_ids):
        _dynamic(tensor, 0, 1)
    call, cache_name = _compiled_scoring(_decoder_layer), _cache_argument(layers[0])
    hidden = inputs_embeds
    for layer, layer_past in zip(layers, pasts):
        hidden = call(layer, hidden, mask, cos, sin, position_ids, layer_past, cache_name)
    return lm.norm(hidden)


def _causal_mask(attention_mask: torch.Tensor, query_length: int) -> torch.Tensor:
    """(B, 1, S, L) boolean mask, True = attend, for the last S of L positions (the first L - S are
    a cached prefix): causal and padding, as transformers' sdpa mask. A padding query that would see
    nothing (left padding without a prefix) sees everything instead: its output is never read (it is
    masked as a key for the others), and a fully masked row is NaN in some kernels, which would then
    reach the real rows through the masked keys (NaN x 0)."""
    length = attention_mask.shape[1]
    device = attention_mask.device
    keys = torch.arange(length, device=device)
    queries = torch.arange(length - query_length, length, device=device)
    mask = (keys[None, :] <= queries[:, None])[None, None] & attention_mask.bool()[:, None, None, :]
    return mask | ~mask.any(dim=-1, keepdim=True)


# ----------------------------------------------------------------------------- cached prefixes

class _PrefixLayer(DynamicLayer):
    """One layer's keys and values of a prefix: prepended to every update, never grown, so one
    prefix serves any number of batches."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        super().__init__()
        self.keys, self.values = keys, values
        self.device, self.is_initialized = keys.device, True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        rows = key_states.shape[0]
        return (torch.cat([self.keys.expand(rows, -1, -1, -1), key_states], dim=-2),
                torch.cat([self.values.expand(rows, -1, -1, -1), value_states], dim=-2))


@dataclass
class SharedPrefix:
    """The language model's keys and values for tokens that come before every row of a batch.

    Scoring on it is exact up to float rounding: masked attention over [prefix, row] is the
    attention over the row's whole sequence (padding sits between them, masked, instead of in front).
    One row (the system prefix, shared by all clips) or one row per clip (an audio prefix).
    """

    layers: list[tuple[torch.Tensor, torch.Tensor]]
    attention_mask: torch.Tensor  # (rows, P), 1 = real token
    next_position: torch.Tensor   # (rows,) position id of the first token after the prefix

    def cache(self) -> Cache:
        return Cache(layers=[_PrefixLayer(k, v) for k, v in self.layers])

    @property
    def nbytes(self) -> int:
        return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in self.layers)


def _run_prefix(hf, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor) -> SharedPrefix:
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    out = hf.model.language_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                  position_ids=position_ids, use_cache=True)
    cache = out.cache if "cache" in type(out).__dataclass_fields__ else out.past_key_values
    layers = [(layer.keys, layer.values) for layer in cache.layers]
    return SharedPrefix(layers, attention_mask, attention_mask.sum(-1))


def system_prefix(model, processor, system_prompt: str) -> SharedPrefix:
    """The prefix every clip shares: the system turn and "Audio 1: <|audio_bos|>" (about a quarter
    of a 1-s clip's tokens). Score batches made with `make_batch(..., after_system_prefix=True)`."""
    hf = unwrap(model)
    ids, _ = _ids_around_audio(processor.tokenizer, system_prompt, "")
    embed = hf.model.get_input_embeddings()
    device = hf.lm_head.weight.device
    inputs_embeds = embed(torch.tensor([ids], device=embed.weight.device)).to(device)
    return _run_prefix(hf, inputs_embeds, torch.ones((1, len(ids)), dtype=torch.long, device=device))


def audio_prefix(model, processor, audios: Sequence[np.ndarray], system_prompt: str,
                 feature_device: str = "cpu", trim: bool = True) -> SharedPrefix:
    """Each clip's prefix up to and including its audio (<|audio_eos|>), left-padded: the part of
    the chat that does not depend on the instruction, so prompt candidates are scored on it with
    `instruction_batch` (the encoder and most tokens run once per clip, not once per candidate)."""
    hf = unwrap(model)
    tok = processor.tokenizer
    input_features, frame_mask = mel_features(processor.feature_extractor, audios, device=feature_device)
    ids_before, ids_after = _ids_around_audio(tok, system_prompt, "")
    audio_id = tok.convert_tokens_to_ids(FAMILY.audio_token)
    rows = [ids_before + [audio_id] * FAMILY.audio_tokens_for_frames(int(n)) + ids_after[:1]
            for n in frame_mask.sum(-1).tolist()]
    width = max(len(r) for r in rows)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, row in enumerate(rows):
        input_ids[b, width - len(row):], mask[b, width - len(row):] = torch.tensor(row), 1
    device = hf.lm_head.weight.device
    input_ids, mask = input_ids.to(device), mask.to(device)
    embed = hf.model.get_input_embeddings()
    inputs_embeds = embed(input_ids.to(embed.weight.device)).to(device)
    audio, out_lengths = encode_audio(hf, input_features.to(device), frame_mask.to(device), trim=trim)
    keep = torch.arange(audio.shape[1], device=audio.device)[None, :] < out_lengths[:, None]
    audio_mask = (input_ids == hf.config.audio_token_id).unsqueeze(-1)
    inputs_embeds = inputs_embeds.masked_scatter(audio_mask, audio[keep].to(inputs_embeds.dtype))
    return _run_prefix(hf, inputs_embeds, mask)


def instruction_batch(processor, system_prompt: str, prompt: str, plan: LabelPlan, rows: int) -> Batch:
    """A scoring batch of what follows `audio_prefix`: the instruction, the assistant turn and the
    answers' shared prefix; the same tokens for every row, so no padding."""
    _, ids_after = _ids_around_audio(processor.tokenizer, system_prompt, prompt)
    eos = processor.tokenizer.convert_tokens_to_ids(FAMILY.audio_placeholder.split(FAMILY.audio_token)[1])
    if not ids_after or ids_after[0] != eos:
        raise RuntimeError("the chat text after the audio does not start with the audio end token")
    seq = ids_after[1:] + plan.shared_prefix
    width = len(seq)
    input_ids = torch.tensor([seq] * rows, dtype=torch.long)
    ones = torch.ones((rows, width), dtype=torch.long)
    positions = torch.arange(width).expand(rows, -1).clone()
    score_positions = torch.arange(rows) * width + width - 1
    empty = torch.zeros(0, dtype=torch.long)
    return Batch(input_ids, ones, positions, None, None, empty, empty, empty, score_positions)


# ----------------------------------------------------------------------------- stock path

def stock_forward_logits(model, batch: Batch) -> torch.Tensor:
    """The unmodified Hugging Face forward: 3000 mel frames, full-vocabulary logits everywhere."""
    hf = unwrap(model)
    out = hf(input_ids=batch.input_ids, input_features=batch.input_features, attention_mask=batch.attention_mask,
             feature_attention_mask=batch.feature_attention_mask, position_ids=batch.position_ids, use_cache=False)
    return out.logits


def stock_answer_loss(model, batch: Batch) -> torch.Tensor:
    """HF's own loss with labels = answer tokens (prompt masked with -100), like the users' script."""
    hf = unwrap(model)
    labels = torch.full_like(batch.input_ids, -100)
    labels.view(-1)[batch.target_positions + 1] = batch.target_ids
    out = hf(input_ids=batch.input_ids, input_features=batch.input_features, attention_mask=batch.attention_mask,
             feature_attention_mask=batch.feature_attention_mask, position_ids=batch.position_ids,
             labels=labels, use_cache=False)
    return out.loss


def stock_class_scores(model, batch: Batch, plan: LabelPlan) -> torch.Tensor:
    logits = stock_forward_logits(model, batch)
    picked = logits.reshape(-1, logits.shape[-1])[batch.score_positions]
    return torch.log_softmax(picked.float(), dim=-1)[:, list(plan.decision_ids)]


# ----------------------------------------------------------------------------- parameter accounting

def meta_parameter_counts(model: str, targets: Sequence[str], lora_r: int = 16, lora_alpha: float = 32) -> dict:
    """Trainable/total parameters of LoRA on a model built on the meta device (no weights)."""
    from accelerate import init_empty_weights
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, Qwen2AudioConfig, Qwen2AudioForConditionalGeneration

    if FAMILY.is_reference_model(model):
        config = Qwen2AudioConfig(**copy.deepcopy(dict(FAMILY.reference_config)))
    else:
        config = AutoConfig.from_pretrained(resolve_model_path(model))
    with init_empty_weights():
        hf = Qwen2AudioForConditionalGeneration(config)
    total_base = sum(p.numel() for p in hf.parameters())
    peft_model = get_peft_model(hf, LoraConfig(r=lora_r, lora_alpha=lora_alpha, target_modules=list(targets),
                                               task_type="CAUSAL_LM"))
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    total = total_base + trainable
    return {"trainable": trainable, "total": total, "percent": round(100.0 * trainable / total, 4),
            "adapter_mb": round(trainable * 4 / 1e6, 1), "base_total": total_base,
            "targets": list(targets), "lora_r": lora_r}


def params_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="qwen2-audio-7b",
                        help="qwen2-audio-7b (public config, no weights), tiny, or a model folder")
    parser.add_argument("--targets", default="attention",
                        help="attention | attention+mlp | comma-separated module names")
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--lora-alpha", type=float, default=32)
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def params_main(args: argparse.Namespace) -> int:
    targets = FAMILY.target_modules(args.targets)
    counts = meta_parameter_counts(args.model, targets, args.lora_r, args.lora_alpha)
    if args.json:
        print(json.dumps({k: counts[k] for k in ("trainable", "total", "percent", "adapter_mb")}))
    else:
        print(f"model      {args.model}\ntargets    {','.join(targets)} (r={args.lora_r})\n"
              f"trainable  {counts['trainable']:,} ({counts['percent']:.4f}%)\n"
              f"total      {counts['total']:,}\nadapter    {counts['adapter_mb']:.1f} MB (fp32)")
    return 0


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
