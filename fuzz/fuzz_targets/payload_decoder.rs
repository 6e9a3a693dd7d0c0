//! The payload decoder on arbitrary bytes: a frame prefix, the zstd body's
//! checks, decompression into an 8-byte-aligned buffer, and the payload's
//! parse. Errors are fine; a panic, a hang or an allocation beyond the
//! spec's limits is a finding.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tailor::format::payload::{Decoder, check_body, parse_frame_prefix, parse_payload};

fuzz_target!(|data: &[u8]| {
    let mut dec = Decoder::new();
    let mut pos = 0usize;
    while pos < data.len() {
        let rest = &data[pos..];
        let Ok(len) = parse_frame_prefix(rest, pos as u64, rest.len() as u64) else {
            return;
        };
        let body = &rest[4..4 + len as usize];
        if let Ok(info) = check_body(body, pos as u64) {
            let mut buf = vec![0u64; info.content_size.div_ceil(8)];
            // SAFETY: u64 to bytes, within the allocation.
            let dst = unsafe {
                std::slice::from_raw_parts_mut(buf.as_mut_ptr() as *mut u8, info.content_size)
            };
            if dec.decompress_into(body, info, dst, pos as u64).is_ok()
                && let Ok(p) = parse_payload(dst, pos as u64)
            {
                assert_eq!(p.timestamps.len(), p.values.len());
            }
        }
        pos += 4 + len as usize;
    }
});
