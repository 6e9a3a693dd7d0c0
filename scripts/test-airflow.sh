#!/usr/bin/env bash
# The scheduler definition, tested with a real Airflow: the DAG in
# jobs/airflow/ loads with no import errors and has one task per shard of
# shards/production.toml, and one of its tasks, run by `airflow tasks test`
# for an hour of generated input, commits that shard's output and writes
# its report.
#
#   scripts/test-airflow.sh install   # Airflow 2.10.5 into .tools/airflow-venv (pinned by
#                                     # scripts/airflow-constraints.txt; quick when done)
#   scripts/test-airflow.sh run       # needs target/debug/tailor (cargo build)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.tools/airflow-venv"
log() { echo "test-airflow: $*" >&2; }

install() {
  if [ -x "$VENV/bin/airflow" ] && "$VENV/bin/airflow" version 2>/dev/null | grep -q '^2\.10\.5$'; then
    return
  fi
  log "installing apache-airflow 2.10.5 into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check \
    -c "$ROOT/scripts/airflow-constraints.txt" "apache-airflow==2.10.5"
}

run() {
  local bin="${TAILOR_BIN:-$ROOT/target/debug/tailor}"
  [ -x "$bin" ] || { log "no $bin: run cargo build first"; exit 1; }
  local tmp
  tmp="$(mktemp -d)"
  trap '[ -n "${KEEP:-}" ] || rm -rf "$tmp"' RETURN
  export AIRFLOW_HOME="$tmp/airflow"
  export AIRFLOW__CORE__LOAD_EXAMPLES=False
  export AIRFLOW__CORE__DAGS_FOLDER="$ROOT/jobs/airflow"
  export AIRFLOW__CORE__EXECUTOR=SequentialExecutor
  "$VENV/bin/airflow" db migrate >"$tmp/migrate.log" 2>&1 || { cat "$tmp/migrate.log"; exit 1; }
  # The DAG's tasks share the pool "tailor" (see the DAG's docstring).
  "$VENV/bin/airflow" pools set tailor 2 "tailor shard jobs" >/dev/null

  # 1. The DAG loads and has one task per shard, each running the job file.
  "$VENV/bin/python" - "$ROOT" <<'PY'
import pathlib, sys, tomllib
from airflow.models import DagBag

root = pathlib.Path(sys.argv[1])
bag = DagBag(dag_folder=str(root / "jobs" / "airflow"), include_examples=False)
assert not bag.import_errors, bag.import_errors
dag = bag.get_dag("tailor_shards_hourly")
assert dag is not None, list(bag.dags)
m = tomllib.loads((root / "shards" / "production.toml").read_text())
want = {f"run_org_{o}" for o in m["dedicated"]} | {f"run_org_mod_{n}" for n in range(m["modulus"])}
got = {t.task_id for t in dag.tasks}
assert got == want, (sorted(want - got), sorted(got - want))
for t in dag.tasks:
    assert " run --job " in t.bash_command and " --shard org-" in t.bash_command, t.bash_command
print(f"test-airflow: DAG loads, {len(got)} tasks, one per shard")
PY

  # 2. One task for real, on an hour of generated input.
  # A manual run at 14:00 covers the data interval 13:00-14:00, whose
  # start is the hour the task processes.
  local hour=2026-11-21T13 run_after=2026-11-21T14:00:00+00:00
  "$bin" generate --output "$tmp/in" --size 2MiB --orgs 300 --hours 1 \
    --start-hour "$hour" --shard org-mod-7 >/dev/null
  cat >"$tmp/job.toml" <<EOF
input = "in"
output = "out"
shard_map = "$ROOT/shards/production.toml"
on_corrupt = "fail"
EOF
  TAILOR_BIN="$bin" TAILOR_JOB_FILE="$tmp/job.toml" TAILOR_REPORT_DIR="$tmp/reports" \
    "$VENV/bin/airflow" tasks test tailor_shards_hourly run_org_mod_7 "$run_after" \
    >"$tmp/task.log" 2>&1 || { cat "$tmp/task.log"; exit 1; }
  local report="$tmp/reports/org-mod-7-$hour.json"
  [ -f "$report" ] || { cat "$tmp/task.log"; log "no report at $report"; exit 1; }
  "$VENV/bin/python" - "$report" "$tmp/out" <<'PY'
import json, pathlib, sys
r = json.load(open(sys.argv[1]))
assert r["status"] == "committed", r["status"]
assert r["output"]["points"] > 0, r["output"]
manifests = list(pathlib.Path(sys.argv[2]).rglob("_manifest.json"))
assert len(manifests) == 1, manifests
assert "org-mod-7/2026-11-21T13" in str(manifests[0]), manifests[0]
print(f"test-airflow: task run_org_mod_7 committed {r['output']['points']} points")
PY
}

case "${1:-}" in
  install) install ;;
  run) run ;;
  *) echo "usage: $0 install|run" >&2; exit 64 ;;
esac
