//! The validated configuration of a shard job: a job file (`jobs/*.toml`)
//! overlaid by flags, checked in one place ([`RunConfig::resolve`]), and
//! the one memory budget every memory knob derives from
//! ([`MemoryBudget`]). Nothing downstream re-validates.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::datasource::listing::{Hour, Window};
use crate::datasource::options::{CorruptPolicy, DEFAULT_RANGE_BYTES};
use crate::format::shard::{Shard, ShardMap};
use crate::format::tsf::{MAX_BLOCK_POINTS, WriterOptions, ZSTD_LEVELS};
use crate::job::error::JobError;
pub use crate::job::textfile::{read_small, toml_error};

/// The default shard map, compiled in (`shards/production.toml`).
pub const DEFAULT_SHARD_MAP: &str = include_str!("../../shards/production.toml");

/// Default size cap of one output file.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 1 << 30;

/// A job file: the same settings as `tailor run`'s flags, all optional.
/// The CLI turns its flags into one of these too, and
/// [`JobFile::overlay`] lets the flags win.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JobFile {
    pub input: Option<String>,
    pub output: Option<String>,
    pub shard: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub shard_map: Option<PathBuf>,
    pub memory_limit: Option<String>,
    pub target_partitions: Option<usize>,
    pub range_bytes: Option<String>,
    pub max_file_bytes: Option<String>,
    pub block_points: Option<usize>,
    pub zstd_level: Option<i32>,
    pub on_corrupt: Option<CorruptPolicy>,
    pub fail_on_misrouted: Option<bool>,
    pub spill_dir: Option<PathBuf>,
    pub stage_dir: Option<PathBuf>,
    pub report: Option<PathBuf>,
    pub store_max_retries: Option<usize>,
    pub store_retry_timeout: Option<String>,
    pub store_backoff: Option<String>,
    pub metrics_file: Option<PathBuf>,
    pub pushgateway: Option<String>,
    pub history_keep: Option<usize>,
    pub history_days: Option<u64>,
    pub migration: Option<PathBuf>,
    pub role: Option<crate::job::migration::Role>,
    pub parts: Option<u32>,
    /// `local` (default) or `ballista`.
    pub engine: Option<Engine>,
    /// The Ballista scheduler, `host:port` (`--engine ballista`).
    pub scheduler: Option<String>,
    /// Shuffle reads always over the network, even from the executor's
    /// own disk (a test of the network path).
    pub shuffle_over_network: Option<bool>,
}

/// Where the job's scan, grouping and encoding run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// In this process (the default).
    #[default]
    Local,
    /// On an Apache DataFusion Ballista cluster (docs/distributed.md).
    Ballista,
}

/// A cluster run's settings (`--engine ballista`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClusterSettings {
    /// The scheduler's `host:port`.
    pub scheduler: String,
    pub shuffle_over_network: bool,
}

/// The most bytes of a job file: a few dozen settings.
pub const MAX_JOB_FILE_BYTES: u64 = 1 << 20;

/// The most bytes of a shard map: a modulus and the dedicated orgs (ten
/// bytes each), so over a million of them.
pub const MAX_SHARD_MAP_BYTES: u64 = 16 << 20;

/// `a.overlay(b)`, field by field: `b`'s value where it has one.
macro_rules! overlay {
    ($a:ident, $b:ident, $($f:ident),*) => {
        JobFile { $($f: $b.$f.or($a.$f)),* }
    };
}

impl JobFile {
    /// Loads a job file. Relative paths in it (shard map, spill, stage and
    /// report paths, and input / output roots given as plain paths) are
    /// relative to the job file's directory, not to the directory the
    /// scheduler happens to start the job in.
    pub fn load(path: &Path) -> Result<Self, JobError> {
        let text = read_small(path, "job file", MAX_JOB_FILE_BYTES)?;
        let mut file: JobFile =
            toml::from_str(&text).map_err(|e| toml_error("job file", path, &text, &e))?;
        let base = path.parent().unwrap_or(Path::new(""));
        for p in [
            &mut file.shard_map,
            &mut file.spill_dir,
            &mut file.stage_dir,
            &mut file.report,
            &mut file.metrics_file,
            &mut file.migration,
        ]
        .into_iter()
        .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        for root in [&mut file.input, &mut file.output].into_iter().flatten() {
            if is_relative_path(root) {
                *root = base.join(&*root).display().to_string();
            }
        }
        Ok(file)
    }

    /// These settings, with `top`'s wherever it has one (flags over a job
    /// file).
    pub fn overlay(self, top: JobFile) -> JobFile {
        let (a, b) = (self, top);
        overlay!(
            a,
            b,
            input,
            output,
            shard,
            from,
            to,
            shard_map,
            memory_limit,
            target_partitions,
            range_bytes,
            max_file_bytes,
            block_points,
            zstd_level,
            on_corrupt,
            fail_on_misrouted,
            spill_dir,
            stage_dir,
            report,
            store_max_retries,
            store_retry_timeout,
            store_backoff,
            metrics_file,
            pushgateway,
            history_keep,
            history_days,
            migration,
            role,
            parts,
            engine,
            scheduler,
            shuffle_over_network
        )
    }
}

