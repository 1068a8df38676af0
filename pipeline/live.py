"""`--stage positions`: the next bar's orders from a pinned model; no training stage ever runs.

The model live.model names (a registered version, or a bundle folder: pipeline/registry.py) scores
the decision day with the code and settings of its signal stage, on bars the ingest stage reads
anew (cached by their fingerprint). The backtest's TopkDropout rule (strategies/topk.py) turns the
scores and the current holdings into orders, written to `<live.output_dir>/positions/<day>.csv`
(rerunning a day replaces its file whole) and logged as an MLflow run naming the model version.
"""

from __future__ import annotations

import datetime as dt
import io
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import numpy as np
import pandas as pd

from data_prep.errors import CheckpointError, ConfigError, DataError
from pipeline import registry, tracking
from pipeline.config import PipelineConfig
from pipeline.contract import QLIB_FOLDER

if TYPE_CHECKING:
    from data_prep.windows import ForecastInputs
    from models.interface import Forecast

log = logging.getLogger(__name__)

POSITIONS = "positions"  # folder of one CSV per decision day inside live.output_dir
COLUMNS = ("instrument", "score", "target_weight", "action")


@dataclass(frozen=True)
class Positions:
    """What one positions run decided, and from what."""

    day: pd.Timestamp  # the decision day: orders trade on the next bar
    path: Path  # the positions file written
    orders: pd.DataFrame  # COLUMNS: kept names, then buys, then sells (the holding order)
    scores: pd.Series  # every instrument's score that day
    model: registry.ModelRef
    meta: dict[str, Any]  # the bundle's source.json
    holdings_from: str  # the holdings file read, or why none
    topk: int
    n_drop: int
    stages: list[str]  # the pipeline stages run or reused on the way (ingest only)
    run_id: str

    def summary(self) -> list[str]:
        counts = self.orders["action"].value_counts()
        backtest = self.meta["runs"].get("backtest", "-")
        return [
            f"positions for {self.day.date()} (decided at its close, traded on the next bar) from {self.model.label} "
            f"({self.meta['source']}, fold {self.meta['fold']}, seed {self.meta['seed']}, backtest run {backtest})",
            f"holdings: {counts.get('hold', 0) + counts.get('sell', 0)} names from {self.holdings_from}",
            f"orders: buy {counts.get('buy', 0)}, sell {counts.get('sell', 0)}, hold {counts.get('hold', 0)} "
            f"(topk {self.topk}, n_drop {self.n_drop}); {self.scores.notna().sum()} instruments scored",
        ]


