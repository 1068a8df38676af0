"""Data stages: `ingest` turns bars into a Qlib folder (or views an existing one) and `split`
cuts the panel into leak-free train/valid/test window indices."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from data_prep.ingest import link_qlib_folder, write_qlib_folder
from data_prep.panel import load_panel
from data_prep.sources import BarsFormat, read_bars, sample_bars_path
from data_prep.windows import SEGMENTS, Split, build_windows
from pipeline.contract import QLIB_FOLDER, SPLIT_META, ConfigView, StageInputs, StageResult, StageSpec


def ingest(config: ConfigView, inputs: StageInputs, out: Path) -> StageResult:
    """Bars (embedded sample, CSV/Parquet) -> Qlib folder, or an existing Qlib folder -> view."""
    data = config.data
    started = time.perf_counter()
    if data.source == "qlib":
        summary = link_qlib_folder(data.provider_uri, out / QLIB_FOLDER, data.instruments, data.max_daily_move)
    else:
        bars_format = BarsFormat(
            dict(data.columns), data.date_format, data.delimiter, data.decimal, data.max_daily_move
        )
        bars, rejects = read_bars(sample_bars_path() if data.source == "sample" else data.path, bars_format)
        summary = replace(write_qlib_folder(bars, out / QLIB_FOLDER, data.instruments), jump_rejects=rejects)
    seconds = time.perf_counter() - started
    (out / "ingest_summary.json").write_text(json.dumps(summary.as_dict(), indent=2))
    metrics: dict[str, float] = {
        "instruments": summary.instruments,
        "days": summary.days,
        "rows": summary.rows,
        "missing_rows": summary.missing_rows,
        "jump_rejects": summary.jump_rejects.count,
        "encoded_symbols": summary.encoded_symbols,
    }
    if summary.rows:
        metrics["rows_per_second"] = summary.rows / seconds
    lines = [
        f"Qlib folder: {summary.instruments} instruments x {summary.days} days "
        f"({summary.first_day} .. {summary.last_day})"
    ]
    if summary.missing_rows:
        lines.append(f"{summary.missing_rows:,} rows with a missing price or volume kept as missing days")
    if summary.jump_rejects.count:
        lines.append(
            f"data.max_daily_move rejected {summary.jump_rejects.count:,} price jumps, "
            f"e.g. {summary.jump_rejects.places[0]} "
            "(the first ones are in ingest_summary.json and the log)"
        )
    if summary.encoded_symbols:
        lines.append(f"{summary.encoded_symbols} symbols encoded as plain folder names (instruments/symbol_map.tsv)")
    return StageResult(metrics=metrics, summary=lines, artifacts=[out / "ingest_summary.json"])


def split(config: ConfigView, inputs: StageInputs, out: Path) -> StageResult:
    """Qlib folder -> panel array + train/valid/test window indices."""
    settings = config.split
    panel = load_panel(inputs.qlib_dir, config.data.instruments, config.data.fields)
    segments = {name: getattr(settings, name) for name in SEGMENTS}
    windows, reports = build_windows(panel, settings.lookback, settings.horizon, segments)
    result = Split(panel, windows, settings.lookback, settings.horizon)
    result.save(out, extra_meta={"ranges": segments, "reports": {name: asdict(r) for name, r in reports.items()}})

    metrics: dict[str, float] = {"instruments": len(panel.instruments), "days": len(panel.calendar)}
    summary = [f"panel: {len(panel.instruments)} instruments x {len(panel.calendar)} days, fields {list(panel.fields)}"]
    for name, report in reports.items():
        for key, value in asdict(report).items():
            metrics[f"{key}_{name}"] = value
        start, end = segments[name]
        summary.append(
            f"{name:>5}: {report.windows:>8,} windows  {start} .. {end}  "
            f"(dropped: {report.short_history:,} short history, {report.no_target:,} target past segment, "
            f"{report.missing_values:,} missing values)"
        )
    plot = out / "windows_per_day.png"
    _plot_windows_per_day(result, plot)
    return StageResult(metrics=metrics, summary=summary, artifacts=[out / SPLIT_META, plot])


def _plot_windows_per_day(split_output: Split, path: Path) -> None:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(9, 3))
    axis = figure.subplots()
    for name in split_output.windows:
        segment = split_output.segment(name)
        days = segment.dates(np.arange(len(segment)))[:, segment.lookback - 1]
        unique, counts = np.unique(days, return_counts=True)
        axis.plot(unique, counts, ".", markersize=3, label=name)
    axis.set_ylabel("windows per decision day")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)


STAGES = (
    StageSpec(
        "ingest",
        ingest,
        needs=(),
        reads=(
            "data.source",
            "data.path",
            "data.provider_uri",
            "data.columns",
            "data.instruments",
            "data.date_format",
            "data.delimiter",
            "data.decimal",
            "data.max_daily_move",
        ),
        outputs=(QLIB_FOLDER, "ingest_summary.json"),
        description="bars (sample, CSV/Parquet) -> Qlib folder, or a view of an existing one",
    ),
    StageSpec(
        "split",
        split,
        needs=("ingest",),
        reads=("split", "data.instruments", "data.fields"),
        outputs=(SPLIT_META, "panel"),
        description="panel + leak-free train/valid/test window indices",
    ),
)
