from pathlib import Path

import pytest

from marketsignals.settings import SettingsError, duration_ms, load_settings

CONF = Path(__file__).resolve().parents[2] / "conf"


def test_local_profile_loads_spec_defaults():
    s = load_settings("local", env={})
    assert s.kafka.topics == ["market-data", "level2-data", "trade-data"]
    assert s.stream.ordering == "arrival" and s.stream.emission == "on_change"
    assert s.stream.watermark_delay_ms == 30_000 and s.stream.max_future_skew_ms == 5_000
    assert s.stream.stop_grace_ms == 30_000 and s.stream.stop_check_ms == 5_000
    assert s.strategy.signal_max_risk == 2.0 and s.strategy.liquidity_penalty_low == 3.0


def test_emr_profile_loads():
    s = load_settings("emr", env={})
    assert s.spark.master is None
    assert s.stream.checkpoint.startswith("s3://")


def test_environment_overrides_file_and_flags_override_environment():
    env = {"MARKETSIGNALS__STREAM__ORDERING": "event_time", "MARKETSIGNALS__KAFKA__PARTITIONS": "6"}
    s = load_settings("local", env=env)
    assert s.stream.ordering == "event_time" and s.kafka.partitions == 6
    s = load_settings("local", ["stream.ordering=arrival", "kafka.topics=[a, b]"], env=env)
    assert s.stream.ordering == "arrival" and s.kafka.topics == ["a", "b"]


def test_dict_valued_settings_take_dotted_keys():
    s = load_settings("local", ["kafka.options.security.protocol=SASL_SSL",
                                "spark.conf.spark.sql.shuffle.partitions=8"], env={})
    assert s.kafka.options == {"security.protocol": "SASL_SSL"}
    assert s.spark.conf["spark.sql.shuffle.partitions"] == "8"


def test_bounded_runs_end_their_jvm_flags_with_the_bounded_java_options():
    from marketsignals.session import session_conf

    s = load_settings("local", ["spark.conf.spark.driver.extraJavaOptions=-Dx=1",
                                "spark.bounded_java_options=-Dy=2 -Dz=3"], env={})
    assert [t for t in ("availableNow", "once", "processingTime=1 second")
            if s.with_overrides([f"stream.trigger={t}"]).stream.bounded] == ["availableNow", "once"]
    live, bounded = session_conf(s.spark), session_conf(s.spark, {"spark.app.x": "1"}, bounded=True)
    # a live stream: its flags as set; a bounded run (catch-up, backtest): the same, then the bounded ones
    assert live["spark.driver.extraJavaOptions"] == "-Dx=1"
    assert bounded["spark.driver.extraJavaOptions"] == "-Dx=1 -Dy=2 -Dz=3"
    assert bounded.pop("spark.app.x") == "1" and bounded.keys() == live.keys()
    off = s.with_overrides(['spark.bounded_java_options=""'])
    assert session_conf(off.spark, bounded=True)["spark.driver.extraJavaOptions"] == "-Dx=1"
    # EMR: spark-submit starts the JVMs; nothing for bounded runs only (the local profile's bounded runs get
    # its live flags: tests/unit/test_local_jvm.py)
    assert load_settings("emr", env={}).spark.bounded_java_options == ""


def test_sink_producer_options_default_to_the_profile_and_win_over_client_options(tmp_path):
    from marketsignals.stream.source import client_options, sink_options

    s = load_settings("local", ["kafka.producer_options.compression.type=lz4", "kafka.options.linger.ms=0",
                                "kafka.options.security.protocol=SSL"], env={})
    assert s.kafka.producer_options == {"linger.ms": "5", "batch.size": "262144", "compression.type": "lz4"}
    # the source's consumer gets kafka.options only, never the producer's
    assert client_options(s.kafka)["kafka.linger.ms"] == "0" and "kafka.batch.size" not in client_options(s.kafka)
    opts = sink_options(s.kafka)
    assert opts["kafka.linger.ms"] == "5" and opts["kafka.batch.size"] == "262144"
    assert opts["kafka.compression.type"] == "lz4" and opts["kafka.security.protocol"] == "SSL"
    assert load_settings("emr", env={}).kafka.producer_options == {"linger.ms": "5", "batch.size": "262144"}
    conf = tmp_path / "p.yaml"
    conf.write_text("kafka:\n  producer_options: {linger.ms: 20, enable.idempotence: true}\n")
    assert load_settings(conf_file=conf, env={}).kafka.producer_options == {"linger.ms": "20",
                                                                              "enable.idempotence": "true"}


