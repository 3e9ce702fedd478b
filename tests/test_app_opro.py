"""AppTest of the Prompt optimisation page and of the Evaluate page's prompt choice, widgets looked up
by key, against small workspaces of fake OPRO run folders (tests/test_opro_review.py builds them).
Nothing runs: ensure_worker is a no-op, jobs stay queued."""

from __future__ import annotations

from pathlib import Path

import pytest
from statsmodels.stats.contingency_tables import mcnemar as sm_mcnemar

from engine import jobs
from engine.dashboard import review
from engine.runs import folder as rf
from tests.test_app_ops import page, texts, trained_run
from tests.test_app_review import chart
from tests.test_opro_review import TEST_MASKS, make_workspace, search_history


def assert_clean(at) -> None:
    assert not at.exception, [e.value for e in at.exception]


def frame(at, column: str):
    """The first dataframe on the page with `column` (the history has log-likelihood, the drop table drop)."""
    return next(d.value for d in at.dataframe if column in d.value.columns)


@pytest.fixture()
def opro_workspace(empty_workspace) -> Path:
    """Training runs cfg-s1/cfg-s2 ("Cfg") plus the fake OPRO searches: finished on the base model and on
    both seeds (with test evaluations), one running with a partial history line, one cancelled."""
    for seed in (1, 2):
        trained_run(empty_workspace, f"cfg-s{seed}", "Cfg", seed)
    return make_workspace(empty_workspace)


def test_empty_workspace_says_how_to_start(empty_workspace):
    at = page("opro").run()
    assert_clean(at)
    assert at.title[0].value == "Prompt optimisation"
    assert at.button(key="opro_launch").disabled
    info = " ".join(texts(at.info))
    assert "No finished training runs with an adapter in this workspace yet." in info
    assert "No prompt-optimisation jobs yet" in info
    assert f"No prompt-optimisation runs in {empty_workspace} yet" in info
    assert "python -m engine opro --run RUN --dev-csv DEV.csv --test-csv TEST.csv" in info
    assert "No finished OPRO run has test evaluations yet." in info


def test_searches_curve_history_and_the_2x2_design(opro_workspace):
    at = page("opro").run()
    assert_clean(at)
    # newest first: the cancelled search, with its best prompt so far (no opro.json)
    assert at.selectbox(key="opro_search").value == "opro-other-s1"
    assert [s.value for s in at.subheader][:1] == ["Best prompt so far"]
    prompts = [code.value for code in at.code]
    assert search_history()[3]["prompt"] in prompts
    curve = chart(at, "opro_curve")
    assert [trace.name for trace in curve.data][-1] == "best prompt so far"
    history = frame(at, "log-likelihood")
    assert list(history["id"]) == [0, 1, 2, 3]

    # the running search: partial last history line ignored, best so far shown
    at.selectbox(key="opro_search").set_value("opro-cfg-s3").run()
    assert_clean(at)
    assert list(frame(at, "log-likelihood")["id"]) == [0, 1, 2]
    assert at.query_params["run"] == "opro-cfg-s3"
    assert search_history()[1]["prompt"] in [code.value for code in at.code]
    drop = frame(at, "drop (pts)")
    assert drop["test balanced accuracy (%)"].isna().all()

    # a finished search: final best prompt and its dev-to-test drop
    at.selectbox(key="opro_search").set_value("opro-cfg-s1").run()
    assert_clean(at)
    assert "Best prompt" in [s.value for s in at.subheader]
    assert chart(at, "opro_curve").data[-1].name == "best prompt"
    drop = frame(at, "drop (pts)").set_index("prompt")
    assert drop.loc["best prompt", "test balanced accuracy (%)"] == pytest.approx(100.0)
    assert drop.loc["best prompt", "drop (pts)"] == pytest.approx(-12.5)

    # the 2x2 design: four cells, six McNemar pairs, the base cell paired with each seed
    assert at.selectbox(key="opro_design_config").value == "Cfg"
    headings = [m.value for m in at.markdown if " (A) vs **" in m.value]
    assert len(headings) == 6
    assert headings[0] == "**Base · original prompt** (A) vs **Base · OPRO prompt** (B)"
    tables = [t.value for t in at.table]
    grid = next(t for t in tables if "OPRO prompt" in t.columns and "original prompt" in t.columns)
    assert grid.loc["Base model", "original prompt"] == "50.0% overall · 50.0% balanced"
    mcnemar_tables = [t for t in tables if "Only A right" in t.columns]
    assert len(mcnemar_tables) == 6
    base_vs_tuned_opro = mcnemar_tables[2]  # Base · original prompt vs Fine-tuned · OPRO prompt
    assert list(base_vs_tuned_opro.index) == ["A base vs B seed 1", "A base vs B seed 2"]  # the base run is reused
    a, b = TEST_MASKS["base"][0], TEST_MASKS[2][1]
    only_a = sum(1 for x, y in zip(a, b) if x == "1" and y == "0")
    only_b = sum(1 for x, y in zip(a, b) if x == "0" and y == "1")
    both_right = sum(1 for x, y in zip(a, b) if x == y == "1")
    expected_p = sm_mcnemar([[both_right, only_a], [only_b, len(a) - both_right - only_a - only_b]], exact=True).pvalue
    row = base_vs_tuned_opro.loc["A base vs B seed 2"]
    assert (row["Only A right"], row["Only B right"], row["p"]) == (only_a, only_b, review.format_p(expected_p))
    assert any(text.startswith("With 12 clips, differences under") for text in texts(at.info))
    assert chart(at, "class_accuracy")


