//! `tailor generate`: deterministic, realistic input trees in the spec's layout.
//!
//! Everything derives from one seed: the orgs (skewed sizes, some with
//! dedicated shards), their series (interval, kind, metadata), and for each
//! (hour, shard, Kafka partition) file a seed of its own, so files can be
//! generated in parallel and still come out byte-identical.
//!
//! What the trees contain, on purpose: series spread over many files and
//! partitions; verbatim and conflicting duplicates (at-least-once delivery);
//! unsorted and repeated timestamps inside payloads; v1 and v2 payloads
//! mixed; NaN with payload bits, ±inf, -0.0 and subnormal values; empty and
//! non-ASCII metadata; misrouted payloads; zero-byte files and non-`.tsp`
//! objects; optionally one file larger than a given size (over 4 GiB).

use std::sync::Arc;

use bytes::Bytes;
use object_store::ObjectStoreExt;
use object_store::PutPayload;
use object_store::buffered::BufWriter;
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::Serialize;
use tokio::io::AsyncWriteExt;

use crate::datasource::listing::Hour;
use crate::datasource::store::StoreRoot;
use crate::format::payload::{Kind, PayloadSpec, PayloadWriter};
use crate::format::shard::{Shard, ShardMap};
use crate::job::error::{IoContext, JobError, StoreContext};

/// What to generate.
#[derive(Debug, Clone, Serialize)]
pub struct GenerateOptions {
    pub seed: u64,
    /// Approximate total compressed bytes of payload files.
    pub target_bytes: u64,
    /// Number of orgs (sizes are Zipf-skewed).
    pub orgs: u64,
    /// Consecutive hours starting at `start_hour`.
    pub hours: u32,
    /// First hour, `YYYY-MM-DDTHH`.
    pub start_hour: String,
    /// Kafka partitions (files per shard and hour).
    pub partitions: u32,
    /// Only generate these shards (all shards that get orgs otherwise).
    pub only_shards: Option<Vec<String>>,
    /// Fraction of payloads delivered twice verbatim.
    pub dup_rate: f64,
    /// Fraction of payloads re-sent with different values (conflicts).
    pub conflict_rate: f64,
    /// Fraction of payloads written under a wrong shard.
    pub misroute_rate: f64,
    /// Fraction of version-1 payloads.
    pub v1_rate: f64,
    /// Largest points per payload.
    pub max_points: u32,
    /// Also write one file of at least this many bytes (0: none).
    pub big_file_bytes: u64,
    /// zstd level of the frames.
    pub zstd_level: i32,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            seed: 42,
            target_bytes: 64 << 20,
            orgs: 200,
            hours: 2,
            start_hour: "2026-11-21T00".into(),
            partitions: 4,
            only_shards: None,
            dup_rate: 0.02,
            conflict_rate: 0.01,
            misroute_rate: 0.002,
            v1_rate: 0.3,
            max_points: 1024,
            big_file_bytes: 0,
            zstd_level: 1,
        }
    }
}

/// What was generated.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GenerateSummary {
    pub files: u64,
    pub bytes: u64,
    pub frames: u64,
    pub points: u64,
    pub verbatim_duplicates: u64,
    pub conflicting_duplicates: u64,
    pub misrouted: u64,
    pub other_objects: u64,
    pub shards: Vec<String>,
}

#[derive(Debug, Clone)]
struct Series {
    org: u64,
    metric: u64,
    interval_ms: i64,
    kind: Kind,
    interval_s: u32,
    metadata: String,
    /// 0 gauge (2 decimals), 1 counter, 2 constant, 3 gauge with special
    /// values, 4 full-precision gauge
    shape: u8,
}

impl Series {
    /// A payload of this series (written under `org_id`, which differs
    /// from its own org when misrouted).
    fn spec<'a>(
        &self,
        org_id: u64,
        version: u16,
        timestamps: &'a [i64],
        values: &'a [u64],
        metadata: &'a str,
    ) -> PayloadSpec<'a> {
        PayloadSpec {
            version,
            org_id,
            metric_id: self.metric,
            kind: self.kind,
            interval_s: self.interval_s,
            timestamps,
            values,
            metadata,
        }
    }
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn seed_of(parts: &[u64]) -> u64 {
    parts.iter().fold(0x5EED_u64, |acc, &p| splitmix(acc ^ p))
}

/// Compressed bytes a generated point takes, measured (duplicates included).
const BYTES_PER_POINT: f64 = 6.3;

const HOSTS: &[&str] = &[
    "web-1",
    "web-2",
    "db-1",
    "cache-7",
    "wörker-ü",
    "节点-3",
    "api",
];

