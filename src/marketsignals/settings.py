"""Typed settings, built once from a conf/ profile, environment variables and CLI flags.

Precedence (last wins): ``conf/<profile>.yaml`` < ``MARKETSIGNALS__SECTION__KEY=value`` environment
variables < ``--set section.key=value`` flags. Every value is validated here; a bad one stops with a
``SettingsError`` that names the key and the expected form, before Spark or Kafka is touched.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

ENV_PREFIX = "MARKETSIGNALS__"
CONF_DIR_ENV = "MARKETSIGNALS_CONF_DIR"

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|milliseconds?|s|seconds?|m|minutes?|h|hours?)\s*$")
_UNIT_MS = {"ms": 1, "millisecond": 1, "milliseconds": 1, "s": 1000, "second": 1000, "seconds": 1000,
            "m": 60_000, "minute": 60_000, "minutes": 60_000, "h": 3_600_000, "hour": 3_600_000,
            "hours": 3_600_000}


class _Yaml12Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's booleans: only true/false. YAML 1.1 also reads on/off/yes/no
    as booleans, so ``--set spark.log_level=OFF`` became False and was refused as a log level."""


_BOOL = "tag:yaml.org,2002:bool"
_Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != _BOOL]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def load_yaml(text: str) -> Any:
    """YAML text (a profile file or one ``--set`` value) as Python values, with YAML 1.2's booleans."""
    return yaml.load(text, Loader=_Yaml12Loader)


class SettingsError(ValueError):
    """A setting is missing or malformed; the message says which key and what form is expected."""


def duration_ms(text: str | int | float) -> int:
    """Parse ``'30 seconds'``, ``'500ms'``, ``'1h'`` or a number of milliseconds into milliseconds."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return int(text)
    match = _DURATION.match(str(text))
    if not match:
        raise ValueError(f"expected a duration like '30 seconds', '500ms' or '1h', got {text!r}")
    return int(float(match.group(1)) * _UNIT_MS[match.group(2)])


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


SINK_PRODUCER_DEFAULTS = {"linger.ms": "5", "batch.size": "262144"}
SOURCE_CONSUMER_DEFAULTS = {"fetch.max.wait.ms": "20"}


def _as_text(value: Any) -> Any:
    """A mapping's keys and values as text: YAML reads 100 and true as a number and a bool."""
    if not isinstance(value, Mapping):
        return value
    return {str(k): str(v).lower() if isinstance(v, bool) else str(v) for k, v in value.items()}


class KafkaSettings(_Section):
    """Where ticks come from and where signals and rejects go."""

    bootstrap_servers: str = "127.0.0.1:9092"
    topics: list[str] = Field(default_factory=lambda: ["market-data", "level2-data", "trade-data"])
    topic_pattern: str | None = None
    signals_topic: str = "trading-signals"
    dead_letter_topic: str = "dead-letter"
    partitions: int = Field(3, ge=1)
    starting_offsets: str = "latest"
    max_offsets_per_trigger: int | None = Field(None, ge=1)
    # Passed through to the Kafka clients (source, sinks, feed); keys without the "kafka." prefix,
    # e.g. {"security.protocol": "SASL_SSL"}. Values may be secrets: never logged.
    options: dict[str, str] = Field(default_factory=dict)
    # Producer-only options of the Spark Kafka sink (signals, dead letters), on top of ``options``.
    # kafka-clients 3.9 sends as soon as it can (linger.ms 0) in 16 KiB batches: 54,000 ready signal
    # records took 0.8-1.3 s to produce here, 0.4-0.55 s with these; a 200,000-tick batch's writes
    # took 40 % less time (bench/ROUNDS.md, twelfth round).
    producer_options: dict[str, str] = Field(default_factory=lambda: dict(SINK_PRODUCER_DEFAULTS))
    # Consumer-only options of the Spark Kafka source, on top of ``options``. A source task that reads
    # a partition up to its end, with nothing new arriving, waited for the broker's long poll: the
    # consumer's fetch.max.wait.ms, 500 ms by default, per task (the last batch after a feed stopped:
    # nine tasks of ~540 ms instead of 50-100 ms; bench/ROUNDS.md, fourteenth round).
    consumer_options: dict[str, str] = Field(default_factory=lambda: dict(SOURCE_CONSUMER_DEFAULTS))

    @field_validator("producer_options", "consumer_options", mode="before")
    @classmethod
    def _option_text(cls, value: Any) -> Any:
        return _as_text(value)  # the Kafka client takes every option as text

    @field_validator("topics")
    @classmethod
    def _topics_not_empty(cls, topics: list[str]) -> list[str]:
        if not topics or any(not t.strip() for t in topics):
            raise ValueError("expected a non-empty list of topic names")
        return topics

    @property
    def tick_topics(self) -> list[str]:
        return list(self.topics)

    @property
    def all_topics(self) -> list[str]:
        return [*self.topics, self.signals_topic, self.dead_letter_topic]


