"""`python -m engine summary | mcnemar | seeds | compare`: engine.stats.core on the command line.

Each command reads predictions (a .jsonl/.csv file, an evaluation folder, a run folder, or
any file `import-predictions` reads: another tool's CSV/JSON/JSONL export), prints a readable
table, or with --json exactly one JSON object on stdout. Unusable input (PredictionsError,
PairingError, a missing file) prints one message on stderr and exits 2. `compare` prints
what the Compare page shows, computed by the same engine.dashboard.review functions.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any, Callable

from engine.runs import folder as rf
from engine.stats import core as stats
from engine.tasks import importing
from engine.runs.predictions import CLASSES, PredictionsError, resolve_predictions
from engine.runs.predictions import read_predictions as _read_engine_predictions

EXIT_BAD_INPUT = 2


# ---------------------------------------------------------------- shared helpers

def read_predictions(target: Path, evaluation: str | None = None) -> list[dict]:
    """Records of a run folder, evaluation folder or predictions file, else of another tool's
    export read as `import-predictions` reads it (engine.tasks.importing.read_export)."""
    try:
        return _read_engine_predictions(target, evaluation)
    except PredictionsError as own:
        if not Path(target).is_file():
            raise
        try:
            records, _ = importing.read_export(target)
        except importing.ImportError_ as foreign:
            raise PredictionsError(f"{target} is neither an engine predictions file ({own}) nor an export "
                                   f"import-predictions can read ({foreign})") from None
        return records


def _guarded(main: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Turn input errors into one line on stderr and exit code 2 (no traceback)."""

    def run(args: argparse.Namespace) -> int:
        try:
            return main(args)
        except (ValueError, OSError, rf.RunFolderError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT

    run.__doc__ = main.__doc__
    return run


def _finite(obj: Any) -> Any:
    """NaN/inf become None, numpy scalars plain numbers: the output is strict JSON."""
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _print_json(obj: dict) -> None:
    print(json.dumps(_finite(obj), allow_nan=False))


def _pct(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{100.0 * value:.{digits}f}%"


def _interval(ci: list[float] | None, scale: float = 100.0) -> str:
    return "n/a" if ci is None else f"[{scale * ci[0]:.1f}, {scale * ci[1]:.1f}]"


def _number(value: float | None, fmt: str = ".3f") -> str:
    return "n/a" if value is None else format(value, fmt)


def _table(header: list[str], rows: list[list[Any]]) -> str:
    cells = [header] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) if j else c.ljust(w) for j, (c, w) in enumerate(zip(row, widths)))
             for row in cells]
    return "\n".join(lines)


def _run_config(target: Path, evaluation: str | None = None) -> dict:
    """config.json of the run behind a run folder, evaluation folder or predictions file; {} if none."""
    target = Path(target)
    if target.is_dir() and (target / rf.CONFIG).is_file():
        return rf.read_json(target / rf.CONFIG)
    predictions = resolve_predictions(target, evaluation)
    eval_dir = predictions.parent
    if eval_dir.parent.name == rf.EVALUATIONS_DIR and (eval_dir.parent.parent / rf.CONFIG).is_file():
        return rf.read_json(eval_dir.parent.parent / rf.CONFIG)
    return {}


def _display_name(target: Path, evaluation: str | None = None) -> str:
    """The run's label or name, else the file name."""
    config = _run_config(target, evaluation)
    if config.get("label"):
        return str(config["label"])
    predictions = resolve_predictions(target, evaluation)
    if predictions.parent.parent.name == rf.EVALUATIONS_DIR:
        return predictions.parent.parent.parent.name
    return predictions.name


def _add_evaluation_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--evaluation", metavar="NAME", default=None,
                        help="which evaluation of a run folder (default: its only one, else 'test')")


# ---------------------------------------------------------------- summary

