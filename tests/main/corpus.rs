//! The bad-input corpus: hand-made broken payload files in `tests/data/bad/`,
//! each with the exact error the scan must report (object key, frame offset,
//! what was expected and found). A guard test checks that every corpus file
//! has an expectation and every expectation a file.
//!
//! The files are made by `make_corpus` below; to rebuild them after changing
//! it: `TAILOR_REGEN_CORPUS=1 cargo test --test main corpus::regenerate`.

use datafusion::prelude::SessionContext;
use std::path::PathBuf;
use tailor::datasource::listing::{Window, list_inputs};
use tailor::datasource::options::{CorruptPolicy, PayloadOptions};
use tailor::datasource::scan_log::ScanLog;
use tailor::datasource::source::frame_error;
use tailor::datasource::store::StoreRoot;
use tailor::datasource::table::PayloadTable;
use tailor::format::payload::{ErrorKind, Kind, PayloadSpec, PayloadWriter, encode_payload};

use crate::common::{rt, shard_map};

const SHARD_DIR: &str = "org-mod-7/dt=2026-11-21/hour=00";

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/bad")
}

fn good_spec<'a>(ts: &'a [i64], vals: &'a [u64], meta: &'a str) -> PayloadSpec<'a> {
    PayloadSpec {
        version: 2,
        org_id: 7,
        metric_id: 1,
        kind: Kind::Count,
        interval_s: 10,
        timestamps: ts,
        values: vals,
        metadata: meta,
    }
}

fn frame_raw(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    PayloadWriter::new(1).write_raw_frame(raw, &mut out);
    out
}

fn good_frame() -> Vec<u8> {
    let mut out = Vec::new();
    PayloadWriter::new(1).write_frame(&good_spec(&[1, 2], &[3, 4], "a:b"), &mut out);
    out
}

/// A valid payload's bytes, then `edit` applied, then framed.
fn edited(edit: impl Fn(&mut Vec<u8>)) -> Vec<u8> {
    let mut raw = Vec::new();
    encode_payload(&good_spec(&[1, 2], &[3, 4], "host:x"), &mut raw);
    edit(&mut raw);
    frame_raw(&raw)
}

fn zstd_without_content_size(data: &[u8]) -> Vec<u8> {
    let mut cctx = zstd_safe::CCtx::create();
    cctx.set_parameter(zstd_safe::CParameter::ContentSizeFlag(false))
        .unwrap();
    let mut out = Vec::with_capacity(zstd_safe::compress_bound(data.len()) + 64);
    {
        let mut dst = zstd_safe::OutBuffer::around(&mut out);
        let mut src = zstd_safe::InBuffer::around(data);
        // Streaming without a pledged size: the header has no content size.
        cctx.compress_stream(&mut dst, &mut src).unwrap();
        cctx.end_stream(&mut dst).unwrap();
    }
    let mut f = (out.len() as u32).to_le_bytes().to_vec();
    f.extend_from_slice(&out);
    f
}

/// Offset, inside a zstd frame, of its first block header.
fn first_block_header(frame: &[u8]) -> usize {
    let fhd = frame[4];
    let single_segment = (fhd >> 5) & 1 == 1;
    let fcs = [usize::from(single_segment), 2, 4, 8][usize::from(fhd >> 6)];
    let window = usize::from(!single_segment);
    let dict = [0, 1, 2, 4][usize::from(fhd & 3)];
    4 + 1 + window + dict + fcs
}

