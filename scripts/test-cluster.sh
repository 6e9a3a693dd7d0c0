#!/usr/bin/env bash
# A shard job on a Ballista cluster of separate processes equals the
# single-machine job byte for byte (docs/distributed.md):
#
#  * a scheduler and two executors (`tailor scheduler`, `tailor executor`)
#    on 127.0.0.1, each executor with its own ports and work directory and
#    one task slot, shuffle reads forced over the network;
#  * input and output on the local S3 server (scripts/test-servers.sh);
#  * K = 1, 2 and 7: every object of the window (manifest and data files)
#    is the same bytes as the single-machine run's at the same --parts;
#  * an executor SIGKILLed while it writes a part: Ballista runs its tasks
#    again on the other, and the output is still the same bytes;
#  * a part that fails for good (every attempt): the job fails, nothing is
#    committed.
#
#   scripts/test-cluster.sh     # needs target/debug/tailor and the servers'
#                               # environment (eval "$(scripts/test-servers.sh start)")
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${TAILOR_BIN:-$ROOT/target/debug/tailor}"
PY="$ROOT/.tools/venv/bin/python"
log() { echo "test-cluster: $*" >&2; }
fail() { log "FAILED: $*"; exit 1; }

[ -x "$BIN" ] || fail "no $BIN: run cargo build first"
[ -n "${AWS_ENDPOINT:-}" ] || fail "no S3 server: start scripts/test-servers.sh first"
[ -x "$PY" ] || fail "no $PY: run scripts/test-servers.sh install"
BUCKET="${TAILOR_TEST_BUCKET:-tailor-test}"

tmp="$(mktemp -d)"
pids=()
cleanup() {
  for p in "${pids[@]:-}"; do [ -n "$p" ] && kill -9 "$p" 2>/dev/null || true; done
  [ -n "${TAILOR_KEEP_TMP:-}" ] && echo "kept $tmp" >&2 || rm -rf "$tmp"
}
trap cleanup EXIT

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
  for _ in $(seq 1 300); do
    "$PY" -c "import socket,sys; s=socket.socket(); sys.exit(s.connect_ex(('127.0.0.1',$1)))" && return 0
    sleep 0.1
  done
  fail "nothing listens on port $1"
}

SCHED_PORT=$(free_port)
start_scheduler() {
  "$BIN" scheduler --bind "127.0.0.1:$SCHED_PORT" --executor-timeout 8 >"$tmp/scheduler.log" 2>&1 &
  pids+=($!)
  wait_port "$SCHED_PORT"
}
# start_executor <n> [env...]: prints the pid.
start_executor() {
  local n=$1
  shift
  local flight grpc
  flight=$(free_port)
  grpc=$(free_port)
  mkdir -p "$tmp/work-$n"
  env "$@" "$BIN" executor --scheduler "127.0.0.1:$SCHED_PORT" --flight-port "$flight" \
    --grpc-port "$grpc" --slots 1 --heartbeat 1 --work-dir "$tmp/work-$n" \
    >"$tmp/executor-$n.log" 2>&1 &
  local pid=$!
  pids+=("$pid")
  wait_port "$flight"
  echo "$pid"
}

run_id=$(date +%s)-$$
IN="s3://$BUCKET/cluster-$run_id/in"
OUT="s3://$BUCKET/cluster-$run_id"
log "generating the input on $IN"
"$BIN" generate --output "$IN" --seed 11 --size 6MiB --orgs 40 --hours 1 --big-file 2MiB \
  >"$tmp/gen.log" 2>&1 || { cat "$tmp/gen.log" >&2; fail "generate"; }