def positions(config: PipelineConfig, today: dt.date | None = None, force: bool = False) -> Positions:
    """Score the decision day with live.model, apply the backtest's rule to the holdings, write the orders.
    A day already decided with other orders is kept unless `force` (its record may have been traded)."""
    from pipeline.runner import run_pipeline
    from strategies.topk import topk_dropout_day

    live = config.live
    folder = live.output_dir / POSITIONS
    folder.mkdir(parents=True, exist_ok=True)
    uri = tracking.setup(config)
    model = registry.resolve(config, mlflow.MlflowClient(uri))
    with tempfile.TemporaryDirectory(prefix=".model-", dir=live.output_dir) as work:
        bundle, meta = registry.fetch_bundle(model, Path(work), uri)
        check_training_data(meta, config, model)
        # the new bars, cached by their fingerprint; one small stage needs no Ray cluster
        outcomes = run_pipeline(config.model_copy(update={"executor": "local"}), "ingest")
        qlib_dir = outcomes[-1].output / QLIB_FOLDER
        panel = load_checked_panel(qlib_dir, meta, model)
        day = decision_day(panel.calendar, live.as_of, today or dt.date.today(), live.max_staleness_days)
        check_coverage(panel, day, live.min_coverage)
        held, holdings_from = current_holdings(live.holdings, folder, day, panel.instruments)
        # as the backtest cleans a signal table: the panel's instruments, finite scores
        scores = score_day(meta, bundle, panel, qlib_dir, day, Path(work), model)
        scores = scores[scores.index.isin(panel.instruments) & np.isfinite(scores)]
    settings = config.backtest.topk_settings()
    backtested = {key: meta["strategy"][key] for key in ("topk", "n_drop")}
    if backtested != {"topk": settings.topk, "n_drop": settings.n_drop}:
        log.warning("backtest.topk / n_drop differ from those the model was backtested with (%s)", backtested)
    if settings.hold_thresh > 1:
        log.warning(
            "backtest.hold_thresh %d is not applied to live orders (nor by the vectorbt engine)", settings.hold_thresh
        )
    if len(held) > settings.topk:
        log.warning(
            "the holdings name %d instruments, more than backtest.topk %d: the rule sells at most n_drop a day "
            "and buys none until they are down to topk",
            len(held),
            settings.topk,
        )
    kept, bought, sold = topk_dropout_day(scores, held, settings.topk, settings.n_drop)
    orders = pd.DataFrame(
        [(name, "hold", np.nan) for name in kept]
        + [(name, "buy", 1.0 / settings.topk) for name in bought]
        + [(name, "sell", 0.0) for name in sold],
        columns=["instrument", "action", "target_weight"],
    )
    orders["score"] = scores.reindex(orders["instrument"]).to_numpy()
    orders = orders[list(COLUMNS)]
    path = folder / f"{day.date()}.csv"
    write_orders(orders, path, force)
    run_id = log_positions(config, model, meta, day, path, orders, scores, holdings_from)
    stages = [outcome.stage for outcome in outcomes]
    return Positions(
        day, path, orders, scores, model, meta, holdings_from, settings.topk, settings.n_drop, stages, run_id
    )


def write_orders(orders: pd.DataFrame, path: Path, force: bool) -> None:
    """Write the day's orders whole (a temporary file renamed); the same orders again are a no-op, other
    orders for a day already decided are refused unless `force`: that day's file is a record."""
    if path.exists() and not force:
        try:
            same = pd.read_csv(path).equals(pd.read_csv(io.StringIO(orders.to_csv(index=False))))
        except (OSError, ValueError):
            same = False
        if not same:
            raise DataError(
                f"{path} already holds other orders for that day (made from other data, holdings or model); keep "
                "it as the record of what was traded, or pass --force to replace it"
            )
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    partial = Path(name)
    try:
        with os.fdopen(handle, "w") as file:
            orders.to_csv(file, index=False)
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)


def check_coverage(panel, day: pd.Timestamp, min_coverage: float) -> None:
    """Refuse a decision day on which too few instruments have a bar (a partial download): the missing
    names would go unscored, and held ones would be sold for it."""
    close = panel.field_frame("close")
    recent = close.loc[:day].tail(20)
    active = recent.columns[recent.notna().any()]  # instruments trading lately
    present = close.loc[day, active].notna()
    if len(active) and present.mean() < min_coverage:
        missing = sorted(active[~present.to_numpy()])
        raise DataError(
            f"only {present.sum()} of {len(active)} instruments trading lately have a bar on {day.date()} "
            f"({present.mean():.0%}, live.min_coverage {min_coverage:.0%}; missing e.g. {missing[:10]}): finish "
            "bringing the data up to date, or set live.as_of to the day before"
        )


def check_training_data(meta: dict[str, Any], config: PipelineConfig, model: registry.ModelRef) -> None:
    """Refuse a config whose data is not the kind the model was trained on (universe, region, fields)."""
    trained = meta["data"]
    differ = [
        f"{key} {current!r} (the model's: {trained[name]!r})"
        for key, name, current in (
            ("data.instruments", "universe", config.data.instruments),
            ("data.region", "region", config.data.region),
            ("data.fields", "fields", list(config.data.fields)),
        )
        if current != trained[name]
    ]
    if differ:
        raise ConfigError(
            f"live.model {model.label} was trained on other data than this config reads: {'; '.join(differ)}; point "
            "data.* at the model's data, or backtest (and register) a model on this data"
        )


