//! Splitting files into byte ranges: every frame is read by exactly one
//! range, none is invented, at many range sizes, local and remote, with fake
//! frame starts planted inside compressed bodies.

use std::sync::Arc;

use bytes::Bytes;
use datafusion::prelude::{SessionConfig, SessionContext};
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use tailor::datasource::listing::{Window, list_inputs};
use tailor::datasource::options::{CorruptPolicy, PayloadOptions};
use tailor::datasource::reader::{FrameCursor, ObjectBytes, Step};
use tailor::datasource::scan_log::ScanLog;
use tailor::datasource::source::frame_error;
use tailor::datasource::store::StoreRoot;
use tailor::datasource::table::PayloadTable;
use tailor::format::payload::{MAX_BODY_LEN, ZSTD_MAGIC};

use crate::common::{P, Rng, file_of, hidden_in_corrupt_body, random_payload, rt, shard_map};

/// Reads `[start, end)` and returns (frame offsets, bytes fetched, stop, skipped offsets).
async fn read_range(
    src: ObjectBytes,
    len: u64,
    start: u64,
    end: u64,
    chunk: u64,
    skip: bool,
) -> (Vec<(u64, Bytes)>, u64, u64, Vec<u64>) {
    let mut c = FrameCursor::new(src, len, start..end, skip).with_chunk(chunk);
    let mut frames = Vec::new();
    let mut skipped = Vec::new();
    while let Some(step) = c.next().await.expect("no error") {
        match step {
            Step::Frame(f) => frames.push((f.offset, f.body)),
            Step::Skipped { error, .. } => skipped.push(error.offset),
        }
    }
    (frames, c.bytes_fetched(), c.stop(), skipped)
}

/// A file of random payloads with marker values that put `len + magic`
/// patterns into the compressed bodies (random values are stored raw). Each
/// planted pattern gets a body length that chains to the next real frame, the
/// hardest case for the resync rule.
fn adversarial_file(seed: u64, n: usize) -> (Vec<u8>, Vec<u64>, usize) {
    let mut rng = Rng(seed);
    let mut payloads: Vec<P> = (0..n).map(|_| random_payload(&mut rng, 7, 300)).collect();
    let marker = u64::from_le_bytes([0xEE, 0xEE, 0xEE, 0xEE, 0x28, 0xB5, 0x2F, 0xFD]);
    for p in payloads.iter_mut() {
        let k = p.vals.len() / 2;
        p.vals[k] = marker;
    }
    let (mut file, offsets) = file_of(&payloads);
    let mut planted = 0;
    let mut i = 0;
    while let Some(pos) = memchr::memmem::find(&file[i..], &ZSTD_MAGIC).map(|p| p + i) {
        i = pos + 1;
        let start = pos - 4;
        if offsets.contains(&(start as u64)) {
            continue;
        }
        // The next real frame after this position.
        let next = offsets
            .iter()
            .copied()
            .find(|&o| o > start as u64)
            .unwrap_or(file.len() as u64);
        let body_len = next - start as u64 - 4;
        if (9..=MAX_BODY_LEN as u64).contains(&body_len) {
            file[start..start + 4].copy_from_slice(&(body_len as u32).to_le_bytes());
            planted += 1;
        }
    }
    (file, offsets, planted)
}