class BrokerSettings(_Section):
    """The local single-node KRaft broker that `marketsignals kafka up` runs from Maven jars."""

    host: str = "127.0.0.1"
    port: int = Field(9092, ge=1, le=65535)
    controller_port: int = Field(9093, ge=1, le=65535)
    data_dir: str = ".local/kafka"
    heap: str = "512m"
    start_timeout_s: float = Field(60.0, gt=0)

    @model_validator(mode="after")
    def _distinct_ports(self) -> BrokerSettings:
        if self.port == self.controller_port:
            raise ValueError("port and controller_port must differ")
        return self


class StrategySettings(_Section):
    """SPEC §3: every threshold and weight of the risk model and the signal rules."""

    version: str = "v1"
    volatility_high: float = 2.0
    volatility_low: float = 0.5
    liquidity_high_volume: int = 1_000_000
    liquidity_medium_volume: int = 100_000
    weight_volatility: float = 0.4
    weight_spread: float = 0.3
    weight_liquidity: float = 0.3
    liquidity_penalty_low: float = 3.0
    liquidity_penalty_medium: float = 1.0
    liquidity_penalty_high: float = 0.0
    signal_max_risk: float = 2.0
    actionable_max_risk: float = 2.5
    confidence_risk_factor: float = 20.0
    base_position: int = 100_000
    position_risk_factor: float = 0.2
    position_volatility_factor: float = 0.1
    position_floor: float = 0.1


# Stats (data skipping) on event_time and symbol only (event_date is its partition; Delta's default is
# the first 32 columns). A batch's file holds about a trigger's span of event time, so a query for a
# time range reads the files of that range only; min/max of signal_id (a hash) or of the symbols of a
# batch (all of them) span nearly every value and skip nothing. Symbol's stats are for a user's OPTIMIZE
# ZORDER BY (symbol), which Delta refuses on a column without them (bench/ROUNDS.md, thirty-eighth
# round). And Delta's own checkpoint (written by the commit that reaches the interval, in the
# batch's path) only once in a million commits: the sink writes one every
# stream.audit_checkpoint_interval commits on a thread of its own (stream/sinks.py, AuditMaintenance).
# The log's files kept for an hour, not Delta's 30 days: every commit lists them all, and a 1 s trigger
# adds ~172,800 a day (the sink removes the expired ones after its checkpoints; bench/ROUNDS.md,
# thirty-fifth round). It is also how far back time travel and a Delta stream reading the table reach.
# The files a compaction replaced kept in the table's state (tombstones) for a day, not Delta's 7 days:
# each of the sink's checkpoints writes them all, and its compaction every 1,000 commits replaces ~1,000
# files, ~86,000 a day on a 1 s trigger (a checkpoint with 600,000 took 9.6 s, with 60,000 2.6 s;
# bench/ROUNDS.md, thirty-sixth round). It is also how long those files stay safe from a VACUUM.
AUDIT_TABLE_PROPERTIES = {"delta.dataSkippingStatsColumns": "event_time,symbol",
                          "delta.checkpointInterval": "1000000",
                          "delta.logRetentionDuration": "interval 1 hour",
                          "delta.deletedFileRetentionDuration": "interval 1 day"}


# Triggers under which a query reads what is there and stops (the others: processingTime=<duration>).
BOUNDED_TRIGGERS = ("availableNow", "once")


