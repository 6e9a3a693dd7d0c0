//! Helpers shared by the integration tests.

#![allow(dead_code)]

use std::sync::Arc;

use tailor::format::payload::{Kind, PayloadSpec, PayloadWriter};
use tailor::format::shard::ShardMap;

/// A small deterministic PRNG (splitmix64) for test data.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// An owned payload for tests.
#[derive(Debug, Clone, PartialEq)]
pub struct P {
    pub version: u16,
    pub org: u64,
    pub metric: u64,
    pub kind: Kind,
    pub interval_s: u32,
    pub ts: Vec<i64>,
    pub vals: Vec<u64>,
    pub meta: String,
}

impl P {
    pub fn spec(&self) -> PayloadSpec<'_> {
        PayloadSpec {
            version: self.version,
            org_id: self.org,
            metric_id: self.metric,
            kind: self.kind,
            interval_s: self.interval_s,
            timestamps: &self.ts,
            values: &self.vals,
            metadata: &self.meta,
        }
    }
}

/// A random payload of an org in shard org-mod-(org % 64).
pub fn random_payload(rng: &mut Rng, org: u64, max_points: u64) -> P {
    let n = 1 + rng.below(max_points) as usize;
    let version = if rng.below(3) == 0 { 1 } else { 2 };
    let mut ts = Vec::with_capacity(n);
    let mut vals = Vec::with_capacity(n);
    let base = rng.below(1_000_000) as i64 * 1000;
    for i in 0..n {
        ts.push(base + i as i64 * 10_000 - (rng.below(3) as i64) * 10_000);
        // Random bits: incompressible, so zstd stores raw blocks and the
        // compressed bodies contain arbitrary byte patterns (magic included).
        vals.push(match rng.below(6) {
            0 => f64::NAN.to_bits() | rng.below(1 << 40),
            1 => (-0.0f64).to_bits(),
            _ => rng.next_u64(),
        });
    }
    let meta = match rng.below(4) {
        0 => String::new(),
        1 => "host:wéb-1,env:prod".to_string(),
        _ => format!("host:h{},env:prod", rng.below(100)),
    };
    P {
        version,
        org,
        metric: rng.below(50),
        kind: if version == 1 {
            Kind::Gauge
        } else {
            Kind::from_u8(rng.below(3) as u8).unwrap()
        },
        interval_s: if version == 1 { 0 } else { 10 },
        ts,
        vals,
        meta,
    }
}

/// Frames `payloads` into one file; returns the bytes and each frame's offset.
pub fn file_of(payloads: &[P]) -> (Vec<u8>, Vec<u64>) {
    let mut w = PayloadWriter::new(1);
    let mut out = Vec::new();
    let mut offsets = Vec::new();
    for p in payloads {
        offsets.push(out.len() as u64);
        w.write_frame(&p.spec(), &mut out);
    }
    (out, offsets)
}

pub fn shard_map() -> Arc<ShardMap> {
    Arc::new(ShardMap::parse("modulus = 64\ndedicated = [2, 1001]\n").unwrap())
}

/// Plants a fake frame start (valid length + zstd magic) at `at` inside a
/// frame body, chaining to `chain_to` (absolute) when possible.
pub fn plant_fake_frame(file: &mut [u8], at: usize, body_len: u32) {
    file[at..at + 4].copy_from_slice(&body_len.to_le_bytes());
    file[at + 4..at + 8].copy_from_slice(&tailor::format::payload::ZSTD_MAGIC);
}

/// A fresh temporary directory.
/// A frame wrapped in a corrupt body: `head` (a zstd frame's body, so the
/// outer body starts like one), `pad` zero bytes, then `inner`, a whole
/// frame that chains to whatever follows. A read of the chain skips the
/// outer frame by its length; a range starting inside it finds `inner` by
/// the sync rule.
pub fn hidden_in_corrupt_body(head: &[u8], pad: usize, inner: &[u8]) -> Vec<u8> {
    let len = head.len() + pad + inner.len();
    let mut outer = (len as u32).to_le_bytes().to_vec();
    outer.extend_from_slice(head);
    outer.resize(4 + head.len() + pad, 0);
    outer.extend_from_slice(inner);
    outer
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("tailor-test-")
        .tempdir()
        .unwrap()
}

