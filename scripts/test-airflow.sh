#!/usr/bin/env bash
# The scheduler definition, tested with a real Airflow 3: the DAG in
# jobs/airflow/ plans with `tailor plan` and runs exactly the windows that
# are pending or stale, one mapped task each, on a generated tree with one
# window done, one pending, one made stale by an object added after its
# commit, and one whose input is corrupt; then `tailor plan` says the
# runnable ones are done. The corrupt window's task fails at once (exit 65,
# no retry) with its report in the task log; the exit-code policy is also
# checked on its own for 64, 65, 70, 74 and 75.
#
#   scripts/test-airflow.sh install   # Airflow 3.3.2 into .tools/airflow3-venv (pinned by
#                                     # scripts/airflow-constraints.txt; quick when done)
#   scripts/test-airflow.sh run       # needs target/debug/tailor (cargo build)
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="$ROOT/.tools/airflow3-venv"
VERSION=3.3.2
log() { echo "test-airflow: $*" >&2; }

install() {
  if [ -x "$VENV/bin/airflow" ] && "$VENV/bin/pip" show apache-airflow 2>/dev/null | grep -q "^Version: $VERSION$"; then
    return
  fi
  log "installing apache-airflow $VERSION into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check \
    -c "$ROOT/scripts/airflow-constraints.txt" "apache-airflow==$VERSION"
}

run() {
  local bin="${TAILOR_BIN:-$ROOT/target/debug/tailor}"
  [ -x "$bin" ] || { log "no $bin: run cargo build first"; exit 1; }
  local tmp
  tmp="$(mktemp -d)"
  trap '[ -n "${KEEP:-}" ] || rm -rf "$tmp"' RETURN
  export AIRFLOW_HOME="$tmp/airflow"
  export AIRFLOW__CORE__LOAD_EXAMPLES=False
  export AIRFLOW__CORE__DAGS_FOLDER="$tmp/dags"
  mkdir -p "$tmp/dags"
  cp "$ROOT/jobs/airflow/tailor_shards.py" "$tmp/dags/"
  "$VENV/bin/airflow" db migrate >"$tmp/migrate.log" 2>&1 || { cat "$tmp/migrate.log"; exit 1; }
  "$VENV/bin/airflow" pools set tailor 2 "tailor shard jobs" >/dev/null

  # The tree: org-mod-7 (production shard map), hours 13 to 16.
  local map="$ROOT/shards/production.toml"
  "$bin" generate --output "$tmp/in" --size 2MiB --orgs 300 --hours 4 \
    --start-hour 2026-11-21T13 --shard org-mod-7 >/dev/null
  cat >"$tmp/job.toml" <<TOML
input = "in"
output = "out"
shard_map = "$map"
on_corrupt = "fail"
store_backoff = "10ms"
TOML
  local h
  # 13: done. 14: pending. 15: stale (an object added after its commit).
  # 16: pending, but a payload file in it is corrupt.
  for h in 13 15; do
    "$bin" run --job "$tmp/job.toml" --shard org-mod-7 --from 2026-11-21T$h --to 2026-11-21T$h 2>/dev/null
  done
  local m13 m15 d15
  m13=$(cat "$tmp"/out/org-mod-7/2026-11-21T13_*/_manifest.json | sha256sum)
  m15=$(cat "$tmp"/out/org-mod-7/2026-11-21T15_*/_manifest.json | sha256sum)
  d15="$tmp/in/org-mod-7/dt=2026-11-21/hour=15"
  cp "$(ls "$d15"/points+0+*.tsp | head -1)" "$d15/points+9+0000000777.tsp"
  local bad
  bad=$(ls "$tmp"/in/org-mod-7/dt=2026-11-21/hour=16/points+1+*.tsp | head -1)
  printf '\x07\x00\x00\x00garbage' >>"$bad"

  # The DAG run at 17:15 plans the 24 hours before it.
  log "airflow dags test (the run fails: one window's input is corrupt)"
  local rc=0
  TAILOR_BIN="$bin" TAILOR_JOB_FILE="$tmp/job.toml" TAILOR_REPORT_DIR="$tmp/reports" \
    "$VENV/bin/airflow" dags test tailor_shards_hourly 2026-11-21T17:15:00+00:00 \
    >"$tmp/dag.log" 2>&1 || rc=$?
  [ "$rc" = 1 ] || { tail -50 "$tmp/dag.log"; log "expected the DAG run to fail (rc $rc)"; exit 1; }

  "$VENV/bin/python" - "$tmp" "$m13" "$m15" <<'PY'
import hashlib, json, pathlib, sys
tmp, m13, m15 = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3]
log = (tmp / "dag.log").read_text()
reports = sorted(p.name for p in (tmp / "reports").glob("*.json"))
want = [f"org-mod-7-2026-11-21T{h}_2026-11-21T{h}.json" for h in ("14", "15", "16")]
assert reports == want, (reports, want)
status = {r: json.loads((tmp / "reports" / r).read_text())["status"] for r in reports}
assert status[want[0]] == "committed" and status[want[1]] == "committed", status
assert status[want[2]] == "failed", status
def sha(h):
    m = next((tmp / "out" / "org-mod-7").glob(f"2026-11-21T{h}_*/_manifest.json"))
    return hashlib.sha256(m.read_bytes()).hexdigest() + "  -"
