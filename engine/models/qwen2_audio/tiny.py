"""The built-in `tiny` model: a complete Qwen2-Audio model folder generated locally, offline.

It is the same architecture class as the 7B (Qwen2AudioForConditionalGeneration) with small
widths, but keeps what the real feature extractor and audio-token arithmetic depend on:
num_mel_bins=128 and max_source_positions=1500 (3000 mel frames = 30 s). The tokenizer is a
byte-level BPE trained here on a few hundred words, carrying Qwen2-Audio's special tokens and
chat markers, so prompts, label words and <|AUDIO|> expansion go through exactly the same code
as the real model. The upper-case label words are kept out of the corpus so that, as with the
real tokenizer, SPEECH and NONSPEECH split into several sub-tokens. Random weights: it learns the demo task only through LoRA, which is the point.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from engine.models.qwen2_audio import QWEN2_AUDIO as FAMILY, SPECIAL_TOKENS
from engine.runs import folder as rf

TINY_VERSION = 2  # bump when the recipe changes: cached folders are rebuilt

TINY_SIZES = dict(
    text_hidden=64, text_layers=2, text_heads=4, text_intermediate=128,
    audio_d_model=64, audio_layers=2, audio_heads=4, audio_ffn=128,
)

_CORPUS = """
You are a helpful assistant. Is this short clip speech or non-speech? Answer with one word.
Does this audio contain human speech? Listen to the clip and classify it. Reply if someone is talking,
or if it is noise, music, a tone or silence. The answer is. Audio 1:
speech nonspeech noise voice talking music tone silence clip sound human yes no classify label answer word
one only respond with either the following what is in this recording describe
"""


def default_tiny_dir() -> Path:
    """Where the tiny model lives: $QLORA_DASH_TINY, else ~/.cache/qlora-dash/tiny-qwen2-audio-vN."""
    env = os.environ.get("QLORA_DASH_TINY")
    if env:
        return Path(env)
    return Path.home() / ".cache" / "qlora-dash" / f"tiny-qwen2-audio-v{TINY_VERSION}"


def ensure_tiny_model(path: Path | None = None, seed: int = 0) -> Path:
    """Build the tiny model folder once (atomically: built in a temp folder, then renamed)."""
    return build_once(Path(path) if path else default_tiny_dir(), "tiny.json",
                      lambda tmp: build_tiny_model(tmp, seed=seed), prefix=".tiny-build-")


def build_once(path: Path, marker: str, build: Callable[[Path], Any], prefix: str) -> Path:
    """`path` once `build(tmp)` has filled a temporary sibling folder (with `marker` written last)
    and it was renamed into place; a folder that already has `marker` is returned as it is. When
    two processes race, the loser's build is dropped and the winner's kept."""
    if (path / marker).is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=path.parent))
    try:
        build(tmp)
        try:
            os.replace(tmp, path)
        except OSError:  # another process won the race
            if not (path / marker).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def build_tokenizer():
    """A Qwen2 fast tokenizer (byte-level BPE) trained on a tiny corpus, with the special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2TokenizerFast

    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=list(SPECIAL_TOKENS), show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    tokenizer = Qwen2TokenizerFast(
        tokenizer_object=bpe, unk_token=None, bos_token=None, eos_token=FAMILY.turn_end_token,
        pad_token=SPECIAL_TOKENS[0])
    tokenizer.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS[1:])})
    return tokenizer


def build_tiny_model(out_dir: Path, seed: int = 0, sizes: dict[str, int] | None = None) -> Path:
    """Write config, random weights, tokenizer and processor of the tiny model into `out_dir`.

    sizes: other widths and depths than TINY_SIZES (the demo model's); the tests' model uses TINY_SIZES.
    """
    import torch
    from transformers import (Qwen2AudioConfig, Qwen2AudioForConditionalGeneration,
                              Qwen2AudioProcessor, WhisperFeatureExtractor)

    out_dir = Path(out_dir)
    tokenizer = build_tokenizer()
    audio_token_id = tokenizer.convert_tokens_to_ids(FAMILY.audio_token)
    s = {**TINY_SIZES, **(sizes or {})}
    reference_audio = FAMILY.reference_config["audio_config"]
    config = Qwen2AudioConfig(
        audio_config=dict(
            model_type="qwen2_audio_encoder", d_model=s["audio_d_model"], encoder_layers=s["audio_layers"],
            encoder_attention_heads=s["audio_heads"], encoder_ffn_dim=s["audio_ffn"],
            num_mel_bins=reference_audio["num_mel_bins"], max_source_positions=reference_audio["max_source_positions"],
            dropout=0.0, attention_dropout=0.0, activation_dropout=0.0),
        text_config=dict(
            model_type="qwen2", vocab_size=len(tokenizer), hidden_size=s["text_hidden"],
            num_hidden_layers=s["text_layers"], num_attention_heads=s["text_heads"],
            num_key_value_heads=s["text_heads"], intermediate_size=s["text_intermediate"],
            max_position_embeddings=8192, rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False),
        audio_token_index=audio_token_id,
    )
    torch.manual_seed(seed)
    model = Qwen2AudioForConditionalGeneration(config).to(torch.float32)
    model.save_pretrained(out_dir)
    feature_extractor = WhisperFeatureExtractor(
        feature_size=FAMILY.num_mel_bins, sampling_rate=FAMILY.sample_rate, hop_length=FAMILY.hop_length,
        chunk_length=int(FAMILY.max_audio_seconds), n_fft=FAMILY.n_fft, padding_value=0.0)
    processor = Qwen2AudioProcessor(feature_extractor=feature_extractor, tokenizer=tokenizer)
    processor.save_pretrained(out_dir)
    rf.atomic_write_json(out_dir / "tiny.json", {
        "tiny_version": TINY_VERSION, "seed": seed, "sizes": s,
        "note": "Demo model: random weights, small widths. Not Qwen2-Audio's weights; for tests and the demo only."})
    return out_dir


# Qwen's chat turns as a Jinja template, so a tiny proposer exercises the chat-template path.
CHAT_TEMPLATE = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
                 "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def build_tiny_causal_lm(out_dir: Path, seed: int = 0) -> Path:
    """A small random Qwen2ForCausalLM folder with the tiny tokenizer and a chat template: a
    stand-in for a local proposer LM (`python -m engine opro --proposer FOLDER`) in tests."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    out_dir = Path(out_dir)
    tokenizer = build_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    s = TINY_SIZES
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=s["text_hidden"], num_hidden_layers=s["text_layers"],
                         num_attention_heads=s["text_heads"], num_key_value_heads=s["text_heads"],
                         intermediate_size=s["text_intermediate"], max_position_embeddings=4096,
                         tie_word_embeddings=False, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    Qwen2ForCausalLM(config).to(torch.float32).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def tiny_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=None, help="folder (default: the shared cache)")
    parser.add_argument("--force", action="store_true", help="rebuild even if present")
    parser.add_argument("--causal-lm", action="store_true",
                        help="build a tiny text-only causal LM into --out instead (a stand-in OPRO proposer)")


def tiny_main(args: argparse.Namespace) -> int:
    if args.causal_lm:
        if not args.out:
            raise SystemExit("error: --causal-lm needs --out FOLDER")
        print(json.dumps({"path": str(build_tiny_causal_lm(Path(args.out)))}))
        return 0
    path = Path(args.out) if args.out else default_tiny_dir()
    if args.force and path.exists():
        shutil.rmtree(path)
    path = ensure_tiny_model(path)
    print(json.dumps({"path": str(path)}))
    return 0
