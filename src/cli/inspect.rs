//! `tailor inspect`: a manifest's or a data file's contents.

use std::process::ExitCode;

use clap::Args;

use crate::datasource::reader::map_file;
use crate::format::tsf;
use crate::job::JobError;
use crate::job::manifest::Manifest;

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// A local `_manifest.json` or `.tsf` data file.
    pub path: std::path::PathBuf,
    /// Print one series' points: ORG:METRIC.
    #[arg(long)]
    pub series: Option<String>,
    /// Most series (or points) to list.
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
}

pub async fn main(a: InspectArgs) -> Result<ExitCode, JobError> {
    let bytes = map_file(&a.path)?;
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
        return Ok(ExitCode::SUCCESS);
    }
    let reader = tsf::FileReader::open(&bytes)?;
    let series = reader.footer().series();
    if let Some(sel) = &a.series {
        let (org, metric) = sel
            .split_once(':')
            .and_then(|(o, m)| Some((o.parse::<u64>().ok()?, m.parse::<u64>().ok()?)))
            .ok_or_else(|| JobError::Config(format!("--series {sel:?}: expected ORG:METRIC")))?;
        let Some(entry) = reader.footer().find(org, metric) else {
            return Err(JobError::Config(format!(
                "series {org}:{metric} is not in {}",
                a.path.display()
            )));
        };
        let (ts, vals) = reader.read_series(entry)?;
        println!(
            "series {org}:{metric} kind {} interval_s {} metadata {:?}: {} points",
            entry.kind,
            entry.interval_s,
            entry.metadata,
            ts.len()
        );
        for (t, v) in ts.iter().zip(&vals).take(a.limit) {
            println!("  {t}\t{}\t0x{v:016x}", f64::from_bits(*v));
        }
        return Ok(ExitCode::SUCCESS);
    }
    let points: u64 = series.iter().map(|s| s.n_points).sum();
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
