#!/usr/bin/env bash
# Every test: formatting, clippy, the test suite against local S3 / Azure /
# GCS servers that this script installs (PyPI, npm) and starts on 127.0.0.1,
# and the Airflow DAG under a real Airflow (PyPI).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --check
cargo clippy --all-targets --quiet -- -D warnings
if [ -x scripts/test-servers.sh ] && [ "${TAILOR_NO_SERVERS:-}" != 1 ]; then
  bash scripts/test-servers.sh install
  eval "$(bash scripts/test-servers.sh start)"
  trap 'bash scripts/test-servers.sh stop >/dev/null 2>&1 || true' EXIT
  # The servers were started: a store test that cannot reach one fails
  # instead of skipping.
  export TAILOR_REQUIRE_SERVERS=1
fi
cargo test --all-targets --no-fail-fast
cargo test --doc
# The output documents are enough to read the output: a reader written from
# them alone (scripts/tsf_reader.py) reads what export reads (installs the
# zstandard package from PyPI on first use).
if [ "${TAILOR_NO_READER:-}" != 1 ]; then
  bash scripts/test-reader.sh
fi
# A shard job on a Ballista cluster of separate processes (a scheduler and
# two executors on 127.0.0.1, input and output on the S3 server) gives the
# single-machine bytes for K = 1, 2 and 7, also with an executor killed;
# a part failing for good commits nothing (docs/distributed.md).
if [ "${TAILOR_NO_SERVERS:-}" != 1 ]; then
  bash scripts/test-cluster.sh
fi
# The schedulers (use the target/debug/tailor the integration tests built):
# the Airflow 3 DAG run by a real Airflow on a tree with done, pending,
# stale and corrupt windows; the Kubernetes manifests validated against
# the Kubernetes schemas, with the Indexed Job's pods played; jobs/Makefile.
if [ "${TAILOR_NO_AIRFLOW:-}" != 1 ]; then
  bash scripts/test-airflow.sh install
  bash scripts/test-airflow.sh run
fi
bash scripts/test-schedulers.sh install
bash scripts/test-schedulers.sh run
# Metrics pushed to a real Pushgateway and read back from a real
# Prometheus, the alert rules (promtool), and `tailor report` rendered by
# headless Chromium (Debian's packages, installed with apt-get if missing).
bash scripts/test-observability.sh install
bash scripts/test-observability.sh run
