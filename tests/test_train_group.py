"""Runs of a shared-base group (engine.tasks.train_group) against the same runs trained alone.

The issue's equivalence test: on the CPU in fp32 with the tiny model, every run of a group gives
the losses (1e-5) and adapter tensors of the same run started alone, whether its LoRA was
re-initialised in place (same shape as the run before) or attached anew (another shape), and
with dropout too (the RNG follows as alone). Plus the pieces: the in-place re-init against
peft's own, the member's stop signal, reading a queued job's train command.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from engine.config import ConfigError
from engine.runs import folder as rf
from engine.runs.lifecycle import StopSignal
from engine.tasks.train import train
from engine.tasks.train_group import Member, MemberStop, member_from_job, train_runs
from tests.test_train import FINISHED_TRAIN_RUN_FILES, files_of, quick_config

ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]


def _lora_tensors(model) -> dict:
    return {name: p.detach().clone() for name, p in model.named_parameters() if "lora_" in name}


def test_reinit_in_place_gives_peft_init_values_and_rng_state(tiny_model):
    import torch

    from engine.models.qwen2_audio import runtime as m

    loaded = m.load_model("tiny", "4bit", "cpu", "auto")
    torch.manual_seed(5)
    m.attach_lora(loaded, 8, 16, 0.0, ATTENTION, False)
    fresh, after_attach = _lora_tensors(loaded.model), torch.rand(4)
    storage = {name: p.data_ptr() for name, p in loaded.model.named_parameters() if "lora_" in name}
    with torch.no_grad():
        for name, p in loaded.model.named_parameters():
            if "lora_" in name:
                p.normal_()
    assert m.reinit_lora(loaded.model, 5) == 14  # 4 attention projections x 2 tiny LM layers + encoder q/k/v x 2
    assert torch.equal(after_attach, torch.rand(4)), "the RNG must end where peft's attach leaves it"
    again = _lora_tensors(loaded.model)
    assert fresh.keys() == again.keys()
    assert all(torch.equal(fresh[name], again[name]) for name in fresh)
    assert all(float(again[name].abs().sum()) == 0 for name in again if "lora_B" in name)
    assert {name: p.data_ptr() for name, p in loaded.model.named_parameters() if "lora_" in name} == storage
    # and taking LoRA off, then attaching another shape, leaves only that shape's layers
    m.detach_lora(loaded)
    assert not any("lora_" in name for name, _ in loaded.hf.named_parameters())
    torch.manual_seed(5)
    m.attach_lora(loaded, 4, 8, 0.0, ATTENTION + ["gate_proj", "up_proj", "down_proj"], False)
    assert any("gate_proj.lora_A" in name for name, _ in loaded.model.named_parameters())


def _adapter(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(run_dir / rf.ADAPTER_DIR / "adapter_model.safetensors")


@pytest.mark.slow
def test_each_run_of_a_group_equals_the_same_run_alone(tmp_path, demo_data, tiny_model):
    """attention s7, attention s8 (re-initialised in place), attention+MLP s7 with dropout (LoRA
    attached anew), attention s9 with dropout and another learning rate (attached anew again)."""
    import torch

    train_csv = demo_data["train"]
    configs = [quick_config(train_csv, seed=7, max_steps=3),
               quick_config(train_csv, seed=8, max_steps=3),
               quick_config(train_csv, seed=7, max_steps=3, targets="attention+mlp", lora_dropout=0.1),
               quick_config(train_csv, seed=9, max_steps=3, lora_dropout=0.1, learning_rate=1e-3)]
    alone = [tmp_path / "alone" / f"run{i}" for i in range(len(configs))]
    for cfg, run_dir in zip(configs, alone):
        train(cfg, run_dir)
    grouped = [tmp_path / "group" / f"run{i}" for i in range(len(configs))]
    stop = StopSignal()
    summaries = train_runs((Member(cfg, run_dir, stop) for cfg, run_dir in zip(configs, grouped)), stop)

    assert all(summary is not None for summary in summaries)
    for solo, member in zip(alone, grouped):
        assert files_of(member) == FINISHED_TRAIN_RUN_FILES
        assert rf.read_status(member)["state"] == rf.SUCCEEDED
        solo_losses = [m["loss"] for m in rf.read_metrics(solo)]
        member_losses = [m["loss"] for m in rf.read_metrics(member)]
        assert len(member_losses) == 3
        assert member_losses == pytest.approx(solo_losses, rel=1e-5, abs=1e-7), member.name
        solo_adapter, member_adapter = _adapter(solo), _adapter(member)
        assert solo_adapter.keys() == member_adapter.keys()
        for name in solo_adapter:
            torch.testing.assert_close(member_adapter[name], solo_adapter[name], rtol=1e-5, atol=1e-7)
        assert rf.read_json(member / rf.ADAPTER_DIR / "adapter_config.json") == \
            rf.read_json(solo / rf.ADAPTER_DIR / "adapter_config.json")
    shared = [rf.read_json(run_dir / rf.SUMMARY)["shared_base"] for run_dir in grouped]
    assert [s["loaded_by_this_run"] for s in shared] == [True, False, False, False]
    assert [s["run_on_this_base"] for s in shared] == [1, 2, 3, 4]
    assert shared[1]["lora"].startswith("re-initialised in place")
    assert shared[2]["lora"].startswith("attached anew") and shared[3]["lora"].startswith("attached anew")
    assert rf.read_json(alone[0] / rf.SUMMARY)["shared_base"] is None


@pytest.mark.slow
def test_a_failing_member_is_recorded_and_the_group_goes_on(tmp_path, demo_data, tiny_model):
    train_csv = demo_data["train"]
    (tmp_path / "broken").mkdir()
    rf.write_status(tmp_path / "broken", rf.QUEUED)  # as the queue prepares it
    members = [Member(quick_config(train_csv, max_steps=1), tmp_path / "first", StopSignal()),
               Member(quick_config(tmp_path / "missing.csv", max_steps=1), tmp_path / "broken", StopSignal()),
               Member(quick_config(train_csv, max_steps=1, seed=3), tmp_path / "third", StopSignal())]
    results = train_runs(members, StopSignal())
    assert [r is None for r in results] == [False, True, False]
    status = rf.read_status(tmp_path / "broken")
    assert status["state"] == rf.FAILED and "missing.csv" in status["error"]
    # a bad input never touched the model: the third run still trains on the first run's base
    assert rf.read_json(tmp_path / "third" / rf.SUMMARY)["shared_base"]["loaded_by_this_run"] is False


@pytest.mark.slow
def test_a_refused_lora_attach_leaves_the_next_run_a_clean_attach(tmp_path, demo_data, tiny_model, monkeypatch):
    """The second member's new LoRA shape is refused after the old LoRA came off; the third member,
    shaped like the first, gets a full attach (not an in-place re-init of a LoRA no longer there)."""
    from engine.models.qwen2_audio import runtime

    attach = runtime.attach_lora

    def refuse_mlp(loaded, r, alpha, dropout, targets, *args, **kwargs):
        if "gate_proj" in targets:
            raise ConfigError("targets", "refused for the test")
        return attach(loaded, r, alpha, dropout, targets, *args, **kwargs)

    monkeypatch.setattr(runtime, "attach_lora", refuse_mlp)
    train_csv = demo_data["train"]
    (tmp_path / "refused").mkdir()
    rf.write_status(tmp_path / "refused", rf.QUEUED)
    members = [Member(quick_config(train_csv, max_steps=1), tmp_path / "first", StopSignal()),
               Member(quick_config(train_csv, max_steps=1, targets="attention+mlp"), tmp_path / "refused",
                      StopSignal()),
               Member(quick_config(train_csv, max_steps=1, seed=3), tmp_path / "third", StopSignal())]
    results = train_runs(members, StopSignal())
    assert [r is None for r in results] == [False, True, False]
    assert "refused for the test" in rf.read_status(tmp_path / "refused")["error"]
    third = rf.read_json(tmp_path / "third" / rf.SUMMARY)
    assert third["shared_base"]["lora"].startswith("attached anew")
    assert third["trainable_params"] == results[0]["trainable_params"]


@pytest.mark.slow
def test_a_stopped_group_takes_no_more_members(tmp_path, demo_data, tiny_model):
    stop = StopSignal()

    def members():
        for name in ("a", "b"):
            yield Member(quick_config(demo_data["train"], max_steps=1), tmp_path / name, stop)
            stop.signal = 15  # SIGTERM arrived at the end of run "a"

    assert len(train_runs(members(), stop)) == 1
    assert rf.read_status(tmp_path / "a")["state"] == rf.SUCCEEDED
    assert not (tmp_path / "b").exists()


def test_member_stop_looks_for_a_cancel_at_most_once_a_second(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr("engine.tasks.train_group.time.monotonic", lambda: clock[0])
    asked, answer = [], [False]

    def cancelled():
        asked.append(clock[0])
        return answer[0]

    process = StopSignal()
    stop = MemberStop(process, cancelled)
    assert not stop and not stop and len(asked) == 1
    answer[0] = True
    clock[0] += 0.5
    assert not stop and len(asked) == 1  # not yet looked again
    clock[0] += 0.6
    assert stop and stop.signal is None  # a cancel: this run only, no signal
    assert stop and len(asked) == 2  # once cancelled, stays cancelled without asking
    process.signal = 15
    assert MemberStop(process, lambda: False) and MemberStop(process, lambda: False).signal == 15
    assert math.isfinite(clock[0])


def test_member_from_job_reads_the_queued_train_command(tmp_path):
    run_dir = tmp_path / "attn-s42"
    run_dir.mkdir()
    (tmp_path / "train.csv").write_text("path,label\n")
    rf.atomic_write_json(run_dir / rf.CONFIG, quick_config(tmp_path / "train.csv", seed=42).to_dict())
    job = {"job_id": "j1", "argv": ["train", "--config", str(run_dir / rf.CONFIG), "--run-dir", str(run_dir)]}
    cfg, where = member_from_job(job)
    assert cfg.seed == 42 and where == run_dir and cfg.target_modules == ATTENTION
    with pytest.raises(ConfigError, match="not train"):
        member_from_job({"job_id": "j2", "argv": ["eval", "--run", "x"]})
    with pytest.raises(ConfigError, match="no --run-dir"):
        member_from_job({"job_id": "j3", "argv": ["train", "--seed", "1"]})
    with pytest.raises(ConfigError, match="cannot read"):
        member_from_job({"job_id": "j4", "argv": ["train", "--no-such-flag", "--run-dir", str(run_dir)]})


@pytest.mark.slow
def test_a_sweep_queued_with_a_shared_base_trains_in_one_process(tmp_path, demo_data, tiny_model):
    """The queue's path end to end: submit_sweep(share_base=True) -> the worker starts one
    `python -m engine train-group` for the sweep -> every run folder complete, every job succeeded."""
    from engine import jobs
    from engine.jobs.sweep import expand_sweep
    from engine.jobs.worker import run_worker

    root = tmp_path / "ws"
    base = quick_config(demo_data["train"], max_steps=2).to_dict()
    cells = expand_sweep(base, {"seed": [1, 2], "targets": ["attention", "attention+mlp"]})
    queued = jobs.enqueue_sweep(root, cells, share_base=True)
    assert len(queued["enqueued"]) == 4
    assert run_worker(root, once=True, poll_s=0.2, idle_grace_s=0) == 0
    finished = jobs.read_jobs(root)
    assert [job["state"] for job in finished] == [rf.SUCCEEDED] * 4, [job.get("error") for job in finished]
    assert len({job["pid"] for job in finished}) == 1  # one process for the whole sweep
    for job in finished:
        run_dir = Path(job["run_dir"])
        assert files_of(run_dir) == FINISHED_TRAIN_RUN_FILES
        assert rf.read_status(run_dir)["state"] == rf.SUCCEEDED
    shared = sorted(rf.read_json(Path(job["run_dir"]) / rf.SUMMARY)["shared_base"]["run_on_this_base"]
                    for job in finished)
    assert shared == [1, 2, 3, 4]
