"""The Train/Evaluate form helpers: sweep expansion, command previews, field-named errors."""

from __future__ import annotations

import argparse
import shlex
from collections import Counter
from dataclasses import fields
from pathlib import Path

import pytest

from engine import jobs
from engine.dashboard import launch
from engine.runs import folder as rf
from engine.config import ConfigError, TrainConfig, config_fields


def form_values(**changes) -> dict:
    """The Train form as first shown, with `changes` typed in."""
    values = {spec.name: spec.initial for _title, specs in launch.form_sections() for spec in specs}
    values.update(changes)
    return values


@pytest.fixture()
def train_csv(tmp_path) -> Path:
    path = tmp_path / "train.csv"
    path.write_text("path,label\na.wav,SPEECH\n", encoding="utf-8")
    return path


def test_form_has_every_field_once_with_its_docstring():
    specs = [spec for _title, section in launch.form_sections() for spec in section]
    names = [spec.name for spec in specs]
    assert sorted(names) == sorted(f.name for f in fields(TrainConfig))
    assert len(names) == len(set(names))
    placed = [name for _title, section in launch.FORM_SECTIONS for name in section]
    assert sorted(placed) == sorted(names), "FORM_SECTIONS is out of date with TrainConfig's fields"
    docs = {name: doc for name, _default, doc in config_fields()}
    for spec in specs:
        assert spec.help.startswith(docs[spec.name]) and docs[spec.name], spec.name
    kinds = {spec.name: spec.kind for spec in specs}
    assert kinds["seed"] == kinds["lora_r"] == kinds["lora_alpha"] == "list"
    assert kinds["targets"] == "presets" and kinds["quantization"] == "choice" and kinds["skip_bad_audio"] == "checkbox"


def test_full_sweep_expands_to_the_cartesian_product(train_csv):
    plan = launch.plan_sweep(form_values(
        seed="42, 123, 456, 789, 2024", lora_r="8, 16, 32", lora_alpha="16, 32, 64",
        targets=["attention", "attention+mlp"], train_data=str(train_csv)))
    assert plan.errors == [] and plan.launchable
    assert len(plan.cells) == 5 * 3 * 3 * 2
    assert len({cell["run_name"] for cell in plan.cells}) == 90
    # seeds of one configuration share its label (so they aggregate); the 18 configurations differ
    labels = Counter(cell["config"]["label"] for cell in plan.cells)
    assert len(labels) == 18 and set(labels.values()) == {5}
    assert "Attention+MLP · r8 · α16" in labels
    first = plan.cells[0]
    assert first["run_name"] == "attn-r8-a16-s42"
    assert first["config"]["lora_r"] == 8 and first["config"]["lora_alpha"] == 16.0
    rows = plan.rows()
    assert rows[0] == {"run": "attn-r8-a16-s42", "configuration": "Attention-Only · r8 · α16", "targets": "attention",
                       "lora_r": 8, "lora_alpha": 16.0, "seed": 42, "check": "ok", "folder": "new"}


def test_seed_only_sweep_keeps_the_preset_label(train_csv):
    plan = launch.plan_sweep(form_values(seed="42, 123", train_data=str(train_csv)))
    assert [cell["run_name"] for cell in plan.cells] == ["attn-r16-a32-s42", "attn-r16-a32-s123"]
    assert all("label" not in cell["config"] for cell in plan.cells)  # derived: "Attention-Only"
    assert {TrainConfig.from_dict(cell["config"]).display_label() for cell in plan.cells} == {"Attention-Only"}


def test_form_numbers_are_normalised_before_they_are_written(train_csv):
    plan = launch.plan_sweep(form_values(train_data=str(train_csv), epochs="2", learning_rate="1e-4",
                                         max_steps="", filters="duration_ms=500:3000; snr_db=0,5",
                                         label_words="yes, no"))
    config = plan.cells[0]["config"]
    assert config["epochs"] == 2.0 and config["learning_rate"] == 1e-4 and config["max_steps"] is None
    assert config["filters"] == {"duration_ms": "500:3000", "snr_db": "0,5"}
    assert config["label_words"] == ["yes", "no"]
    assert "target_modules" not in config and "effective_batch" not in config


