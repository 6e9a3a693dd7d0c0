//! DataFusion adapters for payload files: the table schema, the
//! `FileFormat` / `FileSource` / `FileOpener` trio, range reading, decode
//! buffers, listing and object-store roots.

pub mod batch;
pub mod compact;
pub mod error;
pub mod file_format;
pub mod listing;
pub mod opener;
pub mod options;
pub mod partitions;
pub mod reader;
pub mod route;
pub mod scan_log;
pub mod schema;
pub mod source;
pub mod store;
pub mod table;
