"""Training on the tiny model with 4-bit QLoRA on the CPU: the run-folder contract, determinism,
learning, cancellation, bad input and a full disk."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from engine.runs import folder as rf
from engine.config import ConfigError, TrainConfig
from engine.tasks.train import train

# The exact file set of a finished training run (README: "Run folder contract").
FINISHED_TRAIN_RUN_FILES = {
    "config.json", "status.json", "environment.json", "metrics.jsonl", "summary.json", "engine.log",
    "adapter/adapter_config.json", "adapter/adapter_model.safetensors",
}


def files_of(run_dir: Path) -> set[str]:
    return {p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*") if p.is_file()}


def quick_config(train_csv: Path, **overrides) -> TrainConfig:
    values = dict(model="tiny", quantization="4bit", device="cpu", targets="attention", seed=7, epochs=1,
                  per_device_batch=8, grad_accum=1, learning_rate=2e-3, lora_dropout=0.0, warmup_ratio=0.0,
                  train_data=str(train_csv))
    values.update(overrides)
    return TrainConfig(**values)


@pytest.fixture(scope="module")
def attention_run(tmp_path_factory, demo_data, tiny_model) -> Path:
    run_dir = tmp_path_factory.mktemp("runs") / "attn"
    train(quick_config(demo_data["train"], max_steps=6), run_dir)
    return run_dir


@pytest.mark.slow
def test_finished_run_has_exactly_the_documented_files(attention_run):
    assert files_of(attention_run) == FINISHED_TRAIN_RUN_FILES
    status = rf.read_json(attention_run / rf.STATUS)
    assert status["state"] == rf.SUCCEEDED and status["ended_at"] and status["pid"] and status["process_start_time"]
    config = rf.read_json(attention_run / rf.CONFIG)
    assert config["kind"] == "train" and config["schema_version"] == rf.SCHEMA_VERSION
    assert config["target_modules"] == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert config["quantization"] == "4bit"


@pytest.mark.slow
def test_metrics_summary_and_environment(attention_run):
    metrics = rf.read_metrics(attention_run)
    assert [m["step"] for m in metrics] == list(range(1, 7))
    for key in ("epoch", "loss", "learning_rate", "samples_per_s", "elapsed_s", "eta_s"):
        assert key in metrics[0]
    summary = rf.read_json(attention_run / rf.SUMMARY)
    assert summary["steps"] == 6 and summary["final_train_loss"] == pytest.approx(metrics[-1]["loss"])
    assert 0 < summary["trainable_percent"] < 100 and summary["adapter_mb"] > 0
    assert summary["data"]["train"]["n_clips"] == 96
    env = rf.read_json(attention_run / rf.ENVIRONMENT)
    assert env["packages"]["bitsandbytes"] and env["device"] == "cpu"


@pytest.mark.slow
def test_adapter_reloads_with_peft_and_gives_the_same_logits(attention_run, demo_data):
    """PeftModel.from_pretrained on the saved adapter scores exactly like the model that trained."""
    import torch
    from peft import PeftModel

    from engine.models.qwen2_audio import runtime as m
    from engine.data.manifests import AudioCache, load_clips

    clips, _ = load_clips(demo_data["test"])
    audios = [AudioCache().load(c) for c in clips[:6]]
    cfg = TrainConfig.from_dict(rf.read_json(attention_run / rf.CONFIG))
    loaded = m.load_model("tiny", "4bit", "cpu")
    loaded.model = PeftModel.from_pretrained(loaded.hf, attention_run / "adapter")
    plan = m.label_plan(loaded.processor.tokenizer, cfg.label_words)
    loaded.model.eval()
    with torch.no_grad():
        batch = m.make_batch(loaded.processor, audios, cfg.system_prompt, cfg.prompt, plan, full_features=True)
        reloaded = m.stock_class_scores(loaded.model, batch, plan)
        # the engine scores through unwrap(model): the bare module tree, LoRA layers still in place
        unwrapped = m.stock_class_scores(m.unwrap(loaded.model), batch, plan)
    np.testing.assert_allclose(unwrapped.numpy(), reloaded.numpy(), atol=1e-6)
    from engine.tasks.evaluate import score_audio

    loaded2 = m.load_model("tiny", "4bit", "cpu")
    m.load_adapter(loaded2, attention_run / "adapter")
    ours = score_audio(loaded2, audios, cfg.system_prompt, cfg.prompt, cfg.label_words)
    np.testing.assert_allclose(ours, reloaded.numpy(), atol=1e-5)
    # and the adapter really changes the model (a no-op adapter would also "reload")
    with loaded.model.disable_adapter(), torch.no_grad():
        plain = m.stock_class_scores(loaded.model, batch, plan)
    assert not np.allclose(plain.numpy(), reloaded.numpy(), atol=1e-4)


@pytest.mark.slow
def test_attention_plus_mlp_preset_trains_in_4bit(tmp_path, demo_data):
    run_dir = tmp_path / "mlp"
    summary = train(quick_config(demo_data["train"], targets="attention+mlp", max_steps=2), run_dir)
    config = rf.read_json(run_dir / rf.CONFIG)
    assert config["target_modules"][-3:] == ["gate_proj", "up_proj", "down_proj"]
    adapter_cfg = rf.read_json(run_dir / "adapter" / "adapter_config.json")
    assert set(adapter_cfg["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                  "down_proj"}
    assert summary["steps"] == 2 and files_of(run_dir) == FINISHED_TRAIN_RUN_FILES


@pytest.mark.slow
def test_evaluations_after_threshold_from_use_the_cut_chosen_on_it(tmp_path, demo_data):
    from engine.runs.predictions import read_predictions
    from engine.tasks.evaluate import choose_threshold

    run_dir = tmp_path / "cut"
    train(quick_config(demo_data["train"], max_steps=3), run_dir,
          evaluate_on={"val": str(demo_data["val"]), "test": str(demo_data["test"])}, threshold_from="val")
    val = rf.read_json(rf.evaluation_dir(run_dir, "val") / rf.EVALUATION)
    test = rf.read_json(rf.evaluation_dir(run_dir, "test") / rf.EVALUATION)
    assert val["threshold"] == 0.5 and val["threshold_source"] == "fixed (arg-max)"
    cut = choose_threshold(read_predictions(run_dir, "val"))
    assert test["threshold"] == cut and test["threshold_source"] == "chosen on evaluation 'val' (max balanced accuracy)"
    records = read_predictions(run_dir, "test")
    from engine.labels import NONSPEECH, SPEECH

    assert all(r["pred"] == (SPEECH if r["p_speech"] >= cut else NONSPEECH) for r in records)


@pytest.mark.slow
def test_same_seed_gives_the_same_losses_and_another_seed_does_not(tmp_path, demo_data):
    losses = []
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        train(quick_config(demo_data["train"], seed=seed, max_steps=3, lora_dropout=0.05), tmp_path / name)
        losses.append([m["loss"] for m in rf.read_metrics(tmp_path / name)])
    assert losses[0] == losses[1]
    assert losses[0] != losses[2]


@pytest.mark.slow
def test_loss_falls_on_a_learnable_set(tmp_path, demo_data):
    train(quick_config(demo_data["train"], targets="attention+mlp", epochs=2, max_steps=16,
                       learning_rate=3e-3),
          tmp_path / "learn")
    losses = [m["loss"] for m in rf.read_metrics(tmp_path / "learn")]
    assert len(losses) == 16
    assert np.mean(losses[-4:]) < np.mean(losses[:4]) - 0.3, losses


# ---------------------------------------------------------------- validation after every epoch

VALIDATION_KEYS = {"kind", "step", "epoch", "val_loss", "val_accuracy", "val_balanced_accuracy", "val_clips",
                   "elapsed_s"}


def test_validation_metrics_match_a_hand_worked_example():
    from engine.tasks.train import validation_metrics

    # predictions S, N, N, S for labels S, S, N, N: one of each class right
    got = validation_metrics([0.9, 0.4, 0.2, 0.7], ["SPEECH", "SPEECH", "NONSPEECH", "NONSPEECH"])
    # -(ln 0.9 + ln 0.4 + ln 0.8 + ln 0.3) / 4, worked by hand: 2.4487676 / 4
    assert got == {"val_loss": pytest.approx(0.6121919, abs=1e-7), "val_accuracy": 0.5,
                   "val_balanced_accuracy": 0.5, "val_clips": 4}
    # unbalanced: SPEECH recall 2/3, NONSPEECH recall 1/1; p = 0.5 counts as SPEECH, like make_record
    got = validation_metrics([0.9, 0.5, 0.3, 0.2], ["SPEECH", "SPEECH", "SPEECH", "NONSPEECH"])
    assert got["val_accuracy"] == 0.75 and got["val_balanced_accuracy"] == pytest.approx(5 / 6)


@pytest.mark.slow
def test_validation_each_epoch_leaves_the_training_trajectory_unchanged(tmp_path, demo_data):
    """With dropout on, the same seed trains to the same losses and gradient norms with and without
    val_data; the run with it logs one validation line per epoch, the last equal to its val evaluation."""
    common = dict(epochs=2, per_device_batch=16, lora_dropout=0.1, seed=11)
    train(quick_config(demo_data["train"], **common), tmp_path / "plain")
    train(quick_config(demo_data["train"], val_data=str(demo_data["val"]), **common), tmp_path / "validated")
    plain, validated = rf.read_metrics(tmp_path / "plain"), rf.read_metrics(tmp_path / "validated")
    assert [m["loss"] for m in validated] == [m["loss"] for m in plain]
    assert [m["grad_norm"] for m in validated] == [m["grad_norm"] for m in plain]
    assert len(plain) == 12 and rf.read_validation_metrics(tmp_path / "plain") == []

    points = rf.read_validation_metrics(tmp_path / "validated")
    assert [(p["step"], p["epoch"]) for p in points] == [(6, 1.0), (12, 2.0)]
    assert all(set(p) == VALIDATION_KEYS and p["kind"] == "validation" and p["val_clips"] == 16 for p in points)
    # the last point is the final val evaluation, recomputed here from its predictions
    evaluation = rf.read_json(rf.evaluation_dir(tmp_path / "validated", "val") / rf.EVALUATION)["summary"]
    records = rf.read_jsonl(rf.evaluation_dir(tmp_path / "validated", "val") / rf.PREDICTIONS)
    log_loss = -sum(np.log(r["p_speech"] if r["label"] == "SPEECH" else 1 - r["p_speech"]) for r in records) / 16
    assert points[-1]["val_loss"] == pytest.approx(log_loss, rel=1e-9)
    assert points[-1]["val_accuracy"] == pytest.approx(evaluation["accuracy"])
    assert points[-1]["val_balanced_accuracy"] == pytest.approx(evaluation["balanced_accuracy"])
    # the step lines are exactly those of a run without validation; the evaluation leaves no progress file
    assert files_of(tmp_path / "validated") == FINISHED_TRAIN_RUN_FILES | {
        "evaluations/val/predictions.jsonl", "evaluations/val/evaluation.json"}


def train_then_sigterm(argv: list[str], run_dir: Path, repo_root: Path, wait_s: float = 90) -> int:
    """Start `python -m engine train ARGV`, SIGTERM it once two steps are logged; its exit code."""
    proc = subprocess.Popen([sys.executable, "-m", "engine", "train", *argv, "--run-dir", str(run_dir)],
                            cwd=repo_root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and len(rf.read_metrics(run_dir)) < 2:
            time.sleep(0.2)
        assert rf.read_metrics(run_dir), "training never logged a step"
        proc.send_signal(signal.SIGTERM)
        return proc.wait(timeout=wait_s)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.mark.slow
def test_sigterm_saves_the_adapter_and_ends_cancelled(tmp_path, demo_data, repo_root):
    run_dir = tmp_path / "cancel-me"
    code = train_then_sigterm(["--model", "tiny", "--device", "cpu", "--train-csv", str(demo_data["train"]),
                               "--num-epochs", "50", "--per-device-train-batch-size", "4",
                               "--gradient-accumulation-steps", "1"], run_dir, repo_root)
    assert code == 3  # exit code of a run that did not succeed
    status = rf.read_json(run_dir / rf.STATUS)
    assert status["state"] == rf.CANCELLED and status["signal"] == signal.SIGTERM
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    assert rf.read_json(run_dir / rf.SUMMARY)["stopped_early"] is True


@pytest.mark.slow
def test_full_disk_during_adapter_write_marks_failed_and_leaves_no_adapter(tmp_path, demo_data, monkeypatch):
    from peft import PeftModel

    def full_disk(self, save_directory, **kwargs):
        Path(save_directory).mkdir(parents=True, exist_ok=True)
        (Path(save_directory) / "adapter_model.safetensors").write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(PeftModel, "save_pretrained", full_disk)
    run_dir = tmp_path / "full"
    with pytest.raises(OSError):
        train(quick_config(demo_data["train"], max_steps=1), run_dir)
    status = rf.read_json(run_dir / rf.STATUS)
    assert status["state"] == rf.FAILED and status["error"].startswith("disk full")
    assert not (run_dir / "adapter").exists()
    assert not any("adapter_model" in f for f in files_of(run_dir))


# ---------------------------------------------------------------------------- bad input, as a new user


def run_cli(capsys, *args: str) -> subprocess.CompletedProcess:
    """`python -m engine ARGS` in-process (the same code path, without paying the imports again)."""
    from engine.cli import main

    capsys.readouterr()
    code = main(list(args))
    out = capsys.readouterr()
    return subprocess.CompletedProcess(list(args), code, out.out, out.err)


def write_manifest(folder: Path, rows: list[tuple[str, str]]) -> Path:
    manifest = folder / "manifest.csv"
    manifest.write_text("path,label\n" + "".join(f"{p},{label}\n" for p, label in rows))
    return manifest


def good_clip(folder: Path, name: str, seconds: float = 1.0, sr: int = 16000, channels: int = 1) -> str:
    rng = np.random.default_rng(len(name))
    data = (0.1 * rng.standard_normal((int(sr * seconds), channels))).astype(np.float32)
    sf.write(folder / name, data, sr)
    return name


def assert_not_finished(run_dir: Path) -> None:
    if run_dir.exists():
        assert not (run_dir / "adapter").exists()
        if (run_dir / rf.STATUS).exists():
            assert rf.read_json(run_dir / rf.STATUS)["state"] == rf.FAILED


@pytest.mark.parametrize("case", ["missing_manifest", "empty_manifest", "unknown_label", "text_as_wav", "zero_bytes",
                                  "missing_clip"])
def test_bad_training_input_gives_a_clear_message_and_no_finished_run(case, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    ok = [(good_clip(data, f"ok{i}.wav"), "SPEECH" if i % 2 else "NONSPEECH") for i in range(2)]
    if case == "missing_manifest":
        manifest, expect = data / "nope.csv", "not found"
    elif case == "empty_manifest":
        manifest = data / "manifest.csv"
        manifest.write_text("path,label\n")
        expect = "no rows"
    elif case == "unknown_label":
        manifest, expect = write_manifest(data, ok + [(good_clip(data, "x.wav"), "MAYBE")]), "MAYBE"
    elif case == "text_as_wav":
        (data / "notes.wav").write_text("this is not audio\n")
        manifest, expect = write_manifest(data, ok + [("notes.wav", "SPEECH")]), "notes.wav"
    elif case == "zero_bytes":
        (data / "empty.wav").write_bytes(b"")
        manifest, expect = write_manifest(data, ok + [("empty.wav", "SPEECH")]), "empty.wav"
    else:
        manifest, expect = write_manifest(data, ok + [("gone.wav", "SPEECH")]), "gone.wav"
    run_dir = tmp_path / "run"
    result = run_cli(capsys, "train", "--model", "tiny", "--device", "cpu", "--train-csv", str(manifest),
                     "--run-dir", str(run_dir), "--max-steps", "1")
    assert result.returncode != 0
    assert expect.lower() in result.stderr.lower(), result.stderr
    assert "Traceback" not in result.stderr
    assert_not_finished(run_dir)


@pytest.mark.slow
def test_every_bad_file_is_listed_at_once_and_skip_bad_audio_records_them(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.wav").write_text("text")
    (data / "b.wav").write_bytes(b"")
    rows = [(good_clip(data, f"ok{i}.wav"), "SPEECH" if i % 2 else "NONSPEECH") for i in range(4)]
    manifest = write_manifest(data, rows + [("a.wav", "SPEECH"), ("b.wav", "NONSPEECH")])
    refused = run_cli(capsys, "train", "--model", "tiny", "--device", "cpu", "--train-csv", str(manifest),
                      "--run-dir", str(tmp_path / "r1"), "--max-steps", "1")
    assert refused.returncode != 0 and "a.wav" in refused.stderr and "b.wav" in refused.stderr
    skipped = run_cli(capsys, "train", "--model", "tiny", "--device", "cpu", "--train-csv", str(manifest),
                      "--run-dir", str(tmp_path / "r2"), "--max-steps", "1", "--skip_bad_audio", "--json")
    assert skipped.returncode == 0, skipped.stderr
    bad = json.loads(skipped.stdout)["data"]["train"]["bad_files"]
    assert sorted(Path(b["path"]).name for b in bad) == ["a.wav", "b.wav"]


@pytest.mark.slow
def test_two_minute_stereo_44k_clip_is_truncated_and_counted(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    rows = [(good_clip(data, "long.wav", seconds=120, sr=44100, channels=2), "SPEECH"),
            (good_clip(data, "short.wav"), "NONSPEECH")]
    manifest = write_manifest(data, rows)
    result = run_cli(capsys, "train", "--model", "tiny", "--device", "cpu", "--train-csv", str(manifest),
                     "--run-dir", str(tmp_path / "run"), "--max-steps", "1", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["data"]["train"]["truncated"] == ["long.wav"]


@pytest.mark.slow
def test_cli_accepts_the_users_underscore_flags(tmp_path, demo_data, capsys):
    result = run_cli(capsys, "train", "--model", "tiny", "--device", "cpu", "--train_csv", str(demo_data["train"]),
                     "--output_dir", str(tmp_path / "run"), "--add_mlp_targets", "--seed", "5", "--lora_r", "4",
                     "--lora_alpha", "8", "--max_steps", "1", "--per_device_train_batch_size", "4",
                     "--gradient_accumulation_steps", "2", "--learning_rate", "1e-3", "--json")
    assert result.returncode == 0, result.stderr
    config = rf.read_json(tmp_path / "run" / rf.CONFIG)
    assert (config["lora_r"], config["lora_alpha"], config["seed"], config["effective_batch"]) == (4, 8, 5, 8)
    assert "gate_proj" in config["target_modules"]


def test_a_target_module_the_model_lacks_is_refused_before_training(tmp_path, demo_data):
    with pytest.raises(ConfigError, match="targets: Qwen2-Audio has no module named w_proj"):
        train(quick_config(demo_data["train"], targets=["q_proj", "w_proj"], max_steps=1), tmp_path / "r")
    assert not (tmp_path / "r").exists()  # refused before anything was written


def test_micro_batches_group_by_length_without_changing_each_steps_clips():
    from types import SimpleNamespace

    from engine.tasks.train import micro_batches

    clips = [SimpleNamespace(duration_s=d) for d in (1.0, 5.0, 2.0, 4.0, 3.0, 0.5, 6.0, 1.5)]
    order = [7, 2, 5, 1, 0, 6, 3, 4]
    micro = micro_batches(order, clips, micro_batch=2, grad_accum=2)
    assert [sorted(sum(micro[i:i + 2], [])) for i in (0, 2)] == [sorted(order[:4]), sorted(order[4:])]
    assert micro[0] == [1, 2] and micro[1] == [7, 5]  # longest together within the first step


def test_micro_batch_probe_runs_in_training_mode_so_checkpointing_is_real(tiny_model, demo_data):
    """Hugging Face layers checkpoint only in training mode: a probe in eval mode measured 'with
    checkpointing' without it (an 8 GB card got 2 x 8 instead of 16 x 1). The probe must also leave
    the RNG as it found it, so dropout masks do not depend on how many sizes were tried."""
    import torch

    from engine.data.manifests import load_clips
    from engine.labels import CLASSES
    from engine.models.qwen2_audio import runtime as m
    from engine.tasks.train import choose_micro_batch

    loaded = m.load_model(str(tiny_model), "none", "cpu", "float32")
    m.attach_lora(loaded, 4, 8, 0.1, ["q_proj", "v_proj"], gradient_checkpointing=False)
    loaded.model.eval()
    clips, _ = load_clips(demo_data["train"])
    plan = m.label_plan(loaded.processor.tokenizer, list(CLASSES))
    seen = []

    def make(batch_clips):
        hf = m.unwrap(loaded.model)
        layers = hf.model.language_model.layers
        seen.append((len(batch_clips), loaded.model.training, all(layer.gradient_checkpointing for layer in layers)))
        if len(batch_clips) > 2 and not seen[-1][2]:  # a card where only checkpointing makes 4 fit
            raise torch.cuda.OutOfMemoryError("simulated")
        import soundfile as sf
        audios = [sf.read(c.path, dtype="float32")[0] for c in batch_clips]
        return m.make_batch(loaded.processor, audios, "system", "Is this speech?", plan,
                            answers=[CLASSES.index(c.label) for c in batch_clips], padding_side="right")

    cfg = TrainConfig(model=str(tiny_model), train_data=str(demo_data["train"]), per_device_batch=1, grad_accum=4,
                      gradient_checkpointing="auto", auto_micro_batch=True)
    rng_before = torch.get_rng_state()
    assert choose_micro_batch(loaded.model, cfg, clips, make, device="cpu") == (4, 1, True)
    assert seen == [(4, True, False), (4, True, True)]
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert not loaded.model.training  # the caller's mode is restored


@pytest.mark.parametrize("mode, device, gib, shared, dropout, expected", [
    ("auto", "cuda", 80, 1, 0.0, "graphs"), ("auto", "cuda", 16, 1, 0.0, "off"), ("auto", "cpu", 0, 1, 0.0, "off"),
    ("auto", "cuda", 80, 4, 0.0, "off"), ("graphs", "cuda", 80, 4, 0.0, "graphs"), ("on", "cpu", 0, 1, 0.0, "on"),
    ("auto", "cuda", 80, 1, 0.05, "off"), ("graphs", "cuda", 80, 1, 0.05, "graphs"),
])
def test_compile_auto_uses_graphs_only_on_a_large_gpu_the_job_has_to_itself_without_dropout(
        mode, device, gib, shared, dropout, expected):
    from engine.tasks.train import choose_compile

    chosen, why = choose_compile(mode, device, gib * 2**30, shared, dropout)
    assert chosen == expected and why
    if shared > 1 and mode == "auto":
        assert "shared by 4 jobs" in why
    if dropout and mode == "auto" and device == "cuda":
        assert "LoRA dropout 0.05" in why