@pytest.mark.parametrize("changes, message", [
    ({"lora_alpha": "-5"}, "lora_alpha: must be > 0 (got -5)"),
    ({"lora_alpha": "16, abc"}, "lora_alpha: item 2 of '16, abc': 'abc' is not a finite number"),
    ({"seed": "42,,7"}, "seed: item 2 of '42,,7' is empty (two commas in a row?)"),
    ({"seed": "42, 42"}, "seed: item 2 of '42, 42': '42' is listed twice"),
    ({"lora_r": "8.5"}, "lora_r: item 1 of '8.5': '8.5' is not a whole number"),
    ({"lora_r": "0"}, "lora_r: must be >= 1 (got 0)"),
    ({"learning_rate": "fast"}, "learning_rate: must be a number (got 'fast')"),
    ({"max_steps": "ten"}, "max_steps: must be a whole number (got 'ten')"),
    ({"targets": []}, "targets: choose at least one target preset"),
    ({"filters": "duration_ms"}, "filters: 'duration_ms' is not column=spec (e.g. duration_ms=500:3000)"),
    ({"filters": "snr_db=loud"}, "filters.snr_db: 'loud' is not 'min:max' or 'v1,v2,...'"),
    ({"label_words": "SPEECH"}, "label_words: needs exactly two words, SPEECH first (got ['SPEECH'])"),
    ({"train_data": ""}, "train_data: is required (a manifest CSV/JSONL or a folder)"),
])
def test_invalid_values_name_their_field(train_csv, changes, message):
    plan = launch.plan_sweep(form_values(**{"train_data": str(train_csv), **changes}))
    assert [str(error) for error in plan.errors] == [message]
    assert isinstance(plan.errors[0], ConfigError)
    assert not plan.launchable


def test_cell_errors_are_shown_once_and_per_row(tmp_path):
    missing = tmp_path / "nope.csv"
    plan = launch.plan_sweep(form_values(seed="1, 2", train_data=str(missing)))
    assert [str(e) for e in plan.errors] == [f"train_data: not found: {missing}"]
    assert [row["check"] for row in plan.rows()] == [f"train_data: not found: {missing}"] * 2


def test_same_messages_as_the_cli(train_csv):
    from engine.tasks.train import config_from_args, train_arguments

    parser = argparse.ArgumentParser()
    train_arguments(parser)
    with pytest.raises(ConfigError) as cli:
        config_from_args(parser.parse_args(["--train-data", str(train_csv), "--lora-alpha", "-5"]))
    form = launch.plan_sweep(form_values(train_data=str(train_csv), lora_alpha="-5"))
    assert str(form.errors[0]) == str(cli.value)


def test_command_preview_text_and_round_trip(train_csv, tmp_path):
    from engine.tasks.train import config_from_args, train_arguments

    plan = launch.plan_sweep(form_values(
        model="tiny", lora_r="8, 16", seed="42", targets=["attention+mlp"], train_data=str(train_csv),
        epochs="2", learning_rate="0.001", filters="duration_ms=500:3000", skip_bad_audio=True,
        label_words="SPEECH, NONSPEECH"))
    cell = plan.cells[0]
    run_dir = tmp_path / "runs" / cell["run_name"]
    command = launch.train_command(cell["config"], run_dir)
    assert command == (
        "python -m engine train --label 'Attention+MLP · r8' --model tiny --targets attention+mlp --lora-r 8 "
        f"--num-epochs 2 --learning-rate 0.001 --train-data {train_csv} --skip-bad-audio "
        f"--filter-duration 500:3000 --run-dir {run_dir}")
    # the real CLI reads the preview back into the same configuration
    parser = argparse.ArgumentParser()
    train_arguments(parser)
    args = parser.parse_args(shlex.split(command)[4:])
    assert Path(args.run_dir) == run_dir
    expected = TrainConfig.from_dict(cell["config"]).validate().to_dict()
    assert config_from_args(args).to_dict() == expected


