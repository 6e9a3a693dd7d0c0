#!/usr/bin/env bash
# The output documents are enough to read the output: scripts/tsf_reader.py,
# written from docs/output-format.md and docs/output-layout.md alone, must
# print exactly what `tailor export --format csv` prints, for outputs with
# one and many files, one and many blocks per series, and several windows;
# and its footer lookup must find one series as export shows it.
#
#   scripts/test-reader.sh     # needs target/debug/tailor (cargo build);
#                              # installs zstandard into .tools/reader-venv
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.tools/reader-venv"
BIN="${TAILOR_BIN:-$ROOT/target/debug/tailor}"
log() { echo "test-reader: $*" >&2; }

[ -x "$BIN" ] || { log "no $BIN: run cargo build first"; exit 1; }
if ! "$VENV/bin/python" -c 'import zstandard' 2>/dev/null; then
  log "installing zstandard 0.25.0 into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "zstandard==0.25.0"
fi
PY="$VENV/bin/python"
READER="$ROOT/scripts/tsf_reader.py"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"$BIN" generate --output "$tmp/in" --seed 7 --size 3MiB --orgs 30 --hours 3 >/dev/null 2>&1
shards=$(cd "$tmp/in" && ls -d org-* | head -4)
[ -n "$shards" ] || { log "generated no shard"; exit 1; }

checked=0
# name | run flags (each setting gives other files, blocks and codecs)
# (`;` separates runs into the same output: several windows.)
quiet() { "$@" >"$tmp/log" 2>&1 || { cat "$tmp/log" >&2; exit 1; }; }
while IFS='|' read -r name runs; do
  for shard in $shards; do
    out="$tmp/out-$name"
    IFS=';' read -ra each <<<"$runs"
    for flags in "${each[@]:-}"; do
      # shellcheck disable=SC2086
      quiet "$BIN" run --input "$tmp/in" --output "$out" --shard "$shard" $flags
    done
    quiet "$BIN" export --output "$out" --shard "$shard" --format csv --out "$tmp/export.csv"
    "$PY" "$READER" dump "$out" "$shard" --csv-like-export >"$tmp/reader.csv"
    if ! cmp -s "$tmp/export.csv" "$tmp/reader.csv"; then
      log "$name $shard: the reader and export differ:"
      diff "$tmp/export.csv" "$tmp/reader.csv" | head -20 >&2
      exit 1
    fi
    rows=$(($(wc -l <"$tmp/export.csv") - 1))
    [ "$rows" -gt 0 ] || { log "$name $shard: nothing exported"; exit 1; }
    checked=$((checked + rows))
  done
done <<'EOF'
default|
small-files|--max-file-bytes 24KiB --block-points 50
one-point-blocks|--max-file-bytes 64KiB --block-points 1 --zstd-level 19
windows|--from 2026-11-21T00 --to 2026-11-21T00 --block-points 300;--from 2026-11-21T01 --to 2026-11-21T02 --max-file-bytes 40KiB
parts|--parts 3 --max-file-bytes 24KiB
parts-limited|--parts 7 --memory-limit 70MiB
EOF

# One series found through the footer index of a many-file output: the
# last series of the first shard's export, by binary search.
shard=$(echo "$shards" | head -1)
out="$tmp/out-small-files"
quiet "$BIN" export --output "$out" --shard "$shard" --format csv --out "$tmp/export.csv"
last=$(tail -1 "$tmp/export.csv" | cut -d, -f1,2)
org=${last%,*}
metric=${last#*,}
file=""
for f in $(find "$out/$shard" -name '*.tsf' | sort); do
  if "$PY" "$READER" series "$f" "$org" "$metric" >"$tmp/series.csv" 2>/dev/null; then
    file=$f
    break
  fi
done
[ -n "$file" ] || { log "series $org/$metric not found by the reader"; exit 1; }
grep "^$org,$metric," "$tmp/export.csv" | cmp -s - <(grep -v '^org_id,' "$tmp/series.csv") ||
  { log "series $org/$metric: the reader's lookup and export differ"; exit 1; }

# The same series in a window written in parts: hashed to its part, then
# looked up in that part's file whose range holds it.
out="$tmp/out-parts"
quiet "$BIN" export --output "$out" --shard "$shard" --format csv --out "$tmp/export.csv"
for key in $(tail -n +2 "$tmp/export.csv" | cut -d, -f1,2 | sort -u | awk 'NR % 7 == 1' | head -20); do
  org=${key%,*}
  metric=${key#*,}
  found=0
  for w in "$out/$shard"/*_*; do
    if "$PY" "$READER" find "$w" "$org" "$metric" >"$tmp/series.csv" 2>/dev/null; then
      grep "^$org,$metric," "$tmp/export.csv" | cmp -s - <(grep -v '^org_id,' "$tmp/series.csv") ||
        { log "series $org/$metric: the reader's find in a window of parts and export differ"; exit 1; }
      found=1
    fi
  done
  [ "$found" = 1 ] || { log "series $org/$metric not found in the parts by the reader"; exit 1; }
done
log "ok: $checked exported rows read identically from the documents alone, and series by lookup (in parts too)"
