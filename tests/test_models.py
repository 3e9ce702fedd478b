"""The model family interface: one description states the chat template, audio front end, target
presets and architecture numbers; everything else asks it. Reference values come from the
Hugging Face processor and peft, never from the description itself."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engine.models import DEFAULT_FAMILY, FAMILIES, ModelError, family_for
from engine.models.qwen2_audio import QWEN2_AUDIO

REPO = Path(__file__).resolve().parents[1]
SYSTEM = "You are a helpful assistant."
PROMPT = "Is this short clip speech or non-speech? Answer with one word: SPEECH or NONSPEECH."


def test_the_description_is_torch_free_in_a_fresh_interpreter():
    code = ("import sys\n"
            "from engine.models import family_for\n"
            "import engine.config, engine.data.audio, engine.ops.disk, engine.ops.clip_worker\n"
            "family = family_for('tiny')\n"
            "family.prompt_text('s', 'p'); family.audio_tokens(16000); family.lora_parameter_count('attention', 16)\n"
            "engine.ops.disk.lora_parameter_count('attention+mlp', 8)\n"
            "print(','.join(m for m in ('torch', 'transformers', 'peft', 'bitsandbytes', 'accelerate') "
            "if m in sys.modules))\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


def test_constants_elsewhere_are_the_familys():
    from engine import config
    from engine.data import audio
    from engine.ops import clip_worker

    assert config.TARGET_PRESETS is DEFAULT_FAMILY.target_presets
    assert config.PRESET_LABELS is DEFAULT_FAMILY.preset_labels
    assert config.MODEL_LINEAR_NAMES is DEFAULT_FAMILY.linear_names
    assert (config.DEFAULT_MODEL, config.TINY_MODEL) == (DEFAULT_FAMILY.default_model, DEFAULT_FAMILY.tiny_model)
    assert config.DEFAULT_SYSTEM_PROMPT == DEFAULT_FAMILY.default_system_prompt
    assert audio.SAMPLE_RATE == clip_worker.SAMPLE_RATE == DEFAULT_FAMILY.sample_rate == 16000
    assert audio.DEFAULT_MAX_SECONDS == clip_worker.MAX_SECONDS == DEFAULT_FAMILY.max_audio_seconds == 30.0
    assert config.TrainConfig().max_clip_seconds == DEFAULT_FAMILY.max_audio_seconds
    assert dict(DEFAULT_FAMILY.target_presets) == {
        "attention": ("q_proj", "k_proj", "v_proj", "o_proj"),
        "attention+mlp": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")}


def _string_literals(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)}


def test_no_module_outside_the_family_spells_its_template_or_names():
    """The chat markers, the audio placeholder and the 7B's hub id are stated once."""
    family_dir = REPO / "engine" / "models"
    markers = ("<|im_start|>", "<|im_end|>", "<|AUDIO|>", "<|audio_bos|>", DEFAULT_FAMILY.default_model)
    offenders = []
    for path in sorted([*(REPO / "engine").rglob("*.py"), *(REPO / "pages").glob("*.py"), REPO / "app.py"]):
        if family_dir in path.parents:
            continue
        for literal in _string_literals(path):
            offenders += [f"{path.relative_to(REPO)}: {marker}" for marker in markers if marker in literal]
    assert offenders == []


# ---------------------------------------------------------------- which family

def test_family_for_recognises_names_hub_ids_and_folders(tiny_model, tmp_path):
    assert FAMILIES == (QWEN2_AUDIO,) and DEFAULT_FAMILY is QWEN2_AUDIO
    for name in ("tiny", "qwen2-audio-7b", "Qwen2-Audio-7B-Instruct", "Qwen/Qwen2-Audio-7B-Instruct",
                 "Qwen/Qwen2-Audio-7B", str(tiny_model)):
        assert QWEN2_AUDIO.recognises(name), name
        assert family_for(name) is QWEN2_AUDIO
    assert QWEN2_AUDIO.canonical_name("qwen2-audio-7b") == "Qwen/Qwen2-Audio-7B-Instruct"
    # Not recognisable: the default family, whose loader then says what is missing.
    assert family_for(str(tmp_path / "not-there")) is QWEN2_AUDIO
    no_type = tmp_path / "no-type"
    no_type.mkdir()
    (no_type / "config.json").write_text("{}")
    assert family_for(str(no_type)) is QWEN2_AUDIO


def test_a_folder_of_an_unknown_architecture_is_refused_with_its_model_type(tmp_path):
    other = tmp_path / "other-model"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "qwen2_5_omni"}))
    assert not QWEN2_AUDIO.recognises(str(other))
    with pytest.raises(ModelError, match=r"other-model: config.json names model_type 'qwen2_5_omni'.*qwen2_audio"):
        family_for(str(other))