def test_command_preview_lists_fields_without_a_flag(train_csv):
    plan = launch.plan_sweep(form_values(train_data=str(train_csv), weight_decay="0.01",
                                         system_prompt="Be brief.", filters="condition=1,2"))
    command = launch.train_command(plan.cells[0]["config"])
    first, comment = command.split("\n")
    assert first == f"python -m engine train --train-data {train_csv}"
    assert comment == ("# no flag for filters.condition=1,2, weight_decay=0.01, system_prompt='Be brief.' "
                       "(the queued job reads them from config.json)")


def test_existing_runs_are_skipped_or_retried(tmp_path, train_csv):
    root = tmp_path / "ws"
    for name, state in (("attn-r16-a32-s1", rf.SUCCEEDED), ("attn-r16-a32-s2", rf.FAILED)):
        (root / name).mkdir(parents=True)
        rf.atomic_write_json(root / name / rf.CONFIG, {"kind": "train"})
        rf.write_status(root / name, state)
    plan = launch.plan_sweep(form_values(seed="1, 2, 3", train_data=str(train_csv)), root)
    assert plan.to_train == ["attn-r16-a32-s2", "attn-r16-a32-s3"]
    assert [row["folder"] for row in plan.rows()] == ["succeeded: skipped", "failed: retried (old attempt kept)",
                                                     "new"]
    assert launch.sweep_bytes(plan.cells[1:]) > 0


def test_sweep_resume_requeues_only_unfinished_cells(tmp_path, train_csv):
    root = tmp_path / "ws"
    plan = launch.plan_sweep(form_values(seed="1, 2, 3", train_data=str(train_csv)), root)
    result = jobs.enqueue_sweep(root, plan.cells)
    job_list = jobs.read_jobs(root)
    assert launch.sweep_runs(job_list) == {result["sweep_id"]: ["attn-r16-a32-s1", "attn-r16-a32-s2",
                                                                 "attn-r16-a32-s3"]}
    # s1 succeeded, s2 failed, s3 was dequeued
    for name, job_id in result["enqueued"].items():
        state = {"attn-r16-a32-s1": rf.SUCCEEDED, "attn-r16-a32-s2": rf.FAILED}.get(name)
        if state:
            rf.write_status(root / name, state)
            jobs.store.update_job(root, job_id, lambda job, s=state: {"state": s})
    assert jobs.cancel(root, result["enqueued"]["attn-r16-a32-s3"])["outcome"] == "dequeued"
    cells, lost = launch.sweep_cells(root, launch.sweep_runs(jobs.read_jobs(root))[result["sweep_id"]])
    assert [c["run_name"] for c in cells] == ["attn-r16-a32-s2", "attn-r16-a32-s3"] and lost == []
    assert cells[0]["config"]["seed"] == 2 and "kind" not in cells[0]["config"]
    again = jobs.enqueue_sweep(root, cells, sweep_id=result["sweep_id"])
    assert sorted(again["enqueued"]) == ["attn-r16-a32-s2", "attn-r16-a32-s3"]
    assert (root / "attn-r16-a32-s2.attempt1").is_dir()  # the failed attempt is kept


