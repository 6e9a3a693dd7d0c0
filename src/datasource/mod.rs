//! DataFusion adapters for payload files: the table schema, the
//! `FileFormat` / `FileSource` / `FileOpener` trio, range reading, decode
//! buffers, listing and object-store roots.

pub mod batch;
pub mod compact;
pub mod file_format;
pub mod listing;
pub mod reader;
pub mod schema;
pub mod source;
pub mod store;
pub mod table;
