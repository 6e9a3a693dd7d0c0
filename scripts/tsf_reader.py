#!/usr/bin/env python3
"""Clean-room reader for tailor's TSF output files and output tree.

Written from docs/output-format.md and docs/output-layout.md alone (no look
at src/, tests/ or benches/), to check that those documents are complete.
Python 3.11, stdlib only plus the `zstandard` package for zstd sections.

  tsf_reader.py dump <output root> <shard> [--csv-like-export]
      Read every committed window of <shard>, verify everything the docs
      define (manifest size/CRC32C, magic, version, flags, header/trailer/
      footer/block CRCs, every footer constraint) and print one line per
      point. With --csv-like-export the output (header line included) is
      meant to be byte-identical to `tailor export --format csv`; without it,
      a plain `org metric ts value_bits value` line per point is printed.
  tsf_reader.py series <data file> <org_id> <metric_id>
      Binary-search the footer index and decode only that series' blocks
      (seek/read, never the whole file); prints CSV rows like export.
  tsf_reader.py find <window directory> <org_id> <metric_id>
      The same in a committed window: the series' part (windows written in
      parts), then the file of that part whose series range holds it.

Every error listed in output-format.md section 8.2 is raised as a TsfError
subclass with a message.
"""
import bisect
import heapq
import io
import json
import math
import os
import re
import struct
import sys

import zstandard

MAGIC = b"\x89TSF\r\n\x1a\n"
HEADER_LEN, TRAILER_LEN = 16, 52
MAX_BLOCK_POINTS, MAX_METADATA = 65536, 65536
U64, I64_MAX = 1 << 64, (1 << 63) - 1
CSV_HEADER = "org_id,metric_id,ts,value,kind,interval_s,metadata,value_bits"


# ---------------------------------------------------------------- errors
class TsfError(Exception):
    """Base class of every error this reader raises."""


class BadMagic(TsfError): """Header or trailer magic is not TSF's."""
class UnsupportedVersion(TsfError): """Version other than 1: nothing else is read."""
class UnknownCodec(TsfError): """A block uses a reserved ts_enc/val_enc."""
class Corrupt(TsfError): """Any other violated constraint of the format."""
class ManifestError(TsfError): """The output tree or a manifest is inconsistent."""


class ChecksumMismatch(TsfError):
    def __init__(self, what, offset, expected, actual):
        super().__init__(f"checksum mismatch: {what} at offset {offset}: "
                         f"expected {expected:#010x}, actual {actual:#010x}")


class Truncated(TsfError):
    def __init__(self, offset, needed, available):
        super().__init__(f"truncated: at offset {offset} needed {needed} "
                         f"bytes, {available} available")


# ---------------------------------------------------------------- CRC32C
def _crc_table():
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC_TABLE = _crc_table()


def crc32c(data, crc=0):
    """CRC-32C (Castagnoli); `crc` continues a previous result."""
    crc ^= 0xFFFFFFFF
    table = _CRC_TABLE
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


assert crc32c(b"123456789") == 0xE3069283


# ---------------------------------------------------------------- primitives
def wrap64(x):
    """Reduce to a signed i64 (two's complement wrapping)."""
    x &= U64 - 1
    return x - U64 if x >> 63 else x


def unzz(u):
    return (u >> 1) ^ -(u & 1)


class Cursor:
    """Sequential reader over a bytes object; `base` is its file offset."""

    def __init__(self, data, base=0):
        self.data, self.pos, self.base = data, 0, base

    def remaining(self):
        return len(self.data) - self.pos

    def take(self, n):
        if n > self.remaining():
            raise Truncated(self.base + self.pos, n, self.remaining())
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def u8(self):
        return self.take(1)[0]

    def u32(self):
        return int.from_bytes(self.take(4), "little")

    def varint(self):
        value = 0
        for i in range(10):
            b = self.u8()
            if i == 9 and b > 1:
                raise Corrupt(f"varint overflows u64 at offset {self.base + self.pos - 1}")
            value |= (b & 0x7F) << (7 * i)
            if not b & 0x80:
                return value

    def expect_end(self, what):
        if self.remaining():
            raise Corrupt(f"{what}: {self.remaining()} unexpected trailing bytes")


