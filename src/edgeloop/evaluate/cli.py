"""``edgeloop evaluate``: replay data sets through the live engine and compare strategies.

Mount with ``app.command("evaluate")(evaluate_command)``; also runnable on its own as
``python -m edgeloop.evaluate.cli --help``. :func:`evaluate` is the same thing as a function.

Work is split into (data set, target, strategy) units run by a pool of processes (``--jobs``);
each worker caches the loaded data set and the initial model it trained, so the units of one
target share them. Results: ``results.json``, ``results.md`` and ``plots/*.png`` in ``--out``.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import asdict, replace
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from edgeloop.config import Settings, load_settings
from edgeloop.errors import EdgeloopError
from edgeloop.evaluate import report
from edgeloop.evaluate.datasets import (
    CSV_PREFIX,
    SIM_PREFIX,
    DatasetOptions,
    available_targets,
    expand_specs,
    load_dataset,
)
from edgeloop.evaluate.replay import run_unit
from edgeloop.evaluate.runs import ReplayConfig, RunResult, TargetHeader
from edgeloop.evaluate.strategies import DEFAULT_POLICY, Strategy, parse_strategies

log = logging.getLogger(__name__)

Unit = tuple[str, str, str]  # data set spec, target, strategy


def plan_targets(specs: Sequence[str], options: DatasetOptions) -> list[tuple[str, str]]:
    """(data set, target) pairs: each data set's defaults, or those of the requested targets it has."""
    pairs: list[tuple[str, str]] = []
    for spec in specs:
        default, have = available_targets(spec, options)
        chosen = [t for t in options.targets if t in have] if options.targets else default
        pairs.extend((spec, t) for t in chosen)
    if not pairs:
        raise ValueError(f"none of the data sets has target(s) {', '.join(options.targets)}")
    return pairs


def evaluate(
    specs: Sequence[str],
    *,
    strategies: Sequence[Strategy],
    options: DatasetOptions,
    config: ReplayConfig,
    settings: Settings,
    out: Path,
    jobs: int = 1,
    plots: bool = True,
    progress: Callable[[int, int, str], None] | None = None,
) -> dict[str, Any]:
    """Run every (data set, target, strategy), write results.json / results.md / plots; return the payload.

    ``jobs`` > 1 runs units in spawned worker processes: call it from an importable module or under
    ``if __name__ == "__main__":`` (the usual multiprocessing rule), never from code piped to stdin.
    """
    started = time.perf_counter()
    specs = expand_specs(list(specs))
    for spec in specs:
        if spec.startswith(CSV_PREFIX):
            # A user's file: check it and its labels here, so a mistake is one clear message and not
            # a worker's traceback.
            load_dataset(spec, replace(options, targets=()))
    pairs = plan_targets(specs, options)
    settings_json = settings.model_dump_json()
    units: list[Unit] = [
        (spec, target, s.name)
        for spec, target in pairs
        for s in strategies
        if not (s.family == "learner" and spec.startswith(SIM_PREFIX) and not config.arf_on_sim)
    ]
    results: dict[tuple[str, str], tuple[TargetHeader, dict[str, RunResult]]] = {}

    def collect(unit: Unit, header: TargetHeader, run: RunResult, done: int) -> None:
        key = (unit[0], unit[1])
        results.setdefault(key, (header, {}))[1][unit[2]] = run
        if progress is not None:
            progress(done, len(units), f"{unit[0]}/{unit[1]}/{unit[2]}")

    def args(unit: Unit) -> tuple[Any, ...]:
        return (unit[0], unit[1], unit[2], replace(options, targets=(unit[1],)), config, settings_json)

    if jobs <= 1:
        for n, unit in enumerate(units, 1):
            header, run = run_unit(*args(unit))
            collect(unit, header, run, n)
    else:
        # spawn, not fork: a forked LightGBM/OpenMP runtime can deadlock in the child.
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=_quiet_workers) as pool:
            futures: dict[Future[tuple[TargetHeader, RunResult]], Unit] = {
                pool.submit(run_unit, *args(unit)): unit for unit in units
            }
            for n, future in enumerate(as_completed(futures), 1):
                header, run = future.result()
                collect(futures[future], header, run, n)

    descriptions = {
        s.name: s.describe(settings, periodic_every=config.periodic_every, river_input=config.river_input)
        for s in strategies
    }
    blocks = []
    for spec, target in pairs:
        header, runs = results[(spec, target)]
        blocks.append(report.target_report(header, runs, strategies, descriptions))
    names = [s.name for s in strategies]
    payload: dict[str, Any] = {
        "default_policy": DEFAULT_POLICY,
        "strategies": names,
        "descriptions": descriptions,
        "settings_note": (
            f"Engine settings: lags {settings.model.lags}, train window {settings.model.train_window}, "
            f"retrain after {settings.model.retrain_min_samples} readings past an alarm, probation "
            f"{settings.model.probation_samples}, LightGBM at most {settings.model.lgbm_rounds} rounds "
            "(early stopping); "
            f"retrain delay {config.retrain_delay} steps; periodic every {config.periodic_every}; "
            f"detection horizon {config.horizon} readings."
        ),
        "config": {
            "datasets": specs,
            "replay": asdict(config),
            "options": asdict(options),
            "model": settings.model.model_dump(mode="json"),
            "drift": settings.drift.model_dump(mode="json"),
        },
        "results": blocks,
    }
    payload["targets"] = report.check_targets(blocks, DEFAULT_POLICY) if DEFAULT_POLICY in names else []
    out.mkdir(parents=True, exist_ok=True)
    if plots:
        plot_dir = out / "plots"
        focus = DEFAULT_POLICY if DEFAULT_POLICY in names else names[-1]
        for spec, target in pairs:
            header, runs = results[(spec, target)]
            report.plot_target(header, runs, strategies, plot_dir, focus=focus)
        report.plot_summary(blocks, names, DEFAULT_POLICY, plot_dir / "summary.png")
    payload["seconds"] = round(time.perf_counter() - started, 1)
    report.write_json(out / "results.json", payload)
    (out / "results.md").write_text(report.markdown(payload))
    return payload


