//! tailor: turns the raw metric payload files a Kafka Connect sink writes
//! into compact, indexed timeseries files, one output per shard.
//!
//! Layers, each knowing only the ones below it:
//!
//! * [`format`](mod@format): bytes only: payload frames and payloads (the input
//!   contract, `format/payload.rs`), the shard map, the output format.
//! * [`datasource`]: DataFusion adapters over payload files.
//! * [`job`]: plan a shard job, group, write, commit; the report.
//! * [`cli`]: clap commands.

pub mod cli;
pub mod datasource;
pub mod format;
pub mod job;
