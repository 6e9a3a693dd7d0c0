//! One integration-test binary (as delta-rs and ripgrep do), one module per area.

mod cli;
mod common;
mod corpus;
mod diff;
mod faults;
mod faulty;
mod hostile;
mod job;
mod kills;
mod migration;
mod parts;
mod plan;

mod ranges;
mod retries;
mod scan;
mod spool;
mod stores;