def test_a_crashed_search_keeps_its_best_prompt_so_far(opro_workspace):
    from tests.test_opro_review import make_opro_run

    run_dir = make_opro_run(opro_workspace, "opro-crashed", "run", "Cfg", 4, search_history()[:2], state=rf.RUNNING,
                            finished=False, created_at="2026-02-01T00:00:00+0000")
    rf.write_status(run_dir, rf.RUNNING, pid=4_194_999, process_start_time=1.0)  # no such process: it crashed
    at = page("opro").run()
    assert_clean(at)
    assert at.selectbox(key="opro_search").value == "opro-crashed"
    assert "opro-crashed crashed: the process died without a final state" in texts(at.error)
    assert chart(at, "opro_curve").data[-1].name == "best prompt so far"
    assert search_history()[1]["prompt"] in [code.value for code in at.code]
    assert list(frame(at, "log-likelihood")["id"]) == [0, 1]


def test_cells_on_other_clips_are_refused(opro_workspace):
    from tests.test_opro_review import make_opro_run

    make_opro_run(opro_workspace, "opro-base-elsewhere", "base", "Base model", None, search_history(),
                  test_masks=TEST_MASKS["base"], clip_ids=[f"other-{i:02d}" for i in range(12)],
                  created_at="2026-02-01T00:00:00+0000")
    at = page("opro").run()
    assert_clean(at)
    at.selectbox(key="opro_design_base").set_value("opro-base-elsewhere").run()
    errors = texts(at.error)
    assert any(e.startswith("The cells are not on the same test clips, so they cannot be compared clip by clip:")
               for e in errors), errors
    at.selectbox(key="opro_design_base").set_value("opro-base-tiny").run()
    assert_clean(at)
    assert not any("not on the same test clips" in e for e in texts(at.error))


