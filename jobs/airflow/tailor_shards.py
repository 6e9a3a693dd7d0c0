"""Airflow 3 DAG: the hourly tailor shard jobs, driven by `tailor plan`.

Every hour (at :15, after the plan's settle time of 10 minutes), the task
`plan` runs `tailor plan --format json` over the last PLAN_HOURS hours of
every shard of the job file's shard map, and the task `run_window` is
mapped over the windows the plan says must run: `pending` (input, no
commit) and `stale` (committed, then the input changed). Windows that are
done, settling, empty or orphaned are not run. Each mapped task runs

    tailor run --job <job file> --shard S --from H --to H --only-if-needed --report ...

`--only-if-needed` makes a retry (or a second run) of a window that has
committed in the meantime a no-op, and commits are conditional, so two runs
of one window never both commit; the DAG also runs one DAG run at a time
(`max_active_runs=1`), and the plan lists each window once.

Exit codes decide what Airflow does (see `run_with_exit_policy`): 0 success;
74 (I/O) and 70 (internal) are retried (`retries`, `retry_delay`); 64 (usage)
and 65 (bad input) fail the task at once, no retry: the report, printed to
the task's log, says what to fix (or replay with `jobs/replay.toml`); 75
(another run committed the window first with other input) skips the task:
the next plan sees whether the window is stale.

The mapped tasks run in the Airflow pool "tailor", which bounds how many
shard jobs run at once (each takes the job file's memory limit); create it
with `airflow pools set tailor <slots> "tailor shard jobs"`.

Environment: TAILOR_BIN (the binary), TAILOR_JOB_FILE (default
jobs/hourly.toml), TAILOR_REPORT_DIR (default /var/log/tailor), PLAN_HOURS
(default 24).
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
from datetime import datetime, timedelta

from airflow.sdk import dag, task
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException

REPO = pathlib.Path(os.environ.get("TAILOR_REPO", pathlib.Path(__file__).resolve().parents[2]))
TAILOR = os.environ.get("TAILOR_BIN", "tailor")
JOB_FILE = os.environ.get("TAILOR_JOB_FILE", str(REPO / "jobs" / "hourly.toml"))
REPORT_DIR = pathlib.Path(os.environ.get("TAILOR_REPORT_DIR", "/var/log/tailor"))
PLAN_HOURS = int(os.environ.get("PLAN_HOURS", "24"))

# tailor's exit codes (README, "Exit codes").
FATAL = {64: "bad usage or configuration", 65: "bad input data"}
RETRYABLE = {70: "internal error", 74: "I/O or object-store failure"}
LOST_RACE = 75
PLAN_WORK = 10


def run_with_exit_policy(cmd: list[str], report: pathlib.Path | None = None) -> str:
    """Runs a tailor command; its output and report go to the task log.

    Raises AirflowFailException (no retry) on 64 and 65, AirflowSkipException
    on 75, AirflowException (retried) on anything else but 0.
    """
    p = subprocess.run(cmd, capture_output=True, text=True)
    print(p.stdout, end="")
    print(p.stderr, end="")
    if report is not None and report.exists():
        print(f"--- report {report}")
        print(report.read_text())
    code = p.returncode
    if code == 0:
        return p.stdout
    if code in FATAL:
        raise AirflowFailException(f"tailor exited {code} ({FATAL[code]}): not retrying; see the report above")
    if code == LOST_RACE:
        raise AirflowSkipException("another run committed this window first; the next plan shows whether it is stale")
    raise AirflowException(f"tailor exited {code} ({RETRYABLE.get(code, 'unexpected')}): retrying")


@dag(
    dag_id="tailor_shards_hourly",
    schedule="15 * * * *",
    start_date=datetime(2026, 11, 1),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 3, "retry_delay": timedelta(minutes=5)},
    tags=["tailor"],
)
def tailor_shards_hourly():
    @task(retries=3)
    def plan(data_interval_end=None) -> list[dict]:
        """The windows of the last PLAN_HOURS hours that must run."""
        end = data_interval_end or datetime.now()
        first = (end - timedelta(hours=PLAN_HOURS)).strftime("%Y-%m-%dT%H")
        last = (end - timedelta(hours=1)).strftime("%Y-%m-%dT%H")
        cmd = [TAILOR, "plan", "--job", JOB_FILE, "--from", first, "--to", last, "--format", "json"]
        p = subprocess.run(cmd, capture_output=True, text=True)
        print(p.stderr, end="")
        if p.returncode not in (0, PLAN_WORK):
            if p.returncode in FATAL:
                raise AirflowFailException(f"tailor plan exited {p.returncode}: {p.stderr.strip()}")
            raise AirflowException(f"tailor plan exited {p.returncode}")
        doc = json.loads(p.stdout)
        print("plan:", json.dumps(doc["summary"]))
        windows = [w for w in doc["windows"] + doc["other_windows"] if w["state"] in ("pending", "stale")]
        for w in windows:
            print(f"to run: {w['shard']} {w['window']} ({w['state']}: {w['reason']})")
        return [{"shard": w["shard"], "first": w["from"], "last": w["to"]} for w in windows]

    @task(pool="tailor", map_index_template="{{ window }}")
    def run_window(shard: str, first: str, last: str) -> str:
        """One window: tailor run, only if it still needs it."""
        from airflow.sdk import get_current_context

        get_current_context()["window"] = f"{shard} {first}_{last}"  # the task's name in the UI
        REPORT_DIR.mkdir(parents=True, exist_ok=True)
        report = REPORT_DIR / f"{shard}-{first}_{last}.json"
        cmd = [
            TAILOR, "run", "--job", JOB_FILE, "--shard", shard, "--from", first, "--to", last,
            "--only-if-needed", "--report", str(report),
        ]
        return run_with_exit_policy(cmd, report)

    run_window.expand_kwargs(plan())


tailor_shards_hourly()
