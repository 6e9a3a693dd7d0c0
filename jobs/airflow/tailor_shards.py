"""Airflow DAG: the hourly tailor shard jobs, one task per shard.

Each task runs `tailor run --job jobs/hourly.toml --shard <shard>` for the
DAG run's hour and writes its report under /var/log/tailor (environment:
TAILOR_BIN, TAILOR_JOB_FILE, TAILOR_REPORT_DIR override the binary, the job
file and the report directory; scripts/test-airflow.sh uses them). Shards come from the shard map (shards/production.toml), so a
new dedicated shard gets its task without editing this file. A failed task
is retried; its exit code says why it failed (65: bad input data, fix or
replay with `jobs/replay.toml`; 74: I/O, a retry usually helps).

The tasks run in the Airflow pool "tailor", which bounds how many shard jobs
run at once (each takes the job file's memory limit); create it once with
`airflow pools set tailor <slots> "tailor shard jobs"`.
"""

from __future__ import annotations

import os
import pathlib
import tomllib
from datetime import datetime, timedelta

from airflow import DAG
from airflow.operators.bash import BashOperator

REPO = pathlib.Path(os.environ.get("TAILOR_REPO", pathlib.Path(__file__).resolve().parents[2]))
TAILOR = os.environ.get("TAILOR_BIN", "tailor")
JOB_FILE = pathlib.Path(os.environ.get("TAILOR_JOB_FILE", REPO / "jobs" / "hourly.toml"))
REPORT_DIR = pathlib.Path(os.environ.get("TAILOR_REPORT_DIR", "/var/log/tailor"))


def shards(shard_map: pathlib.Path) -> list[str]:
    """Every shard of the map: org-<id> for dedicated orgs, org-mod-<n> otherwise."""
    with open(shard_map, "rb") as f:
        m = tomllib.load(f)
    return [f"org-{o}" for o in m.get("dedicated", [])] + [f"org-mod-{n}" for n in range(m["modulus"])]


HOUR = "{{ data_interval_start.strftime('%Y-%m-%dT%H') }}"

with DAG(
    dag_id="tailor_shards_hourly",
    schedule="@hourly",
    start_date=datetime(2026, 11, 1),
    catchup=False,
    max_active_runs=2,
    default_args={"retries": 3, "retry_delay": timedelta(minutes=5)},
    tags=["tailor"],
) as dag:
    for shard in shards(REPO / "shards" / "production.toml"):
        BashOperator(
            task_id=f"run_{shard.replace('-', '_')}",
            bash_command=(
                f"{TAILOR} run --job {JOB_FILE} --shard {shard} --from {HOUR} --to {HOUR} "
                f"--report {REPORT_DIR}/{shard}-{HOUR}.json"
            ),
            pool="tailor",
        )