class BitReader:
    """MSB-first bit stream reader."""

    def __init__(self, data):
        self.data, self.pos, self.nbits = data, 0, 8 * len(data)

    def bits(self, n):
        if n == 0:
            return 0
        end = self.pos + n
        if end > self.nbits:
            raise Truncated(self.pos // 8, (end + 7) // 8 - self.pos // 8,
                            len(self.data) - self.pos // 8)
        first, last = self.pos >> 3, (end + 7) >> 3
        chunk = int.from_bytes(self.data[first:last], "big")
        value = (chunk >> (8 * (last - first) - (end - 8 * first))) & ((1 << n) - 1)
        self.pos = end
        return value

    def expect_end(self, what):
        if (self.pos + 7) // 8 != len(self.data):
            raise Corrupt(f"{what}: bit stream is {len(self.data)} bytes, "
                          f"{self.pos} bits used")
        if self.pos % 8 and self.data[-1] & ((1 << (8 - self.pos % 8)) - 1):
            raise Corrupt(f"{what}: non-zero padding bits")


# ---------------------------------------------------------------- sections
def unzstd(section, n_points, what):
    """Decompress exactly one zstd frame, capped at 16 * n + 64 bytes."""
    cap = 16 * n_points + 64
    try:
        size = zstandard.get_frame_parameters(section).content_size
        if size != zstandard.CONTENTSIZE_UNKNOWN and size > cap:
            raise Corrupt(f"{what}: zstd frame declares {size} bytes > cap {cap}")
        if size == zstandard.CONTENTSIZE_UNKNOWN:  # bound the output first
            zstandard.ZstdDecompressor().decompress(section, max_output_size=cap)
        dobj = zstandard.ZstdDecompressor().decompressobj()
        out = dobj.decompress(section)
    except zstandard.ZstdError as e:
        raise Corrupt(f"{what}: zstd error: {e}") from None
    if not dobj.eof or dobj.unused_data or len(out) > cap:
        raise Corrupt(f"{what}: not exactly one zstd frame within {cap} bytes")
    return out


def read_codes(stream, count, bits):
    """Unpack `count` u64 codes from a varint or prefix-bucket bit stream."""
    if not bits:
        cur = Cursor(stream)
        codes = [cur.varint() for _ in range(count)]
        cur.expect_end("ts stream")
        return codes
    rd, codes = BitReader(stream), []
    for _ in range(count):
        ones = 0
        while ones < 5 and rd.bits(1):
            ones += 1
        codes.append(rd.bits((0, 6, 13, 20, 32, 64)[ones]))
    rd.expect_end("ts stream")
    return codes


def decode_ts(enc, stream, n, min_ts):
    if enc == 0:
        if len(stream) != 8 * n:
            raise Corrupt(f"raw ts stream is {len(stream)} bytes, expected {8 * n}")
        return [int.from_bytes(stream[8 * i:8 * i + 8], "little", signed=True)
                for i in range(n)]
    bits = enc % 2 == 1
    ts = [min_ts]
    if enc in (1, 2):  # delta of delta
        prev, t = 0, min_ts
        for code in read_codes(stream, n - 1, bits):
            prev = wrap64(prev + unzz(code))
            t = wrap64(t + prev)
            ts.append(t)
        return ts
    codes = read_codes(stream, n, bits)
    d, t = unzz(codes[0]), min_ts
    if enc in (3, 4):  # median delta
        for code in codes[1:]:
            t = wrap64(t + d + unzz(code))
            ts.append(t)
        return ts
    if d < 1:  # grid
        raise Corrupt(f"grid pitch {d} < 1")
    g = min_ts
    for code in codes[1:]:
        q, r = divmod(code, d)
        g = wrap64(g + (unzz(q) + 1) * d)
        ts.append(wrap64(g + unzz(r)))
    return ts


def decode_gorilla(stream, n):
    rd = BitReader(stream)
    v = rd.bits(64)
    out, window = [v], None
    for _ in range(n - 1):
        if rd.bits(1):
            if rd.bits(1):
                lead, size = rd.bits(5), rd.bits(6) + 1
                if lead + size > 64:
                    raise Corrupt(f"gorilla window L={lead} S={size} exceeds 64 bits")
                window = (lead, 64 - lead - size)
            elif window is None:
                raise Corrupt("gorilla window reuse before any window was set")
            lead, trail = window
            v ^= rd.bits(64 - lead - trail) << trail
        out.append(v)
    rd.expect_end("gorilla stream")
    return out


def decode_shuffle(stream, n, delta):
    if len(stream) != 8 * n:
        raise Corrupt(f"byte-shuffle stream is {len(stream)} bytes, expected {8 * n}")
    out, v = [], 0
    for i in range(n):
        x = sum(stream[k * n + i] << (8 * k) for k in range(8))
        v = (v + unzz(x)) % U64 if delta else v ^ x
        out.append(v)
    return out


def decode_decimal(stream, n):
    cur = Cursor(stream)
    head = cur.u8()
    divided, digits = head >> 7, head & 0x7F
    if digits > 15:
        raise Corrupt(f"decimal digits {digits} > 15")
    q = cur.u8() if divided else 1
    if q < 2 and divided:
        raise Corrupt(f"decimal divisor {q} < 2")
    scale, out, prev_k = float(10 ** digits), [], 0
    for _ in range(n):
        token = cur.varint()
        if token == 1:
            out.append(int.from_bytes(cur.take(8), "little"))
        elif token & 1:
            raise Corrupt(f"decimal token {token} is odd")
        else:
            prev_k = wrap64(prev_k + unzz(token >> 1))
            f = float(prev_k) / scale
            if divided:
                f /= float(q)
            out.append(struct.unpack("<Q", struct.pack("<d", f))[0])
    cur.expect_end("decimal stream")
    return out


def decode_block(data, blk, what):
    """Verify and decode one block; returns (timestamps, value bits)."""
    if len(data) != blk["len"]:
        raise Truncated(blk["offset"], blk["len"], len(data))
    actual = crc32c(data)
    if actual != blk["crc"]:
        raise ChecksumMismatch(f"block ({what})", blk["offset"], blk["crc"], actual)
    codec, n = data[0], blk["n_points"]
    ts_enc, val_enc = codec & 7, (codec >> 4) & 7
    if ts_enc == 7 or val_enc > 4:
        raise UnknownCodec(f"unknown codec {codec:#04x} in block at offset "
                           f"{blk['offset']} ({what})")
    if codec != blk["codec"]:
        raise Corrupt(f"codec byte {codec:#04x} at offset {blk['offset']} != footer's "
                      f"{blk['codec']:#04x}")
    cur = Cursor(data, blk["offset"])
    cur.u8()
    ts_sec = cur.take(cur.varint())
    val_sec = cur.take(cur.remaining())
    if codec & 0x08:
        ts_sec = unzstd(ts_sec, n, "ts section")
    if codec & 0x80:
        val_sec = unzstd(val_sec, n, "value section")
    ts = decode_ts(ts_enc, ts_sec, n, blk["min_ts"])
    if val_enc == 0:
        if len(val_sec) != 8 * n:
            raise Corrupt(f"raw value stream is {len(val_sec)} bytes, expected {8 * n}")
        values = [int.from_bytes(val_sec[8 * i:8 * i + 8], "little") for i in range(n)]
    elif val_enc == 1:
        values = decode_gorilla(val_sec, n)
    elif val_enc == 3:
        values = decode_decimal(val_sec, n)
    else:
        values = decode_shuffle(val_sec, n, delta=val_enc == 4)
    if len(ts) != n or ts[0] != blk["min_ts"] or ts[-1] != blk["max_ts"]:
        raise Corrupt(f"block at offset {blk['offset']}: timestamps do not match footer")
    if any(a >= b for a, b in zip(ts, ts[1:])):
        raise Corrupt(f"block at offset {blk['offset']}: timestamps not increasing")
    return ts, values


# ---------------------------------------------------------------- file level
def check_magic_version(raw, magic_at, version_at, what):
    if raw[magic_at:magic_at + 8] != MAGIC:
        raise BadMagic(f"bad magic in {what}: {raw[magic_at:magic_at + 8].hex()}")
    version = struct.unpack_from("<H", raw, version_at)[0]
    if version != 1:
        raise UnsupportedVersion(f"unsupported version {version} in {what}")


def parse_trailer(raw, size):
    """Check the 52-byte trailer; returns (F, L, series_count, point_count, footer_crc)."""
    check_magic_version(raw, 44, 36, "trailer")
    actual = crc32c(raw[:40])
    expected = struct.unpack_from("<I", raw, 40)[0]
    if actual != expected:
        raise ChecksumMismatch("trailer", size - TRAILER_LEN, expected, actual)
    f, l, series, points, footer_crc, _, flags = struct.unpack_from("<QQQQIHH", raw)
    if flags:
        raise Corrupt(f"trailer flags {flags:#x} != 0")
    if f < HEADER_LEN or f + l + TRAILER_LEN != size:
        raise Corrupt(f"footer offset {f} / length {l} inconsistent with file size {size}")
    return f, l, series, points, footer_crc


def check_header(raw):
    if len(raw) < HEADER_LEN:
        raise Truncated(0, HEADER_LEN, len(raw))
    check_magic_version(raw, 0, 8, "header")
    expected = struct.unpack_from("<I", raw, 12)[0]
    actual = crc32c(raw[:12])
    if actual != expected:
        raise ChecksumMismatch("header", 0, expected, actual)
    if struct.unpack_from("<H", raw, 10)[0]:
        raise Corrupt("header flags != 0")


def parse_footer(footer, f, series_count, point_count):
    """Parse the footer index, applying every constraint of section 5."""
    cur = Cursor(footer, f)
    count = cur.varint()
    if count != series_count:
        raise Corrupt(f"footer series_count {count} != trailer's {series_count}")
    if count > cur.remaining() // 15:  # a series record takes at least 15 bytes
        raise Corrupt(f"series_count {count} cannot fit in the footer")
    series, offset, total, prev_key = [], HEADER_LEN, 0, None
    for _ in range(count):
        key = (cur.varint(), cur.varint())
        if prev_key is not None and key <= prev_key:
            raise Corrupt(f"series {key} not after {prev_key}")
        prev_key = key
        kind, interval = cur.u8(), cur.varint()
        if kind > 2 or interval > 0xFFFFFFFF:
            raise Corrupt(f"series {key}: kind {kind} / interval_s {interval} invalid")
        md_len = cur.varint()
        if md_len > MAX_METADATA:
            raise Corrupt(f"series {key}: metadata_len {md_len} > {MAX_METADATA}")
        try:
            metadata = cur.take(md_len).decode("utf-8")
        except UnicodeDecodeError as e:
            raise Corrupt(f"series {key}: metadata is not UTF-8: {e}") from None
        n_blocks = cur.varint()
        if n_blocks < 1 or n_blocks > cur.remaining() // 9:
            raise Corrupt(f"series {key}: block_count {n_blocks} impossible")
        blocks, prev_max = [], None
        for _ in range(n_blocks):
            codec, length, n = cur.u8(), cur.varint(), cur.varint()
            start, span, crc = cur.varint(), cur.varint(), cur.u32()
            if length < 1 or length > f - offset:
                raise Corrupt(f"series {key}: block len {length} at {offset} exceeds blocks area")
            if not 1 <= n <= MAX_BLOCK_POINTS or span < n - 1:
                raise Corrupt(f"series {key}: n_points {n} / span {span} invalid")
            if prev_max is None:
                min_ts = unzz(start)
            elif start < 1:
                raise Corrupt(f"series {key}: block ts_start gap {start} < 1")
            else:
                min_ts = prev_max + start
            max_ts = min_ts + span
            if max_ts > I64_MAX:
                raise Corrupt(f"series {key}: block timestamps overflow i64")
            blocks.append(dict(codec=codec, len=length, n_points=n, crc=crc,
                               offset=offset, min_ts=min_ts, max_ts=max_ts))
            offset, prev_max, total = offset + length, max_ts, total + n
        series.append(dict(org_id=key[0], metric_id=key[1], kind=kind,
                           interval_s=interval, metadata=metadata, blocks=blocks))
    cur.expect_end("footer")
    if offset != f:
        raise Corrupt(f"blocks end at {offset}, footer starts at {f}")
    if total != point_count:
        raise Corrupt(f"footer holds {total} points, trailer says {point_count}")
    return series


def read_index(read_at, size):
    """Trailer + footer through `read_at(offset, n)`; returns the series list."""
    if size < HEADER_LEN + TRAILER_LEN:
        raise Truncated(0, HEADER_LEN + TRAILER_LEN, size)
    f, l, n_series, n_points, footer_crc = parse_trailer(
        read_at(size - TRAILER_LEN, TRAILER_LEN), size)
    footer = read_at(f, l)
    actual = crc32c(footer)
    if actual != footer_crc:
        raise ChecksumMismatch("footer", f, footer_crc, actual)
    return parse_footer(footer, f, n_series, n_points)


def series_points(s, data, base):
    """Decode all blocks of series `s`; `data` holds the file from offset `base`."""
    what = f"series {s['org_id']},{s['metric_id']}"
    for blk in s["blocks"]:
        start = blk["offset"] - base
        ts, values = decode_block(data[start:start + blk["len"]], blk, what)
        yield from zip(ts, values)


# ---------------------------------------------------------------- output
def format_value(bits):
    """Format a value as export does (found empirically: the `ryu` crate's
    shortest round-trip style: 1.0, 0.00001234, 1.5e-6, 1e16, NaN, -inf)."""
    f = struct.unpack("<d", struct.pack("<Q", bits))[0]
    if math.isnan(f):
        return "NaN"
    sign = "-" if bits >> 63 else ""
    if math.isinf(f):
        return sign + "inf"
    if f == 0:
        return sign + "0.0"
    mant, _, exp = repr(abs(f)).partition("e")  # shortest round-trip digits
    whole, _, frac = mant.partition(".")
    digits, point = whole + frac, len(whole) + int(exp or 0)
    stripped = digits.lstrip("0")
    point -= len(digits) - len(stripped)
    digits = stripped.rstrip("0")
    n = len(digits)  # value = 0.<digits> * 10**point
    if n <= point <= 16:
        text = digits + "0" * (point - n) + ".0"
    elif 0 < point <= 16:
        text = digits[:point] + "." + digits[point:]
    elif -5 < point <= 0:
        text = "0." + "0" * -point + digits
    else:
        text = digits[0] + ("." + digits[1:] if n > 1 else "") + f"e{point - 1}"
    return sign + text


def csv_field(text):
    if any(c in text for c in ',"\r\n'):
        return '"' + text.replace('"', '""') + '"'
    return text


def emit(s, points, csv_like, out):
    if csv_like:
        tail = f"{s['kind']},{s['interval_s']},{csv_field(s['metadata'])}"
        head = f"{s['org_id']},{s['metric_id']}"
        for ts, bits in points:
            out.write(f"{head},{ts},{format_value(bits)},{tail},{bits}\n")
    else:
        for ts, bits in points:
            out.write(f"{s['org_id']} {s['metric_id']} {ts} {bits} {format_value(bits)}\n")


# ---------------------------------------------------------------- layout
WINDOW_RE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d)_(\d{4}-\d\d-\d\dT\d\d)$")


