"""Scoring speed without changing a score: clips decoded batch by batch while the device scores
(ClipSamples), and the compiled scoring forward (--compile; its decision, its flag, and that it is
the same computation). Compiled (inductor) against eager on the CPU takes minutes to compile:
benchmarks/compile_scoring_cpu.py."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from engine.cli import main
from engine.data.audio import SAMPLE_RATE, load_audio
from engine.data.manifests import AudioCache, load_clips
from engine.models.qwen2_audio import runtime as m
from engine.runs import folder as rf
from engine.runs.predictions import read_predictions
from engine.tasks import evaluate
from engine.tasks.evaluate import (SCORING_COMPILE_MIN_CLIPS, apply_control, choose_scoring_compile,
                                   evaluate_clips, header_length, p_speech_from_scores, score_audio)

SYSTEM, PROMPT, WORDS = "You are a helpful assistant.", "Is this speech?", ["SPEECH", "NONSPEECH"]


# ---------------------------------------------------------------- the compile decision

def test_auto_does_not_compile_until_the_threshold_is_measured():
    assert SCORING_COMPILE_MIN_CLIPS is None
    used, why = choose_scoring_compile("auto", "cuda", 10**6)
    assert not used and "not measured on a GPU" in why


def test_auto_compiles_only_long_evaluations_on_a_gpu(monkeypatch):
    monkeypatch.setattr("engine.tasks.evaluate.SCORING_COMPILE_MIN_CLIPS", 20_000)
    assert choose_scoring_compile("auto", "cpu", 10**6) == (False, "auto: only on a GPU")
    used, why = choose_scoring_compile("auto", "cuda", 19_999)
    assert not used and "19999 clips" in why
    used, why = choose_scoring_compile("auto", "cuda", 20_000)
    assert used and why.startswith("auto:")
    assert choose_scoring_compile("on", "cpu", 1) == (True, "turned on")
    assert choose_scoring_compile("off", "cuda", 10**6) == (False, "turned off")


def test_a_model_the_compiled_forward_cannot_serve_is_scored_eager_and_says_why():
    assert choose_scoring_compile("on", "cuda", 10**6, "sliding-window layers") == (
        False, "asked for, but sliding-window layers")
    assert choose_scoring_compile("auto", "cuda", 10**6, "sliding-window layers") == (
        False, "auto: sliding-window layers")


def test_scoring_compiles_only_when_asked():
    """Validation, the evaluations after training and Try a clip call these with their defaults."""
    import inspect

    assert inspect.signature(score_audio).parameters["compiled"].default is False
    assert inspect.signature(evaluate_clips).parameters["compile"].default == "off"


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def base_tiny(tiny_model):
    loaded = m.load_model("tiny", "none", "cpu")
    loaded.model.eval()
    return loaded


def _write(path: Path, samples: np.ndarray, rate: int = SAMPLE_RATE, **kwargs) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, samples, rate, **kwargs)
    return str(path)


@pytest.fixture(scope="module")
def mixed_clips(tmp_path_factory, demo_data):
    """The demo test clips (16 kHz WAV) plus files whose length only decoding tells (8 kHz, Ogg),
    a stereo one, one over 30 s and a 0.1-s one, in one manifest."""
    folder = tmp_path_factory.mktemp("mixed")
    rng = np.random.default_rng(3)
    noise = lambda seconds: (0.1 * rng.standard_normal(int(seconds * SAMPLE_RATE))).astype(np.float32)  # noqa: E731
    extra = [
        (_write(folder / "slow.wav", noise(1.3)[: int(1.3 * 8000)], 8000), "NONSPEECH"),
        (_write(folder / "vorbis.ogg", noise(0.9), format="OGG", subtype="VORBIS"), "NONSPEECH"),
        (_write(folder / "stereo.wav", np.stack([noise(1.1), noise(1.1)], axis=1)), "SPEECH"),
        (_write(folder / "long.wav", noise(31.0)), "SPEECH"),
        (_write(folder / "short.wav", noise(0.1)), "NONSPEECH"),
    ]
    lines = Path(demo_data["test"]).read_text().splitlines()
    base = Path(demo_data["test"]).parent
    rows = ["path,label"] + [f"{(base / line.split(',')[0]).resolve()},{line.split(',')[1]}" for line in lines[1:17]]
    rows += [f"{path},{label}" for path, label in extra]
    manifest = folder / "mixed.csv"
    manifest.write_text("\n".join(rows) + "\n")
    clips, report = load_clips(manifest)
    assert len(clips) == 21
    return clips, report, manifest


# ---------------------------------------------------------------- decoding while scoring

def test_header_lengths_are_the_decoded_lengths_or_none(mixed_clips):
    clips, _, _ = mixed_clips
    known = 0
    for clip in clips:
        n = header_length(clip.path, 30.0)
        if Path(clip.path).name in ("slow.wav", "vorbis.ogg"):
            assert n is None  # resampled, or a format whose header may not state its length
        else:
            assert n == len(load_audio(clip.path, 30.0)[0]), clip.path
            known += 1
    assert known == 19
    assert header_length(Path(clips[0].path).parent / "missing.wav", 30.0) is None


def _old_records(loaded, clips, control=None, batch_size=4):
    """evaluate_clips' scores and records as they were made before ClipSamples: every clip decoded first."""
    audio = AudioCache()
    audios = apply_control([audio.load(c) for c in clips], control)
    scores = score_audio(loaded, audios, SYSTEM, PROMPT, WORDS, batch_size)
    return scores, p_speech_from_scores(scores)