def test_validation_messages_then_queue_and_cancel(empty_workspace, no_worker, manifests):
    for seed in (1, 2):
        trained_run(empty_workspace, f"cfg-s{seed}", "Cfg", seed)
    at = page("opro").run()
    assert_clean(at)
    at.radio(key="opro_target").set_value("Every seed of a configuration").run()
    at.selectbox(key="opro_config").set_value("Cfg")
    at.selectbox(key="opro_dev_choice").set_value("Another path ...").run()
    at.text_input(key="opro_dev_path").input(str(manifests["dev"].parent / "nope.csv"))
    at.text_input(key="opro_seed").input("seven")
    at.radio(key="opro_proposer").set_value("Another local causal LM").run()
    assert_clean(at)
    assert texts(at.error) == [f"dev data: not found: {manifests['dev'].parent / 'nope.csv'}",
                               "seed: must be a whole number >= 0, or blank for the target's seed (got 'seven')",
                               "proposer model: give a local causal LM folder or a Hugging Face hub id in the cache"]
    assert at.button(key="opro_launch").disabled

    at.text_input(key="opro_dev_path").input(str(manifests["dev"]))
    at.text_input(key="opro_seed").input("")
    at.radio(key="opro_proposer").set_value("The audio model's own language model (text only)")
    at.selectbox(key="opro_test_choice").set_value("Another path ...").run()
    at.text_input(key="opro_test_path").input(str(manifests["test"]))
    at.number_input(key="opro_iterations").set_value(2).run()
    assert_clean(at)
    assert texts(at.error) == []
    preview = at.dataframe[0].value
    assert list(preview["target"]) == ["cfg-s1", "cfg-s2"]
    assert list(preview["run folder"]) == ["opro-cfg-s1", "opro-cfg-s2"]
    commands = at.code[0].value.split("\n\n")
    assert commands[0] == (f"python -m engine opro --run {empty_workspace / 'cfg-s1'} --dev-csv {manifests['dev']} "
                           f"--test-csv {manifests['test']} --iterations 2 --candidates 4 --proposer self --run-dir "
                           f"{empty_workspace / 'opro-cfg-s1'} --batch-size 8")
    assert at.button(key="opro_launch").label == "Queue 2 searches"

    at.button(key="opro_launch").click().run()
    assert_clean(at)
    assert any(s.startswith("Queued 2 prompt search(es).") for s in texts(at.success))
    assert no_worker == [empty_workspace.resolve()]
    queued = jobs.read_jobs(empty_workspace)
    assert sorted(Path(job["run_dir"]).name for job in queued) == ["opro-cfg-s1", "opro-cfg-s2"]
    assert {job["resource"] for job in queued} == {"gpu"} and {job["argv"][0] for job in queued} == {"opro"}
    for job in queued:
        info = rf.read_run(Path(job["run_dir"]))
        assert (info.kind, info.state, info.config["target"]["config_label"]) == ("opro", rf.QUEUED, "Cfg")
    # the queued runs are listed at once, and the preview now plans fresh folders
    assert set(at.selectbox(key="opro_search").options) == {"opro-cfg-s1 (queued, Cfg)", "opro-cfg-s2 (queued, Cfg)"}
    assert list(at.dataframe[0].value["run folder"]) == ["opro-cfg-s1-2", "opro-cfg-s2-2"]

    first = sorted(queued, key=lambda job: job["job_id"])[0]["job_id"]
    at.button(key=f"cancel_{first}").click().run()
    assert_clean(at)
    assert f"Job {first}: dequeued" in texts(at.info)
    assert jobs.read_job(empty_workspace, first)["state"] == rf.CANCELLED


def test_base_model_search_preview(empty_workspace, manifests):
    at = page("opro").run()
    at.radio(key="opro_target").set_value("Base model").run()
    at.text_input(key="opro_base_model").input("tiny")
    at.selectbox(key="opro_dev_choice").set_value("Another path ...").run()
    at.text_input(key="opro_dev_path").input(str(manifests["dev"])).run()
    assert_clean(at)
    assert texts(at.error) == []
    assert "Without test data the search stops after the dev set" in " ".join(texts(at.info))
    assert at.dataframe[0].value["command"][0].startswith("python -m engine opro --base --model tiny --dev-csv ")


# ---------------------------------------------------------------- Evaluate: the prompt choice