def summary_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pred", metavar="PRED", type=Path,
                        help="predictions file (.jsonl/.csv), evaluation folder or run folder")
    parser.add_argument("--by", metavar="COL", default=None,
                        help="also break accuracy down by this record column (e.g. snr_db)")
    parser.add_argument("--ci", choices=("wilson", "clopper-pearson"), default="wilson",
                        help="interval for proportions (default wilson)")
    _add_evaluation_option(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object")


@_guarded
def summary_main(args: argparse.Namespace) -> int:
    """Accuracy with interval, per class, confusion, AUC, ECE and optionally a breakdown."""
    records = read_predictions(args.pred, args.evaluation)
    summary = stats.evaluation_summary(records, ci_method=args.ci)
    result: dict[str, Any] = {
        "source": str(resolve_predictions(args.pred, args.evaluation)),
        "summary": summary,
        "power_caveat": stats.power_caveat(summary["n"]) if summary["n"] else None,
    }
    if args.by:
        result["by"] = args.by
        result["breakdown"] = stats.breakdown(records, args.by, ci_method=args.ci)
    if args.json:
        _print_json(result)
    else:
        print(_summary_text(result))
    return 0


def _summary_text(result: dict) -> str:
    s = result["summary"]
    lines = [f"predictions: {result['source']}",
             f"accuracy {stats.format_count(s['correct'], s['n'])}, 95% CI {_interval(s['ci'])} ({s['ci_method']})"]
    rows = [[cls, stats.format_count(c["correct"], c["n"]), _interval(c["ci"])]
            for cls, c in s["per_class"].items()]
    lines += ["", _table(["class", "accuracy", "95% CI"], rows), ""]
    lines.append(f"balanced accuracy {_pct(s['balanced_accuracy'])}   ROC AUC {_number(s['roc_auc'])}   "
                 f"ECE {_number(s['ece'])}  (p_speech known for {s['scored_n']} clips)")
    lines += ["", "confusion (rows: gold, columns: predicted)",
              _table(["", *CLASSES], [[gold, *(s["confusion"][gold][p] for p in CLASSES)] for gold in CLASSES])]
    if result["power_caveat"]:
        lines += ["", result["power_caveat"]]
    if "breakdown" in result:
        rows = [[r["value"], r["n"], stats.format_count(r["correct"], r["n"]),
                 _interval([r["ci_lo"], r["ci_hi"]]),
                 stats.format_count(r["speech_correct"], r["speech_n"]),
                 stats.format_count(r["nonspeech_correct"], r["nonspeech_n"]),
                 _pct(r["balanced_accuracy"])] for r in result["breakdown"]]
        lines += ["", f"by {result['by']}:",
                  _table([result["by"], "n", "accuracy", "95% CI", *CLASSES, "balanced"], rows)]
    return "\n".join(lines)


# ---------------------------------------------------------------- mcnemar

def mcnemar_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-a", required=True, type=Path, metavar="A", help="predictions of model A")
    parser.add_argument("--model-b", required=True, type=Path, metavar="B", help="predictions of model B")
    parser.add_argument("--name-a", default=None, help="display name of A (default: run label or name)")
    parser.add_argument("--name-b", default=None, help="display name of B")
    method = parser.add_mutually_exclusive_group()
    method.add_argument("--exact", dest="method", action="store_const", const="exact",
                        help="exact binomial test")
    method.add_argument("--chi2", dest="method", action="store_const", const="chi2",
                        help="chi-square with continuity correction")
    method.add_argument("--mid-p", dest="method", action="store_const", const="midp",
                        help="mid-p binomial test")
    parser.set_defaults(method="auto")
    _add_evaluation_option(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object")


@_guarded
def mcnemar_main(args: argparse.Namespace) -> int:
    """Paired McNemar test of A vs B on the same clips."""
    records_a = read_predictions(args.model_a, args.evaluation)
    records_b = read_predictions(args.model_b, args.evaluation)
    result = stats.mcnemar(records_a, records_b, method=args.method)
    rate = result["discordant"] / result["n"] if result["n"] else None
    result = {
        "name_a": args.name_a or _display_name(args.model_a, args.evaluation),
        "name_b": args.name_b or _display_name(args.model_b, args.evaluation),
        "source_a": str(resolve_predictions(args.model_a, args.evaluation)),
        "source_b": str(resolve_predictions(args.model_b, args.evaluation)),
        **result,
        "power_caveat": (stats.power_caveat(result["n"], discordant_rate=rate or None, method=args.method)
                         if result["n"] else None),
    }
    if args.json:
        _print_json(result)
    else:
        print(_mcnemar_text(result))
    return 0


_METHOD_NAMES = {"exact": "exact binomial", "chi2": "chi-square with continuity correction",
                 "midp": "mid-p binomial"}


def _mcnemar_text(r: dict) -> str:
    t, n = r["table"], r["n"]
    lines = [f"A = {r['name_a']}: {stats.format_count(t['both_right'] + t['only_a'], n)}   ({r['source_a']})",
             f"B = {r['name_b']}: {stats.format_count(t['both_right'] + t['only_b'], n)}   ({r['source_b']})",
             "",
             _table(["", "B right", "B wrong"], [["A right", t["both_right"], t["only_a"]],
                                                  ["A wrong", t["only_b"], t["both_wrong"]]]),
             "",
             f"McNemar ({_METHOD_NAMES[r['method']]}): statistic {r['statistic']:.4g}, "
             f"p = {r['p_value']:.4g}, {r['discordant']} discordant of {n} clips",
             (f"A - B: {r['diff_pts']:+.1f} points, 95% CI {_interval(r['diff_ci'], 1.0)} (Newcombe, paired)"
              if r["diff_pts"] is not None else "A - B: n/a")]
    if r["note"]:
        lines.append(f"note: {r['note']}")
    rows = [[cls, c["n"], _pct(c["acc_a"]), _pct(c["acc_b"]), c["only_a"], c["only_b"],
             "n/a" if c["diff_pts"] is None else f"{c['diff_pts']:+.1f}", _interval(c["diff_ci"], 1.0)]
            for cls, c in r["per_class"].items()]
    lines += ["", _table(["class", "n", "A", "B", "only A right", "only B right", "A - B (pts)", "95% CI"], rows)]
    if r["power_caveat"]:
        lines += ["", r["power_caveat"]]
    return "\n".join(lines)


# ---------------------------------------------------------------- seeds

def seeds_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("preds", metavar="PRED", type=Path, nargs="+",
                        help="one predictions file / evaluation folder / run folder per seed")
    parser.add_argument("--n-boot", type=int, default=stats.DEFAULT_N_BOOT,
                        help=f"bootstrap replicates (default {stats.DEFAULT_N_BOOT})")
    _add_evaluation_option(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object")


@_guarded
def seeds_main(args: argparse.Namespace) -> int:
    """Mean, SD, t- and bootstrap intervals of accuracy over the seeds of one configuration."""
    if args.n_boot < 1:
        raise ValueError(f"--n-boot must be at least 1, got {args.n_boot}")
    evals: dict[Any, list[dict]] = {}
    sources: dict[Any, str] = {}
    inputs = []
    for position, target in enumerate(args.preds, start=1):
        config = _run_config(target, args.evaluation)
        seed = config.get("seed")
        seed = position if seed is None else seed
        source = str(resolve_predictions(target, args.evaluation))
        if any(Path(source).resolve() == Path(s).resolve() for s in sources.values()):
            raise ValueError(f"{source} is given twice")
        if seed in evals:
            raise ValueError(f"{source} and {sources[seed]} both have seed {seed} "
                             "(from config.json, else the position on the command line)")
        evals[seed], sources[seed] = read_predictions(target, args.evaluation), source
        inputs.append({"source": source, "seed": seed,
                       "seed_from": "config" if config.get("seed") is not None else "position",
                       "label": config.get("label")})
    labels = {i["label"] for i in inputs if i["label"]}
    result = {"inputs": inputs, **stats.aggregate_seeds(evals, n_boot=args.n_boot)}
    if len(labels) > 1:
        result["warning"] = f"the inputs come from different configurations: {', '.join(sorted(labels))}"
    if args.json:
        _print_json(result)
    else:
        print(_seeds_text(result))
    return 0


def _seeds_text(r: dict) -> str:
    lines = [_table(["seed", "source"], [[i["seed"], i["source"]] for i in r["inputs"]]), ""]
    if r.get("warning"):
        lines += [f"warning: {r['warning']}", ""]
    rows = []
    for key in ("overall", *CLASSES, "balanced"):
        s = r[key]
        if s is None:
            rows.append([key] + ["n/a"] * 5)
            continue
        rows.append([key, f"{s['mean']:.2f}", _number(s["sd"], ".2f"),
                     _interval(s["t_ci"], 1.0) + (" clipped" if s.get("t_ci_clipped") else ""),
                     _interval(s["bootstrap_ci"], 1.0), f"{s['min']:.1f}-{s['max']:.1f}"])
    lines.append(_table(["accuracy (%)", "mean", "SD", "95% t-interval", "95% bootstrap", "range"], rows))
    resampled = r["overall"]["bootstrap"]["resampled"]
    if resampled:
        lines.append(f"bootstrap resamples {resampled}; {r['overall']['bootstrap']['n_boot']} replicates")
    lines += [f"note ({key}): {r[key]['note']}" for key in ("overall", *CLASSES, "balanced") if r[key] and r[key]["note"]]
    return "\n".join(lines)


# ---------------------------------------------------------------- compare

SIDE_FLAGS = ("a", "b", "c")


def compare_arguments(parser: argparse.ArgumentParser) -> None:
    for flag, what in (("a", "the reference A"), ("b", "B, compared with A"), ("c", "an optional third side")):
        parser.add_argument(f"--{flag}", nargs="+", type=Path, metavar="PRED", required=flag != "c", default=[],
                            help=f"{what}: one predictions file / evaluation folder / run folder / export per seed")
        parser.add_argument(f"--name-{flag}", default=None, help=f"display name of {flag.upper()} "
                            "(default: the run's label, else the file name)")
    parser.add_argument("--n-boot", type=int, default=stats.DEFAULT_N_BOOT,
                        help=f"bootstrap replicates (default {stats.DEFAULT_N_BOOT})")
    _add_evaluation_option(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def _compare_side(flag: str, targets: list[Path], name: str | None, evaluation: str | None):
    """A review.Side of one flag's inputs, keyed by config seed, else 'input N' (inputs of two
    sides given in the same order then pair up)."""
    from engine.dashboard import review

    records, inputs, sources = {}, [], {}
    for position, target in enumerate(targets, start=1):
        config = _run_config(target, evaluation)
        seed = config.get("seed")
        key = f"input {position}" if seed is None else seed
        source = str(resolve_predictions(target, evaluation))
        if any(Path(source).resolve() == Path(s).resolve() for s in sources.values()):
            raise ValueError(f"--{flag}: {source} is given twice")
        if key in records:
            raise ValueError(f"--{flag}: {source} and {sources[key]} both have seed {key}")
        records[key], sources[key] = read_predictions(target, evaluation), source
        inputs.append({"source": source, "seed": key, "seed_from": "position" if seed is None else "config",
                       "label": config.get("label")})
    label = name or _display_name(targets[0], evaluation)
    config = _run_config(targets[0], evaluation)
    side = review.Side(label, config.get("kind", "predictions"), evaluation or "test", {}, records,
                       review.shared_config(config), single=len(targets) == 1 and config.get("seed") is None)
    return side, inputs


@_guarded
def compare_main(args: argparse.Namespace) -> int:
    """The Compare page's statistics for A vs B (and C): seeds, difference with interval, paired tests, power."""
    from engine.dashboard import review

    if args.n_boot < 1:
        raise ValueError(f"--n-boot must be at least 1, got {args.n_boot}")
    sides, inputs = [], []
    for flag in SIDE_FLAGS:
        targets = getattr(args, flag)
        if targets:
            side, side_inputs = _compare_side(flag, targets, getattr(args, f"name_{flag}"), args.evaluation)
            sides.append(side)
            inputs.append({"side": flag.upper(), "name": side.name, "inputs": side_inputs})
    names = [s.name for s in sides]
    if len(set(names)) < len(names):
        raise ValueError(f"two sides are both named {names!r}: give --name-a / --name-b")
    computed = review.comparison_statistics(sides, n_boot=args.n_boot)
    for paired in computed["paired"]:
        paired["findings"] = review.paired_findings(paired)
        paired["notes"] = review.paired_notes(paired)
    result = {"sides": inputs, **computed, "power_caveat": stats.power_caveat(computed["n_clips"])}
    if args.json:
        _print_json(result)
    else:
        print(_compare_text(result))
    return 0


def _compare_text(r: dict) -> str:
    from engine.dashboard import review

    lines = []
    for side in r["sides"]:
        lines.append(f"{side['side']} = {side['name']}")
        lines += [f"    {review.seed_text(i['seed'])}: {i['source']}" for i in side["inputs"]]
    lines += ["", f"{r['n_clips']} clips, the same for every evaluation (paired by clip id)", "",
              "Multi-seed statistics (percent):",
              review.seed_table(r["seed_stats"]).drop(columns=["Note"]).to_string(index=False), ""]
    for diff in r["differences"]:
        lines.append(f"{diff['b']} - {diff['a']}: {diff['line']}")
    for paired in r["paired"]:
        lines += ["", f"{paired['a']} (A) vs {paired['b']} (B)"]
        if paired["rows"]:
            lines += [review.mcnemar_table(paired).to_string(index=False), "",
                      review.class_difference_table(paired).to_string(index=False)]
        lines += [""] + paired["findings"] + [f"note: {n}" for n in paired["notes"]]
    if r["cochran"]:
        lines += ["", review.cochran_line(r["cochran"])]
    lines += ["", r["power_caveat"]]
    notes = {s.get("note") for agg in r["seed_stats"].values() for s in agg.values() if isinstance(s, dict)}
    lines += [f"note: {n}" for n in sorted(n for n in notes if n)]
    return "\n".join(lines)
