//! The command line: clap commands -> validated configs -> exit codes.
//!
//! Exit codes (sysexits-style, so a scheduler can tell "retry" from "fix the
//! input"): 0 success; 64 bad usage or configuration; 65 bad input data
//! (a corrupt frame, misrouted payloads with `--fail-on-misrouted`, a
//! corrupt output for `export`/`inspect`); 74 I/O or object-store failure
//! (worth a retry); 70 internal error. `tailor diff` uses 0 (identical),
//! 1 (differences) and 2 (error).

#[cfg(feature = "cluster")]
pub mod cluster;
pub mod diff;
pub mod export;
pub mod generate;
pub mod inspect;
pub mod plan;
pub mod query;
pub mod report;
pub mod run;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::datasource::options::CorruptPolicy;
use crate::job::JobError;
use crate::job::error::ErrorClass;

#[derive(Debug, Parser)]
#[command(
    name = "tailor",
    version,
    about = "Payload files in, indexed timeseries files out, one shard at a time"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the shard job: group, write, commit.
    Run(Box<run::RunArgs>),
    /// Generate a deterministic input tree.
    Generate(generate::GenerateArgs),
    /// Run SQL over the payload table (`payloads`).
    Query(query::QueryArgs),
    /// Export a committed output as one row per point (Parquet or CSV).
    Export(export::ExportArgs),
    /// Which (shard, hour) windows must run or rerun: pending, stale, done,
    /// settling, empty, orphaned (exit 0: nothing to run; 10: something).
    Plan(plan::PlanArgs),
    /// The run history (and the plan) as a self-contained HTML page or JSON:
    /// window states, phase timelines, shards over time, drops.
    Report(report::ReportArgs),
    /// Show a manifest's or a data file's contents.
    Inspect(inspect::InspectArgs),
    /// Compare two committed outputs point by point (exit 0 same, 1 different, 2 error).
    Diff(diff::DiffArgs),
    /// Benchmark floor: zstd-decompress every input frame, nothing else.
    Floor(FloorArgs),
    /// Run a Ballista scheduler for `run --engine ballista`.
    #[cfg(feature = "cluster")]
    Scheduler(cluster::SchedulerArgs),
    /// Run a Ballista executor for `run --engine ballista`.
    #[cfg(feature = "cluster")]
    Executor(cluster::ExecutorArgs),
}

#[derive(Debug, clap::Args)]
pub struct FloorArgs {
    /// Input root (local).
    #[arg(long)]
    pub input: String,
    #[arg(long)]
    pub shard: Option<String>,
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
}

async fn floor_main(a: FloorArgs) -> Result<ExitCode, JobError> {
    let root = crate::datasource::store::StoreRoot::open(&a.input)?;
    let listing =
        crate::datasource::listing::list_inputs(&root, a.shard.as_deref(), &Default::default())
            .await?;
    let r = crate::job::floor::floor(&root, &listing, a.threads)?;
    println!("{}", serde_json::to_string_pretty(&r).expect("json"));
    Ok(ExitCode::SUCCESS)
}

/// `--on-corrupt`: the scan's [`CorruptPolicy`] as a flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnCorrupt {
    /// Fail the scan with the precise error (default).
    Fail,
    /// Skip the frame, count it and record key + offset + reason.
    Skip,
}

impl From<OnCorrupt> for CorruptPolicy {
    fn from(o: OnCorrupt) -> Self {
        match o {
            OnCorrupt::Fail => CorruptPolicy::Fail,
            OnCorrupt::Skip => CorruptPolicy::Skip,
        }
    }
}

pub const EXIT_USAGE: u8 = 64;
pub const EXIT_DATA: u8 = 65;
pub const EXIT_SOFTWARE: u8 = 70;
pub const EXIT_IO: u8 = 74;
/// Another run of the same shard window committed first (sysexits'
/// EX_TEMPFAIL): nothing of this run is visible.
pub const EXIT_LOST_RACE: u8 = 75;

/// The exit code for a job error.
pub fn exit_code(e: &JobError) -> u8 {
    match e.class() {
        ErrorClass::Usage => EXIT_USAGE,
        ErrorClass::Data => EXIT_DATA,
        ErrorClass::Internal => EXIT_SOFTWARE,
        ErrorClass::Io => EXIT_IO,
        ErrorClass::LostRace => EXIT_LOST_RACE,
    }
}

/// Prints an error with its whole chain to stderr.
pub fn print_error(e: &dyn std::error::Error) {
    let mut msg = format!("tailor: error: {e}");
    let mut src = e.source();
    while let Some(s) = src {
        let text = crate::job::error::without_external(&s.to_string());
        if !msg.contains(&text) {
            msg.push_str(&format!("\n  caused by: {text}"));
        }
        src = s.source();
    }
    eprintln!("{msg}");
}

/// Parses the command line and runs it. A command line clap refuses is a
/// usage error: exit 64 (2 for `diff`, whose exit codes are its verdict),
/// not clap's own 2; `--help` and `--version` exit 0.
pub fn main() -> ExitCode {
    match Cli::try_parse() {
        Ok(cli) => main_with(cli),
        Err(e) => {
            let _ = e.print();
            if !e.use_stderr() {
                return ExitCode::SUCCESS;
            }
            let diff = std::env::args().nth(1).is_some_and(|a| a == "diff");
            ExitCode::from(if diff { 2 } else { EXIT_USAGE })
        }
    }
}