/// A current-thread runtime for async tests that must stay on one thread.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A two-worker runtime, as the job runs under (`tailor run` uses one per
/// core; two is this machine's count and keeps tests independent of it).
pub fn rt_multi() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Every file under `root`, sorted by path (none when it does not exist).
pub fn files_under(root: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Every file under `root` with its bytes, by path relative to `root`.
pub fn files_by_path(root: &std::path::Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    files_under(root)
        .into_iter()
        .map(|p| {
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            (rel, std::fs::read(&p).unwrap())
        })
        .collect()
}

/// Of the shards a generated tree under `input` has, the one with the
/// most input bytes.
pub fn biggest_shard(input: &std::path::Path, shards: &[String]) -> String {
    let size = |s: &String| -> u64 {
        files_under(&input.join(s))
            .iter()
            .map(|p| std::fs::metadata(p).unwrap().len())
            .sum()
    };
    shards.iter().max_by_key(|s| size(s)).unwrap().clone()
}

/// `export` of `shard`'s committed output as CSV (value bits and
/// attributes included), through `file`.
pub fn export_csv(
    root: &tailor::datasource::store::StoreRoot,
    shard: &str,
    file: &std::path::Path,
) -> Vec<u8> {
    use tailor::job::export::{ExportFormat, export};
    rt().block_on(export(root, shard, None, None, ExportFormat::Csv, file))
        .unwrap();
    std::fs::read(file).unwrap()
}

/// Runs the shard job; on success, what it did.
pub fn run_job(
    c: &tailor::job::config::RunConfig,
) -> Result<tailor::job::run::RunStats, tailor::job::JobError> {
    let (stats, result) = rt_multi().block_on(tailor::job::run::run_shard(c));
    result.map(|()| stats)
}

/// One committed series, read back.
#[derive(Debug, Clone, PartialEq)]
pub struct S {
    pub org: u64,
    pub metric: u64,
    pub kind: u8,
    pub interval: u32,
    pub meta: String,
    pub ts: Vec<i64>,
    pub vals: Vec<u64>,
}

/// Every committed window of `shard` under `root`, in window order: its
/// name, its manifest and its series in key order (the one reader of
/// committed output the tests share).
pub async fn read_windows(
    root: &tailor::datasource::store::StoreRoot,
    shard: &str,
) -> Vec<(String, tailor::job::manifest::Manifest, Vec<S>)> {
    use tailor::job::manifest::{list_windows, read_manifest};
    let mut out = Vec::new();
    for w in list_windows(root, shard).await.unwrap() {
        let m = read_manifest(root, shard, &w).await.unwrap();
        let mut series = Vec::new();
        tailor::job::output::for_each_series(root, &m, |e, ts, vals| {
            series.push(S {
                org: e.org_id,
                metric: e.metric_id,
                kind: e.kind,
                interval: e.interval_s,
                meta: e.metadata.clone(),
                ts: ts.to_vec(),
                vals: vals.to_vec(),
            });
            Ok(())
        })
        .await
        .unwrap();
        out.push((w, m, series));
    }
    out
}

/// Every committed series of `shard` under `root`, window after window.
pub async fn read_series(root: &tailor::datasource::store::StoreRoot, shard: &str) -> Vec<S> {
    read_windows(root, shard)
        .await
        .into_iter()
        .flat_map(|(_, _, s)| s)
        .collect()
}

/// Writes one committed window by hand, with a given file size cap.
pub fn write_window(
    dir: &std::path::Path,
    shard: &str,
    window: &str,
    base: &tailor::job::manifest::Manifest,
    series: &[S],
    cap: u64,
) {
    let wdir = dir.join(shard).join(window);
    let data = wdir.join("data").join("hand");
    std::fs::create_dir_all(&data).unwrap();
    let mut files = Vec::new();
    let mut chunk: Vec<&S> = Vec::new();
    let flush = |chunk: &mut Vec<&S>, files: &mut Vec<tailor::job::manifest::ManifestFile>| {
        if chunk.is_empty() {
            return;
        }
        let mut w = tailor::format::tsf::FileWriter::new(
            Vec::new(),
            tailor::format::tsf::WriterOptions::default(),
        )
        .unwrap();
        for s in chunk.iter() {
            w.add_series(
                &tailor::format::tsf::SeriesHeader {
                    org_id: s.org,
                    metric_id: s.metric,
                    kind: s.kind,
                    interval_s: s.interval,
                    metadata: &s.meta,
                },
                &s.ts,
                &s.vals,
            )
            .unwrap();
        }
        let (bytes, sum) = w.finish().unwrap();
        let name = format!("part-{:05}.tsf", files.len());
        std::fs::write(data.join(&name), &bytes).unwrap();
        files.push(tailor::job::manifest::ManifestFile {
            path: format!("data/hand/{name}"),
            bytes: sum.bytes,
            crc32c: sum.crc32c,
            series: chunk.len() as u64,
            points: chunk.iter().map(|s| s.ts.len() as u64).sum(),
            first_series: [chunk[0].org, chunk[0].metric],
            last_series: [chunk.last().unwrap().org, chunk.last().unwrap().metric],
            part: None,
        });
        chunk.clear();
    };
    let mut size = 0u64;
    for s in series {
        chunk.push(s);
        size += s.ts.len() as u64 * 4 + 64;
        if size >= cap {
            flush(&mut chunk, &mut files);
            size = 0;
        }
    }
    flush(&mut chunk, &mut files);
    let m = tailor::job::manifest::Manifest {
        format: tailor::job::manifest::MANIFEST_FORMAT.into(),
        version: tailor::job::manifest::MANIFEST_VERSION,
        shard: shard.into(),
        window_from: base.window_from.clone(),
        window_to: base.window_to.clone(),
        location: format!("{shard}/{window}"),
        run_id: "hand".into(),
        series: series.len() as u64,
        points: series.iter().map(|s| s.ts.len() as u64).sum(),
        files,
        dropped: tailor::job::manifest::Dropped::default(),
        inputs: vec![],
        settings: tailor::job::manifest::OutputSettings {
            max_file_bytes: cap,
            ..base.settings.clone()
        },
    };
    std::fs::write(wdir.join("_manifest.json"), m.to_json()).unwrap();
}