@pytest.mark.parametrize("control", [None, "shuffle", "silence"])
def test_decoding_while_scoring_gives_the_predictions_of_decoding_first(base_tiny, mixed_clips, tmp_path, control):
    clips, report, _ = mixed_clips
    scores, p_speech = _old_records(base_tiny, clips, control)
    _, records = evaluate_clips(base_tiny, clips, report, tmp_path, "new", SYSTEM, PROMPT, WORDS,
                                producer={"kind": "base"}, batch_size=4, control=control)
    assert [r["clip_id"] for r in records] == [c.clip_id for c in clips]
    assert [r["p_speech"] for r in records] == [float(p) for p in p_speech]  # bitwise: the same batches
    assert [r["margin"] for r in records] == [float(s[0] - s[1]) for s in scores]


def test_clips_are_decoded_in_the_batch_ahead_thread(base_tiny, mixed_clips, tmp_path):
    clips, report, _ = mixed_clips
    decoded_in = {}

    class WatchedCache(AudioCache):
        def load(self, clip):
            decoded_in.setdefault(Path(clip.path).name, threading.current_thread().name)  # first load decodes
            return super().load(clip)

    evaluate_clips(base_tiny, clips, report, tmp_path, "watched", SYSTEM, PROMPT, WORDS, producer={},
                   audio=WatchedCache(), batch_size=4)
    up_front = {name for name, thread in decoded_in.items() if not thread.startswith("make-batch")}
    assert up_front == {"slow.wav", "vorbis.ogg"}  # only the clips whose header does not give their length
    assert len(decoded_in) == len(clips)


def test_a_header_that_misleads_falls_back_to_decoding_first(base_tiny, mixed_clips, tmp_path, monkeypatch):
    clips, report, _ = mixed_clips
    _, p_speech = _old_records(base_tiny, clips)
    real = evaluate.header_length
    lying = clips[5].path
    monkeypatch.setattr(evaluate, "header_length", lambda path, s: real(path, s) + 7 if path == lying else real(path, s))
    _, records = evaluate_clips(base_tiny, clips, report, tmp_path, "lied", SYSTEM, PROMPT, WORDS, producer={},
                                batch_size=4)
    assert [r["p_speech"] for r in records] == [float(p) for p in p_speech]


def test_a_clip_gone_before_its_batch_is_named_and_nothing_is_stored(base_tiny, mixed_clips, tmp_path):
    clips, report, _ = mixed_clips
    gone = tmp_path / "gone.wav"
    gone.write_bytes(Path(clips[3].path).read_bytes())
    victim = type(clips[3])(clip_id="gone", path=str(gone), label="SPEECH")
    audio = AudioCache()

    class Deleting(AudioCache):
        def load(self, clip):  # the file disappears after its header was read
            if clip.path == str(gone) and gone.exists():
                gone.unlink()
            return audio.load(clip)

    with pytest.raises(ValueError, match="gone.wav: file not found"):
        evaluate_clips(base_tiny, clips[:4] + [victim], report, tmp_path, "broken", SYSTEM, PROMPT, WORDS,
                       producer={}, audio=Deleting(), batch_size=2)
    assert not rf.evaluation_dir(tmp_path, "broken").exists()


def test_eval_skips_an_unreadable_clip_names_it_and_records_the_decision(mixed_clips, tmp_path, capsys, monkeypatch):
    """`eval --base` on the CPU (compile auto): the bad clip is skipped and named as before, nothing is compiled."""
    _, _, manifest = mixed_clips
    broken = tmp_path / "broken.wav"
    broken.write_text("not audio")
    with_broken = tmp_path / "with_broken.csv"
    with_broken.write_text(manifest.read_text() + f"{broken},SPEECH\n")

    def no_compiling(fn):
        raise AssertionError("scoring on the CPU compiled")

    monkeypatch.setattr(m, "_compiled_scoring", no_compiling)
    capsys.readouterr()
    assert main(["eval", "--base", "--model", "tiny", "--test-csv", str(with_broken), "--runs-dir", str(tmp_path),
                 "--run-name", "mixed", "--batch-size", "4", "--json"]) == 0
    out, err = capsys.readouterr()
    assert f"skipped unreadable clip {broken}" in err
    evaluation = rf.read_json(rf.evaluation_dir(tmp_path / "mixed", "test") / rf.EVALUATION)
    assert [s["path"] for s in evaluation["skipped"]] == [str(broken)] and evaluation["clip_count"] == 21
    assert (evaluation["compile"], evaluation["compile_reason"]) == ("off", "auto: only on a GPU")
    assert json.loads(out)["n"] == 21 and len(read_predictions(tmp_path / "mixed", "test")) == 21