fn check_split(file: &[u8], offsets: &[u64], range: u64, remote: bool, chunk: u64) {
    let len = file.len() as u64;
    let bytes = Bytes::from(file.to_vec());
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let path = Path::from("shard/dt=2026-11-21/hour=00/t+0+0000000000.tsp");
    let rt = rt();
    if remote {
        rt.block_on(store.put(&path, PutPayload::from(bytes.clone())))
            .unwrap();
    }
    let max_frame = offsets
        .windows(2)
        .map(|w| w[1] - w[0])
        .chain(std::iter::once(len - offsets.last().copied().unwrap_or(0)))
        .max()
        .unwrap_or(0);
    let mut seen = Vec::new();
    let mut s = 0;
    let mut prev_stop = 0u64;
    while s < len {
        let e = (s + range).min(len);
        let src = if remote {
            ObjectBytes::Store {
                store: Arc::clone(&store),
                location: path.clone(),
                e_tag: None,
            }
        } else {
            ObjectBytes::Mapped(bytes.clone())
        };
        let (frames, fetched, stop, skipped) =
            rt.block_on(read_range(src, len, s, e, chunk, false));
        assert!(skipped.is_empty());
        for (off, body) in &frames {
            assert!(
                *off >= s && *off < e,
                "frame {off} outside its range [{s}, {e})"
            );
            let body_len =
                u32::from_le_bytes(file[*off as usize..*off as usize + 4].try_into().unwrap())
                    as usize;
            assert_eq!(
                &body[..],
                &file[*off as usize + 4..*off as usize + 4 + body_len]
            );
        }
        if let Some((first, _)) = frames.first() {
            // Ranges tile the object: a range starts where the previous stopped.
            assert_eq!(
                *first, prev_stop,
                "range [{s},{e}) starts at {first}, previous stopped at {prev_stop}"
            );
        }
        if remote {
            // The range, one frame (the last one, or a sync candidate's that
            // chains past the end) and a few 8-byte look-aheads.
            assert!(
                fetched <= (e - s) + max_frame + 32,
                "range [{s},{e}) fetched {fetched} bytes (max frame {max_frame})"
            );
        }
        if !frames.is_empty() {
            prev_stop = stop;
        }
        seen.extend(frames.into_iter().map(|(o, _)| o));
        s = e;
    }
    assert_eq!(
        seen, offsets,
        "range size {range}, remote {remote}: frames read exactly once"
    );
}

#[test]
fn every_frame_once_at_many_range_sizes() {
    for seed in [1, 2, 3] {
        let (file, offsets, planted) = adversarial_file(seed, 60);
        assert!(
            planted > 10,
            "the test must plant fake frame starts (planted {planted})"
        );
        let len = file.len() as u64;
        for range in [
            1,
            5,
            8,
            13,
            64,
            100,
            777,
            1000,
            4096,
            10_000,
            65_536,
            len / 3 + 1,
            len,
        ] {
            check_split(&file, &offsets, range, false, u64::MAX);
        }
        for (range, chunk) in [(1000, 64), (4096, 512), (10_000, 100_000), (len, 4096)] {
            check_split(&file, &offsets, range, true, chunk);
        }
    }
}

#[test]
fn one_range_reads_the_file_once() {
    let (file, offsets, _) = adversarial_file(9, 40);
    let len = file.len() as u64;
    let rt = rt();
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let path = Path::from("a.tsp");
    rt.block_on(store.put(&path, PutPayload::from(file.clone())))
        .unwrap();
    let src = ObjectBytes::Store {
        store,
        location: path,
        e_tag: None,
    };
    let (frames, fetched, stop, _) = rt.block_on(read_range(src, len, 0, len, 1 << 20, false));
    assert_eq!(frames.len(), offsets.len());
    assert_eq!(fetched, len, "a single range fetches each byte once");
    assert_eq!(stop, len);
}

#[test]
fn empty_and_tiny_objects() {
    let rt = rt();
    let (frames, _, stop, _) = rt.block_on(read_range(
        ObjectBytes::Mapped(Bytes::new()),
        0,
        0,
        0,
        u64::MAX,
        false,
    ));
    assert!(frames.is_empty());
    assert_eq!(stop, 0);
    // A range in the middle of a single frame owns nothing.
    let mut rng = Rng(5);
    let (file, _) = file_of(&[random_payload(&mut rng, 1, 500)]);
    let len = file.len() as u64;
    let (frames, _, _, _) = rt.block_on(read_range(
        ObjectBytes::Mapped(Bytes::from(file)),
        len,
        10,
        20,
        u64::MAX,
        false,
    ));
    assert!(frames.is_empty());
}

