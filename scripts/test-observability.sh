#!/usr/bin/env bash
# Observability, tested against the real things (Debian's packages, started
# on 127.0.0.1 only):
#
# * the alert rules: `promtool check rules` and `promtool test rules`;
# * metrics: real runs (one that commits, one that fails on corrupt input)
#   and a plan push to a real Pushgateway and write metrics files
#   (`promtool check metrics`); a real Prometheus scrapes the Pushgateway,
#   and the values are read back through its HTTP query API;
# * `tailor report`: the HTML page of a generated history is rendered by
#   headless Chromium; the DOM must hold every chart's data points and every
#   table's rows; a screenshot is saved (target/report.png; `screenshot`
#   copies a fresh one to docs/report.png, which the README shows).
#
#   scripts/test-observability.sh install      # apt-get: prometheus, prometheus-pushgateway, chromium
#   scripts/test-observability.sh run          # needs target/debug/tailor
#   scripts/test-observability.sh screenshot   # refresh docs/report.png
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
HOST=127.0.0.1
# Fixed ports below Linux's ephemeral range (32768-60999): a port in it can
# be the local end of any outgoing connection when the server starts (a
# run failed so: Prometheus's bind to 41910, address already in use).
PROM_PORT="${TAILOR_PROMETHEUS_PORT:-29110}"
PUSH_PORT="${TAILOR_PUSHGATEWAY_PORT:-29111}"
log() { echo "test-observability: $*" >&2; }

