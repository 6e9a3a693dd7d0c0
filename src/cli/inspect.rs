//! `tailor inspect`: a manifest's or a data file's contents.

use std::process::ExitCode;

use clap::Args;

use crate::datasource::reader::map_file;
use crate::format::tsf;
use crate::job::JobError;
use crate::job::manifest::Manifest;
use crate::job::output::data_file_error;

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// A local `_manifest.json` or `.tsf` data file.
    pub path: std::path::PathBuf,
    /// Print one series' points: ORG:METRIC (in a manifest: from the data
    /// file that holds it).
    #[arg(long)]
    pub series: Option<String>,
    /// Most series (or points) to list.
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
    /// Bytes by codec: for each codec byte, blocks, points and the bytes a
    /// point its timestamp and value sections take.
    #[arg(long)]
    pub stats: bool,
}

pub async fn main(a: InspectArgs) -> Result<ExitCode, JobError> {
    let bytes = map_file(&a.path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            JobError::Config(format!("{} does not exist", a.path.display()))
        }
        _ => JobError::io(format_args!("reading {}", a.path.display()), e),
    })?;
    if a.path.extension().is_some_and(|e| e == "json") {
        let m = Manifest::parse(&bytes, &a.path.display().to_string())?;
        println!(
            "manifest {} window {}..{} run {}: {} series, {} points, {} files, {} inputs",
            m.location,
            m.window_from,
            m.window_to,
            m.run_id,
            m.series,
            m.points,
            m.files.len(),
            m.inputs.len()
        );
        for f in &m.files {
            println!(
                "  {} {} bytes, {} series, {} points, crc32c {:08x}, series {:?}..{:?}",
                f.path, f.bytes, f.series, f.points, f.crc32c, f.first_series, f.last_series
            );
        }
        println!(
            "  dropped: {} duplicate points ({} conflicting), {} misrouted payloads, {} corrupt frames",
            m.dropped.duplicate_points,
            m.dropped.conflicting_duplicate_points,
            m.dropped.misrouted_payloads,
            m.dropped.corrupt_frames
        );
        let Some(sel) = &a.series else {
            return Ok(ExitCode::SUCCESS);
        };
        // The one file whose series range holds it, next to the manifest.
        let key = parse_series(sel)?;
        // In a window of parts, only its part's files can hold it.
        let part = crate::format::part::part_of(key.0, key.1, m.settings.parts);
        let f = m
            .files
            .iter()
            .find(|f| {
                f.part.is_none_or(|p| p == part)
                    && (f.first_series[0], f.first_series[1]) <= key
                    && key <= (f.last_series[0], f.last_series[1])
            })
            .ok_or_else(|| not_in(key, &a.path))?;
        let path = a
            .path
            .parent()
            .unwrap_or(std::path::Path::new("."))
            .join(&f.path);
        let bytes = map_file(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => JobError::BadOutput(format!(
                "data file {} named by {}: {e}",
                path.display(),
                a.path.display()
            )),
            _ => JobError::io(format_args!("reading {}", path.display()), e),
        })?;
        return show_series(&open(&bytes, &path)?, &path, key, a.limit);
    }
    let reader = open(&bytes, &a.path)?;
    let series = reader.footer().series();
    if let Some(sel) = &a.series {
        let (org, metric) = parse_series(sel)?;
        return show_series(&reader, &a.path, (org, metric), a.limit);
    }
    let points: u64 = series.iter().map(|s| s.n_points).sum();
    if a.stats {
        return stats(&bytes, &reader, points).map_err(|e| data_file_error(a.path.display(), e));
    }
    println!(
        "{}: {} bytes, {} series, {} points ({:.2} bytes/point)",
        a.path.display(),
        bytes.len(),
        series.len(),
        points,
        bytes.len() as f64 / points.max(1) as f64
    );
    for s in series.iter().take(a.limit) {
        println!(
            "  {}:{} kind {} interval_s {} points {} ts {}..{} blocks {} metadata {:?}",
            s.org_id,
            s.metric_id,
            s.kind,
            s.interval_s,
            s.n_points,
            s.min_ts,
            s.max_ts,
            s.blocks.len(),
            s.metadata
        );
    }
    if series.len() > a.limit {
        println!("  … {} more", series.len() - a.limit);
    }
    Ok(ExitCode::SUCCESS)
}