def committed_windows(root, shard):
    """The shard's committed windows as (from, to, dir, manifest), in time order."""
    shard_dir = os.path.join(root, shard)
    if not os.path.isdir(shard_dir):
        raise ManifestError(f"no such shard directory: {shard_dir}")
    windows = []
    for name in sorted(os.listdir(shard_dir)):
        path = os.path.join(shard_dir, name, "_manifest.json")
        m = WINDOW_RE.match(name)
        if not m or not os.path.isfile(path):
            continue
        with open(path, "rb") as fh:
            manifest = json.loads(fh.read().decode("utf-8"))
        if manifest.get("format") != "tailor-manifest" or manifest.get("version") != 1:
            raise ManifestError(f"{path}: unsupported format/version")
        if (manifest.get("shard") != shard or manifest.get("location") != f"{shard}/{name}"
                or (manifest.get("window_from"), manifest.get("window_to")) != m.groups()):
            raise ManifestError(f"{path}: shard/window/location do not match its path")
        windows.append((m.group(1), m.group(2), os.path.join(shard_dir, name), manifest))
    windows.sort(key=lambda w: (w[0], w[1]))
    for a, b in zip(windows, windows[1:]):
        if b[0] <= a[1]:
            raise ManifestError(f"windows {a[0]}_{a[1]} and {b[0]}_{b[1]} share an hour")
    return windows


