//! The validated configuration of a shard job, from a job file (`jobs/*.toml`)
//! overridden by flags. Nothing downstream re-validates.

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::datasource::listing::Window;
use crate::datasource::source::{CorruptPolicy, DEFAULT_RANGE_BYTES};
use crate::format::shard::ShardMap;
use crate::format::tsf::WriterOptions;

/// The default shard map, compiled in (`shards/production.toml`).
pub const DEFAULT_SHARD_MAP: &str = include_str!("../../shards/production.toml");

/// Default size cap of one output file.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 1 << 30;

/// A job file: the same settings as `tailor run`'s flags, all optional.
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
}

impl JobFile {
    /// Loads a job file. Relative paths in it (shard map, spill, stage and
    /// report paths, and input / output roots given as plain paths) are
    /// relative to the job file's directory, not to the directory the
    /// scheduler happens to start the job in.
    pub fn load(path: &std::path::Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("reading job file {}: {e}", path.display()))?;
        let mut file: JobFile =
            toml::from_str(&text).map_err(|e| format!("job file {}: {e}", path.display()))?;
        let base = path.parent().unwrap_or(std::path::Path::new(""));
        for p in [
            &mut file.shard_map,
            &mut file.spill_dir,
            &mut file.stage_dir,
            &mut file.report,
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
    !url && std::path::Path::new(s).is_relative()
}

/// Parses a byte size: `1073741824`, `512MiB`, `8GiB`, `1.5G`, `64k`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 512MiB, 8GiB)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        other => return Err(format!("{s:?}: unknown size unit {other:?}")),
    };
    if !(n >= 0.0 && n.is_finite()) {
        return Err(format!("{s:?} is not a size"));
    }
    Ok((n * mult as f64) as u64)
}

/// The memory limit when none is given: 75% of the machine's physical
/// memory, so that a shard bigger than memory spills instead of being
/// killed.
pub fn default_memory_limit() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let (pages, page) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    if pages <= 0 || page <= 0 {
        return 4 << 30;
    }
    (pages as u64 * page as u64) / 4 * 3
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
    #[serde(skip)]
    pub progress: bool,
    /// Test hook: stop after the data files are written, before the commit
    /// (what a job killed at that moment leaves behind).
    #[serde(skip)]
    pub fail_before_commit: bool,
    /// How old files of a run that no manifest names must be before a
    /// commit of the same window removes them
    /// ([`DEFAULT_CLEANUP_GRACE`](crate::job::manifest::DEFAULT_CLEANUP_GRACE)).
    #[serde(skip)]
    pub cleanup_grace: std::time::Duration,
}

impl RunConfig {
    /// A config with defaults for everything but the three required settings.
    pub fn new(
        input: impl Into<String>,
        output: impl Into<String>,
        shard: impl Into<String>,
    ) -> Self {
        Self {
            input: input.into(),
            output: output.into(),
            shard: shard.into(),
            window: Window::default(),
            shard_map: Arc::new(ShardMap::parse(DEFAULT_SHARD_MAP).expect("built-in shard map")),
            shard_map_source: "built-in shards/production.toml".into(),
            memory_limit: Some(default_memory_limit()),
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
            progress: false,
            fail_before_commit: false,
            cleanup_grace: crate::job::manifest::DEFAULT_CLEANUP_GRACE,
        }
    }

    pub fn file_options(&self) -> crate::job::manifest::FileOptions {
        crate::job::manifest::FileOptions {
            max_file_bytes: self.max_file_bytes,
            writer: WriterOptions {
                block_points: self.block_points,
                zstd_level: self.zstd_level,
            },
            // 16 bytes a point in, about as much out: a 64th of the budget.
            round_points: match self.memory_limit {
                Some(l) => (l / 64 / 32).clamp(64 << 10, 4 << 20) as usize,
                None => 4 << 20,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_repository_job_files_load_and_their_paths_resolve() {
        let jobs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("jobs");
        for name in ["hourly.toml", "replay.toml"] {
            let f = JobFile::load(&jobs.join(name)).unwrap();
            let map = f.shard_map.expect("the job files name the shard map");
            let text = std::fs::read_to_string(&map)
                .unwrap_or_else(|e| panic!("{name}: {}: {e}", map.display()));
            assert_eq!(text, DEFAULT_SHARD_MAP, "{name} uses the production map");
            assert!(
                f.input.unwrap().starts_with("s3://"),
                "URLs stay as they are"
            );
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
}
