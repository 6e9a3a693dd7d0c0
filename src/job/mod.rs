//! Jobs: the shard job and everything around it, one module per step of
//! its flow (see `run.rs`), each using only the modules before it:
//!
//! ```text
//! error     JobError                                  (used by all)
//! faults    named fail points for tests (debug builds)  -> error
//! textfile  size-capped reads of config files, TOML errors -> error
//! migration per-org cutovers, roles (new/old/shadow)      -> textfile, error
//! config    job file + flags -> RunConfig; MemoryBudget -> textfile, migration
//! measure   phase timing, process CPU / RSS, spill and operator figures
//! merge     SeriesInput::merge (rules of the spec)      -> error
//! group     rows filed by series, spooled buckets decoded -> merge, error
//! encode    the writer thread: series -> staged files  -> merge, measure, migration, faults
//! staging   groups' encoded spool, merged into the files -> encode
//! buckets   spooled buckets decoded, groups merged      -> group, encode, staging, config
//! manifest  the commit record, its checks, run_id      -> encode
//! commit    upload, the manifest put, cleanup          -> manifest, faults
//! plan      which windows must (re)run, and why        -> manifest, config, migration
//! scratch   locked scratch dirs, killed runs' reclaimed -> error
//! cluster   the job's steps on a Ballista cluster    -> config, group, buckets, encode, commit
//! run       the shard job's flow, RunStats             -> config, measure, merge, encode, manifest, commit, faults, scratch, plan
//! output    committed outputs read back                -> manifest
//! export    output -> one row per point                -> output, manifest
//! handover  what each system of a migration wrote outside its share -> output, manifest, migration
//! diff      two outputs compared; a migration's handover -> output, manifest, handover, migration
//! generate  a deterministic input tree                 (format only)
//! floor     the benchmark floor: decompress only       (datasource only)
//! report    RunStats + result -> the report            -> run, config
//! metrics   Prometheus text of a run or a plan          -> report, plan, error
//! history   reports kept under the output root          -> report, config, error
//! dashboard tailor report: history + plan -> HTML, JSON  -> history, plan
//! ```

pub mod buckets;
pub mod cluster;
pub mod commit;
pub mod config;
pub mod dashboard;
pub mod diff;
pub mod encode;
pub mod error;
pub mod export;
pub mod faults;
pub mod floor;
pub mod generate;
pub mod group;
pub mod handover;
pub mod history;
pub mod manifest;
pub mod measure;
pub mod merge;
pub mod metrics;
pub mod migration;
pub mod output;
pub mod plan;
pub mod report;
pub mod run;
pub mod scratch;
pub mod staging;
pub mod textfile;

pub use error::JobError;
