//! Series parts: a shard's window may be written in `K` parts, each series
//! in exactly one, so that parts can be merged, encoded and written apart
//! (on other machines, too). The part of a series is
//!
//! ```text
//! part(org_id, metric_id, K) = mix(org_id XOR mix(metric_id)) mod K
//! mix(z): z ^= z >> 30; z *= 0xBF58476D1CE4E5B9;
//!         z ^= z >> 27; z *= 0x94D049BB133111EB;
//!         z ^= z >> 31                      (u64, multiplications wrap)
//! ```
//!
//! (`mix` is splitmix64's finaliser). `K = 1` puts every series in part 0.
//! This is part of the output format (docs/output-layout.md): a reader
//! looking for one series hashes it to its part.

/// The most parts a window may be written in.
pub const MAX_PARTS: u32 = 4096;

/// splitmix64's finaliser.
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The part of series `(org_id, metric_id)` among `parts`.
pub fn part_of(org_id: u64, metric_id: u64, parts: u32) -> u32 {
    if parts <= 1 {
        return 0;
    }
    (mix(org_id ^ mix(metric_id)) % u64::from(parts)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_fixed_values_and_spread_series() {
        // Fixed values (also checked by scripts/tsf_reader.py): the hash is
        // part of the format.
        assert_eq!(mix(0), 0);
        assert_eq!(mix(1), 0x5692_161D_100B_05E5);
        assert_eq!(part_of(7, 9, 1), 0);
        assert_eq!(part_of(1001, 42, 7), part_of(1001, 42, 7));
        let mut counts = [0u32; 7];
        for org in 0..100 {
            for metric in 0..100 {
                counts[part_of(org, metric, 7) as usize] += 1;
            }
        }
        assert!(
            counts.iter().all(|&c| (1300..1560).contains(&c)),
            "{counts:?}"
        );
    }
}