/// True for a plain relative path, false for a URL (`s3://…`, `file:///…`)
/// or an absolute path.
fn is_relative_path(s: &str) -> bool {
    let url = s.find("://").is_some_and(|i| {
        i > 1
            && s[..i]
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '-' || c == '.')
    });
    !url && Path::new(s).is_relative()
}

/// Parses a byte size: `1073741824`, `512MiB`, `8GiB`, `1.5G`, `64k`.
/// Units are binary (`k`, `kB` and `KiB` are all 1024), as the flags have
/// always read them; a size that does not fit in 64 bits is an error, not
/// a saturated value.
pub fn parse_size(s: &str) -> Result<u64, String> {
    parse_size::Config::new()
        .with_binary()
        .parse_size(s.trim())
        .map_err(|e| format!("{s:?} is not a size (e.g. 512MiB, 8GiB): {e}"))
}

/// Parses a duration (`100ms`, `30s`, `3m`), naming the setting.
pub fn parse_duration(what: &str, s: &str) -> Result<std::time::Duration, JobError> {
    humantime::parse_duration(s.trim()).map_err(|e| {
        JobError::Config(format!(
            "{what} {s:?} is not a duration (e.g. 500ms, 30s, 3m): {e}"
        ))
    })
}

/// How object-store requests are retried: object_store's `RetryConfig`
/// (its defaults: 10 retries within 3 minutes, backoff from 100 ms,
/// doubling up to 15 s). Transient failures are retried: 5xx answers and
/// 429, connection errors and timeouts, and a body cut short (a GET is
/// resumed where it stopped); what still fails ends the run with exit 74.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RetrySettings {
    pub max_retries: usize,
    #[serde(with = "humantime_serde_secs")]
    pub retry_timeout: std::time::Duration,
    #[serde(with = "humantime_serde_secs")]
    pub backoff_initial: std::time::Duration,
    #[serde(with = "humantime_serde_secs")]
    pub backoff_max: std::time::Duration,
}

/// Durations in reports, as seconds.
mod humantime_serde_secs {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
}

impl Default for RetrySettings {
    fn default() -> Self {
        let r = object_store::RetryConfig::default();
        Self {
            max_retries: r.max_retries,
            retry_timeout: r.retry_timeout,
            backoff_initial: r.backoff.init_backoff,
            backoff_max: r.backoff.max_backoff,
        }
    }
}

impl RetrySettings {
    pub fn retry_config(&self) -> object_store::RetryConfig {
        object_store::RetryConfig {
            max_retries: self.max_retries,
            retry_timeout: self.retry_timeout,
            backoff: object_store::BackoffConfig {
                init_backoff: self.backoff_initial,
                max_backoff: self.backoff_max.max(self.backoff_initial),
                ..Default::default()
            },
        }
    }
}

/// Parses an hour (`YYYY-MM-DDTHH`), naming the setting it came from.
pub fn parse_hour(what: &str, s: &str) -> Result<Hour, JobError> {
    Hour::parse(s)
        .ok_or_else(|| JobError::Config(format!("{what} {s:?} is not an hour (YYYY-MM-DDTHH)")))
}

/// The memory limit when none is given, and where it came from. Under a
/// cgroup memory limit (v2 `memory.max`, or v1 `memory.limit_in_bytes`, the
/// smallest along the cgroup's ancestors, as a Kubernetes pod's memory
/// limit sets it) below physical memory: 75% of it, the pod having been
/// sized for the job. Otherwise [`DEFAULT_MEMORY_LIMIT`] (4 GiB), or 75%
/// of physical memory if that is less: a job without a limit of its own
/// shares its machine with the scheduler's other shard jobs, and its peak
/// memory does not grow with its input (Tailor-S's executors ran in 4 GiB).
pub fn default_memory_limit() -> (u64, String) {
    // SAFETY: sysconf has no preconditions.
    let (pages, page) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    let physical = if pages > 0 && page > 0 {
        Some(pages as u64 * page as u64)
    } else {
        None
    };
    let cgroup = std::fs::read_to_string("/proc/self/cgroup")
        .ok()
        .and_then(|text| cgroup_memory_limit(&text, Path::new("/sys/fs/cgroup")));
    memory_limit_of(physical, cgroup)
}

/// The limit when no cgroup limit applies: what the job needs to be fast on
/// the inputs of a shard and hour, whatever their size.
pub const DEFAULT_MEMORY_LIMIT: u64 = 4 << 30;

/// The default limit for `physical` memory and the cgroup's limit, with
/// where it came from (see [`default_memory_limit`]).
fn memory_limit_of(physical: Option<u64>, cgroup: Option<(u64, String)>) -> (u64, String) {
    match (physical, cgroup) {
        (Some(p), Some((c, file))) if c < p => (
            c / 4 * 3,
            format!("75% of the cgroup memory limit ({c} bytes in {file})"),
        ),
        (Some(p), _) if p / 4 * 3 < DEFAULT_MEMORY_LIMIT => {
            (p / 4 * 3, format!("75% of physical memory ({p} bytes)"))
        }
        (Some(p), _) => (
            DEFAULT_MEMORY_LIMIT,
            format!("the default of 4 GiB (no cgroup limit; physical memory {p} bytes)"),
        ),
        (None, Some((c, file))) => (
            c / 4 * 3,
            format!("75% of the cgroup memory limit ({c} bytes in {file})"),
        ),
        (None, None) => (
            4 << 30,
            "4 GiB: neither physical memory nor a cgroup limit could be read".into(),
        ),
    }
}