def load_checked_panel(qlib_dir: Path, meta: dict[str, Any], model: registry.ModelRef):
    """The universe's bars in the model's field order, refused when its instruments are not the ones the
    model was trained on (the forecasts' seeds and the comparison with the backtest rest on them)."""
    from data_prep.panel import load_panel

    trained = meta["data"]
    panel = load_panel(qlib_dir, trained["universe"], tuple(trained["fields"]))
    added = sorted(set(panel.instruments) - set(trained["instruments"]))
    removed = sorted(set(trained["instruments"]) - set(panel.instruments))
    if added or removed:
        raise DataError(
            f"universe {trained['universe']!r} in {qlib_dir} is not the one {model.label} was trained on: "
            f"{len(added)} new instrument(s) {added[:10]}, {len(removed)} missing {removed[:10]}; restore the data, "
            "or backtest (and register) a model on this universe"
        )
    if meta["family"] == "kronos" and str(panel.calendar[0].date()) != trained["first_day"]:
        log.warning(
            "the data now starts on %s, not on %s as when %s was trained: Kronos seeds its paths by calendar "
            "position, so a day of the backtest will not repeat its scores exactly",
            panel.calendar[0].date(),
            trained["first_day"],
            model.label,
        )
    return panel


def decision_day(
    calendar: pd.DatetimeIndex, as_of: str | dt.date, today: dt.date, max_staleness_days: int
) -> pd.Timestamp:
    """The last bar on or before as_of (latest: today), refused when more than `max_staleness_days`
    weekdays lie between it and that day: the data has not been brought up to date."""
    wanted = pd.Timestamp(today if as_of == "latest" else as_of)
    bars = calendar[calendar <= wanted]
    if not len(bars):
        raise DataError(f"live.as_of {as_of}: the data starts on {calendar[0].date()}; choose a day it covers")
    day = bars[-1]
    stale = len(pd.bdate_range(day + pd.Timedelta(days=1), wanted))
    if stale > max_staleness_days:
        raise DataError(
            f"the data's last bar up to {wanted.date()} is {day.date()}, {stale} trading days earlier "
            f"(live.max_staleness_days {max_staleness_days}): bring the data up to date, or set live.as_of to a day "
            "it covers"
        )
    return day


def current_holdings(
    holdings: Path | None, folder: Path, day: pd.Timestamp, instruments: list[str]
) -> tuple[list[str], str]:
    """The held names in holding order and where they come from: live.holdings, else the newest
    positions file before `day` (its kept and bought names), else none."""
    if holdings is None:
        earlier = sorted(path for path in folder.glob("*.csv") if _file_day(path) is not None and _file_day(path) < day)
        if not earlier:
            return [], f"nowhere (no positions file before {day.date()} in {folder}): starting from cash"
        holdings = earlier[-1]
    return read_holdings(holdings, instruments), str(holdings)


def _file_day(path: Path) -> pd.Timestamp | None:
    try:
        return pd.Timestamp(dt.date.fromisoformat(path.stem))
    except ValueError:
        return None