def test_a_second_family_is_one_registry_entry(tmp_path, monkeypatch):
    import dataclasses

    import engine.models as models
    from engine.ops import disk

    omni = dataclasses.replace(QWEN2_AUDIO, name="qwen2_5_omni", display_name="Qwen2.5-Omni",
                               default_model="Qwen/Qwen2.5-Omni-7B", model_types=("qwen2_5_omni",),
                               hub_name_patterns=("qwen2.5-omni",), aliases={}, tiny_model=None)
    monkeypatch.setattr(models, "FAMILIES", (QWEN2_AUDIO, omni))
    folder = tmp_path / "omni"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "model_type": "qwen2_5_omni",
        "text_config": {"hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 1, "intermediate_size": 96},
        "audio_config": {"d_model": 32, "encoder_layers": 1, "encoder_ffn_dim": 64}}))
    assert family_for(str(folder)) is omni and family_for("Qwen/Qwen2.5-Omni-7B") is omni
    assert family_for("tiny") is QWEN2_AUDIO
    # the disk estimate reads the folder through the family it belongs to: q 64+64 + encoder q 32+32
    assert disk.lora_parameter_count("q_proj", 1, str(folder)) == 128 + 64


def test_target_modules_from_presets_strings_and_lists():
    assert QWEN2_AUDIO.target_modules("attention") == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert QWEN2_AUDIO.target_modules(" q_proj, fc1,,q_proj ") == ["q_proj", "fc1"]
    assert QWEN2_AUDIO.target_modules(["o_proj", "linear"]) == ["o_proj", "linear"]


# ---------------------------------------------------------------- against the Hugging Face processor

@pytest.fixture(scope="module")
def processor(tiny_model):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_model)


def test_prompt_text_equals_the_processors_chat_template(processor):
    messages = [{"role": "system", "content": SYSTEM},
                {"role": "user", "content": [{"type": "audio", "audio_url": "clip.wav"}, {"type": "text", "text": PROMPT}]}]
    theirs = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert QWEN2_AUDIO.prompt_text(SYSTEM, PROMPT) == theirs


def test_text_only_chat_equals_the_processors_chat_template(processor):
    user = "Write a better instruction.\n\n["
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]
    theirs = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert QWEN2_AUDIO.chat_text(SYSTEM, user) == theirs


@pytest.mark.parametrize("seconds", [0.01, 0.25, 1.0, 7.31, 30.0, 41.0])
def test_audio_tokens_equal_what_the_processor_inserts(processor, seconds):
    n_samples = int(round(seconds * QWEN2_AUDIO.sample_rate))
    audio = np.zeros(n_samples, dtype=np.float32)
    ids = processor(text=[QWEN2_AUDIO.prompt_text(SYSTEM, PROMPT)], audio=[audio],
                    sampling_rate=QWEN2_AUDIO.sample_rate, return_tensors="np")["input_ids"][0]
    audio_id = processor.tokenizer.convert_tokens_to_ids(QWEN2_AUDIO.audio_token)
    assert int((ids == audio_id).sum()) == QWEN2_AUDIO.audio_tokens(n_samples)


def test_encoder_lengths_equal_the_encoders_own_helper(tiny_model):
    import torch
    from transformers import Qwen2AudioForConditionalGeneration

    tower = Qwen2AudioForConditionalGeneration.from_pretrained(tiny_model).model.audio_tower
    frames = torch.tensor([1, 2, 3, 4, 99, 100, 101, 2999, 3000])
    ours = QWEN2_AUDIO.encoder_output_lengths(frames)
    theirs = tower._get_feat_extract_output_lengths(frames)
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs))
    assert QWEN2_AUDIO.full_mel_frames == 2 * tower.config.max_source_positions == 3000


# ---------------------------------------------------------------- architecture numbers

def test_7b_lora_counts_are_unchanged():
    from engine.ops import disk

    # peft's counts on the meta-device 7B (tests/test_config.py checks them against peft itself).
    assert QWEN2_AUDIO.lora_parameter_count("attention", 16) == disk.lora_parameter_count("attention", 16) == 20_709_376
    assert QWEN2_AUDIO.lora_parameter_count("attention+mlp", 16) == disk.lora_parameter_count("attention+mlp", 16) \
        == 43_909_120


def test_lora_count_from_a_model_folder_matches_peft(tiny_model):
    from engine.models.qwen2_audio.runtime import meta_parameter_counts
    from engine.ops import disk

    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
               "out_proj", "fc1", "fc2", "linear"]
    peft_count = meta_parameter_counts(str(tiny_model), targets, lora_r=4)["trainable"]
    assert disk.lora_parameter_count(targets, 4, str(tiny_model)) == peft_count


def test_runtime_is_the_familys_torch_module():
    runtime = QWEN2_AUDIO.runtime()
    assert runtime.__name__ == "engine.models.qwen2_audio.runtime" and runtime.FAMILY is QWEN2_AUDIO
    assert runtime.ModelError is ModelError
    assert runtime.prompt_text(SYSTEM, PROMPT) == QWEN2_AUDIO.prompt_text(SYSTEM, PROMPT)
