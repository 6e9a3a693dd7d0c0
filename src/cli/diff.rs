//! `tailor diff`: exit 0 when identical, 1 when different, 2 on error.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::cli::parse_hour;
use crate::datasource::listing::Hour;
use crate::job::JobError;
use crate::job::diff::{DiffConfig, diff};
use crate::job::error::IoContext;

#[derive(Debug, Args)]
pub struct DiffArgs {
    /// The old output root (as given to `tailor run --output`).
    #[arg(long)]
    pub old: String,
    /// The new output root.
    #[arg(long)]
    pub new: String,
    /// Shards to compare (repeatable; default: every shard on either side).
    #[arg(long = "shard")]
    pub shards: Vec<String>,
    /// Only windows starting at or after this hour. Windows are compared
    /// whole: one only partly inside --from/--to is an error.
    #[arg(long, value_parser = parse_hour)]
    pub from: Option<Hour>,
    /// Only windows ending at or before this hour.
    #[arg(long, value_parser = parse_hour)]
    pub to: Option<Hour>,
    /// Only these orgs (repeatable), for per-customer cutovers.
    #[arg(long = "org")]
    pub orgs: Vec<u64>,
    /// Write the JSON report here.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Write every differing point to this Parquet file (default: next to
    /// the report, `<report>.points.parquet`, when --report is given).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Examples per category and shard in the summary.
    #[arg(long, default_value_t = 5)]
    pub examples: usize,
    /// Memory pool for the joins (e.g. 256MiB); the diff streams either way.
    #[arg(long)]
    pub memory_limit: Option<String>,
    /// Check a migration's handover: --old and --new are its two systems,
    /// each checked for points it wrote outside what this file gives it
    /// (and for windows written with other cutovers); old is not compared
    /// with new.
    #[arg(long)]
    pub migration: Option<PathBuf>,
    /// With --migration: an output that wrote every point (`run --role
    /// shadow`), compared with the merged view of --old and --new (lost or
    /// doubled points at a cutover show as point_old_only / point_new_only,
    /// old being the shadow).
    #[arg(long, requires = "migration")]
    pub shadow: Option<String>,
}

pub async fn main(a: DiffArgs) -> Result<ExitCode, JobError> {
    let cfg = DiffConfig {
        old: a.old,
        new: a.new,
        shards: a.shards,
        from: a.from,
        to: a.to,
        orgs: a.orgs,
        examples: a.examples,
        out: a.out.or_else(|| {
            a.report
                .as_ref()
                .map(|r| r.with_extension("points.parquet"))
        }),
        memory_limit: a
            .memory_limit
            .as_deref()
            .map(crate::job::config::parse_size)
            .transpose()
            .map_err(JobError::Config)?,
        migration: a
            .migration
            .as_deref()
            .map(crate::job::migration::Migration::load)
            .transpose()?
            .map(std::sync::Arc::new),
        shadow: a.shadow,
    };
    let report = diff(&cfg).await?;
    if let Some(p) = &a.report {
        std::fs::write(p, serde_json::to_string_pretty(&report).expect("json"))
            .at(format_args!("writing report {}", p.display()))?;
    }
    // The verdict is the exit code: a reader that stops reading the
    // summary (`| head`) does not change it.
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        if let Err(e) = out
            .write_all(report.summary().as_bytes())
            .and_then(|()| out.flush())
            && e.kind() != std::io::ErrorKind::BrokenPipe
        {
            return Err(JobError::io("writing to stdout", e));
        }
    }
    Ok(if report.identical() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
