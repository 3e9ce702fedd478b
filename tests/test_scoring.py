"""Logit scoring on the tiny model: exactness of the fast path, batching, padding, stable ids,
run vs checkpoint, base model, corrupt clips and the audio-is-used control."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.models.qwen2_audio import runtime as m
from engine.runs import folder as rf
from engine.cli import main
from engine.config import TrainConfig
from engine.data.manifests import AudioCache, load_clips
from engine.runs.predictions import RECORD_FIELDS, read_predictions
from engine.tasks.evaluate import score_audio
from engine.tasks.train import train

SYSTEM, PROMPT = "You are a helpful assistant.", "Is this speech?"
# The exact file set of a finished evaluation run (eval --base or --checkpoint; README: "Run folder contract").
FINISHED_EVAL_RUN_FILES = {"config.json", "status.json", "evaluations/test/evaluation.json",
                           "evaluations/test/predictions.jsonl"}


def files_of(run_dir: Path) -> set[str]:
    return {p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, demo_data, tiny_model) -> Path:
    run_dir = tmp_path_factory.mktemp("scoring") / "run"
    train(TrainConfig(model="tiny", device="cpu", targets="attention+mlp", max_steps=4, per_device_batch=8,
                      grad_accum=1, learning_rate=3e-3, train_data=str(demo_data["train"])), run_dir)
    return run_dir


@pytest.fixture(scope="module")
def loaded(trained):
    model = m.load_model("tiny", "4bit", "cpu")
    m.load_adapter(model, trained / "adapter")
    model.model.eval()
    return model


@pytest.fixture(scope="module")
def mixed_audio(demo_data):
    clips, _ = load_clips(demo_data["test"])
    cache = AudioCache()
    audios = [cache.load(c) for c in clips[:8]]
    audios[0] = audios[0][:4000]  # a 0.25 s clip beside ~2 s ones: very different lengths in one batch
    return audios


@pytest.mark.slow
def test_prompt_ids_equal_the_processor(loaded, mixed_audio):
    plan = m.label_plan(loaded.processor.tokenizer, ["SPEECH", "NONSPEECH"])
    text = m.prompt_text(SYSTEM, PROMPT)
    for audio in mixed_audio[:3]:
        ours = m.make_batch(loaded.processor, [audio], SYSTEM, PROMPT, plan).input_ids[0]
        theirs = loaded.processor(text=[text], audio=[audio], sampling_rate=16000, return_tensors="pt")["input_ids"][0]
        assert torch.equal(ours, theirs)


@pytest.mark.slow
def test_fast_path_scores_and_loss_equal_the_stock_path(loaded, mixed_audio):
    """Trimmed mel input + lm_head only where needed == the 3000-frame, full-logit HF forward."""
    plan = m.label_plan(loaded.processor.tokenizer, ["SPEECH", "NONSPEECH"])
    answers = [i % 2 for i in range(len(mixed_audio))]
    with torch.no_grad():
        fast = m.make_batch(loaded.processor, mixed_audio, SYSTEM, PROMPT, plan)
        stock = m.make_batch(loaded.processor, mixed_audio, SYSTEM, PROMPT, plan, full_features=True)
        assert stock.input_features.shape[-1] == 3000 and fast.input_features.shape[-1] < 300
        np.testing.assert_allclose(m.class_scores(loaded.model, fast, plan).numpy(),
                                   m.stock_class_scores(loaded.model, stock, plan).numpy(), atol=1e-4)
        fast_train = m.make_batch(loaded.processor, mixed_audio, SYSTEM, PROMPT, plan, answers=answers,
                                  padding_side="right")
        stock_train = m.make_batch(loaded.processor, mixed_audio, SYSTEM, PROMPT, plan, answers=answers,
                                   padding_side="right", full_features=True)
        fast_loss, _ = m.answer_loss(loaded.model, fast_train)
        assert fast_loss.item() == pytest.approx(m.stock_answer_loss(loaded.model, stock_train).item(), abs=1e-4)
        # the trimmed encoder input alone (on full-length features) is exact too
        np.testing.assert_allclose(m.class_scores(loaded.model, stock, plan).numpy(),
                                   m.stock_class_scores(loaded.model, stock, plan).numpy(), atol=1e-4)


@pytest.fixture(scope="module", params=["4bit", "none"])
def loaded_either_quantization(request, trained, loaded):
    if request.param == "4bit":
        return loaded
    model = m.load_model("tiny", "none", "cpu")
    m.load_adapter(model, trained / "adapter")
    return model


@pytest.mark.slow
def test_batched_scoring_equals_one_clip_at_a_time_with_either_padding(loaded_either_quantization, mixed_audio):
    # Measured on the tiny model in fp32, 4-bit or not, 1 or 2 threads: at most 5e-7 apart.
    loaded = loaded_either_quantization
    single = score_audio(loaded, mixed_audio, SYSTEM, PROMPT, ["SPEECH", "NONSPEECH"], batch_size=1)
    for side in ("left", "right"):
        batched = score_audio(loaded, mixed_audio, SYSTEM, PROMPT, ["SPEECH", "NONSPEECH"], batch_size=8,
                              padding_side=side)
        np.testing.assert_allclose(batched, single, atol=1e-5)
        assert (batched.argmax(1) == single.argmax(1)).all()


@pytest.mark.slow
@pytest.mark.parametrize("side", ["left", "right"])
def test_scores_on_the_cached_system_prefix_equal_the_whole_sequence(loaded_either_quantization, mixed_audio, side):
    """The system turn's keys and values computed once (batch of 1) and prepended in every layer give
    the scores of the uncached forward; the padding then sits between prefix and row, masked."""
    loaded = loaded_either_quantization
    plan = m.label_plan(loaded.processor.tokenizer, ["SPEECH", "NONSPEECH"])
    with torch.no_grad():
        whole = m.class_scores(loaded.model, m.make_batch(loaded.processor, mixed_audio, SYSTEM, PROMPT, plan,
                                                          padding_side=side), plan)
        prefix = m.system_prefix(loaded.model, loaded.processor, SYSTEM)
        rest = m.make_batch(loaded.processor, mixed_audio, SYSTEM, PROMPT, plan, padding_side=side,
                            after_system_prefix=True)
        cached = m.class_scores(loaded.model, rest, plan, prefix=prefix)
    assert prefix.attention_mask.shape[1] > 10 and rest.input_ids.shape[1] < m.make_batch(
        loaded.processor, mixed_audio, SYSTEM, PROMPT, plan).input_ids.shape[1]
    np.testing.assert_allclose(cached.numpy(), whole.numpy(), atol=1e-5)


@pytest.mark.slow
def test_prompts_scored_on_cached_audio_prefixes_equal_the_whole_sequence(loaded_either_quantization, mixed_audio):
    """Prompt optimisation's cache: each clip's prefix through its audio once, then any instruction."""
    loaded = loaded_either_quantization
    plan = m.label_plan(loaded.processor.tokenizer, ["SPEECH", "NONSPEECH"])
    with torch.no_grad():
        prefix = m.audio_prefix(loaded.model, loaded.processor, mixed_audio, SYSTEM)
        for prompt in (PROMPT, "Speech or not? One word.", "Listen.\nIs anyone talking here?"):
            whole = m.class_scores(loaded.model, m.make_batch(loaded.processor, mixed_audio, SYSTEM, prompt, plan), plan)
            batch = m.instruction_batch(loaded.processor, SYSTEM, prompt, plan, rows=len(mixed_audio))
            assert batch.input_features is None  # the encoder does not run again
            cached = m.class_scores(loaded.model, batch, plan, prefix=prefix)
            np.testing.assert_allclose(cached.numpy(), whole.numpy(), atol=1e-5)


def test_4bit_layers_compute_in_fp32_on_the_cpu():
    """bitsandbytes' AVX512-BF16 CPU kernel (used where the CPU has it) multiplies in bf16, off
    by up to ~2e-3 on these layers; the engine asks for fp32 and must get it, or scores depend on the batch."""
    from bitsandbytes.functional import dequantize_4bit
    from bitsandbytes.nn import Linear4bit

    loaded = m.load_model("tiny", "4bit", "cpu")
    loaded.model.eval()
    layers = [mod for mod in loaded.hf.modules() if isinstance(mod, Linear4bit)]
    assert layers
    x = torch.randn(5, layers[0].in_features, generator=torch.Generator().manual_seed(0))
    for layer in layers[:3]:
        weight = dequantize_4bit(layer.weight.data, layer.weight.quant_state).double()  # before any repacking
        with torch.inference_mode():
            out = layer(x)
        assert out.dtype == torch.float32
        expected = x.double() @ weight.t() + (0 if layer.bias is None else layer.bias.detach().double())
        np.testing.assert_allclose(out.double().numpy(), expected.numpy(), atol=1e-6)


@pytest.mark.slow
def test_label_words_sharing_a_prefix_are_decided_where_they_differ(loaded):
    plan = m.label_plan(loaded.processor.tokenizer, ["SPEECH", "SPEECHLESS"])
    tok = loaded.processor.tokenizer
    assert tok.decode(plan.shared_prefix) == "SPEECH"
    assert plan.decision_ids[0] == tok.convert_tokens_to_ids("<|im_end|>")
    assert plan.decision_ids[0] != plan.decision_ids[1]


def run(capsys, *args) -> int:
    capsys.readouterr()
    return main([str(a) for a in args])


@pytest.mark.slow
def test_eval_cli_records_run_vs_checkpoint_and_batch_sizes(trained, demo_data, tmp_path, capsys):
    root = tmp_path / "ws"
    assert run(capsys, "eval", "--run", trained, "--test-csv", demo_data["test"], "--name", "b1", "--batch-size", 1,
               "--save-predictions", tmp_path / "b1.csv") == 0
    assert run(capsys, "eval", "--run", trained, "--test-csv", demo_data["test"], "--name", "b8",
               "--batch-size", 8) == 0
    assert run(capsys, "eval", "--checkpoint", trained / "adapter", "--model", "tiny", "--test-csv",
               demo_data["test"], "--runs-dir", root, "--run-name", "ckpt") == 0
    b1, b8 = read_predictions(trained, "b1"), read_predictions(trained, "b8")
    ckpt = read_predictions(root / "ckpt", "test")
    assert files_of(root / "ckpt") == FINISHED_EVAL_RUN_FILES
    assert len(b1) == 32 and set(RECORD_FIELDS) <= set(b1[0]) and "snr_db" in b1[0] and "condition" in b1[0]
    assert [r["pred"] for r in b1] == [r["pred"] for r in b8] == [r["pred"] for r in ckpt]
    np.testing.assert_allclose([r["p_speech"] for r in b1], [r["p_speech"] for r in b8], atol=1e-5)
    assert [r["p_speech"] for r in ckpt] == [r["p_speech"] for r in b8]
    evaluation = rf.read_json(rf.evaluation_dir(trained, "b8") / rf.EVALUATION)
    assert evaluation["producer"]["kind"] == "adapter" and evaluation["manifest_sha256"]
    assert evaluation["clip_count"] == 32 and evaluation["label_words"] == ["SPEECH", "NONSPEECH"]
    with open(tmp_path / "b1.csv") as fh:
        assert len(list(csv.DictReader(fh))) == 32


@pytest.mark.slow
def test_clip_ids_survive_a_reordered_manifest(trained, demo_data, tmp_path, capsys):
    lines = Path(demo_data["test"]).read_text().splitlines()
    reordered = Path(demo_data["test"]).parent / "test_reversed.csv"
    reordered.write_text("\n".join([lines[0]] + lines[1:][::-1]) + "\n")
    assert run(capsys, "eval", "--run", trained, "--test-csv", demo_data["test"], "--name", "fwd") == 0
    assert run(capsys, "eval", "--run", trained, "--test-csv", reordered, "--name", "rev") == 0
    fwd = {r["clip_id"]: r["p_speech"] for r in read_predictions(trained, "fwd")}
    rev = {r["clip_id"]: r["p_speech"] for r in read_predictions(trained, "rev")}
    assert fwd.keys() == rev.keys()
    for clip_id, p in fwd.items():
        assert rev[clip_id] == pytest.approx(p, abs=1e-5)


def test_base_model_evaluation_is_its_own_run(demo_data, tmp_path, capsys):
    assert run(capsys, "eval", "--base", "--model", "tiny", "--test-csv", demo_data["test"], "--runs-dir",
               tmp_path, "--run-name", "base-tiny", "--json") == 0
    info = rf.read_run(tmp_path / "base-tiny")
    assert info.kind == "eval" and info.state == "succeeded" and info.evaluations == ["test"]
    assert files_of(tmp_path / "base-tiny") == FINISHED_EVAL_RUN_FILES


@pytest.mark.slow
def test_a_corrupt_clip_is_reported_by_name_and_the_rest_still_score(trained, demo_data, tmp_path, capsys):
    folder = Path(demo_data["test"]).parent
    broken = folder / "broken.wav"
    broken.write_text("not audio")
    manifest = tmp_path / "with_broken.csv"
    lines = Path(demo_data["test"]).read_text().splitlines()
    relative = lambda p: str((folder / p).resolve())  # noqa: E731
    header, rows = lines[0], [line.split(",", 1) for line in lines[1:]]
    manifest.write_text(header + "\n" + "".join(f"{relative(p)},{rest}\n" for p, rest in rows)
                        + f"{broken},SPEECH,,,,\n")
    assert run(capsys, "eval", "--run", trained, "--test-csv", manifest, "--name", "broken") == 0
    assert "broken.wav" in capsys.readouterr().err
    evaluation = rf.read_json(rf.evaluation_dir(trained, "broken") / rf.EVALUATION)
    assert evaluation["clip_count"] == 32
    assert [Path(s["path"]).name for s in evaluation["skipped"]] == ["broken.wav"]
    broken.unlink()


@pytest.mark.slow
def test_audio_is_used_control_is_stored_as_its_own_evaluation(trained, demo_data, capsys):
    assert run(capsys, "eval", "--run", trained, "--test-csv", demo_data["test"], "--control", "silence") == 0
    records = read_predictions(trained, "test-silence")
    assert len(records) == 32 and len({r["pred"] for r in records}) == 1  # silence: one answer for every clip
    assert rf.read_json(rf.evaluation_dir(trained, "test-silence") / rf.EVALUATION)["control"] == "silence"


@pytest.mark.slow
def test_an_unfinished_run_is_refused_for_evaluation(trained, demo_data, tmp_path, capsys):
    copy = tmp_path / "half"
    shutil.copytree(trained, copy)
    shutil.rmtree(copy / "adapter")
    assert run(capsys, "eval", "--run", copy, "--test-csv", demo_data["test"]) == 2
    assert "no finished adapter" in capsys.readouterr().err


# ---------------------------------------------------------------- progress while scoring

def test_progress_file_is_written_about_once_a_second_and_always_at_the_end(tmp_path):
    from engine.tasks.evaluate import ProgressFile

    now = [100.0]
    progress = ProgressFile(tmp_path / "evaluations" / "test", clock=lambda: now[0])
    written = []
    for t, scored in ((0.0, 0), (0.5, 8), (1.2, 16), (1.4, 24), (1.6, 40)):
        now[0] = 100.0 + t
        if progress(scored, 40):
            written.append(rf.read_evaluation_progress(tmp_path, "test"))
    assert [w["clips_scored"] for w in written] == [0, 16, 40]  # 0.5 s and 1.4 s: too soon after the last
    assert written[1]["clips_per_s"] == pytest.approx(16 / 1.2, abs=1e-3)
    assert written[1]["eta_s"] == pytest.approx(24 / (16 / 1.2), abs=0.05) and written[1]["total_clips"] == 40
    assert written[0]["eta_s"] is None  # nothing scored yet: no rate to estimate from
    progress.remove()
    assert not (tmp_path / "evaluations" / "test").exists()  # the folder held nothing else


@pytest.mark.slow
def test_evaluation_reports_clips_scored_then_leaves_only_its_two_files(loaded, demo_data, tmp_path, monkeypatch):
    from engine.tasks import evaluate

    clips, report = load_clips(demo_data["test"])
    seen = []
    real_write = rf.atomic_write_json

    def recording_write(path, obj):
        if Path(path).name == rf.EVALUATION_PROGRESS:
            seen.append((obj["clips_scored"], obj["total_clips"]))
        real_write(path, obj)

    monkeypatch.setattr(evaluate, "PROGRESS_EVERY_S", 0.0)  # every batch, to see each one
    monkeypatch.setattr(rf, "atomic_write_json", recording_write)
    out, records = evaluate.evaluate_clips(loaded, clips, report, tmp_path, "test", SYSTEM, PROMPT,
                                           ["SPEECH", "NONSPEECH"], producer={"kind": "adapter"}, batch_size=12)
    assert seen == [(0, 32), (12, 32), (24, 32), (32, 32)] and len(records) == 32
    assert files_of(out) == {"predictions.jsonl", "evaluation.json"}


def test_a_failed_scoring_leaves_no_progress_file_or_empty_folder(tmp_path, monkeypatch):
    from engine.tasks import evaluate

    def broken_scoring(*args, **kwargs):
        kwargs["on_batch"](4, 8)
        raise RuntimeError("CUDA error: out of memory")

    class Clip:
        clip_id, path, label, duration_s, metadata = "a", "a.wav", "SPEECH", 1.0, {}

    class Audio:
        def load(self, clip):
            return np.zeros(16000, dtype=np.float32)

    monkeypatch.setattr(evaluate, "score_audio", broken_scoring)
    with pytest.raises(RuntimeError, match="out of memory"):
        evaluate.evaluate_clips(None, [Clip()] * 8, None, tmp_path, "test", SYSTEM, PROMPT, ["SPEECH", "NONSPEECH"],
                                producer={}, audio=Audio())
    assert not (tmp_path / "evaluations").joinpath("test").exists()


@pytest.mark.slow
def test_a_cancelled_evaluation_of_a_run_stores_nothing(trained, demo_data, capsys, monkeypatch):
    """SIGTERM (the queue's cancel) during the scoring: exit code 3, no evaluation folder, no progress file."""
    import os
    import signal

    from engine.tasks import evaluate

    real_score_audio = evaluate.score_audio

    def cancelled_after_the_first_batch(*args, on_batch=None, **kwargs):
        def then_cancel(scored, total):
            on_batch(scored, total)
            os.kill(os.getpid(), signal.SIGTERM)  # the handler raises at once, inside this call

        return real_score_audio(*args, on_batch=then_cancel, **kwargs)

    def outside_the_engine(signum, frame):  # reached only if eval installed no handler of its own
        raise RuntimeError("SIGTERM reached the test's handler: the evaluation does not handle a cancel")

    monkeypatch.setattr(evaluate, "score_audio", cancelled_after_the_first_batch)
    previous = signal.signal(signal.SIGTERM, outside_the_engine)
    try:
        assert run(capsys, "eval", "--run", trained, "--test-csv", demo_data["test"], "--name", "cancelled") == 3
        assert signal.getsignal(signal.SIGTERM) is outside_the_engine  # eval's handler was removed again
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert "cancelled: evaluation cancelled" in capsys.readouterr().err
    assert not rf.evaluation_dir(trained, "cancelled").exists()