def test_source_consumer_options_reach_the_source_only():
    from marketsignals.stream.source import sink_options, source_options

    for profile in ("local", "emr"):
        kafka = load_settings(profile, env={}).kafka
        assert kafka.consumer_options == {"fetch.max.wait.ms": "20"}
        assert source_options(kafka)["kafka.fetch.max.wait.ms"] == "20"
        assert "kafka.fetch.max.wait.ms" not in sink_options(kafka) and "kafka.linger.ms" not in source_options(kafka)
    s = load_settings("local", ["kafka.consumer_options.fetch.max.wait.ms=500", "kafka.options.fetch.max.wait.ms=7",
                                "kafka.options.security.protocol=SSL"], env={})
    opts = source_options(s.kafka)
    assert opts["kafka.fetch.max.wait.ms"] == "500" and opts["kafka.security.protocol"] == "SSL"  # the source's own win


def test_audit_table_properties_default_to_the_profile_and_take_dotted_keys(tmp_path):
    s = load_settings("local", ["stream.audit_table_properties.delta.checkpointInterval=10"], env={})
    assert s.stream.audit_table_properties == {"delta.dataSkippingStatsColumns": "event_time,symbol",
                                               "delta.checkpointInterval": "10",
                                               "delta.logRetentionDuration": "interval 1 hour",
                                               "delta.deletedFileRetentionDuration": "interval 1 day"}
    # YAML numbers and booleans become the text Delta expects
    conf = tmp_path / "p.yaml"
    conf.write_text("stream:\n  audit_table_properties: {delta.checkpointInterval: 50, delta.appendOnly: true}\n")
    s = load_settings(conf_file=conf, env={})
    assert s.stream.audit_table_properties == {"delta.checkpointInterval": "50", "delta.appendOnly": "true"}


def test_jars_a_conf_names_add_to_the_profiles_jars():
    # spark.conf.spark.jars (or a caller's extra_conf) adds to spark.jars_dir's jars, never drops the connector
    from marketsignals.session import with_profile_jars

    assert with_profile_jars(["/j/kafka.jar", "/j/delta.jar"], "") == "/j/kafka.jar,/j/delta.jar"
    assert with_profile_jars(["/j/kafka.jar"], " /s3a/aws.jar, /j/kafka.jar ,") == "/j/kafka.jar,/s3a/aws.jar"
    assert with_profile_jars([], "/s3a/aws.jar") == "/s3a/aws.jar"
    assert with_profile_jars([], "") == ""


@pytest.mark.parametrize("profile", ["local", "emr"])
def test_the_profiles_leave_the_audit_tables_upkeep_to_the_sink(profile):
    # Delta's own checkpoint (in the commit, in the batch's path) far out; the sink's every 100 commits,
    # its compaction every 1000, and a compacted file of 64 MB is not rewritten by the next one
    from marketsignals.session import session_conf

    s = load_settings(profile, [], env={})
    assert int(s.stream.audit_table_properties["delta.checkpointInterval"]) == 1_000_000
    # its log's files an hour, not Delta's 30 days: every commit lists them all (stream/sinks.py, _clean_log)
    assert s.stream.audit_table_properties["delta.logRetentionDuration"] == "interval 1 hour"
    # the files its compactions replaced a day, not Delta's 7: each checkpoint writes them all (_checkpoint)
    assert s.stream.audit_table_properties["delta.deletedFileRetentionDuration"] == "interval 1 day"
    assert s.stream.audit_checkpoint_interval == 100
    assert s.stream.audit_checkpoint_writer == "kernel"  # Delta Kernel in the driver: no Spark jobs
    assert s.stream.audit_compact_interval == 1000
    assert session_conf(s.spark)["spark.databricks.delta.optimize.minFileSize"] == str(64 * 1024 * 1024)
    # ... and its output files one at a time (a task, one core, each), not Delta's up to 15 at once
    assert session_conf(s.spark)["spark.databricks.delta.optimize.maxThreads"] == "1"


@pytest.mark.parametrize(("profile", "ticks"), [("local", 100_000), ("emr", 20_000)])
def test_the_profiles_warm_a_live_stream_up(profile, ticks):
    # the local profile's C2 compiles a method after 50,000 calls (its -XX:Tier4 options), C2 on EMR after 5,000
    assert load_settings(profile, [], env={}).stream.warm_up_ticks == ticks


