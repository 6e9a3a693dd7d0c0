//! `tailor scheduler` and `tailor executor`: the processes of a Ballista
//! cluster that runs shard jobs (`tailor run --engine ballista`;
//! docs/distributed.md).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::datasource::store::StoreOptions;
use crate::job::JobError;
use crate::job::cluster::services::{self, ExecutorSettings, Liveness};
use crate::job::config::RetrySettings;

#[derive(Debug, Args)]
pub struct SchedulerArgs {
    /// Address to listen on (gRPC for clients and executors).
    #[arg(long, default_value = "127.0.0.1:50050")]
    pub bind: SocketAddr,
    /// An executor is lost when it has not been heard of for this long
    /// (seconds, at least 8: a busy executor polls every 5); its tasks run
    /// again elsewhere.
    #[arg(long, default_value_t = Liveness::default().executor_timeout_s)]
    pub executor_timeout: u64,
}

#[derive(Debug, Args)]
pub struct ExecutorArgs {
    /// The scheduler, host:port.
    #[arg(long, default_value = "127.0.0.1:50050")]
    pub scheduler: SocketAddr,
    /// Host to listen on and to be reached at.
    #[arg(long, default_value = "127.0.0.1")]
    pub bind_host: String,
    /// Arrow Flight port (shuffle reads and results).
    #[arg(long, default_value_t = 50051)]
    pub flight_port: u16,
    /// gRPC port (tasks from the scheduler).
    #[arg(long, default_value_t = 50052)]
    pub grpc_port: u16,
    /// Tasks run at once (default: the cores).
    #[arg(long)]
    pub slots: Option<usize>,
    /// Shuffle files of this executor (its own: never shared).
    #[arg(long)]
    pub work_dir: PathBuf,
    /// Seconds between heartbeats to the scheduler.
    #[arg(long, default_value_t = Liveness::default().heartbeat_s)]
    pub heartbeat: u64,
    /// Retries of failed requests to object stores.
    #[arg(long)]
    pub store_max_retries: Option<usize>,
}

/// Ballista's own logs on stderr: `info` and up, or as `RUST_LOG` says.
fn init_logs() {
    let _ = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .try_init();
}

pub async fn scheduler_main(a: SchedulerArgs) -> Result<ExitCode, JobError> {
    init_logs();
    let live = Liveness {
        executor_timeout_s: a.executor_timeout.max(8),
        ..Liveness::default()
    };
    eprintln!("tailor scheduler listening on {}", a.bind);
    services::run_scheduler(a.bind, live).await?;
    Ok(ExitCode::SUCCESS)
}

pub async fn executor_main(a: ExecutorArgs) -> Result<ExitCode, JobError> {
    init_logs();
    let mut retry = RetrySettings::default();
    if let Some(n) = a.store_max_retries {
        retry.max_retries = n;
    }
    let slots = a.slots.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    eprintln!(
        "tailor executor on {}:{} (tasks on {}), scheduler {}, {} slots, work dir {}",
        a.bind_host,
        a.flight_port,
        a.grpc_port,
        a.scheduler,
        slots,
        a.work_dir.display()
    );
    services::run_executor(ExecutorSettings {
        bind_host: a.bind_host,
        flight_port: a.flight_port,
        grpc_port: a.grpc_port,
        scheduler: a.scheduler,
        slots,
        work_dir: a.work_dir,
        live: Liveness {
            heartbeat_s: a.heartbeat.max(1),
            ..Liveness::default()
        },
        store: StoreOptions {
            retry: Some(retry.retry_config()),
        },
    })
    .await?;
    Ok(ExitCode::SUCCESS)
}