# ---------------------------------------------------------------- the compiled forward's computation

@pytest.fixture()
def traced_scoring(monkeypatch):
    """The compiled scoring path with dynamo's tracing but no inductor (seconds, not minutes)."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    monkeypatch.setattr(m, "_COMPILED_SCORING", {})
    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: real(fn, backend="eager", **kw))
    torch._dynamo.reset()
    counters.clear()
    yield counters
    torch._dynamo.reset()


@pytest.mark.parametrize("side", ["left", "right"])
def test_the_layer_by_layer_forward_scores_as_the_whole_model(base_tiny, mixed_clips, traced_scoring, side):
    """The compiled path's own layer loop (mask, rotary table, each layer's prefix) against the
    language model's forward, with and without the system prefix, over batches of new lengths;
    one traced graph per stack and cache kind, not one per layer or per shape."""
    clips, _, _ = mixed_clips
    audio = AudioCache()
    audios = sorted((audio.load(c) for c in clips[:12]), key=len)
    plan = m.label_plan(base_tiny.processor.tokenizer, WORDS)
    with torch.inference_mode():
        prefix = m.system_prefix(base_tiny.model, base_tiny.processor, SYSTEM)
        for cached in (prefix, None):
            for chunk in (audios[:5], audios[5:8], audios[8:12]):
                batch = m.make_batch(base_tiny.processor, chunk, SYSTEM, PROMPT, plan, padding_side=side,
                                     after_system_prefix=cached is not None)
                eager = m.class_scores(base_tiny.model, batch, plan, prefix=cached)
                traced = m.class_scores(base_tiny.model, batch, plan, prefix=cached, compiled=True)
                np.testing.assert_allclose(traced.numpy(), eager.numpy(), atol=1e-5)
    assert traced_scoring["stats"]["unique_graphs"] == 3  # encoder; decoder with, and without, a prefix


def test_score_audio_compiled_runs_the_compiled_path(base_tiny, mixed_clips, traced_scoring):
    clips, _, _ = mixed_clips
    audio = AudioCache()
    audios = [audio.load(c) for c in clips[:9]]
    eager = score_audio(base_tiny, audios, SYSTEM, PROMPT, WORDS, batch_size=4)
    compiled = score_audio(base_tiny, audios, SYSTEM, PROMPT, WORDS, batch_size=4, compiled=True)
    assert set(m._COMPILED_SCORING) == {"_encoder_layer", "_decoder_layer"}
    np.testing.assert_allclose(compiled, eager, atol=1e-5)
    assert (compiled.argmax(1) == eager.argmax(1)).all()


def test_an_evaluation_asked_to_compile_records_it(base_tiny, mixed_clips, tmp_path, traced_scoring):
    clips, report, _ = mixed_clips
    _, p_speech = _old_records(base_tiny, clips[:9])
    out, records = evaluate_clips(base_tiny, clips[:9], report, tmp_path, "compiled", SYSTEM, PROMPT, WORDS,
                                  producer={}, batch_size=4, compile="on")
    evaluation = rf.read_json(out / rf.EVALUATION)
    assert (evaluation["compile"], evaluation["compile_reason"]) == ("on", "turned on")
    np.testing.assert_allclose([r["p_speech"] for r in records], p_speech, atol=1e-5)


def test_a_failed_compilation_scores_eager_and_says_so(base_tiny, mixed_clips, tmp_path, monkeypatch):
    from torch._dynamo.exc import TorchDynamoException

    class CompilerBroke(TorchDynamoException):
        pass

    def broken(fn):
        def call(*args):
            raise CompilerBroke("inductor could not lower an op")
        return call

    clips, report, _ = mixed_clips
    _, p_speech = _old_records(base_tiny, clips[:9])
    monkeypatch.setattr(m, "_compiled_scoring", broken)
    out, records = evaluate_clips(base_tiny, clips[:9], report, tmp_path, "fell-back", SYSTEM, PROMPT, WORDS,
                                  producer={}, batch_size=4, compile="on")
    evaluation = rf.read_json(out / rf.EVALUATION)
    assert evaluation["compile"] == "off"
    assert evaluation["compile_reason"] == "turned on; compiling failed (CompilerBroke), scored eager"
    assert [r["p_speech"] for r in records] == [float(p) for p in p_speech]
