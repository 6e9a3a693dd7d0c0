//! The frame reader with range sync: arbitrary bytes read as one object
//! split into byte ranges at a size taken from the input (fail policy), or
//! whole (skip policy, as the job reads objects under it). Every range's
//! cursor must end; frames it yields lie inside the object and start at or
//! after its range's start. A frame read by two ranges (a range took a
//! false frame boundary inside another's chain) must be caught by the
//! scan's tiling check, which fails the job under the fail policy, as the
//! job does: the ranges are recorded in a `ScanLog` as the job records
//! them. (A range may read a frame that starts past its end: one that does
//! not chain, which no later range's sync would take; see
//! `datasource/reader.rs`.)
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use tailor::datasource::reader::{FrameCursor, ObjectBytes, Step};
use tailor::datasource::scan_log::{RangeRecord, ScanLog};

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let skip = data[2] & 1 == 1;
    let object = Bytes::copy_from_slice(&data[3..]);
    let len = object.len() as u64;
    // The skip policy reads objects whole (`partitions::whole_files_spread`:
    // a range of a corrupt object could take a false frame boundary, which
    // only the fail policy's tiling check turns into an error).
    let range = if skip {
        len.max(1)
    } else {
        1 + u16::from_le_bytes([data[0], data[1]]) as u64
    };
    let log = ScanLog::new();
    let mut starts = std::collections::BTreeSet::new();
    let mut twice = None;
    // A range that fails fails the job (fail policy): nothing to check.
    let mut failed = false;
    let mut start = 0;
    while start < len.max(1) {
        let end = (start + range).min(len);
        let mut c = FrameCursor::new(ObjectBytes::Mapped(object.clone()), len, start..end, skip);
        let mut steps = 0u64;
        let mut ended = false;
        loop {
            match futures::executor::block_on(c.next()) {
                Ok(Some(Step::Frame(f))) => {
                    assert!(f.offset >= start, "frame {} before its range {start}..{end}", f.offset);
                    assert!(f.offset + 4 + f.body.len() as u64 <= len);
                    if !starts.insert(f.offset) {
                        twice.get_or_insert(f.offset);
                    }
                }
                Ok(Some(Step::Skipped { error, .. })) => assert!(error.offset <= len),
                Ok(None) => {
                    ended = true;
                    break;
                }
                Err(_) => {
                    failed = true;
                    break;
                }
            }
            steps += 1;
            assert!(steps <= len + 2, "the cursor does not end");
        }
        if ended {
            log.record_range(RangeRecord::of("o", start..end, &c));
        }
        start = end.max(start + 1);
    }
    if let Some(offset) = twice
        && !skip
        && !failed
    {
        assert!(
            !log.tiling_errors().is_empty(),
            "frame {offset} read twice and the tiling check does not see it"
        );
    }
    if skip {
        assert!(twice.is_none(), "frame read twice in one whole-object read");
    }
});
