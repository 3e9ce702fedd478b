"""A baseline detector is one registered description: a third detector, declared here in the test,
runs end to end through run_baseline and the CLI with its own flag, touching no engine file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engine import cli
from engine.data.audio import load_audio
from engine.data.synth import make_dataset
from engine.runs import folder as rf
from engine.runs.predictions import read_predictions
from engine.tasks import baselines
from engine.tasks.baselines import registry

ENERGY_REDUCTION = "root mean square of the samples times the gain, capped at 1"


def energy_score(samples: np.ndarray, settings) -> float:
    return min(1.0, settings["gain"] * float(np.sqrt(np.mean(np.square(samples, dtype=np.float64)))))


def energy_detector() -> registry.Detector:
    return registry.Detector(
        name="energy", label="Energy detector", reduction=ENERGY_REDUCTION, clip_score=energy_score,
        backend=lambda: "numpy rms", options=(registry.Option("gain", float, 1.0, help="multiplies the RMS"),),
        constants={"window": "whole clip"})


@pytest.fixture
def with_energy(monkeypatch):
    """The registry with the energy detector added; the original registry is restored afterwards."""
    monkeypatch.setattr(registry, "_DETECTORS", dict(registry._DETECTORS))
    return registry.register(energy_detector())


@pytest.fixture(scope="module")
def test_manifest(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("registry-data") / "data", n_train=2, n_test=4, seed=5)["test"]


def test_a_registered_detector_runs_from_the_cli_with_its_own_flag(with_energy, test_manifest, tmp_path):
    code = cli.main(["baseline", "--method", "energy", "--test-csv", str(test_manifest), "--name", "energy-x4",
                     "--runs-dir", str(tmp_path), "--gain", "4", "--threshold", "0.2"])
    assert code == 0
    run = tmp_path / "energy-x4"
    config = rf.read_json(run / "config.json")
    assert config == {"schema_version": rf.SCHEMA_VERSION, "kind": "baseline", "label": "Energy detector",
                      "method": "energy", "threshold": 0.2, "reduction": ENERGY_REDUCTION,
                      "test_data": str(Path(test_manifest).resolve()), "max_clip_seconds": 30.0,
                      "gain": 4.0, "window": "whole clip", "rule": None,
                      "rule_choice": "fixed: the detector's default rule and the given threshold "
                                     "(no validation split given)", "val_data": None}
    assert rf.read_status(run)["state"] == "succeeded"
    evaluation = rf.read_json(run / "evaluations/test/evaluation.json")
    assert evaluation["backend"] == "numpy rms" and evaluation["gain"] == 4.0
    assert rf.read_json(run / "environment.json")["backend"] == "numpy rms"
    records = read_predictions(run)
    assert len(records) == 4
    for record in records:  # the score computed here, independently of the run
        samples, _ = load_audio(record["path"] if Path(record["path"]).is_absolute()
                                else Path(test_manifest).parent / record["path"], 30.0)
        expected = min(1.0, 4 * float(np.sqrt(np.mean(samples.astype(np.float64) ** 2))))
        assert record["p_speech"] == pytest.approx(expected, abs=1e-9)
        assert record["pred"] == ("SPEECH" if expected >= 0.2 else "NONSPEECH")


def test_the_registry_feeds_the_parser_and_the_derived_tables(with_energy, capsys):
    assert baselines.METHODS == ("silero", "webrtc", "energy")
    assert baselines.METHOD_LABELS["energy"] == "Energy detector"
    assert baselines.REDUCTIONS["energy"] == ENERGY_REDUCTION
    with pytest.raises(SystemExit):
        cli.main(["baseline", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "silero, webrtc or energy" in help_text and "--gain GAIN energy only: multiplies the RMS" in help_text


def test_run_baseline_takes_the_detector_defaults_and_ignores_other_detectors_options(with_energy, test_manifest,
                                                                                     tmp_path):
    run = baselines.run_baseline("energy", test_manifest, tmp_path / "energy", aggressiveness=1)
    config = rf.read_json(run / "config.json")
    assert config["gain"] == 1.0 and "aggressiveness" not in config


def test_an_unregistered_method_is_refused_by_parser_and_function(test_manifest, tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.main(["baseline", "--method", "energy", "--test-csv", str(test_manifest), "--name", "e",
                  "--runs-dir", str(tmp_path)])
    assert "invalid choice: 'energy'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown baseline method 'energy'; use one of silero, webrtc"):
        baselines.run_baseline("energy", test_manifest, tmp_path / "e")
    assert not (tmp_path / "e").exists()


def test_bad_options_are_refused_before_any_folder_is_made(test_manifest, tmp_path):
    with pytest.raises(ValueError, match=r"aggressiveness must be 0, 1, 2 or 3 \(got 7\)"):
        baselines.run_baseline("webrtc", test_manifest, tmp_path / "w", aggressiveness=7)
    with pytest.raises(ValueError, match="unknown baseline option"):
        baselines.run_baseline("webrtc", test_manifest, tmp_path / "w", agressiveness=2)
    assert not (tmp_path / "w").exists()


def test_an_option_of_the_wrong_type_names_the_option(with_energy, test_manifest, tmp_path):
    with pytest.raises(ValueError, match=r"gain must be of type float \(got 'loud'\)"):
        baselines.run_baseline("energy", test_manifest, tmp_path / "e", gain="loud")
    assert not (tmp_path / "e").exists()


def test_a_taken_name_or_setting_key_is_refused(with_energy):
    with pytest.raises(ValueError, match="already registered"):
        registry.register(energy_detector())
    clash = registry.Detector(name="loud", label="Loud", reduction="r", clip_score=energy_score, backend=lambda: None,
                              options=(registry.Option("gain", float, 1.0, help="h"),))
    with pytest.raises(ValueError, match="option 'gain' is already declared by 'energy'"):
        registry.register(clash)
    common = registry.Detector(name="loud", label="Loud", reduction="r", clip_score=energy_score,
                               backend=lambda: None, constants={"threshold": 1})
    with pytest.raises(ValueError, match="a key every baseline writes"):
        registry.register(common)
    assert "loud" not in registry.detectors()


def test_no_detector_is_chosen_by_branching():
    """Kinds come from the registry: the run and CLI code never compare the method to a name."""
    source = Path(baselines.__file__).read_text()
    assert "method ==" not in source and "method !=" not in source