@pytest.mark.parametrize(("profile", "tasks"), [("local", 2), ("emr", 0)])
def test_the_local_profile_reads_a_live_batch_in_a_task_a_core_and_emr_in_one_a_partition(profile, tasks):
    assert load_settings(profile, [], env={}).stream.source_tasks == tasks


@pytest.mark.parametrize("profile", ["local", "emr"])
def test_the_profiles_start_a_live_batch_on_the_trigger_s_interval_only(profile):
    # early batches are a choice: at low rates their batches without data cost ~20 % more CPU
    assert load_settings(profile, [], env={}).stream.early_batch_ticks == 0


def test_an_audit_table_property_outside_delta_is_refused():
    with pytest.raises(SettingsError, match=r"stream\.audit_table_properties.*delta\.<name>.*'checkpointInterval'"):
        load_settings("local", ["stream.audit_table_properties.checkpointInterval=10"], env={})


@pytest.mark.parametrize(("override", "names"), [
    ("stream.ordering=sideways", ["stream.ordering", "arrival", "event_time"]),
    ("kafka.partitions=zero", ["kafka.partitions", "zero"]),
    ("stream.watermark_delay=soon", ["stream.watermark_delay", "30 seconds"]),
    ("stream.stop_grace=later", ["stream.stop_grace", "30 seconds"]),
    ("stream.stop_check=often", ["stream.stop_check", "30 seconds"]),
    ("stream.trigger=continuous", ["stream.trigger", "availableNow"]),
    ("broker.port=70000", ["broker.port"]),
    ("stream.state_buckets=0", ["stream.state_buckets", "greater than or equal to 1"]),
    ("stream.audit_checkpoint_interval=-1", ["stream.audit_checkpoint_interval", "greater than or equal to 0"]),
    ("stream.audit_checkpoint_writer=delta", ["stream.audit_checkpoint_writer", "kernel", "spark"]),
    ("stream.audit_compact_interval=-5", ["stream.audit_compact_interval", "greater than or equal to 0"]),
    ("stream.warm_up_ticks=-1", ["stream.warm_up_ticks", "greater than or equal to 0"]),
    ("stream.source_tasks=-2", ["stream.source_tasks", "greater than or equal to 0"]),
    ("stream.early_batch_ticks=-1", ["stream.early_batch_ticks", "greater than or equal to 0"]),
    ("stream.warm_up_ticks=5000000", ["stream.warm_up_ticks", "less than or equal to 1000000"]),
    ("strategy.no_such_key=1", ["strategy.no_such_key"]),
])
def test_a_bad_value_names_the_key_and_the_expected_form(override, names):
    with pytest.raises(SettingsError) as err:
        load_settings("local", [override], env={})
    for name in names:
        assert name in str(err.value)


def test_bad_environment_variable_is_named():
    with pytest.raises(SettingsError, match=r"MARKETSIGNALS__STREAM__EMISSION|stream\.emission"):
        load_settings("local", env={"MARKETSIGNALS__STREAM__EMISSION": "sometimes"})


def test_missing_profile_says_what_to_pass():
    with pytest.raises(SettingsError, match="--profile"):
        load_settings("nope", env={})


def test_yaml_1_1_words_stay_text_and_true_false_stay_booleans():
    """PyYAML alone reads OFF/on/yes/no as booleans: `--set spark.log_level=OFF` was refused."""
    s = load_settings("local", ["spark.log_level=OFF", "kafka.topics=[on, no, y]"], env={})
    assert s.spark.log_level == "OFF" and s.kafka.topics == ["on", "no", "y"]
    s = load_settings("local", ["backtest.allow_short=true"], env={"MARKETSIGNALS__SPARK__LOG_LEVEL": "off"})
    assert s.backtest.allow_short is True and s.spark.log_level == "off"


def test_set_without_equals_is_refused():
    with pytest.raises(SettingsError, match=r"section\.key=value"):
        load_settings("local", ["stream.ordering"], env={})


@pytest.mark.parametrize(("text", "ms"), [("30 seconds", 30_000), ("500ms", 500), ("1h", 3_600_000),
                                          ("2 minutes", 120_000), (250, 250)])
def test_durations(text, ms):
    assert duration_ms(text) == ms