/// The memory limit of the cgroup that `/proc/self/cgroup` (`text`) names,
/// under the cgroup filesystem mounted at `root`: the smallest limit of the
/// cgroup and its ancestors, and the file it is in. cgroup v2 (a `0::`
/// line, `memory.max`) first, then v1 (the `memory` controller,
/// `memory.limit_in_bytes`, where "unlimited" is a number near 2^63).
pub fn cgroup_memory_limit(text: &str, root: &Path) -> Option<(u64, String)> {
    let mut best: Option<(u64, String)> = None;
    let mut consider = |file: PathBuf| {
        let v = std::fs::read_to_string(&file).ok()?;
        let v = v.trim();
        if v == "max" {
            return None;
        }
        let n: u64 = v.parse().ok()?;
        // v1 reports "no limit" as the page-rounded i64::MAX.
        if n >= (1 << 62) {
            return None;
        }
        if best.as_ref().is_none_or(|(b, _)| n < *b) {
            best = Some((n, file.display().to_string()));
        }
        Some(())
    };
    // Each directory from the cgroup up to the hierarchy's root.
    fn ancestors(base: &Path, cgroup: &str) -> Vec<PathBuf> {
        let mut dirs = vec![base.to_path_buf()];
        let mut d = base.to_path_buf();
        for part in cgroup.split('/').filter(|p| !p.is_empty() && *p != "..") {
            d = d.join(part);
            dirs.push(d.clone());
        }
        dirs
    }
    for line in text.lines() {
        let mut f = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        if controllers.is_empty() {
            // v2: the unified hierarchy, at the mount root or, on hybrid
            // systems, under `unified/`.
            for base in [root.to_path_buf(), root.join("unified")] {
                for d in ancestors(&base, path) {
                    consider(d.join("memory.max"));
                }
            }
        } else if controllers.split(',').any(|c| c == "memory") {
            for d in ancestors(&root.join("memory"), path) {
                consider(d.join("memory.limit_in_bytes"));
            }
        }
    }
    best
}

/// Loads a shard map file, or the built-in one; returns it with where it
/// came from (for reports).
pub fn load_shard_map(path: Option<&Path>) -> Result<(Arc<ShardMap>, String), JobError> {
    match path {
        Some(p) => {
            let text = read_small(p, "shard map", MAX_SHARD_MAP_BYTES)?;
            let map = ShardMap::parse(&text).map_err(|e| match &e {
                crate::format::shard::ShardMapError::Parse(t) => {
                    toml_error("shard map", p, &text, t)
                }
                other => JobError::Config(format!("shard map {}: {other}", p.display())),
            })?;
            Ok((Arc::new(map), p.display().to_string()))
        }
        None => Ok((
            Arc::new(ShardMap::parse(DEFAULT_SHARD_MAP).expect("built-in shard map")),
            "built-in shards/production.toml".into(),
        )),
    }
}

/// How much run history is kept (`--history-keep`, `--history-days`;
/// the history itself is `history.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Reports kept per window (the newest).
    pub keep: usize,
    /// Reports older than this are removed.
    pub max_age: std::time::Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            keep: 20,
            max_age: std::time::Duration::from_secs(30 * 24 * 3600),
        }
    }
}

/// Everything `tailor run` needs, validated.
#[derive(Debug, Clone, Serialize)]
pub struct RunConfig {
    pub input: String,
    pub output: String,
    pub shard: String,
    pub window: Window,
    #[serde(skip)]
    pub shard_map: Arc<ShardMap>,
    pub shard_map_source: String,
    pub memory_limit: Option<u64>,
    /// Where the memory limit came from: a flag or the job file, or the
    /// default (physical memory or the cgroup's limit).
    pub memory_limit_source: String,
    pub target_partitions: usize,
    pub range_bytes: u64,
    pub max_file_bytes: u64,
    pub block_points: usize,
    pub zstd_level: i32,
    pub on_corrupt: CorruptPolicy,
    pub fail_on_misrouted: bool,
    pub spill_dir: Option<PathBuf>,
    pub stage_dir: Option<PathBuf>,
    pub report: Option<PathBuf>,
    /// Retries of object-store requests.
    pub store_retry: RetrySettings,
    /// Skip the run when the window's commit read the input listed now
    /// (`--only-if-needed`).
    pub only_if_needed: bool,
    /// Where to write the run's Prometheus metrics (textfile collector).
    pub metrics_file: Option<PathBuf>,
    /// The Pushgateway to push them to.
    pub pushgateway: Option<String>,
    /// Run history kept under the output root (`keep` 0: none).
    #[serde(skip)]
    pub history: Retention,
    /// Which points the run writes (`--role`; `new` and `old` need a
    /// migration file).
    pub role: crate::job::migration::Role,
    /// The series parts the window is written in (`--parts`).
    pub parts: u32,
    /// Run on a Ballista cluster (`--engine ballista`); `None`: here.
    pub cluster: Option<ClusterSettings>,
    #[serde(skip)]
    pub migration: Option<Arc<crate::job::migration::Migration>>,
    /// Where the migration file came from.
    pub migration_source: Option<String>,
    #[serde(skip)]
    pub progress: bool,
    /// Test hook: stop after the data files are written, before the commit
    /// (what a job killed at that moment leaves behind).
    #[serde(skip)]
    pub fail_before_commit: bool,