def test_job_rows_and_progress(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    rf.write_status(run_dir, rf.RUNNING, progress={"step": 3, "total_steps": 12, "loss": 0.5, "samples_per_s": 4.0,
                                                    "eta_s": 125.0})
    job = {"job_id": "20260101-000000-000001-abcd", "argv": ["train", "--config", "x"], "run_dir": str(run_dir),
           "state": rf.RUNNING, "sweep_id": "sweep-1", "cancel_outcome": None}
    assert launch.job_progress(job) == {"step": 3, "total_steps": 12, "fraction": 0.25, "loss": 0.5,
                                        "samples_per_s": 4.0, "eta_s": 125.0}
    assert launch.format_eta(125.0) == "2 min 05 s" and launch.format_eta(3725) == "1 h 02 min"
    dequeued = {"job_id": "20260101-000000-000002-abcd", "argv": ["eval"], "state": rf.CANCELLED,
                "cancel_requested_at": "now", "started_at": None}
    rows = launch.job_rows([job, dequeued])
    assert [row["job"] for row in rows] == [dequeued["job_id"], job["job_id"]]  # newest first
    assert rows[0]["cancel"] == "dequeued" and rows[1]["run"] == "run" and rows[1]["command"] == "train"
    assert launch.job_progress({"run_dir": str(tmp_path / "missing")}) is None


# ---------------------------------------------------------------- Evaluate

def _trained_run(root: Path, name: str, label: str, seed: int, evaluations=("test",)) -> rf.RunInfo:
    run_dir = root / name
    (run_dir / rf.ADAPTER_DIR).mkdir(parents=True)
    for file_name in rf.ADAPTER_FILES:
        (run_dir / rf.ADAPTER_DIR / file_name).write_text("{}")
    rf.atomic_write_json(run_dir / rf.CONFIG, {"kind": "train", "label": label, "seed": seed, "model": "tiny"})
    rf.write_status(run_dir, rf.SUCCEEDED)
    for evaluation in evaluations:
        rf.atomic_write_json(rf.evaluation_dir(run_dir, evaluation) / rf.EVALUATION,
                             {"test_data": str(root / "test.csv")})
    return rf.read_run(run_dir)


def test_evaluations_for_every_seed_with_controls(tmp_path):
    from engine.tasks.evaluate import eval_arguments

    (tmp_path / "test.csv").write_text("path,label\n", encoding="utf-8")
    runs = [_trained_run(tmp_path, f"cfg-s{seed}", "Cfg", seed, ("test", "val")) for seed in (1, 2)]
    planned, problems = launch.plan_evaluations(tmp_path, runs, str(tmp_path / "test.csv"), name="held-out",
                                                batch_size=4, controls=[None, "silence"], threshold_from_val=True)
    assert problems == []
    assert [(job.target, job.evaluation) for job in planned] == [
        ("cfg-s1", "held-out"), ("cfg-s2", "held-out"), ("cfg-s1", "held-out-silence"), ("cfg-s2", "held-out-silence")]
    assert planned[2].argv == ["eval", "--run", str(runs[0].path), "--test-data", str(tmp_path / "test.csv"),
                               "--name", "held-out", "--batch-size", "4", "--control", "silence",
                               "--threshold-from", "val"]
    assert planned[0].run_dir == runs[0].path
    parser = argparse.ArgumentParser()
    eval_arguments(parser)
    args = parser.parse_args(planned[2].argv[1:])
    assert (args.run, args.control, args.threshold_from, args.batch_size) == (str(runs[0].path), "silence", "val", 4)
    assert launch.known_test_sets(runs, tmp_path) == [str(tmp_path / "test.csv")]
    assert launch.count_clips(tmp_path / "test.csv") == 1


def test_base_model_evaluation_and_problems(tmp_path):
    (tmp_path / "test.csv").write_text("path,label\n", encoding="utf-8")
    planned, problems = launch.plan_evaluations(tmp_path, [], str(tmp_path / "test.csv"), base_model="tiny",
                                                quantization="4bit")
    assert problems == []
    assert planned[0].argv == ["eval", "--base", "--model", "tiny", "--runs-dir", str(tmp_path), "--run-name",
                               "base-tiny", "--quantization", "4bit", "--test-data", str(tmp_path / "test.csv"),
                               "--name", "test", "--batch-size", "8"]
    assert planned[0].run_dir is None
    assert planned[0].command.startswith("python -m engine eval --base --model tiny")

    no_val = [_trained_run(tmp_path, "plain", "Plain", 1)]
    _planned, problems = launch.plan_evaluations(tmp_path, no_val, str(tmp_path / "test.csv"), threshold_from_val=True)
    assert problems == ["plain: no 'val' evaluation to choose a threshold on (train with val_data, or untick the "
                        "option)"]
    _planned, problems = launch.plan_evaluations(tmp_path, no_val, str(tmp_path / "gone.csv"), name="a/b",
                                                 batch_size=0, controls=[])
    assert problems == [f"test data: not found: {tmp_path / 'gone.csv'}",
                        "evaluation name: invalid run name 'a/b': use 1-128 letters, digits, '.', '_', '+' or '-', "
                        "starting with a letter or digit (no '/', no '..')",
                        "batch size: must be a whole number >= 1 (got 0)",
                        "audio: choose the real audio, a control, or both"]
    with pytest.raises(ValueError):
        launch.eval_argv("t.csv")


def test_queued_argument_lists_parse_back_to_the_config_they_came_from(tmp_path):
    """eval_argv and opro_argv go through the configs' generated flags, so the engine's parsers read
    back exactly the configuration the form planned."""
    from engine.cliargs import config_from_namespace
    from engine.config import EvalConfig
    from engine.tasks.evaluate import eval_arguments
    from engine.tasks.opro import OproSettings, opro_arguments

    argv = launch.eval_argv("t.csv", name="held-out", batch_size=4, control="shuffle", base_model="tiny",
                            quantization="none", runs_root=tmp_path, run_name="base-x", prompt="-- speech? --")
    parser = argparse.ArgumentParser()
    eval_arguments(parser)
    assert config_from_namespace(EvalConfig, parser.parse_args(argv[1:])) == EvalConfig(
        base=True, model="tiny", runs_dir=tmp_path, run_name="base-x", quantization="none", test_data="t.csv",
        name="held-out", batch_size=4, control="shuffle", prompt="-- speech? --")
    with pytest.raises(ConfigError, match="batch_size: must be >= 1"):
        launch.eval_argv("t.csv", batch_size=0, run_dir=tmp_path / "run")

    argv = launch.opro_argv("d.csv", tmp_path / "opro-x", run="cfg-s1", iterations=2, candidates=3,
                            proposer="self", seed=5, batch_size=2)
    parser = argparse.ArgumentParser()
    opro_arguments(parser)
    assert config_from_namespace(OproSettings, parser.parse_args(argv[1:])) == OproSettings(
        run="cfg-s1", dev_data="d.csv", iterations=2, candidates=3, proposer="self", seed=5,
        run_dir=tmp_path / "opro-x", batch_size=2)


def test_form_choices_are_the_configs_choices():
    """The form offers what TrainConfig.validate() accepts, so no typed-in value fails later."""
    from engine.cliargs import field_choices

    specs = {spec.name: spec for _title, section in launch.form_sections() for spec in section}
    for name, options in field_choices(TrainConfig).items():
        assert (specs[name].kind, specs[name].options) == ("choice", options), name
    assert specs["offload_embeddings"].options == ("auto", "on", "off")


def test_command_preview_of_a_single_module_target_runs(train_csv):
    """A target list of one module is written as `--targets q_proj`, which the CLI reads as that list."""
    from engine.tasks.train import config_from_args, train_arguments

    config = TrainConfig(train_data=str(train_csv), targets=["q_proj"]).validate().to_dict()
    command = launch.train_command(config)
    assert "--targets q_proj" in command
    parser = argparse.ArgumentParser()
    train_arguments(parser)
    assert config_from_args(parser.parse_args(shlex.split(command)[4:])).targets == ["q_proj"]


def test_share_base_starts_ticked_unless_the_workspace_runs_several_jobs_per_gpu(tmp_path):
    from engine.dashboard import launch
    from engine.jobs import store

    assert launch.share_base_default(tmp_path) is True
    store.jobs_dir(tmp_path).mkdir(parents=True)
    (store.jobs_dir(tmp_path) / store.SETTINGS_FILE).write_text('{"jobs_per_gpu": 4}')
    assert launch.share_base_default(tmp_path) is False
    (store.jobs_dir(tmp_path) / store.SETTINGS_FILE).write_text('{"jobs_per_gpu": 1}')
    assert launch.share_base_default(tmp_path) is True
