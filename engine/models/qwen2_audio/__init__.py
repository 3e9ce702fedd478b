"""Qwen2-Audio: the one model family implemented (the 7B-Instruct and the local tiny model).

This module is the torch-free description; `runtime` holds the torch code and `tiny` builds the
small random model with the same architecture class.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from engine.models.family import ModelFamily

AUDIO_TOKEN = "<|AUDIO|>"
AUDIO_PLACEHOLDER = "<|audio_bos|><|AUDIO|><|audio_eos|>"
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", AUDIO_TOKEN, "<|audio_bos|>", "<|audio_eos|>")

ATTENTION_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_TARGETS = ("gate_proj", "up_proj", "down_proj")
# Encoder attention output and MLP, and the multi-modal projector (`linear`).
ENCODER_LINEAR_NAMES = ("out_proj", "fc1", "fc2", "linear")

# Public configuration of Qwen/Qwen2-Audio-7B-Instruct (no weights needed to build it on meta).
QWEN2_AUDIO_7B_CONFIG: Mapping[str, Any] = dict(
    audio_config=dict(model_type="qwen2_audio_encoder", d_model=1280, encoder_layers=32,
                      encoder_attention_heads=20, encoder_ffn_dim=5120, num_mel_bins=128,
                      max_source_positions=1500),
    text_config=dict(model_type="qwen2", vocab_size=156032, hidden_size=4096, num_hidden_layers=32,
                     num_attention_heads=32, num_key_value_heads=32, intermediate_size=11008,
                     rms_norm_eps=1e-5, rope_theta=10000.0, max_position_embeddings=8192,
                     tie_word_embeddings=False),
    audio_token_index=151646,
)


@dataclass(frozen=True, eq=False)  # one instance per family: compared and hashed by identity
class Qwen2AudioFamily(ModelFamily):
    """Whisper-style encoder (two convolutions, 2x pooling) + projector + Qwen2 language model."""

    audio_token: str = AUDIO_TOKEN
    """The token the processor repeats once per audio frame."""
    audio_placeholder: str = AUDIO_PLACEHOLDER
    """What the chat template writes for one audio item."""

    def encoder_output_lengths(self, mel_frames):
        """(after the convolutions, after pooling) lengths for mel frame counts (ints or tensors).

        The same arithmetic as the encoder's own length helper and the processor's token count.
        """
        after_convolutions = (mel_frames - 1) // 2 + 1
        return after_convolutions, (after_convolutions - 2) // 2 + 1

    def audio_tokens_for_frames(self, mel_frames: int) -> int:
        return int(self.encoder_output_lengths(int(mel_frames))[1])

    def prompt_text(self, system_prompt: str, prompt: str) -> str:
        # Qwen2-Audio-Instruct's chat template for [system, user(audio, text)], generation prompt on.
        return (f"<|im_start|>system\n{system_prompt}<|im_end|>\n"
                f"<|im_start|>user\nAudio 1: {self.audio_placeholder}\n{prompt}<|im_end|>\n"
                f"<|im_start|>assistant\n")

    def chat_text(self, system_prompt: str, user: str) -> str:
        return (f"<|im_start|>system\n{system_prompt}<|im_end|>\n"
                f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n")

    def layer_sizes(self, config: Mapping[str, Any]) -> dict[str, int]:
        text, audio = config["text_config"], config["audio_config"]
        heads = text["num_attention_heads"]
        head_dim = text.get("head_dim") or text["hidden_size"] // heads
        return dict(lm_layers=text["num_hidden_layers"], hidden=text["hidden_size"], q_out=heads * head_dim,
                    kv_out=text.get("num_key_value_heads", heads) * head_dim,
                    intermediate=text["intermediate_size"], audio_layers=audio["encoder_layers"],
                    d_model=audio["d_model"], audio_ffn=audio["encoder_ffn_dim"])

    def lora_parameters_per_rank(self, modules: Sequence[str], sizes: Mapping[str, int]) -> int:
        # Names match as peft matches them: q/k/v_proj hit the language model and the audio
        # encoder, o_proj and the MLP names only the language model, out_proj/fc1/fc2 only the encoder.
        h, d, ffn, inter = sizes["hidden"], sizes["d_model"], sizes["audio_ffn"], sizes["intermediate"]
        lm = {"q_proj": h + sizes["q_out"], "k_proj": h + sizes["kv_out"], "v_proj": h + sizes["kv_out"],
              "o_proj": sizes["q_out"] + h, "gate_proj": h + inter, "up_proj": h + inter, "down_proj": inter + h}
        encoder = {"q_proj": 2 * d, "k_proj": 2 * d, "v_proj": 2 * d, "out_proj": 2 * d, "fc1": d + ffn, "fc2": ffn + d}
        per_rank = 0
        for name in dict.fromkeys(modules):
            per_rank += sizes["lm_layers"] * lm.get(name, 0) + sizes["audio_layers"] * encoder.get(name, 0)
            if name == "linear":  # the multi-modal projector, d_model -> hidden
                per_rank += d + h
        return per_rank


QWEN2_AUDIO = Qwen2AudioFamily(
    name="qwen2_audio",
    display_name="Qwen2-Audio",
    default_model="Qwen/Qwen2-Audio-7B-Instruct",
    runtime_module="engine.models.qwen2_audio.runtime",
    model_types=("qwen2_audio",),
    hub_name_patterns=("qwen2-audio",),
    aliases={"qwen2-audio-7b": "Qwen/Qwen2-Audio-7B-Instruct", "qwen2-audio-7b-instruct": "Qwen/Qwen2-Audio-7B-Instruct"},
    tiny_model="tiny",
    demo_model="tiny-demo",
    sample_rate=16000,
    max_audio_seconds=30.0,
    hop_length=160,
    num_mel_bins=128,
    n_fft=400,
    default_system_prompt="You are a helpful assistant.",
    turn_end_token="<|im_end|>",
    target_presets={"attention": ATTENTION_TARGETS, "attention+mlp": ATTENTION_TARGETS + MLP_TARGETS},
    preset_labels={"attention": "Attention-Only", "attention+mlp": "Attention+MLP"},
    linear_names=frozenset(ATTENTION_TARGETS + MLP_TARGETS + ENCODER_LINEAR_NAMES),
    # transformers 5 matches skip-modules against full names: the audio encoder and projector stay bf16.
    quantization_skip_modules=("model.audio_tower", "model.multi_modal_projector", "lm_head"),
    reference_config=QWEN2_AUDIO_7B_CONFIG,
)
