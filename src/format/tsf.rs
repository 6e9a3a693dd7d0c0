// TEMPORARY compile shim; replaced by the real module before commit.
#![allow(dead_code, unused_variables)]
pub const MAGIC: &[u8; 8] = b"TSF\0v001";
#[derive(Debug, Clone)]
pub struct WriterOptions {
    pub block_points: usize,
    pub zstd_level: i32,
}
impl Default for WriterOptions {
    fn default() -> Self {
        Self {
            block_points: 4096,
            zstd_level: 3,
        }
    }
}
pub struct SeriesHeader<'a> {
    pub org_id: u64,
    pub metric_id: u64,
    pub kind: u8,
    pub interval_s: u32,
    pub metadata: &'a str,
}
#[derive(Debug, thiserror::Error)]
pub enum TsfError {
    #[error("x")]
    X,
}
pub struct FileWriter<W: std::io::Write> {
    w: W,
}
pub struct FileSummary {
    pub bytes: u64,
    pub series: u64,
    pub points: u64,
    pub crc32c: u32,
}
impl<W: std::io::Write> FileWriter<W> {
    pub fn new(w: W, opts: WriterOptions) -> Result<Self, TsfError> {
        todo!()
    }
    pub fn add_series(
        &mut self,
        h: &SeriesHeader<'_>,
        ts: &[i64],
        values: &[u64],
    ) -> Result<(), TsfError> {
        todo!()
    }
    pub fn bytes_written(&self) -> u64 {
        todo!()
    }
    pub fn finish(self) -> Result<(W, FileSummary), TsfError> {
        todo!()
    }
}
pub struct BlockEntry;
pub struct SeriesEntry {
    pub org_id: u64,
    pub metric_id: u64,
    pub kind: u8,
    pub interval_s: u32,
    pub metadata: String,
    pub n_points: u64,
    pub min_ts: i64,
    pub max_ts: i64,
    pub blocks: Vec<BlockEntry>,
}
pub struct Footer;
impl Footer {
    pub fn series(&self) -> &[SeriesEntry] {
        todo!()
    }
    pub fn find(&self, o: u64, m: u64) -> Option<&SeriesEntry> {
        todo!()
    }
}
pub struct FileReader<'a> {
    b: &'a [u8],
}
impl<'a> FileReader<'a> {
    pub fn open(b: &'a [u8]) -> Result<Self, TsfError> {
        todo!()
    }
    pub fn footer(&self) -> &Footer {
        todo!()
    }
    pub fn read_series(&self, e: &SeriesEntry) -> Result<(Vec<i64>, Vec<u64>), TsfError> {
        todo!()
    }
    pub fn read_series_into(
        &self,
        e: &SeriesEntry,
        ts: &mut Vec<i64>,
        v: &mut Vec<u64>,
    ) -> Result<(), TsfError> {
        todo!()
    }
}