def read_holdings(path: Path, instruments: list[str]) -> list[str]:
    """The instruments of a holdings CSV in row order; rows whose `action` is sell are not held. Refused,
    naming the rows, when it names an instrument the data does not hold or names one twice."""
    try:
        # utf-8-sig: brokers' and spreadsheets' exports often start with a byte-order mark
        table = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True, encoding="utf-8-sig")
    except (OSError, ValueError) as exc:  # pandas' parser errors are ValueErrors
        raise DataError(f"live.holdings {path} cannot be read ({exc}): a CSV with an 'instrument' column") from exc
    if "instrument" not in table.columns:
        raise DataError(
            f"live.holdings {path}: no 'instrument' column (columns {list(table.columns)}); write one held "
            "instrument per row under an 'instrument' header, as the positions files do"
        )
    table.index = table.index + 2  # the file's line numbers (line 1 is the header)
    if "action" in table.columns:
        table = table[table["action"].str.strip().str.lower() != "sell"]
    names = table["instrument"].str.strip()
    unknown = names[~names.isin(set(instruments))]
    if len(unknown):
        named = ", ".join(f"line {line}: {name!r}" for line, name in unknown.head(10).items())
        raise DataError(
            f"live.holdings {path} names {len(unknown)} instrument(s) the data does not hold ({named}); use the "
            f"data's instrument codes (e.g. {', '.join(instruments[:3])}) or drop the rows"
        )
    repeated = names[names.duplicated()]
    if len(repeated):
        raise DataError(
            f"live.holdings {path}: line {repeated.index[0]} names {repeated.iloc[0]!r} again; list each held "
            "instrument once"
        )
    return list(names)


def score_day(
    meta: dict[str, Any], bundle: Path, panel, qlib_dir: Path, day: pd.Timestamp, work: Path, model: registry.ModelRef
) -> pd.Series:
    """Every instrument's score on `day` from the bundle, as its signal stage scores a test day."""
    family = meta["family"]
    if family == "lgbm":
        from models.lgbm.alpha158 import alpha158_day_scores

        return alpha158_day_scores(qlib_dir, meta["data"]["region"], meta["data"]["universe"], day, bundle)
    series = day_series(meta, panel, day)
    if family == "kronos":
        result = kronos_day_forecast(meta, bundle, series, work)
    elif family == "timellm":
        result = timellm_day_forecast(meta, bundle, series, model)
    else:
        result = chronos_day_forecast(meta, bundle, series, model)
    return pd.Series(result.score, index=pd.Index(result.instruments, name="instrument"), name="score")


def day_series(meta: dict[str, Any], panel, day: pd.Timestamp) -> ForecastInputs:
    """Every instrument's window ending on `day`: what the signal stages forecast a test day from."""
    from data_prep.windows import Split

    split = meta["split"]
    try:
        return Split(panel, {}, split["lookback"], split["horizon"]).forecast_inputs(day.date(), day.date())
    except DataError as exc:
        raise DataError(
            f"no instrument has {split['lookback']} clean bars up to {day.date()} to forecast from ({exc})"
        ) from exc


def kronos_day_forecast(meta: dict[str, Any], bundle: Path, series: ForecastInputs, work: Path) -> Forecast:
    """Kronos paths from the day's windows, seeded per (instrument, day) and sampled with the settings
    of the signal stage (pipeline/stages/kronos.py), so a test day of the backtest gets the same scores
    again."""
    from models.kronos import forecast
    from pipeline.config import KronosInferenceConfig
    from pipeline.stages.kronos import forecast_spec, series_seeds

    split = meta["split"]
    settings = KronosInferenceConfig.model_validate(
        {key: value for key, value in meta["inference"].items() if key not in ("device", "bf16")}
    )
    predictor, tokenizer = str(bundle / "predictor"), str(bundle / "tokenizer")
    device, bf16 = meta["inference"]["device"], meta["inference"]["bf16"]
    spec = forecast_spec(predictor, tokenizer, settings, device, bf16, split["clip"], split["horizon"])
    return forecast(series, series_seeds(meta["seed"], series), spec, settings.nproc, work / "shards")