SHARD=$("$PY" - "$BUCKET" "cluster-$run_id/in/" <<'EOF'
import boto3, os, sys
s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT"])
keys = [o["Key"] for p in s3.get_paginator("list_objects_v2").paginate(Bucket=sys.argv[1], Prefix=sys.argv[2]) for o in p.get("Contents", [])]
# The shard with the most bytes.
sizes = {}
for p in s3.get_paginator("list_objects_v2").paginate(Bucket=sys.argv[1], Prefix=sys.argv[2]):
    for o in p.get("Contents", []):
        shard = o["Key"][len(sys.argv[2]):].split("/")[0]
        sizes[shard] = sizes.get(shard, 0) + o["Size"]
print(max(sizes, key=sizes.get))
EOF
)
log "shard $SHARD"

# same_bytes <prefix a> <prefix b>: every object below them (relative key
# and bytes) the same.
same_bytes() {
  "$PY" - "$BUCKET" "$1" "$2" <<'EOF'
import boto3, hashlib, os, sys
s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT"])
def objects(prefix):
    out = {}
    for p in s3.get_paginator("list_objects_v2").paginate(Bucket=sys.argv[1], Prefix=prefix):
        for o in p.get("Contents", []):
            rel = o["Key"][len(prefix):]
            if rel.startswith("_history/") or "/data/_parts/" in rel:
                continue
            body = s3.get_object(Bucket=sys.argv[1], Key=o["Key"])["Body"].read()
            out[rel] = hashlib.sha256(body).hexdigest()
    return out
a, b = objects(sys.argv[2]), objects(sys.argv[3])
if not a or a != b:
    print(f"differ: {len(a)} vs {len(b)} objects", file=sys.stderr)
    for k in sorted(set(a) | set(b)):
        if a.get(k) != b.get(k):
            print(f"  {k}: {a.get(k)} vs {b.get(k)}", file=sys.stderr)
    sys.exit(1)
print(len(a))
EOF
}

# Small ranges: many scan tasks, frames crossing range ends.
COMMON=(--input "$IN" --shard "$SHARD" --range-bytes 512KiB --max-file-bytes 256KiB)
cluster_run() { # <out> <K> [more flags]: exit code in $rc
  local out=$1 k=$2
  shift 2
  set +e
  "$BIN" run "${COMMON[@]}" --output "$out" --parts "$k" --engine ballista \
    --scheduler "127.0.0.1:$SCHED_PORT" --shuffle-over-network --target-partitions 6 "$@" \
    >"$tmp/cluster-run.log" 2>&1
  rc=$?
  set -e
}

start_scheduler
E1=$(start_executor 1)
E2=$(start_executor 2 TAILOR_UNUSED=1)
sleep 2

for k in 1 2 7; do
  "$BIN" run "${COMMON[@]}" --output "$OUT/local-$k" --parts "$k" >"$tmp/local.log" 2>&1 ||
    { cat "$tmp/local.log" >&2; fail "local run K=$k"; }
  cluster_run "$OUT/cluster-$k" "$k"
  [ "$rc" = 0 ] || { cat "$tmp/cluster-run.log" "$tmp"/executor-*.log >&2; fail "cluster run K=$k exit $rc"; }
  n=$(same_bytes "cluster-$run_id/local-$k/" "cluster-$run_id/cluster-$k/") ||
    fail "K=$k: the cluster's output differs from the single machine's"
  log "K=$k: $n objects, byte for byte the single-machine run's"
done

# An executor killed while it writes a part: tasks run again elsewhere.
kill -9 "$E2" 2>/dev/null || true
E2=$(start_executor 3 TAILOR_FAIL_POINTS=cluster.write=stall)
sleep 2
( cluster_run "$OUT/killed-7" 7; cp "$tmp/cluster-run.log" "$tmp/killed-run.log"; echo "$rc" >"$tmp/killed.rc" ) &
runner=$!
for _ in $(seq 1 600); do
  grep -q "fail point cluster.write reached" "$tmp/executor-3.log" && break
  kill -0 "$runner" 2>/dev/null || break
  sleep 0.1
done
grep -q "fail point cluster.write reached" "$tmp/executor-3.log" ||
  fail "executor 3 never took a part to write"