install() {
  local missing=()
  command -v prometheus >/dev/null || missing+=(prometheus)
  command -v prometheus-pushgateway >/dev/null || missing+=(prometheus-pushgateway)
  command -v chromium >/dev/null || missing+=(chromium)
  [ ${#missing[@]} -eq 0 ] && return
  log "installing ${missing[*]} (apt-get)"
  local sudo=()
  [ "$(id -u)" = 0 ] || sudo=(sudo)
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

wait_http() { # url
  local i
  for i in $(seq 1 300); do
    curl -sf -o /dev/null --max-time 2 "$1" && return 0
    sleep 0.2
  done
  log "$1 did not answer"; return 1
}

# The value of a PromQL query (the first sample), polled until present.
query() { # promql
  local i out
  for i in $(seq 1 100); do
    out=$(curl -sf --get --data-urlencode "query=$1" "http://$HOST:$PROM_PORT/api/v1/query" \
      | python3 -c 'import json,sys; r=json.load(sys.stdin)["data"]["result"]; print(r[0]["value"][1] if r else "")')
    [ -n "$out" ] && { echo "$out"; return 0; }
    sleep 0.3
  done
  log "no value for $1"; return 1
}

run() {
  local bin="${TAILOR_BIN:-$ROOT/target/debug/tailor}"
  [ -x "$bin" ] || { log "no $bin: run cargo build first"; exit 1; }
  promtool check rules "$ROOT/jobs/prometheus/tailor-alerts.yml" >/dev/null
  (cd "$ROOT/jobs/prometheus" && promtool test rules tailor-alerts-test.yml >/dev/null)
  log "alert rules: checked and unit-tested (promtool)"

  # Global, not local: a failing step exits the script (set -e), and the
  # servers must be stopped then too, not only on return.
  tmp="$(mktemp -d)"
  pids=()
  cleanup() { kill "${pids[@]}" 2>/dev/null || true; [ -n "${KEEP:-}" ] || rm -rf "$tmp"; }
  trap cleanup RETURN EXIT
  prometheus-pushgateway --web.listen-address="$HOST:$PUSH_PORT" >"$tmp/pushgateway.log" 2>&1 &
  pids+=($!)
  cat >"$tmp/prometheus.yml" <<YML
global: {scrape_interval: 1s, evaluation_interval: 1s}
scrape_configs:
  - job_name: pushgateway
    honor_labels: true
    static_configs: [{targets: ['$HOST:$PUSH_PORT']}]
YML
  prometheus --config.file="$tmp/prometheus.yml" --web.listen-address="$HOST:$PROM_PORT" \
    --storage.tsdb.path="$tmp/tsdb" >"$tmp/prometheus.log" 2>&1 &
  pids+=($!)
  wait_http "http://$HOST:$PUSH_PORT/-/ready" || { tail -5 "$tmp/pushgateway.log"; exit 1; }
  wait_http "http://$HOST:$PROM_PORT/-/ready" || { tail -5 "$tmp/prometheus.log"; exit 1; }

  # Real runs: org-mod-7, hour 13 commits, hour 14's input is corrupt.
  "$bin" generate --output "$tmp/in" --size 1MiB --orgs 300 --hours 2 \
    --start-hour 2026-11-21T13 --shard org-mod-7 >/dev/null
  local bad
  bad=$(ls "$tmp"/in/org-mod-7/dt=2026-11-21/hour=14/points+1+*.tsp | head -1)
  printf '\x07\x00\x00\x00garbage' >>"$bad"
  local gw="http://$HOST:$PUSH_PORT" rc=0
  "$bin" run --input "$tmp/in" --output "$tmp/out" --shard org-mod-7 --from 2026-11-21T13 \
    --to 2026-11-21T13 --pushgateway "$gw" --metrics-file "$tmp/textfile/run13.prom" \
    --report "$tmp/r13.json" 2>/dev/null
  "$bin" run --input "$tmp/in" --output "$tmp/out" --shard org-mod-7 --from 2026-11-21T14 \
    --to 2026-11-21T14 --pushgateway "$gw" --metrics-file "$tmp/textfile/run14.prom" 2>/dev/null || rc=$?
  [ "$rc" = 65 ] || { log "the corrupt window exited $rc, expected 65"; exit 1; }
  rc=0
  "$bin" plan --input "$tmp/in" --output "$tmp/out" --shard org-mod-7 --from 2026-11-21T13 \
    --to 2026-11-21T15 --pushgateway "$gw" --metrics-file "$tmp/textfile/plan.prom" >/dev/null || rc=$?
  [ "$rc" = 10 ] || { log "plan exited $rc"; exit 1; }
  local f
  for f in "$tmp"/textfile/*.prom; do
    promtool check metrics <"$f" || { log "$f does not pass promtool check metrics"; exit 1; }
  done

  local w13='shard="org-mod-7",window="2026-11-21T13_2026-11-21T13"'
  local w14='shard="org-mod-7",window="2026-11-21T14_2026-11-21T14"'
  local points
  points=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["output"]["points"])' "$tmp/r13.json")
  [ "$(query "tailor_run_outcome{$w13,outcome=\"success\"}")" = 1 ]
  [ "$(query "tailor_run_outcome{$w13,outcome=\"data\"}")" = 0 ]
  [ "$(query "tailor_output_points{$w13}")" = "$points" ]
  [ "$(query "tailor_run_outcome{$w14,outcome=\"data\"}")" = 1 ]
  [ "$(query "tailor_run_outcome{$w14,outcome=\"success\"}")" = 0 ]
  [ "$(query "count(tailor_run_phase_wall_seconds{$w13})")" = 6 ]
  python3 -c "import sys; assert float(sys.argv[1]) > 1.7e9" "$(query 'tailor_shard_last_success_timestamp_seconds{shard="org-mod-7"}')"
  [ "$(query 'tailor_plan_windows{shard="org-mod-7",state="pending"}')" = 1 ]
  [ "$(query 'tailor_plan_windows{shard="org-mod-7",state="done"}')" = 1 ]
  [ "$(query 'tailor_plan_windows{shard="org-mod-7",state="empty"}')" = 1 ]
  python3 -c "import sys; assert float(sys.argv[1]) > 3600" "$(query 'tailor_plan_oldest_pending_age_seconds{shard="org-mod-7"}')"
  log "metrics of real runs and a plan, pushed and read back through Prometheus' query API ($points points)"

  # The report page: a history of 3 shards x 3 hours, 3 runs each, one
  # failed, rendered by Chromium.
  printf 'modulus = 4\ndedicated = []\n' >"$tmp/map4.toml"
  "$bin" generate --output "$tmp/rin" --size 3MiB --orgs 40 --hours 3 --shard-map "$tmp/map4.toml" >/dev/null
  local i s h
  for i in 1 2 3; do
    for s in org-mod-0 org-mod-1 org-mod-2; do
      for h in 00 01 02; do
        "$bin" run --input "$tmp/rin" --output "$tmp/rout" --shard "$s" --shard-map "$tmp/map4.toml" \
          --from 2026-11-21T$h --to 2026-11-21T$h --max-file-bytes $((30000 + i * 1000)) 2>/dev/null
      done
    done
  done
  printf '\x07\x00\x00\x00garbage' >>"$(ls "$tmp"/rin/org-mod-2/dt=2026-11-21/hour=02/*.tsp | head -1)"
  "$bin" run --input "$tmp/rin" --output "$tmp/rout" --shard org-mod-2 --shard-map "$tmp/map4.toml" \
    --from 2026-11-21T02 --to 2026-11-21T02 --max-file-bytes 40000 2>/dev/null && exit 1
  "$bin" report --output "$tmp/rout" --input "$tmp/rin" --shard-map "$tmp/map4.toml" \
    --shard org-mod-0 --shard org-mod-1 --shard org-mod-2 --html "$tmp/report.html" 2>/dev/null
  "$bin" report --output "$tmp/rout" --format json >"$tmp/report.json"
  local chrome=(chromium --headless --no-sandbox --disable-gpu --disable-background-networking
                --disable-component-update --disable-sync --no-first-run --user-data-dir="$tmp/chrome")
  timeout 120 "${chrome[@]}" --dump-dom "file://$tmp/report.html" >"$tmp/dom.html" 2>/dev/null
  timeout 120 "${chrome[@]}" --window-size=1100,2200 --screenshot="$ROOT/target/report.png" \
    "file://$tmp/report.html" >/dev/null 2>&1
  [ -s "$ROOT/target/report.png" ] || { log "no screenshot"; exit 1; }
  python3 - "$tmp/dom.html" "$tmp/report.json" <<'PY'
import html.parser, json, sys

class Dom(html.parser.HTMLParser):
    """Figures with their circles and filled rects, tables with their rows."""
    def __init__(self):
        super().__init__()
        self.stack, self.figures, self.tables = [], {}, {}
    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "figure":
            self.stack.append(("figure", a["id"]))
            self.figures[a["id"]] = {"want": int(a["data-points"]), "circle": 0, "rect": set(), "rects": 0}
        elif tag == "table":
            self.stack.append(("table", a.get("id")))
            self.tables[a.get("id")] = {"want": a.get("data-rows"), "tr": 0, "td": []}
        elif tag in ("circle", "rect", "tr", "td") and self.stack:
            kind, name = self.stack[-1]
            if kind == "figure" and tag == "circle":
                self.figures[name]["circle"] += 1
            elif kind == "figure" and tag == "rect" and a.get("fill", "").upper() not in ("#FFFFFF", "NONE", ""):
                self.figures[name]["rects"] += 1
            elif kind == "table" and tag == "tr":
                self.tables[name]["tr"] += 1
                self.tables[name]["td"].append(0)
            elif kind == "table" and tag == "td":
                self.tables[name]["td"][-1] += 1
    def handle_endtag(self, tag):
        if tag in ("figure", "table") and self.stack:
            self.stack.pop()

d = Dom()
d.feed(open(sys.argv[1]).read())
report = json.load(open(sys.argv[2]))
committed = sum(1 for r in report["runs"] if r["status"] == "committed")
assert len(report["runs"]) == 28 and committed == 27, (len(report["runs"]), committed)
for name in ("chart-wall", "chart-rate", "chart-rss"):
    f = d.figures[name]
    assert f["want"] == committed and f["circle"] == committed, (name, f)
gantts = [n for n in d.figures if n.startswith("gantt-")]
assert len(gantts) == 6, gantts
for n in gantts:
    f = d.figures[n]
    assert f["want"] >= 1 and f["rects"] == f["want"], (n, f)
f = d.figures["chart-shards"]
assert f["want"] == 3 and f["rects"] == 3, f
grid = d.tables["grid"]
assert grid["want"] == "3" and grid["tr"] == 4 and grid["td"][1:] == [4, 4, 4], grid
for t in ("shards", "drops", "slow"):
    tb = d.tables[t]
    assert tb["tr"] == int(tb["want"]) + 1, (t, tb)
assert d.tables["shards"]["tr"] == 4 and d.tables["drops"]["tr"] == 10, d.tables
print(f"test-observability: the report in Chromium: 3 line charts of {committed} points, "
      f"{len(gantts)} timelines, the shard bars, a 3x3 grid, every table's rows")
PY
}

case "${1:-}" in
  install) install ;;
  run) run ;;
  screenshot) run && cp "$ROOT/target/report.png" "$ROOT/docs/report.png" && log "docs/report.png updated" ;;
  *) echo "usage: $0 install|run|screenshot" >&2; exit 64 ;;
esac