assert sha("13") == m13, "the done window was not run again"
assert sha("15") != m15, "the stale window was committed again"
assert not list((tmp / "out" / "org-mod-7").glob("2026-11-21T16_*/_manifest.json")), "corrupt: not committed"
# The corrupt window failed once, not retried, with its report in the log.
assert "tailor exited 65 (bad input data): not retrying" in log, log[-3000:]
assert log.count("tailor exited 65") == 1, "no retry of the corrupt window"
assert "--- report" in log and '"status": "failed"' in log, "the report is in the task log"
print(f"test-airflow: the plan ran exactly the pending and stale windows 14, 15 (16 failed with 65, no retry); reports {reports}")
PY
  # Nothing left but the corrupt window: the plan lists only it.
  local prc=0
  "$bin" plan --job "$tmp/job.toml" --shard org-mod-7 --from 2026-11-21T13 --to 2026-11-21T16 \
    --format json >"$tmp/plan.json" || prc=$?
  [ "$prc" = 10 ] || { log "plan exit $prc, expected 10 (the corrupt window)"; exit 1; }
  "$VENV/bin/python" - "$tmp/plan.json" <<'PY'
import json, sys
p = json.load(open(sys.argv[1]))
states = {w["from"]: w["state"] for w in p["windows"]}
assert states == {"2026-11-21T13": "done", "2026-11-21T14": "done", "2026-11-21T15": "done",
                  "2026-11-21T16": "pending"}, states
print("test-airflow: tailor plan afterwards: 13, 14, 15 done; 16 still pending (its input is corrupt)")
PY
  # Once the corrupt object is replaced, a second DAG run runs only 16, and
  # plan says everything is done (exit 0).
  local good
  good=$(ls "$tmp"/in/org-mod-7/dt=2026-11-21/hour=16/points+0+*.tsp | head -1)
  cp "$good" "$bad"
  rm -rf "$tmp/reports"
  TAILOR_BIN="$bin" TAILOR_JOB_FILE="$tmp/job.toml" TAILOR_REPORT_DIR="$tmp/reports" \
    "$VENV/bin/airflow" dags test tailor_shards_hourly 2026-11-21T18:15:00+00:00 \
    >"$tmp/dag2.log" 2>&1 || { tail -50 "$tmp/dag2.log"; log "second DAG run failed"; exit 1; }
  [ "$(ls "$tmp/reports")" = "org-mod-7-2026-11-21T16_2026-11-21T16.json" ] \
    || { ls "$tmp/reports"; log "the second run ran other windows"; exit 1; }
  "$bin" plan --job "$tmp/job.toml" --shard org-mod-7 --from 2026-11-21T13 --to 2026-11-21T16 >/dev/null \
    || { log "plan after the second run: exit $?"; exit 1; }
  log "second DAG run: only 16 ran; plan: everything done (exit 0)"

  # The exit-code policy on its own.
  "$VENV/bin/python" - "$ROOT/jobs/airflow" <<'PY'
import sys
sys.path.insert(0, sys.argv[1])
import tailor_shards as t
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException
for code, want in [(64, AirflowFailException), (65, AirflowFailException), (70, AirflowException),
                   (74, AirflowException), (75, AirflowSkipException)]:
    try:
        t.run_with_exit_policy(["sh", "-c", f"exit {code}"])
    except want as e:
        assert type(e) is want, (code, type(e))
    else:
        raise AssertionError(f"exit {code} raised nothing")
assert t.run_with_exit_policy(["sh", "-c", "echo ok"]) == "ok\n"
print("test-airflow: exit codes: 64, 65 fail at once; 70, 74 retry; 75 skips")
PY
}

case "${1:-}" in
  install) install ;;
  run) run ;;
  *) echo "usage: $0 install|run" >&2; exit 64 ;;
esac
