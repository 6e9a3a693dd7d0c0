//! `tailor query`: SQL over the payload table, the first debugging tool.

use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, ValueEnum};
use datafusion::arrow::util::pretty::pretty_format_batches;
use datafusion::prelude::{SessionConfig, SessionContext};

use crate::cli::{OnCorrupt, load_shard_map, parse_hour};
use crate::datasource::compact::Compact;
use crate::datasource::listing::{Hour, Listing, Window, list_inputs};
use crate::datasource::options::{CorruptPolicy, PayloadOptions};
use crate::datasource::scan_log::ScanLog;
use crate::datasource::store::StoreRoot;
use crate::datasource::table::PayloadTable;
use crate::job::JobError;
use crate::job::config::parse_size;
use crate::job::error::IoContext;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum OutputFormat {
    Table,
    Csv,
    Json,
    /// Only with --out.
    Parquet,
}

#[derive(Debug, Args)]
pub struct QueryArgs {
    /// Input root URL.
    #[arg(long, env = "TAILOR_INPUT")]
    pub input: String,
    /// Only this shard (default: every shard under the root).
    #[arg(long)]
    pub shard: Option<String>,
    #[arg(long, value_parser = parse_hour)]
    pub from: Option<Hour>,
    #[arg(long, value_parser = parse_hour)]
    pub to: Option<Hour>,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    pub format: OutputFormat,
    #[arg(long, value_enum, default_value = "fail")]
    pub on_corrupt: OnCorrupt,
    #[arg(long)]
    pub shard_map: Option<std::path::PathBuf>,
    #[arg(long)]
    pub target_partitions: Option<usize>,
    /// Byte-range size big files are split into (default 1GiB).
    #[arg(long)]
    pub range_bytes: Option<String>,
    /// Stream the result into this file (csv, json or parquet) instead of
    /// printing it; memory stays bounded whatever the result size.
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
    /// The SQL; the table is `payloads` (one row per payload; see
    /// `unnest(timestamps)` for one row per point).
    pub sql: String,
}

/// The query's flags, validated before anything is listed or scanned.
struct QueryConfig {
    root: StoreRoot,
    shard: Option<String>,
    window: Window,
    options: PayloadOptions,
}

/// Checks every flag (shard name, input URL, output format, range size,
/// hour window) and builds the scan options: a bad flag fails here, with
/// exit code 64, before any object is listed or read.
fn validate(a: &QueryArgs) -> Result<QueryConfig, JobError> {
    let (map, source) = load_shard_map(a.shard_map.as_deref())?;
    if let Some(shard) = &a.shard
        && crate::format::shard::Shard::parse(shard).is_none_or(|s| !map.contains(s))
    {
        return Err(JobError::Config(format!(
            "--shard {shard:?} is not a shard of the shard map ({source}): expected org-<org_id> \
             (a dedicated org) or org-mod-<n> (n below the modulus)"
        )));
    }
    match (a.format, &a.out) {
        (OutputFormat::Parquet, None) => {
            return Err(JobError::Config(
                "--format parquet needs --out <file>".into(),
            ));
        }
        (OutputFormat::Table, Some(_)) => {
            return Err(JobError::Config(
                "--format table prints to the terminal; with --out use csv, json or parquet".into(),
            ));
        }
        _ => {}
    }
    if let (Some(from), Some(to)) = (&a.from, &a.to)
        && from > to
    {
        return Err(JobError::Config(format!(
            "--from {from} is after --to {to}"
        )));
    }
    let mut options = PayloadOptions::new(Arc::clone(&map));
    options.on_corrupt = a.on_corrupt.into();
    if let Some(r) = &a.range_bytes {
        options.range_bytes = parse_size(r)
            .map_err(|e| JobError::Config(format!("--range-bytes: {e}")))?
            .max(1);
    }
    if a.target_partitions == Some(0) {
        return Err(JobError::Config(
            "--target-partitions must be at least 1".into(),
        ));
    }
    let root = StoreRoot::open(&a.input)?;
    Ok(QueryConfig {
        root,
        shard: a.shard.clone(),
        window: Window {
            from: a.from.clone(),
            to: a.to.clone(),
        },
        options,
    })
}

/// [`ScanLog::settle`] as the query's result: the first problem fails the
/// query under the fail policy.
fn check_tiling(log: &ScanLog, policy: CorruptPolicy) -> Result<(), JobError> {
    log.settle(policy).map_err(|e| {
        JobError::DataFusion(datafusion::error::DataFusionError::External(Box::new(e)))
    })
}

/// What one execution of the query produced.
enum Produced {
    /// Rows written to `--out`.
    Written(u64),
    Batches(Vec<datafusion::arrow::array::RecordBatch>),
}

/// Runs the query once over the payload table built from `opts`.
async fn execute(
    a: &QueryArgs,
    root: &StoreRoot,
    listing: &Listing,
    opts: PayloadOptions,
) -> Result<(Produced, Arc<ScanLog>), JobError> {
    let mut config = SessionConfig::new()
        .with_repartition_file_min_size(opts.range_bytes.min(usize::MAX as u64) as usize);
    if let Some(n) = a.target_partitions {
        config = config.with_target_partitions(n);
    }
    let ctx = SessionContext::new_with_config(config);
    ctx.register_udf(Compact::udf());
    let log = PayloadTable::new(root, listing.objects.clone(), opts, ScanLog::new())
        .register(&ctx, root, "payloads")?;
    let df = ctx.sql(&a.sql).await?;
    let produced = match &a.out {
        Some(path) => Produced::Written(write_stream(df, a.format, path).await?),
        None => Produced::Batches(df.collect().await?),
    };
    Ok((produced, log))
}