def test_evaluate_with_an_opro_prompt_or_a_custom_one(opro_workspace, no_worker, manifests):
    at = page("evaluate").run()
    assert_clean(at)
    assert at.text_input(key="eval_name").value == "test"
    at.selectbox(key="eval_test_choice").set_value("Another path ...").run()
    at.text_input(key="eval_test_path").input(str(manifests["test"]))
    at.radio(key="eval_prompt_choice").set_value("The best prompt of an OPRO run").run()
    assert_clean(at)
    assert at.text_input(key="eval_name").value == "test-opro"  # the original evaluation is not replaced
    at.selectbox(key="eval_prompt_opro").set_value("opro-cfg-s1").run()
    assert_clean(at)
    best = search_history()[3]["prompt"]
    assert at.code[0].value == best
    assert any("final: the search finished" in c for c in texts(at.caption))
    assert texts(at.warning) == []

    at.selectbox(key="eval_prompt_opro").set_value("opro-cfg-s3").run()
    assert any("best so far: the search is running" in c for c in texts(at.caption))
    at.selectbox(key="eval_prompt_opro").set_value("opro-other-s1").run()
    assert [w for w in texts(at.warning) if "answer words yes, no" in w]

    at.selectbox(key="eval_prompt_opro").set_value("opro-cfg-s1").run()
    at.button(key="eval_launch").click().run()
    assert_clean(at)
    (job,) = jobs.read_jobs(opro_workspace)
    argv = job["argv"]
    assert argv[argv.index("--prompt") + 1] == best and argv[argv.index("--name") + 1] == "test-opro"
    assert at.dataframe[-1].value["prompt"][0] == best

    at.radio(key="eval_prompt_choice").set_value("Custom text").run()
    at.text_area(key="eval_prompt_custom").input("").run()
    assert "prompt: the prompt is empty (choose the run's own prompt, or write one)" in texts(at.error)
    at.text_area(key="eval_prompt_custom").input("Speech here? Answer SPEECH or NONSPEECH.").run()
    assert texts(at.error) == []
    assert "--prompt 'Speech here? Answer SPEECH or NONSPEECH.'" in at.dataframe[0].value["command"][0]

    at.radio(key="eval_prompt_choice").set_value("The run's own prompt").run()
    assert at.text_input(key="eval_name").value == "test"
    assert "--prompt" not in at.dataframe[0].value["command"][0]


def test_running_search_shows_candidates_scored_and_the_list_follows_it(opro_workspace, no_worker):
    from tests.test_app_ops import running_job

    run_dir = opro_workspace / "opro-cfg-s3"
    rf.write_status(run_dir, rf.RUNNING, **rf.mark_process(run_dir),  # this test process: alive
                    progress={"step": 3, "total_steps": 12, "iteration": 1, "iterations": 3,
                              "best_balanced_accuracy": 0.8125, "eta_s": 90})
    job_id = running_job(opro_workspace, ["opro", "--run", str(opro_workspace / "cfg-s1")], run_dir)
    at = page("opro").run()
    assert_clean(at)
    (bar,) = at.get("progress")
    assert bar.proto.value == 25
    assert bar.proto.text == ("opro-cfg-s3: prompt 3/12, iteration 1/3, best dev balanced accuracy 81.2%, "
                              "ETA 1 min 30 s")
    assert at.button(key=f"cancel_{job_id}")
    rf.update_status(run_dir, progress={"step": 6, "total_steps": 12, "iteration": 2, "iterations": 3,
                                        "best_balanced_accuracy": 0.875, "eta_s": 60})
    at.run()
    (bar,) = at.get("progress")
    assert bar.proto.value == 50 and "prompt 6/12, iteration 2/3" in bar.proto.text
    jobs.store.update_job(opro_workspace, job_id, lambda job: {"state": rf.SUCCEEDED})
    at.run()
    assert at.get("progress") == [] and list(frame(at, "state")["state"]) == [rf.SUCCEEDED]