M64 = (1 << 64) - 1


def mix(z):
    """splitmix64's finaliser (docs/output-layout.md: series parts)."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def part_of(org_id, metric_id, parts):
    return 0 if parts <= 1 else mix(org_id ^ mix(metric_id)) % parts


def dump(root, shard, csv_like, out):
    windows = committed_windows(root, shard)
    if csv_like:
        out.write(CSV_HEADER + "\n")
    for _, _, wdir, manifest in windows:
        n_series = n_points = 0
        parts = manifest.get("settings", {}).get("parts", 1)
        prev_last = {}
        # Each part's series in key order (file after file), then merged by key.
        by_part = {}
        for entry in manifest["files"]:
            rel = entry["path"]
            if rel.startswith("/") or ".." in rel.split("/"):
                raise ManifestError(f"file path escapes the window: {rel}")
            part = entry.get("part")
            if (parts == 1) != (part is None) or (part is not None and not 0 <= part < parts):
                raise ManifestError(f"{rel}: part {part} in a window of {parts} parts")
            part = part or 0
            with open(os.path.join(wdir, rel), "rb") as fh:
                data = fh.read()
            if len(data) != entry["bytes"]:
                raise ManifestError(f"{rel}: {len(data)} bytes, manifest says {entry['bytes']}")
            actual = crc32c(data)
            if actual != entry["crc32c"]:
                raise ChecksumMismatch(f"file {rel}", 0, entry["crc32c"], actual)
            check_header(data)
            series = read_index(lambda off, n: data[off:off + n], len(data))
            keys = [(s["org_id"], s["metric_id"]) for s in series]
            if (len(series) != entry["series"] or not series
                    or sum(b["n_points"] for s in series for b in s["blocks"]) != entry["points"]
                    or list(keys[0]) != entry["first_series"]
                    or list(keys[-1]) != entry["last_series"]
                    or (part in prev_last and keys[0] <= prev_last[part])
                    or any(part_of(o, m, parts) != part for o, m in keys)):
                raise ManifestError(f"{rel}: series/points/range/part disagree with the manifest")
            prev_last[part] = keys[-1]
            n_series += len(series)
            n_points += entry["points"]
            by_part.setdefault(part, []).extend((s, data) for s in series)
        merged = heapq.merge(*by_part.values(), key=lambda sd: (sd[0]["org_id"], sd[0]["metric_id"]))
        for s, data in merged:
            emit(s, series_points(s, data, 0), csv_like, out)
        if n_series != manifest["series"] or n_points != manifest["points"]:
            raise ManifestError(f"{wdir}: file totals disagree with the manifest")


def find(wdir, org_id, metric_id, out):
    """One series of a committed window: hash it to its part, take the file
    of that part whose series range holds it, and look it up there."""
    with open(os.path.join(wdir, "_manifest.json"), "rb") as fh:
        manifest = json.loads(fh.read().decode("utf-8"))
    parts = manifest.get("settings", {}).get("parts", 1)
    part = part_of(org_id, metric_id, parts)
    key = [org_id, metric_id]
    for entry in manifest["files"]:
        if (entry.get("part") or 0) == part and entry["first_series"] <= key <= entry["last_series"]:
            return lookup(os.path.join(wdir, entry["path"]), org_id, metric_id, out)
    raise TsfError(f"series ({org_id}, {metric_id}) not in {wdir} (part {part} of {parts})")


def lookup(path, org_id, metric_id, out):
    """Binary search the footer; read only trailer, footer and one series."""
    with open(path, "rb") as fh:
        size = fh.seek(0, os.SEEK_END)

        def read_at(offset, n):
            fh.seek(offset)
            data = fh.read(n)
            if len(data) != n:
                raise Truncated(offset, n, len(data))
            return data

        series = read_index(read_at, size)
        keys = [(s["org_id"], s["metric_id"]) for s in series]
        i = bisect.bisect_left(keys, (org_id, metric_id))
        if i == len(keys) or keys[i] != (org_id, metric_id):
            raise TsfError(f"series ({org_id}, {metric_id}) not in {path}")
        s = series[i]
        first, last = s["blocks"][0], s["blocks"][-1]
        data = read_at(first["offset"], last["offset"] + last["len"] - first["offset"])
        out.write(CSV_HEADER + "\n")
        emit(s, series_points(s, data, first["offset"]), True, out)


def main(argv):
    out = io.TextIOWrapper(sys.stdout.buffer, encoding="utf-8", newline="\n")
    try:
        if len(argv) in (3, 4) and argv[0] == "dump" and argv[3:] in ([], ["--csv-like-export"]):
            dump(argv[1], argv[2], len(argv) == 4, out)
        elif len(argv) == 4 and argv[0] == "series":
            lookup(argv[1], int(argv[2]), int(argv[3]), out)
        elif len(argv) == 4 and argv[0] == "find":
            find(argv[1], int(argv[2]), int(argv[3]), out)
        else:
            sys.stderr.write(__doc__)
            return 2
    except (TsfError, OSError, ValueError) as e:
        sys.stderr.write(f"error: {type(e).__name__}: {e}\n")
        return 1
    finally:
        out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
