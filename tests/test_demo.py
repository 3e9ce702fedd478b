"""The demo: its base model (the tiny model pre-trained to name sound kinds) and its workspace."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from engine.models.qwen2_audio import demo_model
from engine.models.qwen2_audio.tiny import default_tiny_dir
from engine.runs import folder as rf

# A few steps of the real recipe: enough to check the build, not to learn.
SMALL_RECIPE = dict(clips=24, epochs=1, batch=8)


def folder_digest(folder: Path) -> dict[str, str]:
    """sha256 of every file but the marker (which records the build's wall time)."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != demo_model.DEMO_MODEL_MARKER}


@pytest.mark.slow
def test_demo_model_build_is_deterministic_and_learns_from_the_random_tiny_model(tmp_path):
    first = demo_model.build_demo_model(tmp_path / "a", recipe=SMALL_RECIPE)
    second = demo_model.build_demo_model(tmp_path / "b", recipe=SMALL_RECIPE)
    assert folder_digest(first) == folder_digest(second)  # same recipe, same bytes
    marker = json.loads((first / demo_model.DEMO_MODEL_MARKER).read_text())
    assert marker["demo_model_version"] == demo_model.DEMO_MODEL_VERSION
    assert marker["recipe"]["clips"] == 24 and "voice" in marker["kinds"] and len(marker["kinds"]) >= 8
    assert demo_model.is_demo_model(first) and not demo_model.is_demo_model(tmp_path) and not demo_model.is_demo_model("tiny")
    # Every weight was trained: the pre-trained folder differs from the random tiny model it started from.
    from engine.models.qwen2_audio.tiny import build_tiny_model

    random_start = build_tiny_model(tmp_path / "random", seed=demo_model.PRETRAIN["seed"])
    weights = "model.safetensors"
    assert (random_start / weights).read_bytes() != (first / weights).read_bytes()
    assert (random_start / "tokenizer.json").read_bytes() == (first / "tokenizer.json").read_bytes()


def test_ensure_demo_model_builds_once_into_its_own_folder(tmp_path, monkeypatch):
    built = []

    def fake_build(out_dir, recipe=None, say=lambda msg: None):
        built.append(out_dir)
        Path(out_dir, demo_model.DEMO_MODEL_MARKER).write_text("{}")
        return out_dir

    monkeypatch.setattr(demo_model, "build_demo_model", fake_build)
    target = tmp_path / "cache" / "demo"
    assert demo_model.ensure_demo_model(target) == target and demo_model.ensure_demo_model(target) == target
    assert len(built) == 1 and built[0] != target  # built beside it, then renamed into place
    assert [p.name for p in target.parent.iterdir()] == ["demo"]  # no build folder left behind
    monkeypatch.delenv("QLORA_DASH_DEMO_MODEL", raising=False)
    monkeypatch.delenv("QLORA_DASH_TINY", raising=False)
    # The tests' random tiny model keeps its own folder: the demo model never replaces it.
    assert demo_model.default_demo_model_dir() != default_tiny_dir()
    assert demo_model.default_demo_model_dir().name == f"demo-qwen2-audio-v{demo_model.DEMO_MODEL_VERSION}"


def test_demo_workspace_file_set(demo_workspace):
    """The demo's runs, its data and what each run was trained on."""
    names = {p.name for p in demo_workspace.iterdir()}
    expected = {".demo-data", "demo-silero-vad", "demo-opro-base"}
    expected |= {f"demo-{preset}-s{seed}" for preset in ("attention", "attention-mlp") for seed in (42, 123)}
    expected |= {f"demo-opro-attention-mlp-s{seed}" for seed in (42, 123)}
    assert expected <= names
    data = demo_workspace / ".demo-data"
    assert {p.name for p in data.iterdir()} == {"README.txt", "train", "test", "val", "train.csv", "test.csv", "val.csv"}
    from engine.data.synth import dataset_style

    assert dataset_style(data) == "varied"
    for seed in (42, 123):
        config = rf.read_json(demo_workspace / f"demo-attention-s{seed}" / rf.CONFIG)
        assert demo_model.is_demo_model(config["model"]) and config["quantization"] == "4bit"
        assert {"test", "val"} <= {p.name for p in (demo_workspace / f"demo-attention-s{seed}" / "evaluations").iterdir()}
    opro_base = rf.read_json(demo_workspace / "demo-opro-base" / rf.CONFIG)
    assert demo_model.is_demo_model(opro_base["model"])  # the 2x2 design: the same base as the adapters


def test_dashboard_knows_demo_runs_by_their_model(demo_workspace):
    """Compare's demo caveat and the Train form's defaults follow the demo runs onto the demo model."""
    from engine.dashboard import launch, review

    comparison = review.compare(rf.list_runs(demo_workspace), ["Attention-Only (demo)", "Attention+MLP (demo)"],
                                n_boot=50)
    assert any(note.startswith("Demo runs use the tiny model") for note in comparison.notes)
    defaults = launch.demo_defaults(demo_workspace)
    assert demo_model.is_demo_model(defaults["model"])
    assert defaults["model"] == rf.read_json(demo_workspace / "demo-attention-s42" / rf.CONFIG)["model"]


def test_demo_runs_record_the_demo_models_name_so_a_copied_workspace_resolves_it(monkeypatch, tmp_path):
    """Run configs say `tiny-demo`, not this machine's cache folder; any machine resolves the name to
    its own cached demo model, and one without it is told how to build it."""
    from engine.models import ModelError, family_for
    from engine.models.qwen2_audio import QWEN2_AUDIO, runtime
    from engine.tasks import demo

    built = []
    monkeypatch.setattr(demo_model, "ensure_demo_model", lambda path=None, say=None: built.append(1) or tmp_path)
    assert demo.demo_base_model(say=lambda msg: None) == QWEN2_AUDIO.demo_model == "tiny-demo" and built
    assert family_for("tiny-demo") is QWEN2_AUDIO and demo_model.is_demo_model("tiny-demo")
    assert not demo_model.is_demo_model("tiny")

    monkeypatch.setenv("QLORA_DASH_DEMO_MODEL", str(tmp_path / "elsewhere"))
    with pytest.raises(ModelError, match="not built on this machine yet.*demo --model-only"):
        runtime.resolve_model_path("tiny-demo")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / demo_model.DEMO_MODEL_MARKER).write_text("{}")
    assert runtime.resolve_model_path("tiny-demo") == tmp_path / "elsewhere"
