#!/usr/bin/env bash
# The demo: generate a small input tree, run the shard job on it, look at the
# output. Local files only; needs nothing but the Rust toolchain.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
T=target/release/tailor
DEMO=${DEMO_DIR:-demo}
rm -rf "$DEMO"
mkdir -p "$DEMO"
echo "== generate: 32 MiB of payload files, 2 hours, 60 orgs"
$T generate --output "$DEMO/input" --size 32MiB --orgs 60 --hours 2 --partitions 4 > "$DEMO/generate.json"
grep -v '"org-' "$DEMO/generate.json"
# The biggest shard.
SHARD=$(basename "$(du -s "$DEMO"/input/* | sort -rn | head -1 | cut -f2)")
echo "== query: the biggest series of $SHARD"
$T query --input "$DEMO/input" --shard "$SHARD" \
  "SELECT org_id, metric_id, count(*) AS payloads, sum(n_points) AS points FROM payloads GROUP BY 1, 2 ORDER BY points DESC LIMIT 5"
echo "== run: shard $SHARD"
$T run --input "$DEMO/input" --output "$DEMO/output" --shard "$SHARD" --memory-limit 256MiB --report "$DEMO/report.json"
echo "== inspect the manifest"
$T inspect "$DEMO"/output/"$SHARD"/*/_manifest.json
echo "== export to Parquet"
$T export --output "$DEMO/output" --shard "$SHARD" --format parquet --out "$DEMO/points.parquet"
echo "== diff the output against itself (exit 0: identical)"
$T diff --old "$DEMO/output" --new "$DEMO/output" --shard "$SHARD"
echo "demo done: input in $DEMO/input, output in $DEMO/output, report in $DEMO/report.json"
