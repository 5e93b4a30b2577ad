"""The Kafka source of ticks and the Kafka options of the source and the sinks."""

from __future__ import annotations

from pyspark.sql import DataFrame, SparkSession

from marketsignals.settings import KafkaSettings


def client_options(kafka: KafkaSettings) -> dict[str, str]:
    """``kafka.*`` options for Spark's Kafka source and sink: brokers plus every client option
    from settings (security, SASL, TLS). Values can be secrets: never log this dict."""
    return {"kafka.bootstrap.servers": kafka.bootstrap_servers, **_spark_keys(kafka.options)}


def sink_options(kafka: KafkaSettings) -> dict[str, str]:
    """``kafka.*`` options for Spark's Kafka sink: :func:`client_options` plus the producer's own
    (``kafka.producer_options``, which win). Values can be secrets: never log this dict."""
    return {**client_options(kafka), **_spark_keys(kafka.producer_options)}


def source_options(kafka: KafkaSettings) -> dict[str, str]:
    """``kafka.*`` options for Spark's Kafka source: :func:`client_options` plus the consumer's own
    (``kafka.consumer_options``, which win). Values can be secrets: never log this dict."""
    return {**client_options(kafka), **_spark_keys(kafka.consumer_options)}


def _spark_keys(options: dict[str, str]) -> dict[str, str]:
    """Kafka client options as Spark's Kafka source and sink take them: ``kafka.`` + the client's key."""
    return {f"kafka.{k}": str(v) for k, v in options.items()}


def records_after(spark: SparkSession, kafka: KafkaSettings, offsets: dict[str, dict[str, int]],
                  timeout_s: float = 10.0) -> int:
    """How many records the topics' partitions in ``offsets`` hold past those offsets (their end offsets
    now, from the Kafka admin client on the driver's classpath, with the source's brokers and security:
    :func:`client_options`; not kafka-python's, :func:`marketsignals.kafka_client.admin`, which has no MSK
    IAM). Raises if Kafka does not answer within ``timeout_s``."""
    jvm = spark._jvm
    props = jvm.java.util.Properties()
    for key, value in client_options(kafka).items():
        props.setProperty(key.removeprefix("kafka."), value)
    props.setProperty("request.timeout.ms", str(int(timeout_s * 1000)))
    props.setProperty("default.api.timeout.ms", str(int(timeout_s * 1000)))
    admin = jvm.org.apache.kafka.clients.admin.AdminClient.create(props)
    try:
        latest = jvm.org.apache.kafka.clients.admin.OffsetSpec.latest()
        wanted = {(topic, int(part)): jvm.org.apache.kafka.common.TopicPartition(topic, int(part))
                  for topic, parts in offsets.items() for part in parts}
        request = jvm.java.util.HashMap()
        for partition in wanted.values():
            request.put(partition, latest)
        unit = jvm.java.util.concurrent.TimeUnit.MILLISECONDS
        ends = admin.listOffsets(request).all().get(int(timeout_s * 1000), unit)
        return sum(max(0, ends.get(partition).offset() - offsets[topic][str(part)])
                   for (topic, part), partition in wanted.items())
    finally:
        admin.close(jvm.java.time.Duration.ofSeconds(5))


def read_ticks(spark: SparkSession, kafka: KafkaSettings, starting: dict[str, str] | None = None,
               limits: dict[str, str] | None = None) -> DataFrame:
    """The raw tick stream: Kafka key, value, topic, partition, offset, timestamp (``starting``: the Kafka
    source's options for where a new query starts, instead of ``kafka.starting_offsets``; ``limits``: its
    options for when a live batch starts, stream/trigger.py)."""
    reader = spark.readStream.format("kafka").options(**source_options(kafka))
    if kafka.topic_pattern:
        reader = reader.option("subscribePattern", kafka.topic_pattern)
    else:
        reader = reader.option("subscribe", ",".join(kafka.tick_topics))
    reader = reader.options(**(starting or {"startingOffsets": kafka.starting_offsets}))
    reader = reader.option("failOnDataLoss", "true")
    if kafka.max_offsets_per_trigger:
        reader = reader.option("maxOffsetsPerTrigger", str(kafka.max_offsets_per_trigger))
    return reader.options(**(limits or {})).load()