/// A data file's reader; a format error names the file.
fn open<'a>(bytes: &'a [u8], path: &std::path::Path) -> Result<tsf::FileReader<'a>, JobError> {
    tsf::FileReader::open(bytes).map_err(|e| data_file_error(path.display(), e))
}

fn not_in((org, metric): (u64, u64), path: &std::path::Path) -> JobError {
    JobError::Config(format!(
        "series {org}:{metric} is not in {}",
        path.display()
    ))
}

fn parse_series(sel: &str) -> Result<(u64, u64), JobError> {
    sel.split_once(':')
        .and_then(|(o, m)| Some((o.parse::<u64>().ok()?, m.parse::<u64>().ok()?)))
        .ok_or_else(|| JobError::Config(format!("--series {sel:?}: expected ORG:METRIC")))
}

/// `--series`: one series' header and (up to `limit`) points.
fn show_series(
    reader: &tsf::FileReader<'_>,
    path: &std::path::Path,
    (org, metric): (u64, u64),
    limit: usize,
) -> Result<ExitCode, JobError> {
    let entry = reader
        .footer()
        .find(org, metric)
        .ok_or_else(|| not_in((org, metric), path))?;
    let (ts, vals) = reader
        .read_series(entry)
        .map_err(|e| data_file_error(path.display(), e))?;
    println!(
        "series {org}:{metric} kind {} interval_s {} metadata {:?}: {} points",
        entry.kind,
        entry.interval_s,
        entry.metadata,
        ts.len()
    );
    for (t, v) in ts.iter().zip(&vals).take(limit) {
        println!("  {t}\t{}\t0x{v:016x}", f64::from_bits(*v));
    }
    if ts.len() > limit {
        println!("  … {} more", ts.len() - limit);
    }
    Ok(ExitCode::SUCCESS)
}

/// `--stats`: where a file's bytes go, by codec.
fn stats(
    bytes: &[u8],
    reader: &tsf::FileReader<'_>,
    points: u64,
) -> Result<ExitCode, tsf::TsfError> {
    // codec -> (blocks, points, timestamp section bytes, value section bytes)
    let mut by_codec = std::collections::BTreeMap::<u8, [u64; 4]>::new();
    for s in reader.footer().series() {
        for b in &s.blocks {
            let block = tsf::block_bytes(bytes, b)?;
            let (ts_len, val_len) = tsf::block_sections(b, block)?;
            let e = by_codec.entry(b.codec).or_default();
            e[0] += 1;
            e[1] += u64::from(b.n_points);
            e[2] += ts_len as u64;
            e[3] += val_len as u64;
        }
    }
    let p = points.max(1) as f64;
    let t = reader.trailer();
    println!(
        "{} bytes, {} points: {:.3} bytes/point ({:.3} footer)",
        bytes.len(),
        points,
        bytes.len() as f64 / p,
        t.footer_len as f64 / p
    );
    println!(
        "codec  timestamps           values                   blocks     points  ts B/pt  val B/pt"
    );
    for (c, [blocks, n, ts, vals]) in &by_codec {
        let n = (*n).max(1) as f64;
        println!(
            "0x{c:02x}   {:<20} {:<24} {blocks:>6} {:>10} {:>8.3} {:>9.3}",
            tsf::codec::ts_name(*c),
            tsf::codec::value_name(*c),
            n as u64,
            *ts as f64 / n,
            *vals as f64 / n
        );
    }
    Ok(ExitCode::SUCCESS)
}
