//! Bytes only: the input payload files, the shard map and the output
//! timeseries format. Nothing here does I/O or knows DataFusion; everything
//! is testable on `&[u8]`.

pub mod part;
pub mod payload;
pub mod shard;
pub mod tsf;
