//! The cluster's processes, from tailor's own binary: `tailor scheduler`
//! (Ballista's scheduler with tailor's codec) and `tailor executor`
//! (Ballista's executor with tailor's codec and every object store tailor
//! opens, from the executor's own environment: credentials never travel in
//! plans).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use ballista_core::RuntimeProducer;
use ballista_core::config::TaskSchedulingPolicy;
use ballista_executor::executor_process::{ExecutorProcessConfig, start_executor_process};
use ballista_scheduler::cluster::BallistaCluster;
use ballista_scheduler::config::SchedulerConfig;
use ballista_scheduler::scheduler_process::start_server;
use datafusion::common::{DataFusionError, Result};
use datafusion::execution::object_store::ObjectStoreRegistry;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::SessionConfig;
use object_store::ObjectStore;
use url::Url;

use crate::datasource::store::{StoreOptions, StoreRoot};
use crate::job::cluster::codec::TailorCodec;
use crate::job::error::JobError;

/// How quickly a cluster notices a lost executor (seconds). Ballista's
/// defaults (a heartbeat a minute, an executor lost after three) suit
/// long queries; a shard job's tasks are minutes, and a lost executor
/// should cost seconds.
#[derive(Debug, Clone, Copy)]
pub struct Liveness {
    pub heartbeat_s: u64,
    pub executor_timeout_s: u64,
}

impl Default for Liveness {
    fn default() -> Self {
        Self {
            heartbeat_s: 2,
            executor_timeout_s: 15,
        }
    }
}

/// Executors pull tasks (Spark's way) rather than the scheduler pushing
/// them: with Ballista 55.0's push scheduling, a task whose stage was
/// rolled back after an executor was lost never gives its slot back
/// (`sum_vcores_for_statuses` finds no vcores for it), and a cluster of
/// one-slot executors then waits forever. A pulling executor counts its
/// own slots; it polls at least every 5 s while busy, so the executor
/// timeout must stay well above that.
const POLICY: TaskSchedulingPolicy = TaskSchedulingPolicy::PullStaged;

/// Runs a scheduler on `bind` until the process is stopped.
pub async fn run_scheduler(bind: SocketAddr, live: Liveness) -> Result<(), JobError> {
    let codec = Arc::new(TailorCodec::new());
    let config = SchedulerConfig {
        bind_host: bind.ip().to_string(),
        external_host: bind.ip().to_string(),
        bind_port: bind.port(),
        scheduling_policy: POLICY,
        override_physical_codec: Some(codec),
        executor_timeout_seconds: live.executor_timeout_s,
        expire_dead_executor_interval_seconds: 1,
        no_executors_grace_period_seconds: live.executor_timeout_s,
        // A job's files are uploaded by its last stage; its results are a
        // few rows: keep them a minute for the client to fetch.
        finished_job_data_clean_up_interval_seconds: 60,
        ..Default::default()
    };
    let cluster = BallistaCluster::new_from_config(&config)
        .await
        .map_err(|e| JobError::Internal(format!("starting the scheduler: {e}")))?;
    start_server(cluster, bind, Arc::new(config))
        .await
        .map_err(|e| cluster_error("the scheduler", e))
}

/// Where an executor listens and whom it serves.
#[derive(Debug, Clone)]
pub struct ExecutorSettings {
    pub bind_host: String,
    /// Arrow Flight (shuffle reads, results) and gRPC (tasks) ports.
    pub flight_port: u16,
    pub grpc_port: u16,
    pub scheduler: SocketAddr,
    /// Tasks run at once (Ballista's vcores).
    pub slots: usize,
    /// Shuffle files and spills: each executor its own.
    pub work_dir: std::path::PathBuf,
    pub live: Liveness,
    pub store: StoreOptions,
}

/// Runs an executor until the process is stopped.
pub async fn run_executor(s: ExecutorSettings) -> Result<(), JobError> {
    std::fs::create_dir_all(&s.work_dir).map_err(|e| {
        JobError::io(
            format_args!("creating the work directory {}", s.work_dir.display()),
            e,
        )
    })?;
    let work_dir = s.work_dir.to_string_lossy().to_string();
    let stores = Arc::new(Stores::new(s.store.clone()));
    let temp = s.work_dir.clone();
    let runtime: RuntimeProducer = Arc::new(move |_cfg: &SessionConfig| {
        RuntimeEnvBuilder::new()
            .with_temp_file_path(temp.clone())
            .with_object_store_registry(Arc::clone(&stores) as Arc<dyn ObjectStoreRegistry>)
            .build_arc()
    });
    let codec = Arc::new(TailorCodec::new());
    let config = ExecutorProcessConfig {
        bind_host: s.bind_host.clone(),
        external_host: Some(s.bind_host.clone()),
        port: s.flight_port,
        grpc_port: s.grpc_port,
        scheduler_host: s.scheduler.ip().to_string(),
        scheduler_port: s.scheduler.port(),
        // Retried every half second until the scheduler answers.
        scheduler_connect_timeout_seconds: 30,
        vcores: s.slots.max(1),
        task_scheduling_policy: POLICY,
        work_dir: Some(work_dir),
        executor_heartbeat_interval_seconds: s.live.heartbeat_s,
        // Shuffle files of finished jobs: removed after an hour.
        job_data_ttl_seconds: 3600,
        job_data_clean_up_interval_seconds: 300,
        override_physical_codec: Some(codec),
        override_runtime_producer: Some(runtime),
        ..Default::default()
    };
    start_executor_process(Arc::new(config))
        .await
        .map_err(|e| cluster_error("the executor", e))
}

fn cluster_error(who: &str, e: ballista_core::error::BallistaError) -> JobError {
    match e {
        ballista_core::error::BallistaError::IoError(e) => JobError::io(who, e),
        e => JobError::Internal(format!("{who}: {e}")),
    }
}

/// Every store a plan names, opened on first use from the executor's
/// environment as `tailor run` opens them.
#[derive(Debug)]
struct Stores {
    options: StoreOptions,
    open: Mutex<HashMap<String, Arc<dyn ObjectStore>>>,
}

impl Stores {
    fn new(options: StoreOptions) -> Self {
        Self {
            options,
            open: Mutex::new(HashMap::new()),
        }
    }
}

impl ObjectStoreRegistry for Stores {
    fn register_store(
        &self,
        url: &Url,
        store: Arc<dyn ObjectStore>,
    ) -> Option<Arc<dyn ObjectStore>> {
        self.open.lock().unwrap().insert(store_key(url), store)
    }

    fn get_store(&self, url: &Url) -> Result<Arc<dyn ObjectStore>> {
        let key = store_key(url);
        let mut open = self.open.lock().unwrap();
        if let Some(s) = open.get(&key) {
            return Ok(Arc::clone(s));
        }
        let root = StoreRoot::open_with(&key, &self.options)
            .map_err(|e| DataFusionError::Configuration(e.to_string()))?;
        // A URL with a bucket and no path is the store's root: the
        // object keys in plans are full keys within it.
        open.insert(key, Arc::clone(&root.store));
        Ok(root.store)
    }
}

/// `scheme://authority/`, what DataFusion registers a store under.
fn store_key(url: &Url) -> String {
    format!(
        "{}://{}/",
        url.scheme(),
        &url[url::Position::BeforeHost..url::Position::AfterPort]
    )
}