/// The orgs and series of a generated world, by shard.
fn world(opts: &GenerateOptions, map: &ShardMap) -> Vec<(Shard, Vec<Series>)> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed_of(&[opts.seed, 1]));
    // Org ids: the dedicated ones first (the biggest), then a mix of small and huge ids.
    let mut orgs: Vec<u64> = map.dedicated.iter().copied().collect();
    while (orgs.len() as u64) < opts.orgs.max(1) {
        let id = match rng.random_range(0..10) {
            0 => u64::MAX - rng.random_range(0..1000u64),
            1..=3 => rng.random_range(0..1_000_000u64),
            _ => rng.random_range(1000..10_000u64),
        };
        if !orgs.contains(&id) {
            orgs.push(id);
        }
    }
    orgs.truncate(opts.orgs.max(1) as usize);
    // Zipf weights by rank.
    let weights: Vec<f64> = (0..orgs.len())
        .map(|r| 1.0 / ((r + 1) as f64).powf(1.1))
        .collect();
    let total_w: f64 = weights.iter().sum();
    // Points per hour the target asks for, at the compressed bytes a point
    // these series measure at (zstd level 1 frames).
    let hours = opts.hours.max(1) as f64;
    let points_per_hour = (opts.target_bytes as f64 / BYTES_PER_POINT / hours).max(1.0);
    let mut by_shard: std::collections::BTreeMap<Shard, Vec<Series>> = Default::default();
    for (rank, &org) in orgs.iter().enumerate() {
        let org_points = points_per_hour * weights[rank] / total_w;
        // Intervals 1, 10, 15, 15, 60 s: a mean 900 points a series and hour.
        let n_series = (org_points / 900.0).ceil().max(1.0) as u64;
        let shard = map.shard_of(org);
        for m in 0..n_series {
            let interval_s = [10u32, 15, 15, 60, 1][rng.random_range(0..5)];
            let kind = Kind::from_u8(rng.random_range(0..3)).unwrap();
            let metadata = match rng.random_range(0..6) {
                0 => String::new(),
                1 => format!(
                    "host:{},env:prod,ünïcødé:✓",
                    HOSTS[rng.random_range(0..HOSTS.len())]
                ),
                _ => format!(
                    "host:{},env:{},service:svc-{}",
                    HOSTS[rng.random_range(0..HOSTS.len())],
                    ["prod", "staging"][rng.random_range(0..2)],
                    rng.random_range(0..50)
                ),
            };
            by_shard.entry(shard).or_default().push(Series {
                org,
                metric: splitmix(org ^ m.wrapping_mul(31)) % 1_000_000_007,
                interval_ms: interval_s as i64 * 1000,
                kind,
                interval_s,
                metadata,
                shape: [0u8, 0, 0, 1, 1, 2, 3, 4][rng.random_range(0..8)],
            });
        }
    }
    by_shard.into_iter().collect()
}

/// A gauge reading with two decimals, as agents report most gauges.
fn gauge(s: &Series, k: i64, rng: &mut ChaCha8Rng) -> f64 {
    let base = 50.0 + (s.metric % 200) as f64;
    let v = base + (k as f64 * 0.01).sin() * 20.0 + rng.random_range(-1.0..1.0);
    (v * 100.0).round() / 100.0
}

fn value(s: &Series, k: i64, rng: &mut ChaCha8Rng) -> u64 {
    match s.shape {
        0 => gauge(s, k, rng).to_bits(),
        1 => ((k * 3 + (s.metric as i64 % 7)) as f64).to_bits(),
        2 => 42.5f64.to_bits(),
        // Full precision (rates, ratios computed by the agent).
        4 => (gauge(s, k, rng) / 3.0).to_bits(),
        // A gauge with the odd special value.
        _ => match rng.random_range(0..40) {
            0 => f64::NAN.to_bits() | rng.random_range(1..0x7_ffff_ffffu64),
            1 => f64::INFINITY.to_bits(),
            2 => f64::NEG_INFINITY.to_bits(),
            3 => (-0.0f64).to_bits(),
            4 => rng.random_range(1..(1u64 << 52)), // subnormal
            5 => rng.next_u64(),                    // any bit pattern
            _ => gauge(s, k, rng).to_bits(),
        },
    }
}

/// One payload to be written into a file.
struct Chunk {
    series: u32,
    start_k: i64,
    len: u32,
}