#[test]
fn garbage_between_frames_is_reported_once_whatever_the_split() {
    let mut rng = Rng(11);
    let payloads: Vec<P> = (0..20).map(|_| random_payload(&mut rng, 3, 50)).collect();
    let (mut file, mut offsets) = file_of(&payloads);
    // 37 bytes of garbage before frame 10.
    let at = offsets[10] as usize;
    file.splice(at..at, std::iter::repeat_n(0x55u8, 37));
    for o in offsets.iter_mut().skip(10) {
        *o += 37;
    }
    let len = file.len() as u64;
    let bytes = Bytes::from(file);
    let rt = rt();
    for range in [7, 50, 333, 1000, len] {
        let mut seen = Vec::new();
        let mut reported = Vec::new();
        let mut s = 0;
        while s < len {
            let e = (s + range).min(len);
            let (frames, _, _, skipped) = rt.block_on(read_range(
                ObjectBytes::Mapped(bytes.clone()),
                len,
                s,
                e,
                u64::MAX,
                true,
            ));
            seen.extend(frames.into_iter().map(|(o, _)| o));
            reported.extend(skipped);
            s = e;
        }
        assert_eq!(seen, offsets, "range {range}: every real frame read once");
        assert_eq!(
            reported,
            vec![at as u64],
            "range {range}: the garbage reported once, at its start"
        );
    }
}

/// What a scan of one payload file saw: the frames read (by offset), the
/// corrupt frames recorded (offset, reason, bytes skipped) and their
/// count, or the error.
#[derive(Debug, PartialEq)]
struct Outcome {
    frames: Vec<u64>,
    corrupt: Vec<(u64, String, u64)>,
    corrupt_count: u64,
    error: Option<(u64, tailor::format::payload::ErrorKind)>,
}

/// Scans `file` as `org-mod-7/.../t+0+0000000000.tsp` through the payload
/// table, split into ranges of `range` bytes (under the fail policy; the
/// skip policy reads every object whole), from a local directory
/// (memory-mapped) or an in-memory object store; then resolves what only
/// shows across ranges, as `tailor run` and `tailor query` do.
fn scan_file(file: &[u8], range: u64, policy: CorruptPolicy, remote: bool) -> Outcome {
    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::datatypes::UInt64Type;
    let rel = "org-mod-7/dt=2026-11-21/hour=00/t+0+0000000000.tsp";
    let tmp = crate::common::tempdir();
    let rt = rt();
    rt.block_on(async {
        let root = if remote {
            let root = StoreRoot::open("memory:///in").unwrap();
            root.store
                .put(&root.child(rel), PutPayload::from(file.to_vec()))
                .await
                .unwrap();
            root
        } else {
            let path = tmp.path().join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, file).unwrap();
            StoreRoot::open(tmp.path().to_str().unwrap()).unwrap()
        };
        let listing = list_inputs(&root, None, &Window::default()).await.unwrap();
        let mut opts = PayloadOptions::new(shard_map());
        opts.on_corrupt = policy;
        opts.range_bytes = range;
        opts.fetch_chunk = 300;
        let ctx = SessionContext::new_with_config(
            SessionConfig::new()
                .with_target_partitions(3)
                .with_repartition_file_min_size(range as usize),
        );
        let log = PayloadTable::new(&root, listing.objects, opts, ScanLog::new())
            .register(&ctx, &root, "payloads")
            .unwrap();
        let r = ctx
            .sql("SELECT frame_offset FROM payloads ORDER BY frame_offset")
            .await
            .unwrap()
            .collect()
            .await;
        let (frames, error) = match r {
            Ok(batches) => {
                let frames = batches
                    .iter()
                    .flat_map(|b| b.column(0).as_primitive::<UInt64Type>().values().to_vec())
                    .collect();
                // What shows between ranges: fails under the fail policy,
                // is recorded under skip.
                match log.settle(policy) {
                    Err(e) => (frames, Some((e.offset(), e.kind().clone()))),
                    Ok(()) => (frames, None),
                }
            }
            Err(e) => {
                let fe = frame_error(&e).unwrap_or_else(|| panic!("not a frame error: {e}"));
                (Vec::new(), Some((fe.offset(), fe.kind().clone())))
            }
        };
        if policy == CorruptPolicy::Skip {
            assert!(error.is_none(), "skip policy: {error:?}");
        }
        let corrupt = log
            .corrupt()
            .into_iter()
            .map(|c| (c.offset, c.reason, c.skipped_bytes))
            .collect();
        Outcome {
            frames,
            corrupt,
            corrupt_count: log.totals().corrupt_frames,
            error,
        }
    })
}

