//! `tailor generate`.

use std::process::ExitCode;

use clap::Args;

use crate::cli::load_shard_map;
use crate::datasource::store::StoreRoot;
use crate::job::JobError;
use crate::job::config::parse_size;
use crate::job::generate::{GenerateOptions, generate};

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Root URL to write the tree under (file://, a path, s3://, …).
    #[arg(long)]
    pub output: String,
    /// Seed: the same seed and options give the same bytes.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Approximate total size of the payload files (e.g. 64MiB, 4GiB).
    #[arg(long, default_value = "64MiB")]
    pub size: String,
    /// Number of orgs (Zipf-skewed sizes).
    #[arg(long, default_value_t = 200)]
    pub orgs: u64,
    /// Hours to generate.
    #[arg(long, default_value_t = 2)]
    pub hours: u32,
    /// First hour (YYYY-MM-DDTHH).
    #[arg(long, default_value = "2026-11-21T00")]
    pub start_hour: String,
    /// Kafka partitions (files per shard and hour).
    #[arg(long, default_value_t = 4)]
    pub partitions: u32,
    /// Only these shards (repeatable); default: every shard that gets orgs.
    #[arg(long = "shard")]
    pub shards: Vec<String>,
    /// Also write one file of at least this size (e.g. 5GiB for a >4 GiB file).
    #[arg(long)]
    pub big_file: Option<String>,
    /// Shard map TOML (default: built-in).
    #[arg(long)]
    pub shard_map: Option<std::path::PathBuf>,
    /// Largest points per payload.
    #[arg(long, default_value_t = 1024)]
    pub max_points: u32,
}

pub async fn main(a: GenerateArgs) -> Result<ExitCode, JobError> {
    let (map, _) = load_shard_map(a.shard_map.as_deref())?;
    let root = StoreRoot::open(&a.output)?;
    let opts = GenerateOptions {
        seed: a.seed,
        target_bytes: parse_size(&a.size).map_err(JobError::Config)?,
        orgs: a.orgs,
        hours: a.hours,
        start_hour: a.start_hour,
        partitions: a.partitions,
        only_shards: (!a.shards.is_empty()).then_some(a.shards),
        big_file_bytes: a
            .big_file
            .as_deref()
            .map(parse_size)
            .transpose()
            .map_err(JobError::Config)?
            .unwrap_or(0),
        max_points: a.max_points.clamp(1, crate::format::payload::MAX_POINTS),
        ..GenerateOptions::default()
    };
    let s = generate(&root, &map, &opts).await?;
    println!("{}", serde_json::to_string_pretty(&s).expect("json"));
    Ok(ExitCode::SUCCESS)
}
