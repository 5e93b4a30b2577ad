# marketsignals — every install is done here (venv, jars, broker); nothing by hand.
SHELL := /bin/bash
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
CLI := $(BIN)/marketsignals
MVN_CENTRAL := mvn -q -B -s jvm/settings.xml
MVN := $(MVN_CENTRAL) -f jvm/pom.xml
LOCALFS_JAR := .jars/local/marketsignals-localfs.jar
PYTEST_ARGS ?=
RUN_ARGS ?=

.PHONY: help setup venv java jars kafka-up kafka-down kafka-status run test test-unit test-integration faults soak bench lint package clean

help:
	@echo "make run      broker + feed + streaming job + live console (Ctrl-C stops all); RUN_ARGS='--fresh ...'"
	@echo "make test     set up and run the whole test suite (starts/stops its own broker)"
	@echo "make bench    the benchmark (bench/README.md): BENCH_ARGS='--ticks 200000 ...'"
	@echo "make faults   the fault-injection suite's short version; make soak: the long one"
	@echo "make java | jars | kafka-up | kafka-down | kafka-status | lint | package | clean"

setup: venv jars

venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	@command -v $(PY) >/dev/null || { echo "error: $(PY) not found: install Python 3.11"; exit 1; }
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,bench]'
	@touch $@

# The JDK that Spark and the broker start (JAVA_HOME first, as they do), checked on every use and not only
# when the jars are fetched: a JDK changed afterwards would otherwise fail at the JVM's start, in Spark's words.
JAVA := $(if $(JAVA_HOME),$(JAVA_HOME)/bin/java,java)
java:
	@command -v $(JAVA) >/dev/null || { echo "error: $(JAVA) not found: apt-get install openjdk-17-jdk-headless\
	$(if $(JAVA_HOME), or fix JAVA_HOME)"; exit 1; }
	@$(JAVA) -XX:TrimNativeHeapInterval=60000 -version >/dev/null 2>&1 || { echo "error: $(JAVA) is older than \
	17.0.11 (the local profile's -XX:TrimNativeHeapInterval, conf/local.yaml): update openjdk-17-jdk-headless"; exit 1; }

# JVM artifacts from Maven Central into .jars/ (git-ignored). Re-runs only when the pom changes.
jars: java .jars/.fetched $(LOCALFS_JAR)
.jars/.fetched: jvm/pom.xml jvm/settings.xml | java
	@command -v mvn >/dev/null || { echo "error: mvn not found: apt-get install maven"; exit 1; }
	$(MVN) -P connector package
	$(MVN) -P broker package
	$(MVN) -P msk-iam package
	$(MVN) -P s3a package
	@touch $@

# the one JVM library compiled here: Hadoop's local file system without a child process per file
$(LOCALFS_JAR): jvm/localfs/pom.xml jvm/settings.xml $(wildcard jvm/localfs/src/main/java/io/marketsignals/hadoop/*.java)
	@command -v mvn >/dev/null || { echo "error: mvn not found: apt-get install maven"; exit 1; }
	$(MVN_CENTRAL) -f jvm/localfs/pom.xml package -DskipTests
	@touch $@

kafka-up: venv jars
	$(CLI) kafka up
kafka-down: venv
	$(CLI) kafka down
kafka-status: venv
	$(CLI) kafka status

run: venv jars
	$(CLI) live $(RUN_ARGS)

# the whole suite but the soak variants (make soak); a -m in PYTEST_ARGS replaces this one
test: venv jars
	$(BIN)/pytest -m "not soak" $(PYTEST_ARGS)

test-unit: venv java
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

test-integration: venv jars
	$(BIN)/pytest tests/integration $(PYTEST_ARGS)

faults: venv jars
	$(BIN)/pytest tests/faults -m "faults and not soak" $(PYTEST_ARGS)

# the long fault run: every fault test with the soak variants and their knobs turned up (tests/faults/soak.py)
soak: venv jars
	$(BIN)/python tests/faults/soak.py $(SOAK_ARGS)

# a benchmark, not a test: prints a table, writes bench/results/<timestamp>.json and .png
BENCH_ARGS ?=
bench: venv jars
	$(BIN)/python -m bench.run $(BENCH_ARGS)

lint: venv
	$(BIN)/ruff check src tests jobs bench
	@if command -v shellcheck >/dev/null; then shellcheck bootstrap/*.sh .ci/run; else echo "shellcheck not installed (apt-get install shellcheck)"; fi

# dist/: wheel, venv-pack environment, jobs, jars, conf, bootstrap, manifest.json (see README, EMR)
package: venv jars
	$(BIN)/python -m marketsignals.emr.package

clean:
	-$(CLI) kafka down 2>/dev/null
	rm -rf .local dist build spark-warehouse .pytest_cache