/// Generates a tree under `root` and returns what it wrote.
pub async fn generate(
    root: &StoreRoot,
    map: &ShardMap,
    opts: &GenerateOptions,
) -> Result<GenerateSummary, JobError> {
    let start = crate::datasource::listing::Hour::parse(&opts.start_hour).ok_or_else(|| {
        JobError::Config(format!(
            "--start-hour {:?} is not an hour (YYYY-MM-DDTHH)",
            opts.start_hour
        ))
    })?;
    let start_ms = start.start_ms();
    let mut world = world(opts, map);
    if let Some(only) = &opts.only_shards {
        world.retain(|(s, _)| only.contains(&s.to_string()));
    }
    let all_shards: Vec<Shard> = world.iter().map(|(s, _)| *s).collect();
    let mut summary = GenerateSummary {
        shards: all_shards.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    // Files: (hour, shard, partition) -> bytes, generated in parallel with rayon.
    let mut jobs = Vec::new();
    for h in 0..opts.hours {
        for (si, _) in world.iter().enumerate() {
            for p in 0..opts.partitions.max(1) {
                jobs.push((h, si, p));
            }
        }
    }
    let world = Arc::new(world);
    let big_job = (opts.big_file_bytes > 0).then_some((0u32, 0usize, 0u32));
    // Generate in batches so that memory stays bounded (a file's bytes are
    // held until written).
    for batch in jobs.chunks(8) {
        let files: Vec<(String, Vec<u8>, GenerateSummary)> = batch
            .par_iter()
            .map(|&(h, si, p)| {
                let big = big_job == Some((h, si, p));
                gen_file(opts, map, &world, &all_shards, start_ms, h, si, p, big)
            })
            .collect();
        for (rel, bytes, s) in files {
            summary.files += 1;
            summary.bytes += bytes.len() as u64;
            summary.frames += s.frames;
            summary.points += s.points;
            summary.verbatim_duplicates += s.verbatim_duplicates;
            summary.conflicting_duplicates += s.conflicting_duplicates;
            summary.misrouted += s.misrouted;
            write_object(root, &rel, bytes).await?;
        }
    }
    // Noise: a zero-byte payload file, and non-payload objects.
    if let Some((shard, _)) = world.first() {
        let hour = ms_to_hour(start_ms);
        let dir = format!("{shard}/dt={}/hour={}", &hour[..10], &hour[11..]);
        write_object(root, &format!("{dir}/points+99+0000000000.tsp"), Vec::new()).await?;
        write_object(root, &format!("{dir}/_tmp"), b"partial upload".to_vec()).await?;
        write_object(
            root,
            &format!("{dir}/points+0+0000000000.tsp.crc"),
            vec![1, 2, 3, 4],
        )
        .await?;
        write_object(root, &format!("{dir}/_SUCCESS"), Vec::new()).await?;
        summary.files += 1;
        summary.other_objects += 3;
    }
    Ok(summary)
}

async fn write_object(root: &StoreRoot, rel: &str, bytes: Vec<u8>) -> Result<(), JobError> {
    let path = root.child(rel);
    let shown = root.display_of(&path);
    if bytes.len() < (64 << 20) {
        root.store
            .put(&path, PutPayload::from(Bytes::from(bytes)))
            .await
            .op("PUT", &shown)?;
        return Ok(());
    }
    let mut w = BufWriter::new(Arc::clone(&root.store), path);
    let what = format!("PUT (multipart) {shown}");
    for chunk in bytes.chunks(16 << 20) {
        w.write_all(chunk).await.at(&what)?;
    }
    w.shutdown().await.at(&what)?;
    Ok(())
}

/// The hour holding `ms` (milliseconds since the epoch), as the layout
/// names it.
fn ms_to_hour(ms: i64) -> String {
    Hour::of_ms(ms)
        .expect("generated hours are in chrono's range")
        .to_string()
}

/// The chunks of partition `p` (hour `h`, shard `si`): every series' grid
/// for the hour is cut into payloads, each sent to a partition chosen by a
/// per-chunk hash.
fn chunks_of(opts: &GenerateOptions, series: &[Series], h: u32, si: usize, p: u32) -> Vec<Chunk> {
    let parts = opts.partitions.max(1);
    let mut chunks = Vec::new();
    for (i, s) in series.iter().enumerate() {
        let n = 3_600_000 / s.interval_ms;
        let mut k = 0;
        let mut c = 0u64;
        while k < n {
            let hash = seed_of(&[opts.seed, 3, h as u64, si as u64, i as u64, c]);
            let len = 1 + (hash >> 40) as i64 % (opts.max_points.max(1) as i64).min(n - k).max(1);
            let len = len.min(n - k);
            if (hash % parts as u64) as u32 == p {
                chunks.push(Chunk {
                    series: i as u32,
                    start_k: k,
                    len: len as u32,
                });
            }
            k += len;
            c += 1;
        }
    }
    chunks
}

/// Payload version 1 at `opts.v1_rate`, 2 otherwise.
fn payload_version(opts: &GenerateOptions, rng: &mut ChaCha8Rng) -> u16 {
    if rng.random_bool(opts.v1_rate.clamp(0.0, 1.0)) {
        1
    } else {
        2
    }
}

/// Frames that re-deliver a few of partition `q`'s chunks of hour `h`
/// with corrected values (new value noise, now and then new metadata),
/// on the grid without jitter. The same bytes go at the end of `q`'s own
/// file and of the next partition's file (of the same file again when there
/// is one partition): conflicting duplicates, and a verbatim copy of them,
/// in two objects, so "last in input order wins" spans files.
fn redeliveries(
    opts: &GenerateOptions,
    series: &[Series],
    hour_ms: i64,
    h: u32,
    si: usize,
    q: u32,
) -> (Vec<u8>, u64, u64) {
    let mut rng =
        ChaCha8Rng::seed_from_u64(seed_of(&[opts.seed, 5, h as u64, si as u64, q as u64]));
    let mut w = PayloadWriter::new(opts.zstd_level);
    let (mut out, mut frames, mut points) = (Vec::new(), 0, 0);
    let (mut ts, mut vals, mut meta) = (Vec::new(), Vec::new(), String::new());
    for c in chunks_of(opts, series, h, si, q) {
        if !rng.random_bool(opts.conflict_rate.clamp(0.0, 1.0)) {
            continue;
        }
        let s = &series[c.series as usize];
        let ks = c.start_k..c.start_k + c.len as i64;
        ts.clear();
        ts.extend(ks.clone().map(|k| hour_ms + k * s.interval_ms));
        vals.clear();
        vals.extend(ks.map(|k| value(s, k, &mut rng)));
        meta.clear();
        meta.push_str(&s.metadata);
        if rng.random_range(0..4) == 0 {
            use std::fmt::Write;
            let _ = write!(meta, ",resent:{q}");
        }
        let spec = s.spec(s.org, payload_version(opts, &mut rng), &ts, &vals, &meta);
        w.write_frame(&spec, &mut out);
        frames += 1;
        points += ts.len() as u64;
    }
    (out, frames, points)
}

#[allow(clippy::too_many_arguments)]
fn gen_file(
    opts: &GenerateOptions,
    map: &ShardMap,
    world: &[(Shard, Vec<Series>)],
    all_shards: &[Shard],
    start_ms: i64,
    h: u32,
    si: usize,
    p: u32,
    big: bool,
) -> (String, Vec<u8>, GenerateSummary) {
    let (shard, series) = &world[si];
    let parts = opts.partitions.max(1);
    let hour_ms = start_ms + h as i64 * 3_600_000;
    let mut rng =
        ChaCha8Rng::seed_from_u64(seed_of(&[opts.seed, 2, h as u64, si as u64, p as u64]));
    let mut summary = GenerateSummary::default();
    let chunks = chunks_of(opts, series, h, si, p);
    // Big file on request: repeat the hour's chunks (as re-deliveries) until large enough.
    let mut out = Vec::with_capacity(if big {
        opts.big_file_bytes as usize + (64 << 20)
    } else {
        1 << 20
    });
    let mut w = PayloadWriter::new(opts.zstd_level);
    let mut ts = Vec::new();
    let mut vals = Vec::new();
    let mut meta = String::new();
    let mut last_frame: Option<(usize, usize)> = None;
    let mut last_points = 0u64;
    let mut last_misrouted = false;
    let mut round = 0u64;
    loop {
        for c in &chunks {
            let s = &series[c.series as usize];
            ts.clear();
            vals.clear();
            for j in 0..c.len as i64 {
                let k = c.start_k + j;
                let jitter = if rng.random_range(0..10) == 0 {
                    rng.random_range(-500..500)
                } else {
                    0
                };
                ts.push(hour_ms + k * s.interval_ms + jitter);
                vals.push(value(s, k + round as i64, &mut rng));
            }
            if ts.len() > 2 && rng.random_range(0..8) == 0 {
                // Unsorted, and sometimes a repeated timestamp.
                let a = rng.random_range(0..ts.len());
                let b = rng.random_range(0..ts.len());
                ts.swap(a, b);
                if rng.random_range(0..3) == 0 {
                    ts[a] = ts[b];
                }
            }
            let mut org = s.org;
            if rng.random_bool(opts.misroute_rate.clamp(0.0, 1.0)) && all_shards.len() > 1 {
                // An org of another shard, written here by mistake.
                let other = &world[(si + 1 + rng.random_range(0..world.len() - 1)) % world.len()];
                if let Some(os) = other.1.first() {
                    org = os.org;
                }
            } else if rng.random_bool(opts.misroute_rate.clamp(0.0, 1.0)) {
                // An org that may belong to no generated shard at all.
                org = u64::MAX / 3 + rng.random_range(0..100);
            }
            let misrouted = map.shard_of(org) != *shard;
            summary.misrouted += misrouted as u64;
            let version = payload_version(opts, &mut rng);
            // A quarter of the series have metadata that changes between
            // hours and partitions (a tag being rolled out): the series'
            // metadata is then its last payload's, in input order.
            meta.clear();
            meta.push_str(&s.metadata);
            if s.metric % 4 == 0 {
                use std::fmt::Write;
                let _ = write!(meta, ",rev:{h}.{p}.{round}");
            }
            let spec = s.spec(org, version, &ts, &vals, &meta);
            let start = out.len();
            let len = w.write_frame(&spec, &mut out);
            summary.frames += 1;
            summary.points += ts.len() as u64;
            if let Some((a, b)) = last_frame
                && rng.random_bool(opts.dup_rate.clamp(0.0, 1.0))
            {
                // Verbatim re-delivery of the previous frame.
                out.extend_from_within(a..b);
                summary.frames += 1;
                summary.points += last_points;
                summary.misrouted += last_misrouted as u64;
                summary.verbatim_duplicates += 1;
            }
            if rng.random_bool(opts.conflict_rate.clamp(0.0, 1.0)) {
                // Re-sent with corrected values: same timestamps, new bits
                // for every point (a NaN gets another payload, an infinity
                // becomes a NaN, a huge value that +1 cannot move flips its
                // last bit), and now and then a corrected kind or metadata.
                let changed: Vec<u64> = vals
                    .iter()
                    .map(|&v| {
                        let plus = (f64::from_bits(v) + 1.0).to_bits();
                        if plus == v { v ^ 1 } else { plus }
                    })
                    .collect();
                let fixed_meta = format!("{meta},corrected:1");
                let fix_meta = rng.random_range(0..4) == 0;
                let resent = PayloadSpec {
                    values: &changed,
                    version: 2,
                    kind: if rng.random_range(0..8) == 0 {
                        Kind::from_u8((s.kind as u8 + 1) % 3).unwrap()
                    } else {
                        s.kind
                    },
                    metadata: if fix_meta { &fixed_meta } else { &meta },
                    ..spec
                };
                w.write_frame(&resent, &mut out);
                summary.frames += 1;
                summary.points += ts.len() as u64;
                summary.misrouted += misrouted as u64;
                summary.conflicting_duplicates += 1;
            }
            last_frame = Some((start, start + len));
            last_points = ts.len() as u64;
            last_misrouted = misrouted;
        }
        round += 1;
        if !big || out.len() as u64 >= opts.big_file_bytes || chunks.is_empty() {
            break;
        }
    }
    if !big {
        // This partition's re-deliveries, then the previous partition's.
        for (copy, q) in [p, (p + parts - 1) % parts].into_iter().enumerate() {
            let (bytes, frames, points) = redeliveries(opts, series, hour_ms, h, si, q);
            out.extend_from_slice(&bytes);
            summary.frames += frames;
            summary.points += points;
            if copy == 0 {
                summary.conflicting_duplicates += frames;
            } else {
                summary.verbatim_duplicates += frames;
            }
        }
    }
    let hour = ms_to_hour(hour_ms);
    let offset = p as u64 * 1_000_000 + h as u64 * 10_000;
    let rel = format!(
        "{shard}/dt={}/hour={}/points+{p}+{offset:010}.tsp",
        &hour[..10],
        &hour[11..]
    );
    (rel, out, summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hours_follow_the_calendar() {
        assert_eq!(ms_to_hour(0), "1970-01-01T00");
        let h = Hour::parse("2028-02-28T23").unwrap();
        assert_eq!(ms_to_hour(h.start_ms() + 3_600_000), "2028-02-29T00");
        assert_eq!(ms_to_hour(h.start_ms() + 3_599_999), "2028-02-28T23");
        assert_eq!(ms_to_hour(-1), "1969-12-31T23");
    }
}
