//! `tailor export`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::cli::parse_hour;
use crate::datasource::listing::Hour;
use crate::datasource::store::StoreRoot;
use crate::job::JobError;
use crate::job::export::{ExportFormat, export};

/// `--format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Parquet,
    Csv,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Output root URL (as given to `tailor run --output`).
    #[arg(long)]
    pub output: String,
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
    let root = StoreRoot::open(&a.output)?;
    let s = export(
        &root,
        &a.shard,
        a.from.as_ref(),
        a.to.as_ref(),
        match a.format {
            Format::Parquet => ExportFormat::Parquet,
            Format::Csv => ExportFormat::Csv,
        },
        &a.out,
    )
    .await?;
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