/// Every corpus file: (name, bytes, expected frame offset, expected error).
fn make_corpus() -> Vec<(&'static str, Vec<u8>, u64, ErrorKind)> {
    let good = good_frame();
    let g = good.len() as u64;
    let mut v: Vec<(&'static str, Vec<u8>, u64, ErrorKind)> = Vec::new();
    let mut f = 5u32.to_le_bytes().to_vec();
    f.extend_from_slice(&[0x28, 0xB5, 0x2F, 0xFD, 0]);
    v.push((
        "body_len_too_small.tsp",
        f,
        0,
        ErrorKind::BodyLenOutOfRange { found: 5 },
    ));
    let mut f = good.clone();
    f.extend_from_slice(&((64u32 << 20) + 1).to_le_bytes());
    f.extend_from_slice(&[0x28, 0xB5, 0x2F, 0xFD]);
    v.push((
        "body_len_too_big.tsp",
        f,
        g,
        ErrorKind::BodyLenOutOfRange {
            found: (64 << 20) + 1,
        },
    ));
    let mut f = good.clone();
    f.extend_from_slice(&good[..good.len() - 5]);
    v.push((
        "truncated_tail.tsp",
        f,
        g,
        ErrorKind::Truncated {
            needed: g,
            available: g - 5,
        },
    ));
    let mut f = good.clone();
    f.extend_from_slice(&[1, 2, 3]);
    v.push((
        "trailing_bytes.tsp",
        f,
        g,
        ErrorKind::TrailingBytes { found: 3 },
    ));
    let mut f = 20u32.to_le_bytes().to_vec();
    f.extend_from_slice(b"this is not zstd....");
    v.push(("not_zstd.tsp", f, 0, ErrorKind::NotZstd { found: *b"this" }));
    let mut raw = Vec::new();
    encode_payload(&good_spec(&[1], &[2], ""), &mut raw);
    v.push((
        "no_content_size.tsp",
        zstd_without_content_size(&raw),
        0,
        ErrorKind::NoContentSize,
    ));
    // One body holding two zstd frames back to back.
    let mut two = good[4..].to_vec();
    two.extend_from_slice(&good[4..]);
    let mut f = (two.len() as u32).to_le_bytes().to_vec();
    f.extend_from_slice(&two);
    v.push((
        "two_zstd_frames_in_body.tsp",
        f,
        0,
        ErrorKind::BodyNotOneFrame {
            expected: g - 4,
            found: 2 * (g - 4),
        },
    ));
    v.push((
        "bad_payload_magic.tsp",
        edited(|r| r[0] = b'X'),
        0,
        ErrorKind::BadPayloadMagic { found: *b"XSPL" },
    ));
    v.push((
        "version_3.tsp",
        edited(|r| r[4] = 3),
        0,
        ErrorKind::UnsupportedVersion { found: 3 },
    ));
    v.push((
        "nonzero_flags.tsp",
        edited(|r| r[6] = 1),
        0,
        ErrorKind::NonZeroFlags { found: 1 },
    ));
    v.push((
        "zero_points.tsp",
        edited(|r| r[24..28].copy_from_slice(&0u32.to_le_bytes())),
        0,
        ErrorKind::PointCountOutOfRange { found: 0 },
    ));
    v.push((
        "too_many_points.tsp",
        edited(|r| r[24..28].copy_from_slice(&(1u32 << 20 | 1).to_le_bytes())),
        0,
        ErrorKind::PointCountOutOfRange {
            found: (1 << 20) + 1,
        },
    ));
    v.push((
        "meta_too_long.tsp",
        edited(|r| r[28..32].copy_from_slice(&65_537u32.to_le_bytes())),
        0,
        ErrorKind::MetaLenOutOfRange { found: 65_537 },
    ));
    v.push((
        "bad_kind.tsp",
        edited(|r| r[32] = 3),
        0,
        ErrorKind::BadKind { found: 3 },
    ));
    v.push((
        "nonzero_reserved.tsp",
        edited(|r| r[34] = 9),
        0,
        ErrorKind::NonZeroReserved { found: [0, 9, 0] },
    ));
    v.push((
        "size_mismatch.tsp",
        edited(|r| r.extend_from_slice(&[0; 8])),
        0,
        ErrorKind::PayloadSize {
            expected: 80,
            found: 88,
        },
    ));
    // A decompressed size that is not a multiple of 8, and one that the
    // point count disagrees with: the spec's size rule, with the size the
    // header implies (40 + 16*2 + 6, rounded up to 80).
    v.push((
        "size_not_multiple_of_8.tsp",
        edited(|r| r.truncate(77)),
        0,
        ErrorKind::PayloadSize {
            expected: 80,
            found: 77,
        },
    ));
    v.push((
        "point_count_disagrees_with_size.tsp",
        edited(|r| r[24..28].copy_from_slice(&3u32.to_le_bytes())),
        0,
        ErrorKind::PayloadSize {
            expected: 96,
            found: 80,
        },
    ));
    v.push((
        "metadata_not_utf8.tsp",
        edited(|r| r[72] = 0xFF),
        0,
        ErrorKind::MetadataNotUtf8 { valid_up_to: 0 },
    ));
    v.push((
        "nonzero_padding.tsp",
        edited(|r| r[79] = 7),
        0,
        ErrorKind::NonZeroPadding { found: vec![0, 7] },
    ));
    v.push((
        "content_size_too_big.tsp",
        {
            // A frame header declaring 32 MiB of content (the spec's payloads
            // are at most ~16.8 MiB): rejected before anything is allocated.
            let big = vec![0u8; 32 << 20];
            let mut out = Vec::new();
            PayloadWriter::new(1).write_raw_frame(&big, &mut out);
            out
        },
        0,
        ErrorKind::ContentSizeOutOfRange {
            found: 32 << 20,
            min: 48,
            max: 40 + 16 * 1_048_576 + 65_536,
        },
    ));
    v.push((
        "zstd_reserved_header_bit.tsp",
        {
            // The frame header descriptor's reserved bit (bit 3) set.
            let mut f = good_frame();
            f[4 + 4] |= 0x08;
            f
        },
        0,
        ErrorKind::BadZstdHeader {
            reason: "ContentSizeError".into(),
        },
    ));
    v.push((
        "zstd_reserved_block_type.tsp",
        {
            let mut f = good_frame();
            let at = 4 + first_block_header(&f[4..]);
            f[at] |= 0b110; // block type 3: reserved
            f
        },
        0,
        ErrorKind::BadZstdHeader {
            reason: "Data corruption detected".into(),
        },
    ));
    v.push((
        "zstd_corrupt_literals.tsp",
        {
            // A compressed block whose literals claim to reuse the previous
            // block's Huffman table (treeless) although there is none: the
            // frame's structure is sound, decompressing it fails.
            let ts: Vec<i64> = (0..256).map(|i| i * 10_000).collect();
            let vals: Vec<u64> = (0..256).map(|i| (i % 7) as u64).collect();
            let mut f = Vec::new();
            PayloadWriter::new(3).write_frame(&good_spec(&ts, &vals, "host:x"), &mut f);
            let at = 4 + first_block_header(&f[4..]);
            assert_eq!((f[at] >> 1) & 3, 2, "a compressed block");
            f[at + 3] |= 0b11; // literals block type 3: treeless
            f
        },
        0,
        // zstd's name for "no table to reuse".
        ErrorKind::Decompress {
            reason: "Dictionary is corrupted".into(),
        },
    ));
    v.push((
        "garbage.tsp",
        b"PK\x03\x04 this is a zip file, not a payload file".to_vec(),
        0,
        ErrorKind::BodyLenOutOfRange { found: 0x0403_4B50 },
    ));
    v
}

#[test]
fn regenerate() {
    if std::env::var_os("TAILOR_REGEN_CORPUS").is_none() {
        return;
    }
    let dir = corpus_dir();
    std::fs::create_dir_all(&dir).unwrap();
    for (name, bytes, _, _) in make_corpus() {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

#[test]
fn every_corpus_file_has_an_expectation_and_vice_versa() {
    let mut on_disk: Vec<String> = std::fs::read_dir(corpus_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    on_disk.sort();
    let mut expected: Vec<String> = make_corpus()
        .into_iter()
        .map(|(n, ..)| n.to_string())
        .collect();
    expected.sort();
    assert_eq!(
        on_disk, expected,
        "tests/data/bad and make_corpus() disagree"
    );
    for (name, bytes, ..) in make_corpus() {
        assert_eq!(
            std::fs::read(corpus_dir().join(name)).unwrap(),
            bytes,
            "{name} differs from make_corpus(); regenerate the corpus"
        );
    }
}

/// Scans one corpus file through the DataFusion table (as a payload file of
/// shard org-mod-7) with `policy`: `SELECT count(*)`'s result or error, and
/// the scan's log.
fn scan_corpus(
    name: &str,
    policy: CorruptPolicy,
) -> (
    Result<u64, datafusion::error::DataFusionError>,
    std::sync::Arc<ScanLog>,
) {
    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::datatypes::Int64Type;
    let tmp = crate::common::tempdir();
    let dir = tmp.path().join(SHARD_DIR);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(corpus_dir().join(name), dir.join("points+0+0000000000.tsp")).unwrap();
    rt().block_on(async {
        let root = StoreRoot::open(tmp.path().to_str().unwrap()).unwrap();
        let listing = list_inputs(&root, None, &Window::default()).await.unwrap();
        let mut opts = PayloadOptions::new(shard_map());
        opts.on_corrupt = policy;
        let ctx = SessionContext::new();
        let log = PayloadTable::new(&root, listing.objects, opts, ScanLog::new())
            .register(&ctx, &root, "payloads")
            .unwrap();
        let rows = ctx
            .sql("SELECT count(*) FROM payloads")
            .await
            .unwrap()
            .collect()
            .await
            .map(|b| b[0].column(0).as_primitive::<Int64Type>().value(0) as u64);
        (rows, log)
    })
}

/// The error a corpus file's scan fails with under the fail policy.
fn scan_error(name: &str) -> Option<tailor::format::payload::FrameError> {
    let (r, _) = scan_corpus(name, CorruptPolicy::Fail);
    r.err().map(|e| {
        frame_error(&e)
            .cloned()
            .unwrap_or_else(|| panic!("{name}: not a frame error: {e}"))
    })
}

/// Scans one corpus file under the skip policy, as `tailor run` does:
/// returns the payloads read and the corrupt frames recorded (offset,
/// reason, bytes skipped).
fn scan_skipping(name: &str) -> (u64, Vec<(u64, String, u64)>) {
    let (rows, log) = scan_corpus(name, CorruptPolicy::Skip);
    let rows = rows.unwrap_or_else(|e| panic!("{name}: the skip policy must not fail: {e}"));
    assert_eq!(log.settle(CorruptPolicy::Skip), Ok(()), "{name}");
    let corrupt = log
        .corrupt()
        .into_iter()
        .map(|c| {
            assert!(c.key.ends_with("points+0+0000000000.tsp"), "{name}: {c:?}");
            (c.offset, c.reason, c.skipped_bytes)
        })
        .collect();
    (rows, corrupt)
}

#[test]
fn every_corpus_file_fails_with_its_exact_error() {
    for (name, _, offset, kind) in make_corpus() {
        let err = scan_error(name);
        let err = err.unwrap_or_else(|| panic!("{name}: the scan must fail"));
        assert!(
            err.key
                .ends_with(&format!("{SHARD_DIR}/points+0+0000000000.tsp")),
            "{name}: key {}",
            err.key
        );
        assert_eq!((err.offset(), err.kind()), (offset, &kind), "{name}");
        // The message names the key, the offset and what was wrong.
        let msg = err.to_string();
        assert!(
            msg.contains("points+0+0000000000.tsp") && msg.contains(&format!("offset {offset}")),
            "{msg}"
        );
    }
}

/// Under the skip policy each corpus file gives exactly its one corrupt
/// frame, with the reason the fail policy reports, the bad region runs to
/// the end of the file (nothing follows it), and every good frame before
/// it is read.
#[test]
fn every_corpus_file_is_skipped_and_counted_under_the_skip_policy() {
    let good = good_frame();
    for (name, bytes, offset, kind) in make_corpus() {
        let (rows, corrupt) = scan_skipping(name);
        let len = bytes.len() as u64;
        assert_eq!(
            corrupt,
            vec![(offset, kind.to_string(), len - offset)],
            "{name}"
        );
        // The files are good frames up to the bad one.
        let before = bytes[..offset as usize]
            .chunks(good.len())
            .filter(|c| *c == good.as_slice())
            .count() as u64;
        assert_eq!(offset, before * good.len() as u64, "{name}: layout");
        assert_eq!(rows, before, "{name}: the good frames are read");
    }
}

#[test]
fn errors_are_classified_as_corruption() {
    // Corruption is a property of the input: a FrameError (exit code 65),
    // never an I/O error (74, retried).
    let err = scan_error("garbage.tsp");
    let e = tailor::job::JobError::Corrupt(Box::new(err.unwrap()));
    assert_eq!(tailor::cli::exit_code(&e), tailor::cli::EXIT_DATA);
    let io = tailor::job::JobError::ObjectStore(tailor::datasource::error::StoreOpError {
        op: "GET",
        target: "x".into(),
        source: object_store::Error::NotFound {
            path: "x".into(),
            source: "gone".into(),
        },
    });
    assert_eq!(tailor::cli::exit_code(&io), tailor::cli::EXIT_IO);
    assert!(io.to_string().starts_with("GET x: "), "{io}");
}

/// Random byte mutations and truncations of a valid file, read whole and in
/// small ranges under the skip policy: errors, never a panic; and through
/// the DataFusion scan under both policies.
#[test]
fn mutated_files_never_panic() {
    use crate::common::{Rng, file_of, random_payload};
    use bytes::Bytes;
    use tailor::datasource::reader::{FrameCursor, ObjectBytes, Step};
    use tailor::format::payload::{Decoder, check_body, parse_payload};

    let mut rng = Rng(99);
    let payloads: Vec<_> = (0..30).map(|_| random_payload(&mut rng, 7, 40)).collect();
    let (file, _) = file_of(&payloads);
    let rt = rt();
    let mut dec = Decoder::new();
    let mut buf = vec![0u64; tailor::format::payload::MAX_PAYLOAD_LEN / 8];
    for i in 0..400 {
        let mut f = file.clone();
        for _ in 0..1 + rng.below(8) {
            let at = rng.below(f.len() as u64) as usize;
            f[at] = rng.next_u64() as u8;
        }
        if i % 7 == 0 {
            f.truncate(rng.below(f.len() as u64) as usize);
        }
        let len = f.len() as u64;
        let bytes = Bytes::from(f.clone());
        for range in [len.max(1), 97, 1000] {
            let mut s = 0;
            while s < len {
                let e = (s + range).min(len);
                let mut c = FrameCursor::new(ObjectBytes::Mapped(bytes.clone()), len, s..e, true);
                while let Ok(Some(step)) = rt.block_on(c.next()) {
                    if let Step::Frame(fr) = step
                        && let Ok(info) = check_body(&fr.body, fr.offset)
                    {
                        let dst = unsafe {
                            std::slice::from_raw_parts_mut(
                                buf.as_mut_ptr() as *mut u8,
                                info.content_size,
                            )
                        };
                        if dec.decompress_into(&fr.body, info, dst, fr.offset).is_ok() {
                            let _ = parse_payload(dst, fr.offset);
                        }
                    }
                }
                s = e;
            }
        }
        if i % 40 == 0 {
            let tmp = crate::common::tempdir();
            let dir = tmp.path().join(SHARD_DIR);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("m+0+0000000000.tsp"), &f).unwrap();
            for policy in [CorruptPolicy::Fail, CorruptPolicy::Skip] {
                rt.block_on(async {
                    let root = StoreRoot::open(tmp.path().to_str().unwrap()).unwrap();
                    let listing = list_inputs(&root, None, &Window::default()).await.unwrap();
                    let mut opts = PayloadOptions::new(shard_map());
                    opts.on_corrupt = policy;
                    let ctx = SessionContext::new();
                    PayloadTable::new(&root, listing.objects, opts, ScanLog::new())
                        .register(&ctx, &root, "payloads")
                        .unwrap();
                    let r = ctx
                        .sql("SELECT sum(n_points) FROM payloads")
                        .await
                        .unwrap()
                        .collect()
                        .await;
                    if policy == CorruptPolicy::Skip {
                        assert!(r.is_ok(), "skip policy: {r:?}");
                    }
                });
            }
        }
    }
}
