//! The physical floor of a scan, for benchmarks: every frame of the input
//! decompressed with zstd into one reused buffer per thread, nothing else
//! (no validation, no arrays, no DataFusion). `tailor floor`.

use std::time::Instant;

use rayon::prelude::*;
use serde::Serialize;

use crate::datasource::listing::Listing;
use crate::datasource::reader::map_file;
use crate::datasource::store::StoreRoot;
use crate::format::payload::MAX_PAYLOAD_LEN;
use crate::job::error::{IoContext, JobError};

#[derive(Debug, Clone, Serialize)]
pub struct FloorResult {
    pub threads: usize,
    pub files: u64,
    pub frames: u64,
    pub compressed_bytes: u64,
    pub decompressed_bytes: u64,
    pub seconds: f64,
    pub mb_per_s: f64,
}

/// Decompresses every frame of the (local) listed files on `threads` threads.
pub fn floor(root: &StoreRoot, listing: &Listing, threads: usize) -> Result<FloorResult, JobError> {
    if !root.local {
        return Err(JobError::Config(
            "the floor is measured on local files only".into(),
        ));
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads.max(1))
        .build()
        .map_err(|e| JobError::Internal(e.to_string()))?;
    let paths: Vec<std::path::PathBuf> = listing
        .objects
        .iter()
        .map(|o| crate::datasource::store::local_file(&o.meta.location))
        .collect();
    let start = Instant::now();
    let totals = pool.install(|| {
        paths
            .par_iter()
            .map_init(
                || (zstd_safe::DCtx::create(), vec![0u8; MAX_PAYLOAD_LEN]),
                |(dctx, buf), path| -> Result<(u64, u64, u64), JobError> {
                    let bytes = map_file(path).at(format_args!("reading {}", path.display()))?;
                    let (mut pos, mut frames, mut out) = (0usize, 0u64, 0u64);
                    while pos + 4 <= bytes.len() {
                        let len =
                            u32::from_le_bytes(bytes[pos..pos + 4].try_into().unwrap()) as usize;
                        let body = &bytes[pos + 4..(pos + 4 + len).min(bytes.len())];
                        let n = dctx.decompress(&mut buf[..], body).map_err(|c| {
                            JobError::BadOutput(format!(
                                "{}: zstd: {}",
                                path.display(),
                                zstd_safe::get_error_name(c)
                            ))
                        })?;
                        out += n as u64;
                        frames += 1;
                        pos += 4 + len;
                    }
                    Ok((frames, bytes.len() as u64, out))
                },
            )
            .try_reduce(|| (0, 0, 0), |a, b| Ok((a.0 + b.0, a.1 + b.1, a.2 + b.2)))
    })?;
    let seconds = start.elapsed().as_secs_f64();
    Ok(FloorResult {
        threads,
        files: paths.len() as u64,
        frames: totals.0,
        compressed_bytes: totals.1,
        decompressed_bytes: totals.2,
        seconds,
        mb_per_s: totals.1 as f64 / 1e6 / seconds.max(1e-9),
    })
}