pub async fn main(a: QueryArgs) -> Result<ExitCode, JobError> {
    let QueryConfig {
        root,
        shard,
        window,
        options: opts,
    } = validate(&a)?;
    let listing = list_inputs(&root, shard.as_deref(), &window).await?;
    let policy = opts.on_corrupt;
    let (produced, log) = execute(&a, &root, &listing, opts).await?;
    check_tiling(&log, policy)?;
    let batches = match produced {
        Produced::Written(rows) => {
            let path = a.out.as_ref().expect("written to --out");
            eprintln!("-- {rows} rows written to {}", path.display());
            report(&listing, &log);
            return Ok(ExitCode::SUCCESS);
        }
        Produced::Batches(b) => b,
    };
    let mut out = std::io::stdout().lock();
    use std::io::Write;
    match a.format {
        OutputFormat::Parquet => {
            // Refused by `validate`; kept as an error, never a panic.
            return Err(JobError::Config(
                "--format parquet needs --out <file>".into(),
            ));
        }
        OutputFormat::Table => {
            let t = pretty_format_batches(&batches)
                .map_err(datafusion::error::DataFusionError::from)?;
            writeln!(out, "{t}").at("writing to stdout")?;
        }
        OutputFormat::Csv => {
            let mut w = datafusion::arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(&mut out);
            for b in &batches {
                w.write(b)
                    .map_err(datafusion::error::DataFusionError::from)?;
            }
        }
        OutputFormat::Json => {
            let mut w = datafusion::arrow::json::ArrayWriter::new(&mut out);
            for b in &batches {
                w.write(b)
                    .map_err(datafusion::error::DataFusionError::from)?;
            }
            w.finish()
                .map_err(datafusion::error::DataFusionError::from)?;
            writeln!(out).at("writing to stdout")?;
        }
    }
    report(&listing, &log);
    Ok(ExitCode::SUCCESS)
}

fn report(listing: &Listing, log: &ScanLog) {
    let t = log.totals();
    eprintln!(
        "-- {} objects ({} ignored), {} bytes, {} bytes read ({:.4} of the input), {} frames read, {} corrupt frames skipped, {} misrouted payloads",
        listing.objects.len(),
        listing.ignored.len(),
        listing.total_bytes(),
        t.bytes_fetched,
        t.bytes_fetched as f64 / listing.total_bytes().max(1) as f64,
        t.frames,
        t.corrupt_frames,
        t.misrouted_payloads
    );
    // Tiling errors were checked (fail) or recorded (skip) by check_tiling.
    for c in log.corrupt().iter().take(20) {
        eprintln!("-- corrupt: {} @ {}: {}", c.key, c.offset, c.reason);
    }
}

/// Streams the query's result into `path`. CSV and JSON (one object per
/// line) go through DataFusion's own file sinks (`DataFrame::write_csv` /
/// `write_json`, one file); Parquet through arrow's `ArrowWriter`, because
/// `DataFrame::write_parquet` needs DataFusion's `parquet` feature, which
/// links its whole Parquet datasource for this one write.
async fn write_stream(
    df: datafusion::dataframe::DataFrame,
    format: OutputFormat,
    path: &std::path::Path,
) -> Result<u64, JobError> {
    use datafusion::dataframe::DataFrameWriteOptions;
    use futures::StreamExt;
    let target = std::path::absolute(path).at(format_args!("--out {}", path.display()))?;
    let target = target
        .to_str()
        .ok_or_else(|| JobError::Config(format!("--out {}: not a UTF-8 path", path.display())))?;
    let one_file = || DataFrameWriteOptions::new().with_single_file_output(true);
    let counted = match format {
        // (Table with --out is refused by `validate`.)
        OutputFormat::Csv | OutputFormat::Table => df.write_csv(target, one_file(), None).await?,
        OutputFormat::Json => df.write_json(target, one_file(), None).await?,
        OutputFormat::Parquet => {
            let schema = std::sync::Arc::new(df.schema().as_arrow().clone());
            let mut stream = df.execute_stream().await?;
            let file =
                std::fs::File::create(path).at(format_args!("creating {}", path.display()))?;
            let props = parquet::file::properties::WriterProperties::builder()
                .set_compression(parquet::basic::Compression::ZSTD(Default::default()))
                .build();
            let parquet = |e: parquet::errors::ParquetError| {
                JobError::io(
                    format_args!("writing {}", path.display()),
                    std::io::Error::other(e),
                )
            };
            let mut w =
                parquet::arrow::ArrowWriter::try_new(file, schema, Some(props)).map_err(parquet)?;
            let mut rows = 0u64;
            while let Some(b) = stream.next().await {
                let b = b?;
                rows += b.num_rows() as u64;
                w.write(&b).map_err(parquet)?;
            }
            w.close().map_err(parquet)?;
            return Ok(rows);
        }
    };
    // The sinks answer with one row: the count of rows written.
    Ok(counted
        .iter()
        .filter_map(|b| {
            b.column(0)
                .as_any()
                .downcast_ref::<datafusion::arrow::array::UInt64Array>()
        })
        .map(|c| c.iter().flatten().sum::<u64>())
        .sum())
}
