"""TrainConfig validation: one readable message naming the field, for every bad value."""

from __future__ import annotations

import pytest

from engine.config import ConfigError, TrainConfig, config_fields
from engine.models.qwen2_audio.runtime import meta_parameter_counts


def cfg(tmp_path, **overrides) -> TrainConfig:
    manifest = tmp_path / "train.csv"
    manifest.write_text("path,label\n")
    return TrainConfig(train_data=str(manifest), **overrides)


@pytest.mark.parametrize("overrides, field, words", [
    ({"lora_alpha": 0}, "lora_alpha", "> 0"),
    ({"lora_alpha": -4}, "lora_alpha", "> 0"),
    ({"lora_r": 0}, "lora_r", ">= 1"),
    ({"lora_r": 2.5}, "lora_r", "whole number"),
    ({"targets": "everything"}, "targets", "unknown preset"),
    ({"targets": ["q_proj", "qq_proj"]}, "targets", "qq_proj"),
    ({"label_words": ["SPEECH"]}, "label_words", "two words"),
    ({"label_words": ["SPEECH", "SPEECH"]}, "label_words", "differ"),
    ({"quantization": "3bit"}, "quantization", "4bit"),
    ({"learning_rate": 0}, "learning_rate", "(0, 1)"),
    ({"max_clip_seconds": 45}, "max_clip_seconds", "30"),
    ({"filters": {"snr_db": "loud"}}, "filters.snr_db", "min:max"),
    ({"epochs": "three"}, "epochs", "number"),
    ({"offload_embeddings": "maybe"}, "offload_embeddings", "auto, on, off"),  # choices without a flag
    ({"scheduler": "step"}, "scheduler", "linear, cosine"),
])
def test_invalid_values_name_the_field(tmp_path, overrides, field, words):
    with pytest.raises(ConfigError) as err:
        cfg(tmp_path, **overrides).validate()
    assert err.value.field == field
    assert str(err.value).startswith(f"{field}: ") and words in str(err.value)


def test_missing_manifest_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"train_data: not found: .*nope\.csv"):
        TrainConfig(train_data=str(tmp_path / "nope.csv")).validate()
    with pytest.raises(ConfigError, match="train_data: is required"):
        TrainConfig().validate()


def test_presets_defaults_and_labels(tmp_path):
    c = cfg(tmp_path).validate()
    assert (c.lora_r, c.lora_alpha, c.lora_dropout, c.seed, c.epochs, c.effective_batch) == (16, 32, 0.05, 42, 3, 16)
    assert c.quantization == "4bit" and c.display_label() == "Attention-Only"
    mlp = cfg(tmp_path, targets="attention+mlp").validate()
    assert mlp.target_modules[-3:] == ["gate_proj", "up_proj", "down_proj"] and mlp.display_label() == "Attention+MLP"
    assert cfg(tmp_path, targets="q_proj, v_proj").validate().targets == ["q_proj", "v_proj"]
    assert cfg(tmp_path, targets="q_proj").validate().targets == ["q_proj"]  # one module, as --targets q_proj


def test_yaml_round_trip_and_unknown_field(tmp_path):
    c = cfg(tmp_path, lora_r=8, targets="attention+mlp").validate()
    path = tmp_path / "c.yaml"
    import yaml

    path.write_text(yaml.safe_dump(c.to_dict()))
    assert TrainConfig.from_yaml(path).validate().to_dict() == c.to_dict()
    path.write_text("lora_rank: 8\n")
    with pytest.raises(ConfigError, match="lora_rank: unknown field"):
        TrainConfig.from_yaml(path)


def test_every_field_has_a_docstring():
    assert all(doc for _, _, doc in config_fields())


@pytest.mark.parametrize("targets, trainable, percent", [
    (["q_proj", "k_proj", "v_proj", "o_proj"], 20_709_376, 0.2460),
    (["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], 43_909_120, 0.5202),
])
def test_7b_parameter_accounting_on_the_meta_device(targets, trainable, percent):
    counts = meta_parameter_counts("qwen2-audio-7b", targets, lora_r=16)
    assert counts["trainable"] == trainable and counts["percent"] == percent
    assert counts["base_total"] == 8_397_094_912


def test_params_command_prints_the_figures(capsys):
    import json

    from engine.cli import main

    assert main(["params", "--model", "qwen2-audio-7b", "--targets", "attention+mlp", "--lora-r", "16", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out == {"trainable": 43909120, "total": 8441004032, "percent": 0.5202, "adapter_mb": 175.6}
    assert main(["params", "--targets", "attention"]) == 0
    text = capsys.readouterr().out
    assert "20,709,376 (0.2460%)" in text