class StreamSettings(_Section):
    """The streaming job: ordering, watermark, state, emission, sinks, trigger."""

    checkpoint: str = ".local/checkpoints/stream"
    audit_table: str = ".local/tables/signals_audit"
    metrics_path: str | None = ".local/metrics/stream.jsonl"
    trigger: str = "processingTime=1 second"
    ordering: Literal["arrival", "event_time"] = "arrival"
    emission: Literal["on_change", "every"] = "on_change"
    watermark_delay: str = "30 seconds"
    max_future_skew: str = "5 seconds"
    state_idle_timeout: str = "1 hour"
    # The stateful key: symbols are spread over this many buckets (stream/state.py). Fewer, fuller
    # buckets cut Spark's per-group cost; a bucket's whole state is rewritten when any of its symbols
    # ticks. A checkpoint keeps the number it was written with (stream/checkpoint.py: a restart with
    # another setting logs a warning and keeps the checkpoint's).
    state_buckets: int = Field(256, ge=1, le=1_000_000)
    # A live stream's stage 0 (the Kafka read, parse, validation, the shuffle write) in at most this many
    # tasks a batch; 0: one a Kafka topic partition, Spark's own. A task costs ~15 ms of CPU whatever it
    # reads, so small live batches over many partitions pay that many times over; coalescing keeps each
    # partition's records in offset order and adds no shuffle. Bounded runs (availableNow, once) keep one
    # a partition: their large batches balance better over more tasks (bench/ROUNDS.md, forty-first round).
    source_tasks: int = Field(0, ge=0)
    # A live stream's batch starts as soon as this many new ticks wait, without waiting for the trigger's
    # interval, which stays the longest a batch waits; 0 (both profiles): batches start on the interval only.
    # At a high rate the batches run back to back, at a low one on the interval, with one of Spark's batches
    # without data after most of them (stream/trigger.py; bench/ROUNDS.md, forty-fourth and forty-fifth
    # rounds). Not in event_time ordering. Above kafka.max_offsets_per_trigger, a batch starts early once
    # that many wait.
    early_batch_ticks: int = Field(0, ge=0)
    query_name: str = "marketsignals"
    # Delta table properties the audit table gets when the sink's first write creates it (an existing
    # table keeps its own: ALTER TABLE ... SET TBLPROPERTIES changes them). Delta's defaults collect
    # min/max stats on 32 columns and checkpoint every 10 commits; on 5,000-tick batches that made the
    # audit write the longest part of the batch (bench/ROUNDS.md).
    audit_table_properties: dict[str, str] = Field(default_factory=lambda: dict(AUDIT_TABLE_PROPERTIES))
    # The sink writes the audit table's Delta checkpoint every this many of its commits, off the batch's
    # path (a reader replays at most this many small JSON commits); 0: none (Delta's own, per the
    # table's delta.checkpointInterval). A table whose own interval is at most this keeps Delta's.
    audit_checkpoint_interval: int = Field(100, ge=0)
    # Who writes those checkpoints: kernel, Delta Kernel in the driver, without Spark jobs (~0.15 s for 100
    # commits); spark, Delta Lake's own, in five to seven Spark jobs beside the batches (0.6-6 s; bench/
    # ROUNDS.md, forty-third round). The same file either way; kernel falls back to spark, with a warning,
    # where Delta Kernel is not on the classpath or does not write the table.
    audit_checkpoint_writer: Literal["kernel", "spark"] = "kernel"
    # The sink compacts the audit table's small files (Delta's OPTIMIZE: one file per event date per batch)
    # every this many of its commits, off the batch's path; 0: never (stream/sinks.py, AuditMaintenance).
    audit_compact_interval: int = Field(1000, ge=0)
    # A live stream (a processingTime trigger) first runs its plan over this many synthetic ticks, so
    # its first batch with data finds the JIT, the generated code and the Python workers warm; 0: not
    # (stream/warm_up.py). Bounded runs (availableNow, once) never do.
    warm_up_ticks: int = Field(20_000, ge=0, le=1_000_000)  # made in the driver's Python
    # ... nor, unless this is true, a live stream that resumes its checkpoint and finds ticks waiting in
    # Kafka (a restart while they flow): they would wait for the warm-up too, and their own first batches
    # warm the JVM (stream/job.py, restart_backlog). A restart with none waiting warms up.
    warm_up_on_restart: bool = False
    # SIGTERM or Ctrl-C lets the batch in flight finish and commit, up to this long, and no later batch
    # start its work, before the query stops (stream/job.py, stop_query); past it, or with 0, the stop
    # cuts the batch (uncommitted: the next start replays it, and Kafka may get its signals twice). A
    # second signal cuts it at once. A platform that kills the driver sooner cuts it as a crash does.
    stop_grace: str = "30 seconds"
    # How often the driver looks for a stop request, the file marketsignals.stop in the checkpoint
    # (``marketsignals stop``, ``marketsignals emr stop``): the way to stop a job whose platform stops
    # it by signalling the JVM (YARN, EMR Serverless, EMR on EKS), whose shutdown ends the query at once.
    # The request stops the query as SIGTERM does (stop_grace), and is removed. 0: never looked for.
    stop_check: str = "5 seconds"

    @field_validator("audit_table_properties", mode="before")
    @classmethod
    def _delta_properties(cls, value: Any) -> Any:
        if not isinstance(value, Mapping):
            return value
        for key in value:
            if not str(key).startswith("delta."):
                raise ValueError(f"expected Delta table properties (delta.<name>), got {key!r}")
        return _as_text(value)  # Delta takes every property as text

    @field_validator("watermark_delay", "max_future_skew", "state_idle_timeout", "stop_grace",
                     "stop_check")
    @classmethod
    def _is_duration(cls, value: str) -> str:
        duration_ms(value)
        return value

    @field_validator("trigger")
    @classmethod
    def _is_trigger(cls, value: str) -> str:
        if value in BOUNDED_TRIGGERS:
            return value
        kind, _, arg = value.partition("=")
        if kind != "processingTime" or not arg:
            raise ValueError("expected 'availableNow' or 'processingTime=<duration>', e.g. 'processingTime=1 second'")
        duration_ms(arg)
        return value

    @property
    def bounded(self) -> bool:
        """The query reads what is there and stops (availableNow, once): big batches, no live latency."""
        return self.trigger in BOUNDED_TRIGGERS

    @property
    def watermark_delay_ms(self) -> int:
        return duration_ms(self.watermark_delay)

    @property
    def max_future_skew_ms(self) -> int:
        return duration_ms(self.max_future_skew)

    @property
    def stop_grace_ms(self) -> int:
        return duration_ms(self.stop_grace)

    @property
    def stop_check_ms(self) -> int:
        return duration_ms(self.stop_check)

    @property
    def state_idle_timeout_ms(self) -> int:
        return duration_ms(self.state_idle_timeout)


