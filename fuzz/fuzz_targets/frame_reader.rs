//! The frame reader with range sync: arbitrary bytes read as one object
//! split into byte ranges at a size taken from the input, under both
//! corrupt-frame policies. Every range's cursor must end; frames it
//! yields lie inside the object, start at or after its range's start, and
//! each frame is yielded by one range only. (A range may read a frame that
//! starts past its end: one that does not chain, which no later range's
//! sync would take; see `datasource/reader.rs`.)
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use tailor::datasource::reader::{FrameCursor, ObjectBytes, Step};

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let range = 1 + u16::from_le_bytes([data[0], data[1]]) as u64;
    let skip = data[2] & 1 == 1;
    let object = Bytes::copy_from_slice(&data[3..]);
    let len = object.len() as u64;
    let mut starts = std::collections::BTreeSet::new();
    let mut start = 0;
    while start < len.max(1) {
        let end = (start + range).min(len);
        let mut c = FrameCursor::new(ObjectBytes::Mapped(object.clone()), len, start..end, skip);
        let mut steps = 0u64;
        loop {
            match futures::executor::block_on(c.next()) {
                Ok(Some(Step::Frame(f))) => {
                    assert!(f.offset >= start, "frame {} before its range {start}..{end}", f.offset);
                    assert!(f.offset + 4 + f.body.len() as u64 <= len);
                    assert!(starts.insert(f.offset), "frame {} read twice", f.offset);
                }
                Ok(Some(Step::Skipped { error, .. })) => assert!(error.offset <= len),
                Ok(None) | Err(_) => break,
            }
            steps += 1;
            assert!(steps <= len + 2, "the cursor does not end");
        }
        start = end.max(start + 1);
    }
});
