#!/usr/bin/env bash
# Coverage-guided fuzzing of tailor's decoders of untrusted bytes (nightly
# toolchain + cargo-fuzz; not part of scripts/test.sh):
#
#   cargo install cargo-fuzz
#   scripts/fuzz.sh [seconds per target] [target ...]
#
# Seeds every target's corpus (fuzz/corpus/<target>/) from the bad-input
# corpus, a generated tree's payload files, and the output files and the
# manifest of a run over it; then runs each target for the given time (300 s
# by default) on all cores but one. Findings land in fuzz/artifacts/<target>/
# and print as they happen; the execution counts are in fuzz/logs/<target>.log.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-300}
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(frame_reader payload_decoder tsf_reader manifest)
JOBS=$(( $(nproc) > 1 ? $(nproc) - 1 : 1 ))

cargo +nightly fuzz build -O
BIN=target/release/tailor
[ -x "$BIN" ] || cargo build --release --quiet

SEED=$(mktemp -d)
trap 'rm -rf "$SEED"' EXIT
printf 'modulus = 1\ndedicated = []\n' >"$SEED/map.toml"
"$BIN" generate --output "$SEED/in" --size 2MiB --orgs 20 --hours 1 --partitions 2 \
  --shard-map "$SEED/map.toml" >/dev/null
"$BIN" run --input "$SEED/in" --output "$SEED/out" --shard org-mod-0 --shard-map "$SEED/map.toml" \
  --max-file-bytes 16KiB --block-points 64 2>/dev/null
mkdir -p fuzz/corpus/{frame_reader,payload_decoder,tsf_reader,manifest} fuzz/logs
# Payload files cut into 16 KiB pieces: the fuzzer's inputs stay small.
for f in tests/data/bad/*.tsp $(find "$SEED/in" -name '*.tsp'); do
  split -b 16384 -d "$f" "fuzz/corpus/payload_decoder/$(basename "$f")."
done
for f in fuzz/corpus/payload_decoder/*; do
  # frame_reader: two bytes of range size and a policy byte, then the bytes.
  { printf '\x40\x00\x01'; cat "$f"; } >"fuzz/corpus/frame_reader/$(basename "$f")"
done
find "$SEED/out" -name '*.tsf' -size -64k -exec cp {} fuzz/corpus/tsf_reader/ \;
find "$SEED/out" -name '_manifest.json' -exec cp {} fuzz/corpus/manifest/ \;

for t in "${TARGETS[@]}"; do
  echo "fuzz: $t for $SECS s on $JOBS jobs"
  cargo +nightly fuzz run -O "$t" -- -max_total_time="$SECS" -jobs="$JOBS" -workers="$JOBS" \
    -rss_limit_mb=4096 -max_len=65536 >"fuzz/logs/$t.log" 2>&1 || {
      echo "fuzz: $t found something; see fuzz/logs/$t.log and fuzz/artifacts/$t/"; }
  grep -h "Done [0-9]* runs" fuzz/logs/"$t".log fuzz-*.log 2>/dev/null | tail -n "$JOBS" || true
done