/// Frames as separate blobs, so that corruptions can be spliced in.
fn frames_of(seed: u64, n: usize) -> Vec<Vec<u8>> {
    let mut rng = Rng(seed);
    (0..n)
        .map(|_| file_of(&[random_payload(&mut rng, 7, 120)]).0)
        .collect()
}

/// A frame whose prefix and chain are intact but whose body is not one zstd
/// frame: a smaller valid frame's body, zero-padded to the original length.
fn corrupt_body(frame: &[u8], small: &[u8]) -> Vec<u8> {
    let body_len = frame.len() - 4;
    let mut body = small[4..].to_vec();
    assert!(body.len() < body_len);
    body.resize(body_len, 0);
    let mut f = (body_len as u32).to_le_bytes().to_vec();
    f.extend_from_slice(&body);
    f
}

/// A frame holding a payload whose size is not a multiple of 8.
fn odd_size_frame() -> Vec<u8> {
    use tailor::format::payload::{PayloadWriter, encode_payload};
    let mut rng = Rng(4);
    let p = random_payload(&mut rng, 7, 5);
    let mut raw = Vec::new();
    encode_payload(&p.spec(), &mut raw);
    raw.truncate(raw.len() - 3);
    let mut out = Vec::new();
    PayloadWriter::new(1).write_raw_frame(&raw, &mut out);
    out
}

/// A frame of a one-point payload: smaller than any other.
fn tiny_frame() -> Vec<u8> {
    let p = P {
        version: 1,
        org: 7,
        metric: 1,
        kind: tailor::format::payload::Kind::Gauge,
        interval_s: 0,
        ts: vec![1],
        vals: vec![2],
        meta: String::new(),
    };
    file_of(&[p]).0
}

/// Files with every kind of corruption, alone and together.
fn corrupt_files() -> Vec<(&'static str, Vec<u8>)> {
    let small = tiny_frame();
    // Frames big enough to take a corrupt body made of `small`'s.
    let frames: Vec<Vec<u8>> = frames_of(21, 40)
        .into_iter()
        .filter(|f| f.len() > small.len() + 16)
        .take(24)
        .collect();
    assert_eq!(frames.len(), 24);
    let join = |fs: &[Vec<u8>]| fs.concat();
    let mut files = Vec::new();
    // A corrupt body (chain intact), and two in a row.
    let mut f = frames.clone();
    f[9] = corrupt_body(&f[9], &small);
    files.push(("corrupt_body", join(&f)));
    f[10] = corrupt_body(&f[10], &small);
    files.push(("two_corrupt_bodies", join(&f)));
    // A bad length prefix.
    let mut f = frames.clone();
    f[12][..4].copy_from_slice(&5u32.to_le_bytes());
    files.push(("bad_body_len", join(&f)));
    // A length prefix that is wrong but in range: the frame does not chain.
    let mut f = frames.clone();
    let wrong = f[12].len() as u32 - 4 + 500;
    f[12][..4].copy_from_slice(&wrong.to_le_bytes());
    files.push(("wrong_body_len", join(&f)));
    // Garbage between two frames.
    let mut f = frames.clone();
    f.insert(7, vec![0x55; 37]);
    files.push(("garbage", join(&f)));
    // A payload of a size that is not a multiple of 8.
    let mut f = frames.clone();
    f.insert(15, odd_size_frame());
    files.push(("odd_size", join(&f)));
    // A frame wrapped twice (a writer bug): the outer body is a whole
    // frame, prefix and all, so it does not start with the zstd magic; the
    // inner frame is well formed and chains to the next frame. Only the
    // outer frame is in the chain: a range starting inside it must not
    // read the inner one.
    let mut f = frames.clone();
    let inner = f[11].clone();
    let mut outer = (inner.len() as u32).to_le_bytes().to_vec();
    outer.extend_from_slice(&inner);
    f[11] = outer;
    files.push(("frame_in_a_frame", join(&f)));
    // A corrupt body that starts like a zstd frame and ends with a whole,
    // well-formed frame that chains: a range that starts inside the body
    // finds that frame by the sync rule, one that reads the chain skips
    // the body by its length.
    let mut f = frames.clone();
    f[11] = hidden_in_corrupt_body(&small[4..], 40, &frames[11]);
    files.push(("chaining_frame_in_a_body", join(&f)));
    // Bytes lost from the middle of a body, its length prefix left as it
    // was: the frame runs on into the next one, whose real start now lies
    // inside it (found by fuzzing: a range starting there read that frame,
    // the walk from byte 0 does not).
    let mut f = frames.clone();
    let mid = f[11].len() / 2;
    f[11].drain(mid..mid + 38);
    files.push(("bytes_lost_in_a_body", join(&f)));
    // Trailing bytes and a truncated tail.
    let mut t = join(&frames);
    t.extend_from_slice(&[1, 2, 3]);
    files.push(("trailing", t));
    let mut t = join(&frames);
    t.truncate(t.len() - 5);
    files.push(("truncated", t));
    // Everything at once.
    let mut f = frames.clone();
    f[3] = corrupt_body(&f[3], &small);
    f[4] = corrupt_body(&f[4], &small);
    f[8][..4].copy_from_slice(&u32::MAX.to_le_bytes());
    f.insert(12, vec![0xAA; 101]);
    f.insert(16, odd_size_frame());
    f[20] = corrupt_body(&f[20], &small);
    let mut t = join(&f);
    t.truncate(t.len() - 9);
    files.push(("everything", t));
    files
}