class BacktestSettings(_Section):
    """The batch backtest and its strategy simulation.

    ``initial_capital`` is the book's starting equity in money; null (the default) funds it fully:
    symbols × ``strategy.base_position``, the most the strategy can hold at entry, so it is never
    levered and the buy-and-hold benchmark holds what the strategy could hold in each symbol.
    ``fee_bps`` is charged on the traded notional of every fill (1 bp = 0.01 %). ``allow_short``: a
    SELL signal targets a short of ``recommended_position_size`` instead of going flat.
    ``mark_interval`` is the resolution of the equity curve (positions marked to the mid of the
    interval's last tick); it must divide a day, since daily PnL is the sum of a day's intervals.
    ``trading_days_per_year`` annualises the daily Sharpe, Sortino and volatility.
    """

    input: str = ".local/history"
    input_format: Literal["parquet", "csv", "json"] = "parquet"
    output: str = ".local/backtest"
    fill: Literal["next_tick", "same_tick"] = "next_tick"
    fee_bps: float = Field(1.0, ge=0)
    initial_capital: float | None = Field(None, gt=0)
    allow_short: bool = False
    mark_interval: str = "1 hour"
    trading_days_per_year: int = Field(252, ge=1)

    @field_validator("mark_interval")
    @classmethod
    def _divides_a_day(cls, value: str) -> str:
        ms = duration_ms(value)
        if ms <= 0 or 86_400_000 % ms:
            raise ValueError("expected a duration that divides a day, e.g. '1 hour', '15 minutes', '24 hours'")
        return value

    @property
    def mark_interval_ms(self) -> int:
        return duration_ms(self.mark_interval)


class SparkSettings(_Section):
    """How the local SparkSession is built; on EMR spark-submit's own --conf wins."""

    master: str | None = "local[*]"
    app_name: str = "marketsignals"
    jars_dir: str = ".jars/spark"
    # Jars on the driver JVM's own class path (spark.driver.extraClassPath), for classes Spark needs before
    # it loads spark.jars: the local profile's Hadoop file system for file: paths (jvm/localfs). Like
    # bounded_java_options, it acts only where the session starts the JVM, i.e. not under spark-submit.
    classpath_dir: str = ""
    shuffle_partitions: int = Field(4, ge=1)
    log_level: str = "WARN"
    conf: dict[str, str] = Field(default_factory=dict)
    # JVM flags appended to spark.driver.extraJavaOptions for a run that reads a bounded input in big
    # batches: a stream with trigger availableNow or once, the backtest (the JVM takes the last of a
    # repeated flag). The local profile gives those runs C2; flags only act where the session starts the
    # JVM, i.e. not under spark-submit (bench/ROUNDS.md, thirteenth round).
    bounded_java_options: str = ""


