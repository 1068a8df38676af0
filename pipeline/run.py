"""Command line: `python -m pipeline.run --stage NAME [--config FILE] [--set key=value ...]`.

Runs NAME and every stage it needs, reusing the cached outputs of stages whose inputs did not
change. `--stage positions` writes the next bar's orders from a registered model and
`--promote SOURCE [--run RUN_ID]` makes a registered version the one it reads (docs/live.md).
Every failure a user can cause or meet ends with one line saying what to fix (the
traceback only with --debug) and an exit code:

    0    done
    1    an unexpected error (a bug: rerun with --debug and report the traceback)
    2    bad input or config: the message names the file, row or key
    3    a service does not answer: the tracking server (the message names it)
    4    an output could not be written: disk full, file-size limit, read-only folder (names the path)
    130  interrupted by Ctrl-C (SIGINT); 143: stopped by SIGTERM. Rerun to resume: finished stages
         are reused and training continues from its last checkpoint.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from data_prep.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    Interrupted,
    ServiceError,
    StorageError,
    storage_problem,
)
from pipeline.config import DEFAULT_CONFIG_PATH, load_config

log = logging.getLogger("pipeline")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pipeline.run", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--stage", default="backtest", help="stage to run, with everything it needs (default: backtest)"
    )
    parser.add_argument(
        "--config", default=str(DEFAULT_CONFIG_PATH), help="YAML run configuration (default: configs/default.yaml)"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help=(
            "override config keys, values parsed as YAML, e.g. --set split.lookback=90 "
            "'split.test=[2022-01-01,2022-12-30]'"
        ),
    )
    parser.add_argument(
        "--executor",
        choices=("local", "ray"),
        help="where stage instances run: local (one after another here) or ray (Ray tasks; see ray.address)",
    )
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    parser.add_argument(
        "--force",
        action="store_true",
        help="rerun the requested stage even when its output is cached; with --promote, promote a version whose "
        "backtest is not significant; with --stage positions, replace a day's orders",
    )
    parser.add_argument(
        "--list",
        action="store_true",
        help="show the stage graph (needs, config keys read, outputs) for this config and exit",
    )
    parser.add_argument(
        "--status", action="store_true", help="show which stages are cached for this config, by which run, and where"
    )
    parser.add_argument(
        "--promote",
        metavar="SOURCE",
        help="make SOURCE's registered version (from the newest backtest, or --run) the champion that "
        "--stage positions reads; refused when its backtest is not significant, unless --force",
    )
    parser.add_argument("--run", metavar="RUN_ID", help="with --promote: the backtest run (or its invocation's run)")
    return parser.parse_args(argv)


def print_graph(console: Console, config) -> None:
    from pipeline.graph import STAGES, needs

    console.print(
        "[bold]stage graph[/] for this config, in run order (the backtest needs the stages of signals.sources):"
    )
    for stage in STAGES.values():
        console.print(f"\n[bold]{stage.name}[/]: {stage.description}", highlight=False)
        for label, items in (
            ("needs", needs(stage, config)),
            ("reads", stage.reads),
            ("writes", stage.outputs_for(config)),
        ):
            console.print(f"  {label:<7}{', '.join(items) or '-'}", highlight=False, soft_wrap=True)


def print_status(console: Console, rows: list[dict[str, str]]) -> None:
    table = Table(title="stage status for this config")
    for column in ("stage", "state", "created", "run", "output", "artifacts"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(row[column] for column in ("stage", "state", "created", "run", "output", "artifacts")))
    console.print(table)


def print_outcomes(console: Console, outcomes) -> None:
    table = Table(title="stages")
    for column in ("stage", "status", "seconds", "produced by run", "output"):
        table.add_column(column, overflow="fold")
    for outcome in outcomes:
        status = "reused" if outcome.reused else "ran"
        seconds = "-" if outcome.reused else f"{outcome.seconds:.1f}"
        table.add_row(outcome.stage, status, seconds, outcome.produced_by[:12], str(outcome.output))
    console.print(table)
    for line in outcomes[-1].summary:
        console.print(line, soft_wrap=True, highlight=False, markup=False)  # strategy names hold brackets
    report = outcomes[-1].output / "report.html"
    if report.is_file():
        console.print(f"report: {report}", soft_wrap=True, highlight=False)


def print_positions(console: Console, result) -> None:
    for line in result.summary():
        console.print(line, soft_wrap=True, highlight=False, markup=False)
    table = Table()
    for column in result.orders.columns:
        table.add_column(column, justify="left" if column in ("instrument", "action") else "right")
    for row in result.orders.itertuples(index=False):
        table.add_row(
            row.instrument,
            f"{row.score:.5f}",
            "" if row.target_weight != row.target_weight else f"{row.target_weight:.4f}",
            row.action,
        )
    console.print(table)
    console.print(f"written: {result.path} (MLflow run {result.run_id})", soft_wrap=True, highlight=False)


EXIT_CODES: dict[type[BaseException], int] = {
    ConfigError: 2,
    DataError: 2,
    CheckpointError: 2,
    ServiceError: 3,
    StorageError: 4,
}


def stop_on_sigterm(signum: int, frame: object) -> None:
    raise Interrupted(signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    console = Console()
    signal.signal(signal.SIGTERM, stop_on_sigterm)  # a scheduler's stop ends the run like Ctrl-C
    try:
        return run(args, console)
    except (KeyboardInterrupt, Interrupted) as exc:
        if args.debug:
            raise
        signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
        stage = exc.stage if isinstance(exc, Interrupted) and exc.stage else ""
        where = f"during stage {stage}" if stage else "before any stage ran"
        console.print(f"interrupted {where}; rerun to resume", highlight=False, soft_wrap=True)
        return 128 + signum
    except Exception as exc:
        if args.debug:
            raise
        code = next((code for kind, code in EXIT_CODES.items() if isinstance(exc, kind)), 1)
        message = str(exc)
        if code == 1 and (cause := storage_problem(exc, Path.cwd())):  # e.g. the tracking store's disk
            code, message = 4, f"could not write: {cause} ({exc}); make room and rerun, finished stages are reused"
        elif code == 1:
            message = f"unexpected {type(exc).__name__}: {exc} (rerun with --debug for the traceback)"
        console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)  # paths stay whole
        return code


def run(args: argparse.Namespace, console: Console) -> int:
    overrides = [*args.overrides, *([f"executor={args.executor}"] if args.executor else [])]
    config = load_config(args.config, overrides)
    if args.run and not args.promote:
        raise ConfigError("--run names the backtest to promote from: use it with --promote SOURCE")
    if args.promote:
        from pipeline.registry import promote

        console.print(
            promote(config, args.promote, args.run, args.force), soft_wrap=True, highlight=False, markup=False
        )
        return 0
    if args.list:
        print_graph(console, config)
        return 0
    from pipeline.runner import run_pipeline, stage_status  # heavy imports (torch, mlflow) after validation

    if args.status:
        print_status(console, stage_status(config))
        return 0
    if args.stage == "positions":
        from pipeline.live import positions

        print_positions(console, positions(config, force=args.force))
        return 0
    outcomes = run_pipeline(config, args.stage, force=args.force, config_file=args.config)
    print_outcomes(console, outcomes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
