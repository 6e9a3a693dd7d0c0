#!/usr/bin/env bash
# The Kubernetes and make definitions, tested:
#
# * jobs/k8s/ (the CronJob that plans, its RBAC, the Indexed Job template)
#   and the List `tailor plan --format k8s` writes are validated offline
#   against the Kubernetes 1.31 schemas (kubernetes-validate, PyPI, --strict);
#   the Indexed Job's pods are then played by running `tailor run
#   --plan-file <its ConfigMap's plan.json> --plan-index i` for every index,
#   after which the plan has nothing left (and writes an empty List).
# * jobs/Makefile: `make -j 2` runs the pending windows, a second `make`
#   runs nothing, and a window made stale is run again, alone.
#
#   scripts/test-schedulers.sh install   # kubernetes-validate into .tools/k8s-venv
#   scripts/test-schedulers.sh run       # needs target/debug/tailor
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="$ROOT/.tools/k8s-venv"
K8S=1.31.0
log() { echo "test-schedulers: $*" >&2; }

install() {
  if [ -x "$VENV/bin/kubernetes-validate" ]; then return; fi
  log "installing kubernetes-validate into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "kubernetes-validate==1.37.0"
}

run() {
  local bin="${TAILOR_BIN:-$ROOT/target/debug/tailor}"
  [ -x "$bin" ] || { log "no $bin: run cargo build first"; exit 1; }
  local tmp
  tmp="$(mktemp -d)"
  trap '[ -n "${KEEP:-}" ] || rm -rf "$tmp"' RETURN
  local validate=("$VENV/bin/kubernetes-validate" --strict -k "$K8S")
  "${validate[@]}" "$ROOT/jobs/k8s/cronjob-plan.yaml" "$ROOT/jobs/k8s/shard-job.json" >/dev/null \
    || { "${validate[@]}" "$ROOT/jobs/k8s/cronjob-plan.yaml" "$ROOT/jobs/k8s/shard-job.json"; exit 1; }
  log "jobs/k8s/ validates against Kubernetes $K8S"

  # A tree: org-mod-7, hours 13 to 15; 13 committed.
  local map="$ROOT/shards/production.toml"
  "$bin" generate --output "$tmp/in" --size 1MiB --orgs 300 --hours 3 \
    --start-hour 2026-11-21T13 --shard org-mod-7 >/dev/null
  local io=(--input "$tmp/in" --output "$tmp/out" --shard-map "$map")
  "$bin" run "${io[@]}" --shard org-mod-7 --from 2026-11-21T13 --to 2026-11-21T13 2>/dev/null
  local span=(--shard org-mod-7 --from 2026-11-21T13 --to 2026-11-21T15)
  local rc=0
  "$bin" plan "${io[@]}" "${span[@]}" --format k8s --k8s-template "$ROOT/jobs/k8s/shard-job.json" \
    >"$tmp/list.json" || rc=$?
  [ "$rc" = 10 ] || { log "plan exit $rc, expected 10"; exit 1; }
  "${validate[@]}" "$tmp/list.json" >/dev/null || { "${validate[@]}" "$tmp/list.json"; exit 1; }
  python3 - "$tmp/list.json" "$tmp/plan.json" <<'PY'
import json, sys
doc = json.load(open(sys.argv[1]))
cm, job = doc["items"]
assert cm["kind"] == "ConfigMap" and job["kind"] == "Job", doc
plan = json.loads(cm["data"]["plan.json"])
windows = [w["window"] for w in plan["windows"]]
assert windows == ["2026-11-21T14_2026-11-21T14", "2026-11-21T15_2026-11-21T15"], windows
spec = job["spec"]
assert spec["completionMode"] == "Indexed" and spec["completions"] == 2 and spec["parallelism"] == 2, spec
rules = {(r["action"], tuple(r.get("onExitCodes", {}).get("values", []))) for r in spec["podFailurePolicy"]["rules"]}
assert ("FailIndex", (64, 65)) in rules and ("Count", (70, 74, 75)) in rules, rules
pod = spec["template"]["spec"]
assert {"name": "plan", "configMap": {"name": cm["metadata"]["name"]}} in pod["volumes"], pod["volumes"]
c = pod["containers"][0]
assert {"name": "plan", "mountPath": "/plan", "readOnly": True} in c["volumeMounts"]
assert "$(JOB_COMPLETION_INDEX)" in c["args"] and "--only-if-needed" in c["args"], c["args"]
assert c["resources"]["requests"]["memory"] == c["resources"]["limits"]["memory"]
json.dump(plan, open(sys.argv[2], "w"))
print("test-schedulers: the Indexed Job has one completion per window to run:", windows)
PY
  local i
  for i in 0 1; do
    "$bin" run "${io[@]}" --plan-file "$tmp/plan.json" --plan-index "$i" --only-if-needed 2>/dev/null \
      || { log "index $i failed"; exit 1; }
  done
  "$bin" plan "${io[@]}" "${span[@]}" --format k8s --k8s-template "$ROOT/jobs/k8s/shard-job.json" \
    >"$tmp/empty.json" || { log "plan after the indexes: exit $?, expected 0"; exit 1; }
  "${validate[@]}" "$tmp/empty.json" >/dev/null
  python3 -c "import json,sys; d=json.load(open(sys.argv[1])); assert d['items'] == [], d" "$tmp/empty.json"
  log "every index ran its window; the plan then writes an empty List"

  # make: a second tree, hours 13 to 15, 13 committed.
  "$bin" generate --output "$tmp/min" --size 1MiB --orgs 300 --hours 3 \
    --start-hour 2026-11-21T13 --shard org-mod-7 >/dev/null
  cat >"$tmp/job.toml" <<TOML
input = "min"
output = "mout"
shard_map = "$map"
TOML
  "$bin" run --job "$tmp/job.toml" --shard org-mod-7 --from 2026-11-21T13 --to 2026-11-21T13 2>/dev/null
  local mk=(make -s -f "$ROOT/jobs/Makefile" TAILOR="$bin" JOB="$tmp/job.toml" OUT="$tmp/mout"
            FROM=2026-11-21T13 TO=2026-11-21T15 REPORTS="$tmp/reports")
  "${mk[@]}" -j 2 >"$tmp/make1.log" 2>&1 || { cat "$tmp/make1.log"; exit 1; }
  [ "$(ls "$tmp/reports" | tr '\n' ' ')" = "org-mod-7_2026-11-21T14_2026-11-21T14.json org-mod-7_2026-11-21T15_2026-11-21T15.json " ] \
    || { ls "$tmp/reports"; log "make ran other windows"; exit 1; }
  "${mk[@]}" -j 2 >"$tmp/make2.log" 2>&1 || { cat "$tmp/make2.log"; exit 1; }
  grep -q "tailor: 0 windows run" "$tmp/make2.log" || { cat "$tmp/make2.log"; log "a second make ran something"; exit 1; }
  local d14="$tmp/min/org-mod-7/dt=2026-11-21/hour=14" before
  before=$(sha256sum "$tmp"/mout/org-mod-7/2026-11-21T14_*/_manifest.json)
  cp "$(ls "$d14"/points+0+*.tsp | head -1)" "$d14/points+9+0000000555.tsp"
  rm -rf "$tmp/reports"
  "${mk[@]}" -j 2 >"$tmp/make3.log" 2>&1 || { cat "$tmp/make3.log"; exit 1; }
  [ "$(ls "$tmp/reports")" = "org-mod-7_2026-11-21T14_2026-11-21T14.json" ] \
    || { ls "$tmp/reports"; log "make did not run exactly the stale window"; exit 1; }
  [ "$before" != "$(sha256sum "$tmp"/mout/org-mod-7/2026-11-21T14_*/_manifest.json)" ] \
    || { log "the stale window was not recommitted"; exit 1; }
  log "make: -j 2 ran the 2 pending windows, then nothing, then only the stale one"
}

case "${1:-}" in
  install) install ;;
  run) run ;;
  *) echo "usage: $0 install|run" >&2; exit 64 ;;
esac
