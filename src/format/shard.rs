//! The shard map (spec section 4): which shard an org's payloads belong to.
//!
//! ```toml
//! modulus = 64            # shared shards org-mod-0 .. org-mod-63
//! dedicated = [2, 1001]   # orgs with a shard of their own
//! ```

use std::collections::BTreeSet;
use std::fmt;

/// A parsed, validated shard map.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardMap {
    pub modulus: u64,
    #[serde(default)]
    pub dedicated: BTreeSet<u64>,
}

/// A shard name: `org-<id>` or `org-mod-<n>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Shard {
    Dedicated(u64),
    Mod(u64),
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Shard::Dedicated(org) => write!(f, "org-{org}"),
            Shard::Mod(n) => write!(f, "org-mod-{n}"),
        }
    }
}

fn parse_decimal(s: &str) -> Option<u64> {
    // Canonical decimal only: no sign, no leading zeros (except "0").
    if s.is_empty() || (s.len() > 1 && s.starts_with('0')) || !s.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    s.parse().ok()
}

impl Shard {
    /// Parses a shard directory name; `None` for anything else.
    pub fn parse(name: &str) -> Option<Shard> {
        if let Some(n) = name.strip_prefix("org-mod-") {
            return parse_decimal(n).map(Shard::Mod);
        }
        name.strip_prefix("org-")
            .and_then(parse_decimal)
            .map(Shard::Dedicated)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ShardMapError {
    #[error("shard map is not valid TOML for {{ modulus, dedicated }}: {0}")]
    Parse(#[from] toml::de::Error),
    #[error("shard map modulus must be at least 1, found {0}")]
    ZeroModulus(u64),
}

impl ShardMap {
    pub fn parse(text: &str) -> Result<Self, ShardMapError> {
        let map: ShardMap = toml::from_str(text)?;
        if map.modulus == 0 {
            return Err(ShardMapError::ZeroModulus(0));
        }
        Ok(map)
    }

    /// The shard an org's payloads belong to.
    pub fn shard_of(&self, org_id: u64) -> Shard {
        if self.dedicated.contains(&org_id) {
            Shard::Dedicated(org_id)
        } else {
            Shard::Mod(org_id % self.modulus)
        }
    }

    /// Whether `shard` exists in this map.
    pub fn contains(&self, shard: Shard) -> bool {
        match shard {
            Shard::Dedicated(org) => self.dedicated.contains(&org),
            Shard::Mod(n) => n < self.modulus,
        }
    }

    /// Every shard of the map, in name order of kind (dedicated, then mod).
    pub fn shards(&self) -> Vec<Shard> {
        let mut v: Vec<Shard> = self
            .dedicated
            .iter()
            .map(|&o| Shard::Dedicated(o))
            .collect();
        v.extend((0..self.modulus).map(Shard::Mod));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_dedicated_and_modulo() {
        let m = ShardMap::parse("modulus = 64\ndedicated = [2, 1001]\n").unwrap();
        assert_eq!(m.shard_of(2), Shard::Dedicated(2));
        assert_eq!(m.shard_of(66), Shard::Mod(2));
        assert_eq!(m.shard_of(1001).to_string(), "org-1001");
        assert_eq!(m.shard_of(1000).to_string(), "org-mod-40");
        assert!(m.contains(Shard::Mod(63)) && !m.contains(Shard::Mod(64)));
        assert!(!m.contains(Shard::Dedicated(3)));
    }

    #[test]
    fn parses_shard_names() {
        assert_eq!(Shard::parse("org-mod-7"), Some(Shard::Mod(7)));
        assert_eq!(Shard::parse("org-1001"), Some(Shard::Dedicated(1001)));
        for bad in [
            "org-",
            "org-mod-",
            "org-01",
            "org-mod-x",
            "shard-1",
            "org--1",
        ] {
            assert_eq!(Shard::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn rejects_bad_maps() {
        assert!(matches!(
            ShardMap::parse("modulus = 0"),
            Err(ShardMapError::ZeroModulus(_))
        ));
        for bad in ["modulus = 4\nextra = 1", "dedicated = [1]"] {
            let e = ShardMap::parse(bad).unwrap_err();
            assert!(
                matches!(e, ShardMapError::Parse(_))
                    && e.to_string().starts_with("shard map is not valid TOML"),
                "{bad}: {e}"
            );
        }
    }
}