    /// How old files of a run that no manifest names must be before a
    /// commit of the same window removes them
    /// ([`DEFAULT_CLEANUP_GRACE`]).
    #[serde(skip)]
    pub cleanup_grace: std::time::Duration,
    /// Data files up to this size are uploaded with one PUT, bigger ones
    /// as a multipart upload ([`DEFAULT_SINGLE_PUT_MAX`]).
    pub single_put_max: u64,
}

/// Data files up to this size are uploaded with one PUT.
pub const DEFAULT_SINGLE_PUT_MAX: u64 = 32 << 20;

/// How long files of a run that no manifest names are left alone by other
/// runs' cleanups: a run of the same window may still be uploading them.
pub const DEFAULT_CLEANUP_GRACE: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

impl RunConfig {
    /// A config with defaults for everything but the three required settings.
    pub fn new(
        input: impl Into<String>,
        output: impl Into<String>,
        shard: impl Into<String>,
    ) -> Self {
        let (limit, source) = default_memory_limit();
        Self {
            input: input.into(),
            output: output.into(),
            shard: shard.into(),
            window: Window::default(),
            shard_map: Arc::new(ShardMap::parse(DEFAULT_SHARD_MAP).expect("built-in shard map")),
            shard_map_source: "built-in shards/production.toml".into(),
            memory_limit: Some(limit),
            memory_limit_source: source,
            target_partitions: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            range_bytes: DEFAULT_RANGE_BYTES,
            max_file_bytes: DEFAULT_MAX_FILE_BYTES,
            block_points: WriterOptions::default().block_points,
            zstd_level: WriterOptions::default().zstd_level,
            on_corrupt: CorruptPolicy::Fail,
            fail_on_misrouted: false,
            spill_dir: None,
            stage_dir: None,
            report: None,
            store_retry: RetrySettings::default(),
            only_if_needed: false,
            metrics_file: None,
            pushgateway: None,
            history: Retention::default(),
            role: crate::job::migration::Role::Shadow,
            parts: 1,
            cluster: None,
            migration: None,
            migration_source: None,
            progress: false,
            fail_before_commit: false,

            cleanup_grace: DEFAULT_CLEANUP_GRACE,
            single_put_max: DEFAULT_SINGLE_PUT_MAX,
        }
    }