kill -9 "$E2"
log "executor 3 killed while writing a part"
wait "$runner" || true
rc=$(cat "$tmp/killed.rc")
[ "$rc" = 0 ] || { cat "$tmp/killed-run.log" >&2; fail "the run whose executor was killed: exit $rc"; }
n=$(same_bytes "cluster-$run_id/local-7/" "cluster-$run_id/killed-7/") ||
  fail "after an executor was killed, the output differs"
log "executor killed mid-part: $n objects, the same bytes"

# A part that fails for good (on every executor, every attempt): no commit.
kill -9 "$E1"
start_executor 4 TAILOR_FAIL_POINTS=cluster.write=error >/dev/null
sleep 6
cluster_run "$OUT/failing-2" 2
[ "$rc" = 74 ] || { cat "$tmp/cluster-run.log" >&2; fail "a part failing with I/O errors on every attempt: exit $rc, not 74"; }
"$PY" - "$BUCKET" "cluster-$run_id/failing-2/" <<'EOF' || fail "a failed cluster run left a manifest"
import boto3, os, sys
s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT"])
r = s3.list_objects_v2(Bucket=sys.argv[1], Prefix=sys.argv[2])
sys.exit(1 if any(o["Key"].endswith("_manifest.json") for o in r.get("Contents", [])) else 0)
EOF
log "a part failing for good: exit $rc, nothing committed"

# A corrupt frame: the single machine's error and exit code (65).
kill -9 "$(pgrep -f "work-dir $tmp/work-4" | head -1)" 2>/dev/null || true
start_executor 5 >/dev/null
start_executor 6 >/dev/null
sleep 2
"$PY" - "$BUCKET" "cluster-$run_id/in/$SHARD/" "cluster-$run_id/bad/$SHARD/" <<'EOF'
import boto3, os, sys
s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT"])
objs = [o for p in s3.get_paginator("list_objects_v2").paginate(Bucket=sys.argv[1], Prefix=sys.argv[2]) for o in p.get("Contents", [])]
big = sorted((o for o in objs if o["Key"].endswith(".tsp")), key=lambda o: o["Size"])[-2]
for o in objs:
    body = bytearray(s3.get_object(Bucket=sys.argv[1], Key=o["Key"])["Body"].read())
    if o is big:
        # 256 bytes in the middle of the object: a frame whose body does
        # not decode.
        mid = len(body) // 2
        body[mid:mid + 256] = b"\xff" * 256
    s3.put_object(Bucket=sys.argv[1], Key=sys.argv[3] + o["Key"][len(sys.argv[2]):], Body=bytes(body))
EOF
set +e
"$BIN" run --input "s3://$BUCKET/cluster-$run_id/bad" --shard "$SHARD" --output "$OUT/bad-local" >"$tmp/bad-local.log" 2>&1
lrc=$?
set -e
COMMON=(--input "s3://$BUCKET/cluster-$run_id/bad" --shard "$SHARD")
cluster_run "$OUT/bad-cluster" 2
[ "$lrc" = 65 ] || { cat "$tmp/bad-local.log" >&2; fail "the corrupt input: local exit $lrc, not 65"; }
[ "$rc" = 65 ] || { cat "$tmp/cluster-run.log" >&2; fail "the corrupt input on the cluster: exit $rc, not 65"; }
grep "tailor: error:" "$tmp/bad-local.log" >"$tmp/bad-local.err"
grep "tailor: error:" "$tmp/cluster-run.log" >"$tmp/bad-cluster.err"
cmp -s "$tmp/bad-local.err" "$tmp/bad-cluster.err" ||
  { cat "$tmp/bad-local.err" "$tmp/bad-cluster.err" >&2; fail "the corrupt input: other errors"; }
log "a corrupt frame: exit 65 and the single machine's error: $(cut -c1-120 "$tmp/bad-cluster.err")"
log "ok"