class Settings(_Section):
    """Everything the product reads, in one immutable object passed down from the edge."""

    profile: str = "local"
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    broker: BrokerSettings = Field(default_factory=BrokerSettings)
    strategy: StrategySettings = Field(default_factory=StrategySettings)
    stream: StreamSettings = Field(default_factory=StreamSettings)
    backtest: BacktestSettings = Field(default_factory=BacktestSettings)
    spark: SparkSettings = Field(default_factory=SparkSettings)

    def with_overrides(self, overrides: Iterable[str]) -> Settings:
        """A copy with ``section.key=value`` overrides applied (validated like the file)."""
        data = self.model_dump()
        for item in overrides:
            _apply_assignment(data, item, source="--set")
        return _validate(data, source="--set")


def default_conf_dir() -> Path:
    """conf/ of the checkout (or MARKETSIGNALS_CONF_DIR, e.g. on a cluster node)."""
    env = os.environ.get(CONF_DIR_ENV)
    if env:
        return Path(env)
    here = Path(__file__).resolve()
    for parent in (Path.cwd(), *here.parents):
        candidate = parent / "conf"
        if (candidate / "local.yaml").exists():
            return candidate
    return Path.cwd() / "conf"


def load_settings(
    profile: str = "local",
    overrides: Iterable[str] = (),
    env: Mapping[str, str] | None = None,
    conf_file: str | Path | None = None,
) -> Settings:
    """Build the settings: profile file, then ``MARKETSIGNALS__*`` env vars, then ``--set`` flags."""
    path = Path(conf_file) if conf_file else default_conf_dir() / f"{profile}.yaml"
    if not path.exists():
        raise SettingsError(f"config profile file {path} not found: pass --profile local|emr or --conf FILE")
    try:
        data = load_yaml(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise SettingsError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(data, dict):
        raise SettingsError(f"{path}: expected a mapping of sections at the top level")
    data.setdefault("profile", profile)
    environ = os.environ if env is None else env
    for name, value in sorted(environ.items()):
        if name.startswith(ENV_PREFIX):
            key = name[len(ENV_PREFIX):].lower().replace("__", ".")
            _apply_assignment(data, f"{key}={value}", source=name)
    for item in overrides:
        _apply_assignment(data, item, source="--set")
    return _validate(data, source=str(path))


def _apply_assignment(data: dict[str, Any], item: str, source: str) -> None:
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise SettingsError(f"{source}: expected section.key=value, got {item!r}")
    parts = key.split(".")
    # dict-valued leaves (kafka.options, kafka.producer_options, kafka.consumer_options, spark.conf,
    # stream.audit_table_properties) take the rest of the key as one dotted name:
    # "spark.conf.spark.sql.shuffle.partitions=8"
    if len(parts) >= 3 and parts[1] in ("options", "producer_options", "consumer_options", "conf",
                                         "audit_table_properties"):
        section = data.setdefault(parts[0], {})
        if not isinstance(section, dict):
            raise SettingsError(f"{source}: {key}: {parts[0]} is not a section")
        leaf = section.get(parts[1])
        section[parts[1]] = leaf = dict(leaf) if isinstance(leaf, dict) else {}
        leaf[".".join(parts[2:])] = raw
        return
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise SettingsError(f"{source}: {key}: {part} is not a section")
        node = child
    # YAML scalars: "3" -> 3, "true" -> True, "[a, b]" -> list
    try:
        node[parts[-1]] = load_yaml(raw) if raw.strip() else None
    except yaml.YAMLError:
        node[parts[-1]] = raw


def _validate(data: dict[str, Any], source: str) -> Settings:
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"])
            value = err.get("input")
            shown = "" if isinstance(value, dict) else f" (got {value!r})"
            problems.append(f"{key}: {err['msg']}{shown}")
        raise SettingsError(f"invalid settings from {source}: " + "; ".join(problems)) from None