    /// Validates settings (a job file overlaid by flags) into a config:
    /// the one place a run's settings are checked.
    pub fn resolve(s: JobFile) -> Result<Self, JobError> {
        let need = |v: Option<String>, name: &str| {
            v.ok_or_else(|| JobError::Config(format!("--{name} is required (flag or job file)")))
        };
        let mut cfg = RunConfig::new(
            need(s.input, "input")?,
            need(s.output, "output")?,
            need(s.shard, "shard")?,
        );
        cfg.window = Window {
            from: s.from.map(|h| parse_hour("--from", &h)).transpose()?,
            to: s.to.map(|h| parse_hour("--to", &h)).transpose()?,
        };
        if let Window {
            from: Some(f),
            to: Some(t),
        } = &cfg.window
            && f > t
        {
            return Err(JobError::Config(format!("--from {f} is after --to {t}")));
        }
        let (map, source) = load_shard_map(s.shard_map.as_deref())?;
        if Shard::parse(&cfg.shard).is_none_or(|sh| !map.contains(sh)) {
            return Err(JobError::Config(format!(
                "shard {:?} is not a shard of the shard map ({source})",
                cfg.shard
            )));
        }
        cfg.shard_map = map;
        cfg.shard_map_source = source;
        let size = |v: Option<String>, name: &str| -> Result<Option<u64>, JobError> {
            v.map(|v| parse_size(&v).map_err(|e| JobError::Config(format!("--{name}: {e}"))))
                .transpose()
        };
        if let Some(l) = size(s.memory_limit, "memory-limit")? {
            cfg.memory_limit = Some(l);
            cfg.memory_limit_source = "--memory-limit (flag or job file)".into();
        }
        if let Some(n) = s.target_partitions {
            if n == 0 {
                return Err(JobError::Config(
                    "--target-partitions must be at least 1".into(),
                ));
            }
            cfg.target_partitions = n;
        }
        if let Some(r) = size(s.range_bytes, "range-bytes")? {
            if r == 0 {
                return Err(JobError::Config("--range-bytes must be at least 1".into()));
            }
            cfg.range_bytes = r;
        }
        if let Some(m) = size(s.max_file_bytes, "max-file-bytes")? {
            cfg.max_file_bytes = m.max(1);
        }
        if let Some(b) = s.block_points {
            if !(1..=MAX_BLOCK_POINTS).contains(&b) {
                return Err(JobError::Config(format!(
                    "--block-points must be 1..={MAX_BLOCK_POINTS}"
                )));
            }
            cfg.block_points = b;
        }
        if let Some(z) = s.zstd_level {
            if !ZSTD_LEVELS.contains(&z) {
                return Err(JobError::Config(format!(
                    "--zstd-level must be {}..={}",
                    ZSTD_LEVELS.start(),
                    ZSTD_LEVELS.end()
                )));
            }
            cfg.zstd_level = z;
        }
        cfg.on_corrupt = s.on_corrupt.unwrap_or_default();
        cfg.fail_on_misrouted = s.fail_on_misrouted.unwrap_or(false);
        cfg.spill_dir = s.spill_dir;
        cfg.stage_dir = s.stage_dir;
        cfg.report = s.report;
        if let Some(n) = s.store_max_retries {
            cfg.store_retry.max_retries = n;
        }
        if let Some(t) = s.store_retry_timeout {
            cfg.store_retry.retry_timeout = parse_duration("--store-retry-timeout", &t)?;
        }
        if let Some(b) = s.store_backoff {
            cfg.store_retry.backoff_initial = parse_duration("--store-backoff", &b)?;
        }
        if let Some(p) = &s.migration {
            let m = crate::job::migration::Migration::load(p)?;
            cfg.migration_source = Some(m.source.clone());
            cfg.migration = Some(Arc::new(m));
        }
        cfg.role = s.role.unwrap_or_default();
        if let Some(k) = s.parts {
            if k == 0 || k > crate::format::part::MAX_PARTS {
                return Err(JobError::Config(format!(
                    "--parts {k}: from 1 to {}",
                    crate::format::part::MAX_PARTS
                )));
            }
            cfg.parts = k;
        }
        cfg.cluster = match (s.engine.unwrap_or_default(), s.scheduler) {
            (Engine::Local, None) => None,
            (Engine::Local, Some(_)) => {
                return Err(JobError::Config(
                    "--scheduler is for --engine ballista".into(),
                ));
            }
            (Engine::Ballista, None) => {
                return Err(JobError::Config(
                    "--engine ballista needs --scheduler <host:port>".into(),
                ));
            }
            (Engine::Ballista, Some(_)) if !cfg!(feature = "cluster") => {
                return Err(JobError::Config(
                    "--engine ballista: this tailor was built without the `cluster` feature".into(),
                ));
            }
            (Engine::Ballista, Some(addr)) => {
                if addr
                    .rsplit_once(':')
                    .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
                {
                    return Err(JobError::Config(format!(
                        "--scheduler {addr:?}: expected host:port"
                    )));
                }
                if s.role
                    .is_some_and(|r| r != crate::job::migration::Role::Shadow)
                {
                    return Err(JobError::Config(
                        "--role new|old runs on one machine only (--engine local)".into(),
                    ));
                }
                Some(ClusterSettings {
                    scheduler: addr,
                    shuffle_over_network: s.shuffle_over_network.unwrap_or(false),
                })
            }
        };
        if cfg.role != crate::job::migration::Role::Shadow && cfg.migration.is_none() {
            return Err(JobError::Config(format!(
                "--role {} needs --migration <file> (the cutover of each migrated org)",
                cfg.role.name()
            )));
        }
        cfg.metrics_file = s.metrics_file;
        cfg.pushgateway = s.pushgateway;
        if let Some(k) = s.history_keep {
            cfg.history.keep = k;
        }
        if let Some(d) = s.history_days {
            cfg.history.max_age = std::time::Duration::from_secs(d.saturating_mul(24 * 3600));
        }
        Ok(cfg)
    }

    /// The output writer's settings.
    pub fn writer_options(&self) -> WriterOptions {
        WriterOptions {
            block_points: self.block_points,
            zstd_level: self.zstd_level,
        }
    }
}

/// The process's footprint holding no data: peak RSS of a job over a 1 MiB
/// shard is 70 MiB (code, runtime, thread stacks, allocator), while at the
/// job's start only part of it is resident.
pub const BASE_FOOTPRINT: u64 = 70 << 20;

/// The memory a run may use, and every knob derived from it. All of them
/// are fractions of one budget: what `--memory-limit` leaves once the
/// process's own footprint (what it holds when the job starts, at least
/// [`BASE_FOOTPRINT`]) is taken off. Without a limit, the knobs take their
/// unlimited defaults and the whole decoded input stays resident.
///
/// The model (docs/design.md): decoded payload rows kept in memory
/// (resident buckets) take at most [`Self::resident_cap`], 80% of the
/// budget, during the scan; they are encoded and gone before the spooled
/// buckets are read back and decoded, two at a time, each at most
/// [`Self::bucket_cap`], 28% (less what the scan's rows still hold when it
/// had to stop admitting them); the rest is for what is in flight (decode
/// slabs of the scan's partitions, batches between the scan and the
/// grouping, the encoder's rounds, spool buffers) and the allocator's
/// free pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryBudget {
    /// `--memory-limit`.
    pub limit: Option<u64>,
    /// Bytes resident in the process when the job starts.
    pub resident: u64,
    /// Scan partitions (each holds a decode slab in flight).
    pub partitions: usize,
}