#[test]
fn corrupt_files_read_the_same_at_every_range_size() {
    for (name, file) in corrupt_files() {
        let len = file.len() as u64;
        for policy in [CorruptPolicy::Skip, CorruptPolicy::Fail] {
            let whole = scan_file(&file, len, policy, false);
            if policy == CorruptPolicy::Skip {
                assert!(
                    whole.corrupt_count >= 1 && whole.corrupt_count == whole.corrupt.len() as u64,
                    "{name}: {whole:?}"
                );
                assert!(
                    !whole
                        .corrupt
                        .iter()
                        .any(|(_, r, _)| r.contains("no readable frame")),
                    "{name}: a real reason for every corrupt frame: {whole:?}"
                );
                // Every byte is in a frame read or in a skipped region.
                let frame_bytes: u64 = whole
                    .frames
                    .iter()
                    .map(|&o| {
                        let o = o as usize;
                        4 + u32::from_le_bytes(file[o..o + 4].try_into().unwrap()) as u64
                    })
                    .sum();
                let skipped: u64 = whole.corrupt.iter().map(|c| c.2).sum();
                assert_eq!(frame_bytes + skipped, len, "{name}: {whole:?}");
            } else {
                assert!(whole.error.is_some(), "{name}: the fail policy must fail");
            }
            for range in [7, 50, 333, 1000, 4096, len / 3 + 1] {
                for remote in [false, true] {
                    if remote && ![50, 1000].contains(&range) {
                        continue;
                    }
                    let split = scan_file(&file, range, policy, remote);
                    if policy == CorruptPolicy::Skip {
                        assert_eq!(split, whole, "{name}: range {range}, remote {remote}");
                    } else if name != "everything" {
                        // The same error, whether a range met it while
                        // reading or it showed between two ranges.
                        assert_eq!(
                            split.error, whole.error,
                            "{name}: range {range}, remote {remote}"
                        );
                    } else {
                        // Several corruptions under the fail policy: which
                        // range fails first depends on scheduling.
                        assert!(split.error.is_some(), "{name}: range {range}");
                    }
                }
            }
        }
    }
}

/// A length prefix that is wrong but within the limits and the object: the
/// frame neither is one zstd frame nor chains, so the walk does not trust
/// the length to skip it (that would drop the good frames it spans) and
/// resynchronises at the next frame; only the damaged frame is lost.
#[test]
fn a_wrong_length_prefix_loses_only_its_own_frame() {
    let frames = frames_of(21, 24);
    let mut damaged = frames.clone();
    let real = frames[12].len() as u64;
    damaged[12][..4].copy_from_slice(&(real as u32 - 4 + 500).to_le_bytes());
    let file = damaged.concat();
    let mut offsets = Vec::new();
    let mut at = 0u64;
    for f in &frames {
        offsets.push(at);
        at += f.len() as u64;
    }
    let bad = offsets.remove(12);
    for range in [file.len() as u64, 7, 100, 333, 4096] {
        let out = scan_file(&file, range, CorruptPolicy::Skip, false);
        assert_eq!(out.frames, offsets, "range {range}");
        assert_eq!(out.corrupt.len(), 1, "range {range}: {:?}", out.corrupt);
        assert_eq!(
            (out.corrupt[0].0, out.corrupt[0].2),
            (bad, real),
            "range {range}"
        );
        let failed = scan_file(&file, range, CorruptPolicy::Fail, false);
        assert_eq!(failed.error.map(|e| e.0), Some(bad), "range {range}");
    }
}