def _quiet_workers() -> None:
    """Worker initialiser: the guard's budget warnings are expected here and counted in the results."""
    logging.getLogger("edgeloop").setLevel(logging.ERROR)


def _pairs(items: Sequence[str] | None, what: str) -> list[tuple[str, str]]:
    out = []
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ValueError(f"{what} {item!r}: expected KEY=VALUE")
        out.append((key.strip(), value.strip()))
    return out


def _thresholds(items: Sequence[str] | None) -> tuple[tuple[str, float], ...]:
    if not items:
        return ReplayConfig().original_thresholds
    out = []
    for item in items:
        target, sep, value = item.rpartition("=")
        try:
            out.append((target.strip() if sep else "*", float(value)))
        except ValueError:
            raise ValueError(f"--original-threshold {item!r}: expected X or TARGET=X") from None
    return tuple(out)


def evaluate_command(
    dataset: Annotated[
        list[str] | None,
        typer.Option(
            "--dataset",
            "-d",
            help="sim:<kind> (level_shift, calibration_drift, gain_change, stuck, noise_burst, "
            "regime_change, stationary), sim:all, air_quality, occupancy, nab, csv:PATH, or all. Repeatable.",
        ),
    ] = None,
    target: Annotated[
        list[str] | None,
        typer.Option(
            "--target", "-t", help="Evaluate only these targets (each data set's defaults otherwise)."
        ),
    ] = None,
    strategies: Annotated[
        list[str] | None,
        typer.Option(
            "--strategies",
            "-s",
            help="Comma-separated: persistence, static, periodic, original, rmse-threshold, relative, "
            "page-hinkley, adwin, river-adwin, river-ph, river-arf, all; or a policy variant "
            "POLICY:drift_key=value,...",
        ),
    ] = None,
    retrain_delay: Annotated[
        int, typer.Option(help="Steps between a retrain request and its model serving.")
    ] = 50,
    periodic_every: Annotated[int, typer.Option(help="Readings between two retrains of 'periodic'.")] = 1000,
    original_threshold: Annotated[
        list[str] | None,
        typer.Option(
            help="Original rule's absolute RMSE threshold: X (every target) or TARGET=X. Default "
            "voc_ppb=75 (the original system); other targets: --original-factor x the initial "
            "model's validation RMSE."
        ),
    ] = None,
    original_factor: Annotated[float, typer.Option(help="See --original-threshold.")] = 1.5,
    initial_fraction: Annotated[
        float,
        typer.Option(help="Share of each device's readings that trains the initial model (not scored)."),
    ] = 0.2,
    horizon: Annotated[
        int, typer.Option(help="Readings after an onset in which a first alarm is a detection.")
    ] = 1000,
    river_input: Annotated[
        str, typer.Option(help="What River's detectors see: abs (|error|) or raw (error).")
    ] = "abs",
    sim_steps: Annotated[int, typer.Option(help="Readings per simulated device.")] = 9000,
    sim_devices: Annotated[int, typer.Option(help="Simulated devices (each drifts at its own onset).")] = 3,
    seed: Annotated[int, typer.Option(help="Simulator seed.")] = 0,
    max_samples: Annotated[
        int | None, typer.Option(help="Use only the first N rows of each recording (quick runs).")
    ] = None,
    column: Annotated[
        list[str] | None,
        typer.Option(
            "--column",
            help="csv: SOURCE=NAME column mapping; repeatable. Default: every column but ts and device.",
        ),
    ] = None,
    ts_column: Annotated[
        list[str] | None, typer.Option(help="csv: timestamp column(s), joined with a space. Default ts.")
    ] = None,
    sep: Annotated[str, typer.Option(help="csv: field separator.")] = ",",
    decimal: Annotated[str, typer.Option(help="csv: decimal mark.")] = ".",
    ts_format: Annotated[str | None, typer.Option(help="csv: strptime format of the timestamp.")] = None,
    missing: Annotated[
        list[float] | None, typer.Option(help="csv: sentinel meaning missing; repeatable.")
    ] = None,
    labels: Annotated[
        Path | None,
        typer.Option(
            help="csv: JSON labels file {control, onsets: [{device, at_ts, kind}], windows: [{device, "
            "start_ts, end_ts}]}, times ISO-8601 or epoch seconds; default PATH.labels.json or "
            "PATH.onsets.json if present."
        ),
    ] = None,
    onsets: Annotated[Path | None, typer.Option(hidden=True, help="Old name of --labels.")] = None,
    control: Annotated[
        bool, typer.Option(help="csv: nothing is known to drift; every alarm counts as a false alarm.")
    ] = False,
    arf_on_sim: Annotated[
        bool, typer.Option(help="Also run river-arf (about 2 ms a reading) on simulator scenarios.")
    ] = False,
    data_dir: Annotated[
        Path | None, typer.Option(help="Shared data folder (default ../shared/data).")
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="YAML settings for the engine (model.*, drift.*).")
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Settings override KEY=VALUE, e.g. drift.ph_threshold=200."),
    ] = None,
    out: Annotated[Path, typer.Option(help="Output folder: results.json, results.md, plots/.")] = Path(
        "build/eval"
    ),
    jobs: Annotated[int, typer.Option(help="Worker processes (default: CPU count, at most 4).")] = 0,
    plots: Annotated[bool, typer.Option(help="Write PNG plots.")] = True,
) -> None:
    """Replay data sets through the live engine in simulated time and compare retraining strategies."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    try:
        overrides = {k: yaml.safe_load(v) for k, v in _pairs(set_, "--set")}
        settings = load_settings(config, **overrides)
        chosen = parse_strategies(strategies or ["all"])
        options = DatasetOptions(
            sim_steps=sim_steps,
            sim_devices=sim_devices,
            seed=seed,
            initial_fraction=initial_fraction,
            max_samples=max_samples,
            data_dir=str(data_dir) if data_dir else None,
            targets=tuple(target or ()),
            csv_columns=tuple(_pairs(column, "--column")),
            csv_ts_column=tuple(ts_column or ["ts"]),
            csv_sep=sep,
            csv_decimal=decimal,
            csv_ts_format=ts_format,
            csv_missing=tuple(missing or ()),
            csv_labels=str(labels or onsets) if (labels or onsets) else None,
            csv_control=control,
        )
        replay_config = ReplayConfig(
            retrain_delay=retrain_delay,
            periodic_every=periodic_every,
            original_thresholds=_thresholds(original_threshold),
            original_factor=original_factor,
            river_input=river_input,
            horizon=horizon,
            arf_on_sim=arf_on_sim,
        )
        if river_input not in ("abs", "raw"):
            raise ValueError("--river-input must be abs or raw")
        specs = expand_specs(dataset or ["all"])
    except (ValueError, EdgeloopError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    workers = jobs or min(4, os.cpu_count() or 1)
    _quiet_workers()  # this is the application: the guard's warnings would only garble the progress bar
    bar = Progress(
        TextColumn("evaluate"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
        transient=False,
    )
    task = bar.add_task("", total=None)

    def progress(done: int, total: int, what: str) -> None:
        bar.update(task, completed=done, total=total, description=what[-60:])

    try:
        with bar:
            payload = evaluate(
                specs,
                strategies=chosen,
                options=options,
                config=replay_config,
                settings=settings,
                out=out,
                jobs=workers,
                plots=plots,
                progress=progress,
            )
    except (ValueError, FileNotFoundError, EdgeloopError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    checks = payload["targets"]
    met = sum(c["pass"] for c in checks)
    typer.echo(
        f"{len(payload['results'])} data set/target pairs x {len(chosen)} strategies "
        f"in {payload['seconds']:.0f} s; "
        f"targets met {met}/{len(checks)}; wrote {out / 'results.json'}, {out / 'results.md'}"
        + (f", {out / 'plots'}/" if plots else "")
    )


if __name__ == "__main__":  # pragma: no cover - python -m edgeloop.evaluate.cli
    typer.run(evaluate_command)
