//! Partition planning: how a scan's files are cut into ranges and spread
//! over partitions.

use datafusion::common::Result;
use datafusion::datasource::listing::{FileRange, PartitionedFile};
use datafusion::datasource::physical_plan::{FileGroup, FileGroupPartitioner, FileScanConfig};
use datafusion::physical_expr::LexOrdering;

use crate::datasource::options::{CorruptPolicy, PayloadOptions};

/// Under the skip policy every object is read as one range, from byte 0,
/// so what a corrupt region hides is settled by one walk of its chain and
/// the frames read never depend on how objects would have been split. (A
/// range that starts inside a corrupt body can find a well-formed frame
/// there that the walk from byte 0 skips with the body; no rule local to
/// the ranges settles every such case.) The files are spread whole over
/// `partitions` groups, largest first onto the least loaded group, each
/// group in input order: the grouping sorts by input position, so the
/// output does not depend on the spread either.
pub fn whole_files_spread(groups: &[FileGroup], partitions: usize) -> Vec<FileGroup> {
    let files: Vec<PartitionedFile> = groups.iter().flat_map(|g| g.iter().cloned()).collect();
    let n = partitions.clamp(1, files.len().max(1));
    let mut order: Vec<usize> = (0..files.len()).collect();
    order.sort_by_key(|&i| (std::cmp::Reverse(files[i].object_meta.size), i));
    let mut load = vec![0u64; n];
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); n];
    for i in order {
        let g = (0..n).min_by_key(|&g| (load[g], g)).expect("n >= 1");
        load[g] += files[i].object_meta.size;
        members[g].push(i);
    }
    members
        .into_iter()
        .filter(|m| !m.is_empty())
        .map(|mut m| {
            m.sort_unstable();
            let whole = m.into_iter().map(|i| {
                let mut f = files[i].clone();
                f.range = None;
                f
            });
            FileGroup::new(whole.collect())
        })
        .collect()
}

/// The [`PayloadSource`](crate::datasource::source::PayloadSource)'s
/// `FileSource::repartitioned`: splits files into ranges of at most
/// `range_bytes`, then lets DataFusion's [`FileGroupPartitioner`] spread them evenly. Under the
/// skip policy files are never split ([`whole_files_spread`]).
pub(super) fn repartitioned(
    options: &PayloadOptions,
    target_partitions: usize,
    repartition_file_min_size: usize,
    output_ordering: Option<LexOrdering>,
    config: &FileScanConfig,
) -> Result<Option<FileScanConfig>> {
    if options.on_corrupt == CorruptPolicy::Skip {
        let mut c = config.clone();
        c.file_groups = whole_files_spread(&config.file_groups, target_partitions);
        return Ok(Some(c));
    }
    let max = options.range_bytes.max(1);
    let mut split = Vec::new();
    for group in &config.file_groups {
        let mut files = Vec::new();
        for f in group.iter() {
            let (start, end) = f.range();
            let mut s = start;
            while s < end {
                let e = s.saturating_add(max).min(end);
                let mut piece = f.clone();
                piece.range = Some(FileRange {
                    start: s as i64,
                    end: e as i64,
                });
                files.push(piece);
                s = e;
            }
            if start == end {
                files.push(f.clone());
            }
        }
        split.push(FileGroup::new(files));
    }
    let partitioned = FileGroupPartitioner::new()
        .with_target_partitions(target_partitions)
        .with_repartition_file_min_size(repartition_file_min_size)
        .with_preserve_order_within_groups(output_ordering.is_some())
        .repartition_file_groups(&split)
        .unwrap_or(split);
    let mut c = config.clone();
    c.file_groups = partitioned;
    Ok(Some(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, size: u64) -> PartitionedFile {
        let mut f = PartitionedFile::new(name.to_string(), size);
        // A range as an earlier split would have left it.
        f.range = Some(FileRange { start: 0, end: 1 });
        f
    }

    #[test]
    fn the_skip_policy_spreads_whole_files_largest_first_each_group_in_input_order() {
        let groups = vec![FileGroup::new(vec![
            file("a", 10),
            file("b", 100),
            file("c", 30),
            file("d", 60),
            file("e", 20),
        ])];
        let spread = whole_files_spread(&groups, 2);
        let names: Vec<Vec<String>> = spread
            .iter()
            .map(|g| {
                g.iter()
                    .map(|f| f.object_meta.location.to_string())
                    .collect()
            })
            .collect();
        // b (100) | d (60), c (30 -> 90), e (20 -> 110) | a (10 -> 110).
        assert_eq!(names, [vec!["a", "b"], vec!["c", "d", "e"]]);
        assert!(
            spread
                .iter()
                .flat_map(|g| g.iter())
                .all(|f| f.range.is_none())
        );
        // More partitions than files: one file per group, none empty.
        assert_eq!(whole_files_spread(&groups, 8).len(), 5);
        assert_eq!(whole_files_spread(&[], 4).len(), 0);
    }
}
