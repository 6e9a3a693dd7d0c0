//! Splitting files into byte ranges: every frame is read by exactly one
//! range, none is invented, at many range sizes, local and remote, with fake
//! frame starts planted inside compressed bodies.

use std::sync::Arc;

use bytes::Bytes;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use tailor::datasource::reader::{FrameCursor, ObjectBytes, Step};
use tailor::format::payload::{MAX_BODY_LEN, ZSTD_MAGIC};

use crate::common::{P, Rng, file_of, random_payload, rt};

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
            // The range, one frame (the candidate or the last one) and a look-ahead.
            assert!(
                fetched <= (e - s) + 2 * max_frame + 16,
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
