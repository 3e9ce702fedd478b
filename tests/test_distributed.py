"""Data-parallel training on the CPU: two gloo ranks launched by `python -m engine train --num-gpus 2`
take the same optimizer steps as one process at the same effective batch, and the run folder is
written once, by rank 0."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from engine.tasks import distributed
from engine.runs import folder as rf
from engine.tasks.train import step_batches, train
from tests.test_train import FINISHED_TRAIN_RUN_FILES, files_of, quick_config, train_then_sigterm

# 4-bit bitsandbytes runs under several CPU processes like under one; the tiny model keeps it fast.
COMMON = ["--model", "tiny", "--quantization", "4bit", "--device", "cpu", "--seed", "7", "--num-epochs", "1",
          "--max-steps", "3", "--gradient-accumulation-steps", "1", "--learning-rate", "2e-3",
          "--lora-dropout", "0", "--warmup-ratio", "0"]


@pytest.mark.slow
def test_two_cpu_processes_take_the_same_steps_as_one(tmp_path, demo_data, tiny_model, repo_root):
    single = tmp_path / "single"
    train(quick_config(demo_data["train"], per_device_batch=8, grad_accum=1, max_steps=3), single)
    parallel = tmp_path / "parallel"
    result = subprocess.run(
        [sys.executable, "-m", "engine", "train", *COMMON, "--train-data", str(demo_data["train"]),
         "--per-device-train-batch-size", "4", "--num-gpus", "2", "--run-dir", str(parallel)],
        cwd=repo_root, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]

    expected = [m["loss"] for m in rf.read_metrics(single)]
    got = [m["loss"] for m in rf.read_metrics(parallel)]
    assert len(got) == 3
    assert got == pytest.approx(expected, rel=1e-4)
    assert len(set(got)) == 3  # the steps really differ, so equal losses mean equal updates
    assert files_of(parallel) == FINISHED_TRAIN_RUN_FILES
    assert rf.read_json(parallel / rf.STATUS)["state"] == rf.SUCCEEDED
    assert (parallel / rf.LOG).read_text(encoding="utf-8").count("step 1/3") == 1  # one writer
    summary = rf.read_json(parallel / rf.SUMMARY)
    assert (summary["num_processes"], summary["effective_batch"], summary["samples_seen"]) == (2, 8, 24)
    config = rf.read_json(parallel / rf.CONFIG)
    assert (config["num_processes"], config["effective_batch"]) == (2, 8)


def test_step_shards_are_disjoint_and_together_are_the_one_process_step():
    from types import SimpleNamespace

    clips = [SimpleNamespace(duration_s=float(d)) for d in (3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5)]
    order = [4, 0, 9, 7, 2, 10, 5, 1, 8, 3, 6]
    one = step_batches(order, clips, micro_batch=4, grad_accum=1)
    ranks = [step_batches(order, clips, micro_batch=2, grad_accum=1, rank=r, world=2) for r in (0, 1)]
    assert len(one) == len(ranks[0]) == len(ranks[1]) == 3
    for step, (a, b) in enumerate(zip(*ranks)):
        shard_a, shard_b = sum(a, []), sum(b, [])
        assert not set(shard_a) & set(shard_b)
        assert sorted(shard_a + shard_b) == sorted(sum(one[step], []))
    assert ranks[0][2] == [[8, 6]] and ranks[1][2] == [[3]]  # longest first within a micro-batch
    # a last step shorter than the world leaves a rank with nothing, but still a step to take part in
    short = [step_batches(order[:9], clips, micro_batch=2, grad_accum=1, rank=r, world=2) for r in (0, 1)]
    assert short[0][2] == [[8]] and short[1][2] == []


def test_launch_command_reruns_the_engine_under_accelerate_without_a_shell():
    cmd = distributed.launch_command(2, ["train", "--device", "cpu"])
    assert cmd[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    assert cmd[cmd.index("--num_processes") + 1] == "2" and cmd[cmd.index("--num_machines") + 1] == "1"
    assert cmd[-4:] == ["engine", "train", "--device", "cpu"] and cmd[-5] == "-m"
    with pytest.raises(ValueError, match="num_processes"):
        distributed.launch_command(0, [])


def test_one_process_is_untouched(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.init_from_env("cpu") is False
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    assert distributed.all_reduce_grads([], 5) == 5.0 and distributed.weighted_mean(0.25, 3) == 0.25
    assert distributed.max_over_ranks(15) == 15


def _combine_on_two_ranks(rank: int, port: int, results) -> None:
    """One gloo rank: rank 0 has a mean gradient over 1 token, rank 1 over 3, then rank 1 has none."""
    import os

    import torch

    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    distributed.init_from_env("cpu")
    try:
        p = torch.nn.Parameter(torch.zeros(2))
        p.grad = torch.tensor([1.0, 2.0]) if rank == 0 else torch.tensor([5.0, -2.0])
        total = distributed.all_reduce_grads([p], 1 if rank == 0 else 3)
        first = (total, p.grad.tolist())
        p.grad = torch.tensor([4.0, 6.0]) if rank == 0 else None  # rank 1 had no clips this step
        total = distributed.all_reduce_grads([p], 2 if rank == 0 else 0)
        second = (total, p.grad.tolist())
        loss = distributed.weighted_mean(0.5 if rank == 0 else 0.1, 1 + 3 * rank)
        results[rank] = (first, second, loss, distributed.max_over_ranks(15 if rank == 1 else 0))
    finally:
        distributed.cleanup()


def _spawn_two_ranks(port: int, out: str) -> None:
    """Run `_combine_on_two_ranks` on 2 spawned processes and write their results as JSON."""
    import json

    import torch.multiprocessing as mp

    results = mp.Manager().dict()
    mp.spawn(_combine_on_two_ranks, args=(port, results), nprocs=2, join=True)
    Path(out).write_text(json.dumps({str(k): v for k, v in results.items()}))


def test_gradients_combine_as_the_mean_over_every_ranks_tokens(tmp_path, repo_root):
    import json
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "ranks.json"
    # A fresh interpreter: spawned children re-import __main__, which inside pytest may be a page
    # script that an AppTest ran earlier.
    subprocess.run([sys.executable, "-c", f"from tests.test_distributed import _spawn_two_ranks; "
                    f"_spawn_two_ranks({port}, {str(out)!r})"], cwd=repo_root, check=True, timeout=120)
    results = json.loads(out.read_text())
    for rank in ("0", "1"):
        (total1, grad1), (total2, grad2), loss, stop = results[rank]
        assert total1 == 4.0 and grad1 == pytest.approx([(1 * 1 + 5 * 3) / 4, (2 * 1 - 2 * 3) / 4])
        assert total2 == 2.0 and grad2 == pytest.approx([4.0, 6.0])
        assert loss == pytest.approx((0.5 * 1 + 0.1 * 4) / 5) and stop == 15


@pytest.mark.slow
def test_sigterm_to_the_launching_process_stops_both_ranks_and_ends_cancelled(tmp_path, demo_data, repo_root):
    """Like the job runner's cancel: SIGTERM to the `python -m engine train` process only."""
    run_dir = tmp_path / "cancel-me"
    train_then_sigterm([*COMMON[:COMMON.index("--max-steps")], "--train-data", str(demo_data["train"]),
                        "--per-device-train-batch-size", "4", "--num-gpus", "2", "--num-epochs", "50"],
                       run_dir, repo_root)
    status = rf.read_json(run_dir / rf.STATUS)
    assert status["state"] == rf.CANCELLED and status["signal"] == signal.SIGTERM
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    assert rf.read_json(run_dir / rf.SUMMARY)["stopped_early"] is True