/// Runs a parsed command line.
pub fn main_with(cli: Cli) -> ExitCode {
    let is_diff = matches!(cli.command, Command::Diff(_));
    // Settled before any slab is made; a bad value is a usage error.
    if let Err(e) = crate::datasource::batch::init_huge_pages() {
        eprintln!("tailor: error: {e}");
        return ExitCode::from(if is_diff { 2 } else { EXIT_USAGE });
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            print_error(&e);
            return ExitCode::from(EXIT_SOFTWARE);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Diff(a) => diff::main(a).await,
            Command::Run(a) => run::main(*a).await,
            Command::Generate(a) => generate::main(a).await,
            Command::Query(a) => query::main(a).await,
            Command::Export(a) => export::main(a).await,
            Command::Inspect(a) => inspect::main(a).await,
            Command::Plan(a) => plan::main(a).await,
            Command::Report(a) => report::main(a).await,
            Command::Floor(a) => floor_main(a).await,
            #[cfg(feature = "cluster")]
            Command::Scheduler(a) => cluster::scheduler_main(a).await,
            #[cfg(feature = "cluster")]
            Command::Executor(a) => cluster::executor_main(a).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            // A closed stdout ends a listing early, as it should; diff's
            // exit code is its verdict, so it never takes this way out.
            if is_broken_pipe(&e) && !is_diff {
                return ExitCode::SUCCESS;
            }
            print_error(&e);
            if is_diff {
                // diff: 0 identical, 1 different, 2 error (whatever the error).
                return ExitCode::from(2);
            }
            ExitCode::from(exit_code(&e))
        }
    }
}

fn is_broken_pipe(e: &JobError) -> bool {
    matches!(e, JobError::Io { source, .. } if source.kind() == std::io::ErrorKind::BrokenPipe)
}

pub use crate::job::config::load_shard_map;

/// Parses an hour flag.
/// A role, the migration file parsed and its path as given.
pub type MigrationSettings = (
    crate::job::migration::Role,
    Option<std::sync::Arc<crate::job::migration::Migration>>,
    Option<String>,
);

/// The role and migration file of `plan` or `report` (as `run` takes
/// them): flags over the job file's keys. Returns the role, the parsed
/// file and its path as the runs are to be given it.
pub fn migration_settings(
    flag: Option<&std::path::Path>,
    role: Option<run::RoleArg>,
    file: &crate::job::config::JobFile,
) -> Result<MigrationSettings, JobError> {
    use crate::job::migration::{Migration, Role};
    let role = role.map(Role::from).or(file.role).unwrap_or_default();
    let path = flag.or(file.migration.as_deref());
    let migration = path
        .map(Migration::load)
        .transpose()?
        .map(std::sync::Arc::new);
    if role != Role::Shadow && migration.is_none() {
        return Err(JobError::Config(format!(
            "--role {} needs --migration <file> (the cutover of each migrated org)",
            role.name()
        )));
    }
    Ok((role, migration, path.map(|p| p.display().to_string())))
}

pub fn parse_hour(s: &str) -> Result<crate::datasource::listing::Hour, String> {
    crate::datasource::listing::Hour::parse(s)
        .ok_or_else(|| format!("{s:?} is not an hour (YYYY-MM-DDTHH)"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::error::DataFusionError as D;

    #[test]
    fn every_error_class_has_its_exit_code() {
        let io = || std::io::Error::other("disk full");
        let store = || crate::datasource::error::StoreOpError {
            op: "PUT",
            target: "s3://b/k".into(),
            source: object_store::Error::Generic {
                store: "S3",
                source: "503 Slow Down".into(),
            },
        };
        let cases: Vec<(JobError, u8)> = vec![
            (JobError::Config("x".into()), EXIT_USAGE),
            (
                JobError::MemoryLimit("--memory-limit 1.0 MiB".into()),
                EXIT_USAGE,
            ),
            (JobError::Misrouted(3), EXIT_DATA),
            (JobError::BadOutput("x".into()), EXIT_DATA),
            (
                JobError::io("writing staged file /s/part-00000.tsf", io()),
                EXIT_IO,
            ),
            (JobError::ObjectStore(store()), EXIT_IO),
            (JobError::LostRace("x".into()), EXIT_LOST_RACE),
            (JobError::Internal("x".into()), EXIT_SOFTWARE),
            // Through DataFusion: what is inside decides.
            (
                JobError::DataFusion(D::External(Box::new(store()))),
                EXIT_IO,
            ),
            (
                JobError::DataFusion(D::External(Box::new(JobError::BadOutput("x".into())))),
                EXIT_DATA,
            ),
            (JobError::DataFusion(D::IoError(io())), EXIT_IO),
            (
                JobError::DataFusion(D::ResourcesExhausted("pool".into())),
                EXIT_USAGE,
            ),
            (
                JobError::DataFusion(D::Execution("x".into())),
                EXIT_SOFTWARE,
            ),
            (
                JobError::DataFusion(D::Context(
                    "c".into(),
                    Box::new(D::External(Box::new(store()))),
                )),
                EXIT_IO,
            ),
        ];
        for (e, code) in cases {
            assert_eq!(exit_code(&e), code, "{e:?}");
        }
        let wrapped = JobError::DataFusion(D::External(Box::new(JobError::BadOutput(
            "manifest m: bad".into(),
        ))));
        assert_eq!(
            wrapped.to_string(),
            "manifest m: bad",
            "no 'External error:' prefix"
        );
        let e = JobError::io("writing staged file /s/part-00000.tsf", io());
        assert_eq!(
            e.to_string(),
            "writing staged file /s/part-00000.tsf: disk full"
        );
        assert_eq!(
            JobError::ObjectStore(store()).to_string(),
            "PUT s3://b/k: Generic S3 error: 503 Slow Down"
        );
    }
}