/// How the job lays out its groups of series (see `datasource/route.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BucketPlan {
    /// Hash buckets the series fall into.
    pub buckets: u32,
    /// Buckets `0..resident` stay in the scan's rows; the rest are spooled.
    pub resident: u32,
    /// The decoded size of the input, as estimated before the scan.
    pub estimated_decoded_bytes: u64,
}

impl MemoryBudget {
    pub fn new(limit: Option<u64>, resident: u64, partitions: usize) -> Self {
        Self {
            limit,
            resident,
            partitions: partitions.max(1),
        }
    }

    /// What the limit leaves the job's data.
    pub fn budget(&self) -> Option<u64> {
        self.limit
            .map(|l| l.saturating_sub(self.resident.max(BASE_FOOTPRINT)))
    }

    /// The most decoded payload rows kept in memory during the scan.
    pub fn resident_cap(&self) -> Option<u64> {
        self.budget().map(|b| b / 10 * 8)
    }

    /// The most decoded bytes of one spooled bucket processed at once, when
    /// `held` bytes of the scan's rows are still in memory: two buckets are
    /// in memory at once (one decoded while the other is encoded), with
    /// free slabs kept for reuse (half a bucket) and room to spare for
    /// what the encoder holds beside them: about 2.85 buckets.
    pub fn bucket_cap_beside(&self, held: u64) -> Option<u64> {
        self.buckets_room_beside(held)
            .map(|r| (r / 100 * 35).max(1 << 20))
    }

    /// What the spooled buckets share when `held` bytes of the scan's rows
    /// are still in memory: 80% of the budget less those. A single series
    /// must fit in it, with its merged copy (about as big again).
    pub fn buckets_room_beside(&self, held: u64) -> Option<u64> {
        self.budget().map(|b| (b / 100 * 80).saturating_sub(held))
    }

    /// [`Self::bucket_cap_beside`] nothing.
    pub fn bucket_cap(&self) -> Option<u64> {
        self.bucket_cap_beside(0)
    }

    /// The buckets for an input whose decoded size is estimated at
    /// `estimate`: `None` without a limit (nothing is ever spooled).
    /// When the estimate fits the resident share, every bucket is resident
    /// (the scan may still demote them all, should the estimate be short);
    /// otherwise buckets of at most [`Self::bucket_cap`] each, as many
    /// resident as fit the resident share. A minimum of 4 buckets keeps a
    /// demoted scan's buckets small.
    pub fn bucket_plan(&self, estimate: u64) -> Option<BucketPlan> {
        let (resident_cap, bucket_cap) = (self.resident_cap()?, self.bucket_cap()?);
        let per = |n: u64| estimate.div_ceil(n.max(1));
        // An eighth over the estimate: hash buckets are not all the same
        // size, and one over its share is split again (read and written).
        let buckets = (estimate + estimate / 8)
            .div_ceil(bucket_cap)
            .clamp(4, 1 << 16);
        let resident = if estimate <= resident_cap {
            buckets
        } else {
            (resident_cap / per(buckets).max(1)).min(buckets - 1)
        };
        Some(BucketPlan {
            buckets: buckets as u32,
            resident: resident as u32,
            estimated_decoded_bytes: estimate,
        })
    }

    /// Rows per batch: payloads of hundreds of points; under a limit,
    /// batches stay around 1/64 of the budget (at ~2 KiB a row).
    pub fn batch_rows(&self) -> usize {
        match self.budget() {
            Some(b) => (b / (64 * 2048)).clamp(16, 8192) as usize,
            None => 8192,
        }
    }

    /// Decode slab size (a batch is one slab of decoded payloads): a small
    /// fraction of the budget per partition. `None`: the scan's default.
    pub fn slab_bytes(&self) -> Option<usize> {
        self.budget()
            .map(|b| (b / (64 * self.partitions as u64)).clamp(16 << 10, 8 << 20) as usize)
    }

    /// Most points held by one parallel encoding round: what a round
    /// adds to the points it reads in place (16 bytes a point merged, a few
    /// encoded) is about 20 bytes a point, and three rounds are in flight;
    /// a 48th of the budget each (the three take the 16th two rounds of a
    /// 32nd did), and at least 1 Mi points (rounds of a few series leave
    /// cores idle at each round's end).
    pub fn round_points(&self) -> usize {
        match self.budget() {
            Some(b) => (b / 32 / 30).clamp(1 << 20, 4 << 20) as usize,
            None => 4 << 20,
        }
    }

