//! `tailor export`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::cli::parse_hour;
use crate::datasource::listing::Hour;
use crate::datasource::store::StoreRoot;
use crate::job::JobError;
use crate::job::export::{ExportFormat, export, export_merged};

/// `--format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Parquet,
    Csv,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Output root URL (as given to `tailor run --output`).
    #[arg(
        long,
        required_unless_present = "migration",
        conflicts_with = "migration"
    )]
    pub output: Option<String>,
    /// The merged view of a migration: the old system's output root...
    #[arg(long, requires = "migration")]
    pub old: Option<String>,
    /// ...the new system's...
    #[arg(long, requires = "migration")]
    pub new: Option<String>,
    /// ...and the migration file: each org's points before its cutover from
    /// --old, from it on from --new (docs/migration.md).
    #[arg(long, requires_all = ["old", "new"])]
    pub migration: Option<PathBuf>,
    #[arg(long)]
    pub shard: String,
    /// Only windows starting at or after this hour.
    #[arg(long, value_parser = parse_hour)]
    pub from: Option<Hour>,
    /// Only windows ending at or before this hour.
    #[arg(long, value_parser = parse_hour)]
    pub to: Option<Hour>,
    #[arg(long, value_enum, default_value = "parquet")]
    pub format: Format,
    /// The file to write.
    #[arg(long)]
    pub out: PathBuf,
}

pub async fn main(a: ExportArgs) -> Result<ExitCode, JobError> {
    let format = match a.format {
        Format::Parquet => ExportFormat::Parquet,
        Format::Csv => ExportFormat::Csv,
    };
    let (from, to) = (a.from.as_ref(), a.to.as_ref());
    let s = match (&a.output, &a.migration, &a.old, &a.new) {
        (Some(output), None, _, _) => {
            export(
                &StoreRoot::open(output)?,
                &a.shard,
                from,
                to,
                format,
                &a.out,
            )
            .await?
        }
        (None, Some(m), Some(old), Some(new)) => {
            let migration = std::sync::Arc::new(crate::job::migration::Migration::load(m)?);
            let (old, new) = (StoreRoot::open(old)?, StoreRoot::open(new)?);
            export_merged(&old, &new, migration, &a.shard, from, to, format, &a.out).await?
        }
        _ => {
            return Err(JobError::Config(
                "give --output, or --old, --new and --migration".into(),
            ));
        }
    };
    eprintln!(
        "exported {} series, {} points from {} window(s) to {} ({} bytes)",
        s.series,
        s.points,
        s.windows.len(),
        a.out.display(),
        s.bytes
    );
    Ok(ExitCode::SUCCESS)
}