def timellm_day_forecast(
    meta: dict[str, Any], bundle: Path, series: ForecastInputs, model: registry.ModelRef
) -> Forecast:
    """The Time-LLM variant's forecasts of the day's windows on the backbone its config names, with the
    timellm stage's forecast settings and batching (pipeline/stages/timellm.py `Forecasting`), so a test
    day of the backtest gets the same scores again."""
    from models.timellm import TimeLLM
    from models.timellm.backbone import resolve
    from models.timellm.model import CONFIG_NAME, read_config
    from pipeline.graph import model_fingerprint
    from pipeline.stages.timellm import Forecasting

    folder = bundle / registry.TIMELLM_MODEL
    saved = read_config(folder / CONFIG_NAME)
    if saved.trust_remote_code:  # a registry or a folder handed over must not run code of its choosing here
        raise CheckpointError(
            f"live.model {model.label}: {folder / CONFIG_NAME} asks to run its backbone's own code "
            "(trust_remote_code); the positions load only backbones transformers implements itself"
        )
    settings = meta["inference"]
    forecasting = Forecasting.resolve(settings, series.fields, saved.load_in_4bit)
    try:
        backbone = forecasting.backbone(saved)
    except (OSError, ValueError) as exc:
        raise CheckpointError(
            f"live.model {model.label}: cannot load its Time-LLM backbone {saved.backbone!r} ({exc}); the bundle holds "
            "the trained layers only: restore the backbone there, or register a model trained on one that exists"
        ) from exc
    if model_fingerprint(resolve(saved.backbone)) != settings["backbone_fingerprint"]:
        log.warning(
            "the Time-LLM backbone %s is not the one %s was trained on (its files' sizes or times changed): the "
            "scores of a backtest day will not repeat exactly",
            saved.backbone,
            model.label,
        )
    trained = TimeLLM.from_pretrained(folder, backbone).to(forecasting.device)
    return forecasting.forecast(forecasting.forecaster(trained, backbone), series, f"{meta['source']} forecast")


def chronos_day_forecast(
    meta: dict[str, Any], bundle: Path, series: ForecastInputs, model: registry.ModelRef
) -> Forecast:
    """The Chronos-2 student's quantile forecasts of the day's windows, loaded and run as the
    chronos2_student stage does (pipeline/stages/chronos.py `forecast_with_student`)."""
    from models.chronos.forecasting import require_chronos
    from pipeline.stages.chronos import forecast_with_student

    try:
        require_chronos()
    except ImportError as exc:
        raise ConfigError(f"live.model {model.label} is a Chronos-2 student: {exc}") from exc
    _, result = forecast_with_student(bundle / registry.CHRONOS_STUDENT, series, meta["inference"])
    return result


def log_positions(
    config: PipelineConfig,
    model: registry.ModelRef,
    meta: dict[str, Any],
    day: pd.Timestamp,
    path: Path,
    orders: pd.DataFrame,
    scores: pd.Series,
    holdings_from: str,
) -> str:
    """One MLflow run per positions file: the model version it used, the orders and every score."""
    from pipeline.graph import data_fingerprint, data_location

    tags = {
        "stage": "positions",
        "decision_day": str(day.date()),
        "model_uri": model.uri,
        "model_name": model.name,
        "model_version": model.version,
        "logged_model_id": model.model_id,
        "source": meta["source"],
        "backtest_run_id": meta["runs"].get("backtest", ""),
    }
    with mlflow.start_run(run_name=f"positions {day.date()} [{model.label}]", tags=tags) as run:
        mlflow.log_input(tracking.data_set(config, data_location(config), data_fingerprint(config)), context="data")
        mlflow.log_params(
            {
                "as_of": str(config.live.as_of),
                "holdings": holdings_from,
                "topk": config.backtest.topk,
                "n_drop": config.backtest.n_drop,
            }
        )
        counts = orders["action"].value_counts()
        mlflow.log_metrics(
            {
                "scored": float(scores.notna().sum()),
                **{f"{action}s": float(counts.get(action, 0)) for action in ("buy", "sell", "hold")},
            }
        )
        mlflow.log_artifact(str(path))
        mlflow.log_text(scores.rename("score").to_csv(), "scores.csv")
    return run.info.run_id