    /// Bytes of a spool file read back at once: a 64th of the budget,
    /// from 1 to 16 MiB (each chunk's payloads are decoded on all cores,
    /// so a chunk holds a few thousand of them).
    pub fn spool_read_chunk(&self) -> usize {
        match self.budget() {
            Some(b) => (b / 64).clamp(1 << 20, 16 << 20) as usize,
            None => 16 << 20,
        }
    }

    /// The write (and read) buffer of one spool file when `files` are open
    /// at once: together at most a 32nd of the budget.
    pub fn spool_buffer(&self, files: u32) -> usize {
        match self.budget() {
            Some(b) => (b / 32 / u64::from(files.max(1))).clamp(16 << 10, 1 << 20) as usize,
            None => 1 << 20,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_repository_job_files_load_and_their_paths_resolve() {
        let jobs = Path::new(env!("CARGO_MANIFEST_DIR")).join("jobs");
        for name in ["hourly.toml", "replay.toml"] {
            let f = JobFile::load(&jobs.join(name)).unwrap();
            let map = f
                .shard_map
                .clone()
                .expect("the job files name the shard map");
            let text = std::fs::read_to_string(&map)
                .unwrap_or_else(|e| panic!("{name}: {}: {e}", map.display()));
            assert_eq!(text, DEFAULT_SHARD_MAP, "{name} uses the production map");
            assert!(
                f.input.clone().unwrap().starts_with("s3://"),
                "URLs stay as they are"
            );
            let cfg = RunConfig::resolve(f.overlay(JobFile {
                shard: Some("org-mod-3".into()),
                ..Default::default()
            }))
            .unwrap();
            assert_eq!(cfg.shard, "org-mod-3");
        }
    }

    #[test]
    fn relative_paths_are_the_job_files_and_urls_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let job = dir.path().join("j.toml");
        std::fs::write(
            &job,
            "input = \"data/in\"\noutput = \"file:///abs/out\"\nspill_dir = \"/var/tmp/s\"\n\
             report = \"r/report.json\"\nstage_dir = \"stage\"\n",
        )
        .unwrap();
        let f = JobFile::load(&job).unwrap();
        assert_eq!(
            f.input.unwrap(),
            dir.path().join("data/in").display().to_string()
        );
        assert_eq!(f.output.unwrap(), "file:///abs/out");
        assert_eq!(f.spill_dir.unwrap(), PathBuf::from("/var/tmp/s"));
        assert_eq!(f.report.unwrap(), dir.path().join("r/report.json"));
        assert_eq!(f.stage_dir.unwrap(), dir.path().join("stage"));
        assert!(!is_relative_path("s3://bucket/x") && is_relative_path("x/y"));
    }

    #[test]
    fn flags_override_the_job_file_and_every_setting_is_checked() {
        let file = JobFile {
            input: Some("in".into()),
            output: Some("out".into()),
            shard: Some("org-mod-1".into()),
            zstd_level: Some(9),
            memory_limit: Some("1GiB".into()),
            ..Default::default()
        };
        let cfg = RunConfig::resolve(file.clone().overlay(JobFile {
            zstd_level: Some(-5),
            ..Default::default()
        }))
        .unwrap();
        assert_eq!(cfg.zstd_level, -5, "the format's negative levels are valid");
        assert_eq!(cfg.memory_limit, Some(1 << 30), "the file's setting stays");
        let err = |flags: JobFile| {
            RunConfig::resolve(file.clone().overlay(flags))
                .unwrap_err()
                .to_string()
        };
        let cases: Vec<(JobFile, &str)> = vec![
            (
                JobFile {
                    zstd_level: Some(23),
                    ..Default::default()
                },
                "--zstd-level must be -7..=22",
            ),
            (
                JobFile {
                    from: Some("2026-02-31T00".into()),
                    ..Default::default()
                },
                "--from \"2026-02-31T00\" is not an hour",
            ),
            (
                JobFile {
                    from: Some("2026-11-21T05".into()),
                    to: Some("2026-11-21T04".into()),
                    ..Default::default()
                },
                "--from 2026-11-21T05 is after --to 2026-11-21T04",
            ),
            (
                JobFile {
                    memory_limit: Some("99999999999TiB".into()),
                    ..Default::default()
                },
                "--memory-limit: \"99999999999TiB\" is not a size",
            ),
            (
                JobFile {
                    shard: Some("org-mod-64".into()),
                    ..Default::default()
                },
                "shard \"org-mod-64\" is not a shard of the shard map",
            ),
            (
                JobFile {
                    target_partitions: Some(0),
                    ..Default::default()
                },
                "--target-partitions must be at least 1",
            ),
            (
                JobFile {
                    block_points: Some(65_537),
                    ..Default::default()
                },
                "--block-points must be 1..=65536",
            ),
        ];
        for (flags, want) in cases {
            let e = err(flags);
            assert!(e.starts_with(want), "{e}");
        }
        let e = RunConfig::resolve(JobFile::default()).unwrap_err();
        assert!(matches!(&e, JobError::Config(m) if m == "--input is required (flag or job file)"));
    }

    #[test]
    fn the_default_memory_limit_honours_the_cgroup_limit() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let write = |rel: &str, v: &str| {
            let p = root.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, v).unwrap();
        };
        // v2, as in a Kubernetes pod: the pod's limit two levels up.
        write("memory.max", "max\n");
        write("kubepods/memory.max", "max\n");
        write("kubepods/pod1/memory.max", "4294967296\n");
        write("kubepods/pod1/c1/memory.max", "max\n");
        let v2 = cgroup_memory_limit("0::/kubepods/pod1/c1\n", root).unwrap();
        assert_eq!(v2.0, 4 << 30);
        assert!(v2.1.ends_with("kubepods/pod1/memory.max"), "{}", v2.1);
        let (limit, why) = memory_limit_of(Some(24 << 30), Some(v2.clone()));
        assert_eq!(limit, 3 << 30);
        assert!(
            why.starts_with("75% of the cgroup memory limit (4294967296 bytes in "),
            "{why}"
        );
        // A cgroup limit above physical memory does not count.
        let (limit, why) = memory_limit_of(Some(2 << 30), Some(v2));
        assert_eq!(
            (limit, why.as_str()),
            (3 << 29, "75% of physical memory (2147483648 bytes)")
        );
        // Without a cgroup limit: 4 GiB, whatever the machine's memory.
        let (limit, why) = memory_limit_of(Some(24 << 30), None);
        assert_eq!(limit, 4 << 30);
        assert!(why.starts_with("the default of 4 GiB"), "{why}");
        // v1, with "unlimited" at the root.
        write("memory/memory.limit_in_bytes", "9223372036854771712\n");
        write("memory/docker/abc/memory.limit_in_bytes", "1073741824\n");
        let v1 = cgroup_memory_limit("4:memory:/docker/abc\n0::/\n", root).unwrap();
        assert_eq!(v1.0, 1 << 30);
        // No limit anywhere: physical memory.
        assert_eq!(cgroup_memory_limit("4:memory:/\n", root), None);
        assert_eq!(cgroup_memory_limit("0::/\n", root), None);
        // This machine: whatever it has, a positive limit with its source.
        let (limit, why) = default_memory_limit();
        assert!(
            limit > 0 && (why.starts_with("75% of ") || why.starts_with("the default of 4 GiB")),
            "{limit} {why}"
        );
    }

    #[test]
    fn sizes_are_binary_and_refuse_overflow() {
        assert_eq!(parse_size("1073741824"), Ok(1 << 30));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("8GiB"), Ok(8 << 30));
        assert_eq!(parse_size("1.5G"), Ok(3 << 29));
        assert_eq!(parse_size("64k"), Ok(64 << 10));
        assert_eq!(parse_size(" 2 kb "), Ok(2048));
        for bad in ["", "x", "-1", "1 parsec", "20EiB", "18446744073709551616"] {
            assert!(
                parse_size(bad).unwrap_err().contains("is not a size"),
                "{bad}"
            );
        }
    }

    #[test]
    fn buckets_keep_resident_rows_and_one_spooled_bucket_inside_the_budget() {
        for limit in [100u64 << 20, 200 << 20, 1 << 30, 4 << 30, 18 << 30] {
            let b = MemoryBudget::new(Some(limit), 20 << 20, 2);
            let budget = b.budget().unwrap();
            let (resident, bucket) = (b.resident_cap().unwrap(), b.bucket_cap().unwrap());
            // Two spooled buckets at once fit where the resident rows did,
            // and beside rows the scan still holds when it demoted them.
            assert!(2 * bucket <= (budget / 100 * 80).max(2 << 20), "{limit}");
            assert!(resident <= budget / 10 * 8, "{limit}");
            let beside = b.bucket_cap_beside(resident / 2).unwrap();
            assert!(
                resident / 2 + 2 * beside <= (budget / 100 * 80).max(2 << 20),
                "{limit}"
            );
            for estimate in [0u64, 1 << 20, budget / 2, budget, 3 * budget, 33 * budget] {
                let p = b.bucket_plan(estimate).unwrap();
                assert!(p.buckets >= 4 && p.resident <= p.buckets, "{p:?}");
                let per_bucket = estimate.div_ceil(u64::from(p.buckets));
                if estimate <= resident {
                    assert_eq!(p.resident, p.buckets, "all resident: {p:?}");
                } else {
                    assert!(p.resident < p.buckets, "{p:?}");
                    assert!(u64::from(p.resident) * per_bucket <= resident, "{p:?}");
                }
                assert!(per_bucket <= bucket.max(1 << 20), "{estimate}: {p:?}");
            }
        }
        // 2 GiB of input (6.6 GB decoded) at a limit of a tenth of it.
        let p = MemoryBudget::new(Some(205 << 20), 20 << 20, 2)
            .bucket_plan(6_600_000_000)
            .unwrap();
        assert!(p.buckets > 100 && p.resident <= 3, "{p:?}");
        // Without a limit: nothing is spooled; the unlimited defaults.
        let free = MemoryBudget::new(None, 20 << 20, 2);
        assert_eq!(free.bucket_plan(1 << 40), None);
        assert_eq!(
            (free.batch_rows(), free.slab_bytes(), free.round_points()),
            (8192, None, 4 << 20)
        );
    }
}