/// A remote object that shrank after it was listed (a store without ETags,
/// so only the lengths show it): the store serves fewer bytes than asked
/// for, and the cursor fails with an I/O error naming the object, never a
/// panic, at every chunk size.
#[test]
fn an_object_shorter_than_listed_is_an_io_error_not_a_panic() {
    let mut rng = Rng(31);
    let payloads: Vec<P> = (0..30).map(|_| random_payload(&mut rng, 7, 30)).collect();
    let (file, offsets) = file_of(&payloads);
    let len = file.len() as u64;
    let rt = rt();
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let path = Path::from("shrunk.tsp");
    // Cut inside frame 20's body.
    rt.block_on(store.put(
        &path,
        PutPayload::from(file[..offsets[20] as usize + 10].to_vec()),
    ))
    .unwrap();
    for chunk in [64, 1000, 1 << 20] {
        let src = ObjectBytes::Store {
            store: Arc::clone(&store),
            location: path.clone(),
            e_tag: None,
        };
        let mut c = FrameCursor::new(src, len, 0..len, true).with_chunk(chunk);
        let e = rt.block_on(async {
            loop {
                match c.next().await {
                    Ok(Some(_)) => continue,
                    Ok(None) => panic!("chunk {chunk}: read to the end of a shrunk object"),
                    Err(e) => break e,
                }
            }
        });
        let msg = e.to_string();
        assert!(
            msg.contains("shrunk.tsp") && msg.contains("changed after it was listed"),
            "chunk {chunk}: {msg}"
        );
    }
}

/// The frame-reader fuzz target's first finding, kept as a test: a corrupt
/// object read in 1-byte ranges under the fail policy, where a range takes
/// a false frame boundary inside another range's chain and so reads a frame
/// that range also read. The reader cannot see that alone; the scan's
/// tiling check must (it fails the job with `RangesOverlap`, exit 65). The
/// input's first three bytes are the fuzz target's: range size (u16 LE,
/// plus one) and policy (odd: skip).
#[test]
fn a_frame_read_by_two_ranges_is_caught_by_the_tiling_check() {
    use tailor::datasource::scan_log::RangeRecord;
    let data = std::fs::read("tests/data/fuzz/frame_reader-double-read.bin").unwrap();
    assert_eq!(data[2] & 1, 0, "fail policy");
    let range = 1 + u64::from(u16::from_le_bytes([data[0], data[1]]));
    let object = Bytes::copy_from_slice(&data[3..]);
    let len = object.len() as u64;
    let log = ScanLog::new();
    let mut seen = std::collections::BTreeSet::new();
    let mut twice = Vec::new();
    let mut start = 0;
    while start < len {
        let end = (start + range).min(len);
        let mut c = FrameCursor::new(ObjectBytes::Mapped(object.clone()), len, start..end, false);
        let mut failed = false;
        loop {
            match rt().block_on(c.next()) {
                Ok(Some(Step::Frame(f))) => {
                    if !seen.insert(f.offset) {
                        twice.push(f.offset);
                    }
                }
                Ok(Some(Step::Skipped { .. })) => panic!("the fail policy skips nothing"),
                Ok(None) => break,
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        if !failed {
            log.record_range(RangeRecord::of("o", start..end, &c));
        }
        start = end;
    }
    assert!(
        !twice.is_empty(),
        "the input no longer makes two ranges read one frame"
    );
    let errors = log.tiling_errors();
    assert!(!errors.is_empty(), "frames {twice:?} read twice, unseen");
    assert!(
        errors.iter().all(|e| e.key == "o" && e.error.offset < len),
        "{errors:?}"
    );
}
