//! Migrations from an older system, one org at a time: the migration file
//! says, per org, the instant from which the new system owns the org's
//! points (`ts >= cutover`); orgs not listed stay with the old system.
//!
//! ```toml
//! # shards/migration.toml
//! version = 1
//!
//! [[cutover]]
//! org = 1001
//! at = "2026-11-21T13:30:00Z"   # RFC 3339, or epoch milliseconds: at = 1763731800000
//! note = "first customer"       # optional
//! ```
//!
//! A run has a role: `shadow` (the default, every point), `new` (each org's
//! points from its cutover on; nothing of unlisted orgs) or `old` (each
//! org's points before its cutover; every point of unlisted orgs). Points
//! left to the other system are counted per org, never an error.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::format::shard::{Shard, ShardMap};
use crate::job::error::JobError;

/// Which points a run writes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Every point (the system run beside the other, for comparison).
    #[default]
    Shadow,
    /// Each migrated org's points from its cutover on.
    New,
    /// Each org's points before its cutover; all of unlisted orgs.
    Old,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Shadow => "shadow",
            Role::New => "new",
            Role::Old => "old",
        }
    }
}

/// One org's cutover, as the manifest records it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Cutover {
    pub org: u64,
    /// Epoch milliseconds: points with `ts >= at_ms` belong to the new system.
    pub at_ms: i64,
}

/// The part of a migration a run of one shard applies: its role and the
/// cutovers of the shard's orgs (none in shadow mode). The manifest records
/// it; a run, or a plan, expecting another must rerun the window.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    pub role: Role,
    pub cutovers: Vec<Cutover>,
}

impl Applied {
    /// What a run of `shard` as `role` under `migration` applies.
    pub fn new(role: Role, migration: Option<&Migration>, shard: &str, map: &ShardMap) -> Self {
        match (role, migration) {
            (Role::Shadow, _) | (_, None) => Self::default(),
            (role, Some(m)) => Self {
                role,
                cutovers: m.entries_for(shard, map),
            },
        }
    }

    /// Why a window committed with `recorded` is not what this would write;
    /// `None` when it is.
    pub fn change_from(&self, recorded: &Applied) -> Option<String> {
        if self == recorded {
            return None;
        }
        Some(format!(
            "committed as {}, now {}",
            recorded.describe(),
            self.describe()
        ))
    }

    fn describe(&self) -> String {
        if self.role == Role::Shadow {
            return "shadow (every point)".into();
        }
        let c: Vec<String> = self
            .cutovers
            .iter()
            .map(|c| format!("{}@{}", c.org, c.at_ms))
            .collect();
        format!("role {} with cutovers [{}]", self.role.name(), c.join(", "))
    }
}

/// A parsed, checked migration file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Migration {
    /// org -> cutover (epoch ms).
    pub cutovers: BTreeMap<u64, i64>,
    /// Where it came from, for reports.
    pub source: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDoc {
    version: Option<u32>,
    #[serde(default)]
    cutover: Vec<toml::Spanned<EntryDoc>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryDoc {
    org: u64,
    at: toml::Spanned<toml::Value>,
    #[allow(dead_code)]
    note: Option<String>,
}

/// The line (from 1) of byte `at` of `text`.
fn line_of(text: &str, at: usize) -> usize {
    text[..at.min(text.len())].matches('\n').count() + 1
}

impl Migration {
    /// Parses a migration file's text; errors name `path` and the line.
    pub fn parse(text: &str, path: &Path) -> Result<Self, JobError> {
        let doc: FileDoc = toml::from_str(text)
            .map_err(|e| crate::job::textfile::toml_error("migration file", path, text, &e))?;
        let bad = |line: usize, what: String| {
            JobError::Config(format!(
                "migration file {}, line {line}: {what}",
                path.display()
            ))
        };
        if let Some(v) = doc.version
            && v != 1
        {
            return Err(bad(1, format!("version {v} (this tailor reads version 1)")));
        }
        let mut cutovers = BTreeMap::new();
        let mut lines: BTreeMap<u64, usize> = BTreeMap::new();
        for e in &doc.cutover {
            let line = line_of(text, e.span().start);
            let entry = e.get_ref();
            let at_line = line_of(text, entry.at.span().start);
            let at_ms = match entry.at.get_ref() {
                toml::Value::Integer(ms) => *ms,
                toml::Value::String(s) => chrono::DateTime::parse_from_rfc3339(s)
                    .map_err(|err| {
                        bad(
                            at_line,
                            format!(
                                "cutover {s:?} of org {} is not an RFC 3339 time: {err}",
                                entry.org
                            ),
                        )
                    })?
                    .timestamp_millis(),
                toml::Value::Datetime(d) => {
                    let s = d.to_string();
                    chrono::DateTime::parse_from_rfc3339(&s)
                        .map_err(|err| {
                            bad(
                                at_line,
                                format!(
                                    "cutover {s} of org {} needs a date, a time and an offset (e.g. 2026-11-21T13:30:00Z): {err}",
                                    entry.org
                                ),
                            )
                        })?
                        .timestamp_millis()
                }
                other => {
                    return Err(bad(
                        at_line,
                        format!(
                            "cutover of org {} is {}, not an RFC 3339 time or epoch milliseconds",
                            entry.org,
                            other.type_str()
                        ),
                    ));
                }
            };
            if let Some(first) = lines.insert(entry.org, line) {
                return Err(bad(
                    line,
                    format!("org {} has a cutover already (line {first})", entry.org),
                ));
            }
            cutovers.insert(entry.org, at_ms);
        }
        Ok(Self {
            cutovers,
            source: path.display().to_string(),
        })
    }

    /// Loads a migration file (at most 16 MiB).
    pub fn load(path: &Path) -> Result<Self, JobError> {
        let text = crate::job::textfile::read_small(path, "migration file", 16 << 20)?;
        Self::parse(&text, path)
    }

    /// The cutover of `org`, if it is migrated.
    pub fn cutover(&self, org: u64) -> Option<i64> {
        self.cutovers.get(&org).copied()
    }

    /// The entries of the orgs that belong to `shard` under `map`, in org
    /// order: what a run of the shard records in its manifest.
    pub fn entries_for(&self, shard: &str, map: &ShardMap) -> Vec<Cutover> {
        let Some(shard) = Shard::parse(shard) else {
            return Vec::new();
        };
        self.cutovers
            .iter()
            .filter(|(org, _)| map.shard_of(**org) == shard)
            .map(|(org, at)| Cutover {
                org: *org,
                at_ms: *at,
            })
            .collect()
    }

    /// The points of `org` (sorted timestamps `ts`) that `role` keeps: a
    /// range of indexes.
    pub fn kept(&self, role: Role, org: u64, ts: &[i64]) -> std::ops::Range<usize> {
        match (role, self.cutover(org)) {
            (Role::Shadow, _) => 0..ts.len(),
            (Role::New, None) => 0..0,
            (Role::Old, None) => 0..ts.len(),
            (Role::New, Some(c)) => ts.partition_point(|t| *t < c)..ts.len(),
            (Role::Old, Some(c)) => 0..ts.partition_point(|t| *t < c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Migration, String> {
        Migration::parse(text, Path::new("m.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn cutovers_parse_as_rfc3339_or_milliseconds_and_errors_name_the_line() {
        let m = parse(
            "version = 1\n[[cutover]]\norg = 7\nat = \"2026-11-21T13:30:00Z\"\n\n[[cutover]]\norg = 9\nat = 1763731800123\nnote = \"x\"\n[[cutover]]\norg = 11\nat = 2026-11-21T14:00:00+01:00\n",
        )
        .unwrap();
        assert_eq!(m.cutover(7), Some(1_795_267_800_000));
        assert_eq!(m.cutover(9), Some(1_763_731_800_123));
        assert_eq!(m.cutover(11), Some(1_795_266_000_000));
        assert_eq!(m.cutover(8), None);
        for (text, want) in [
            (
                "[[cutover]]\norg = 7\nat = \"yesterday\"\n",
                "m.toml, line 3: cutover \"yesterday\" of org 7 is not an RFC 3339 time",
            ),
            (
                "[[cutover]]\norg = 7\nat = 1\n\n[[cutover]]\norg = 7\nat = 2\n",
                "m.toml, line 5: org 7 has a cutover already (line 1)",
            ),
            (
                "[[cutover]]\norg = 7\nat = 1\nwhen = 3\n",
                "m.toml, line 4, column 1: unknown field `when`",
            ),
            (
                "[[cutover]]\norg = -7\nat = 1\n",
                "m.toml, line 2, column 7:",
            ),
            (
                "[[cutover]]\norg = 7\nat = 2026-11-21\n",
                "m.toml, line 3: cutover 2026-11-21 of org 7 needs a date, a time and an offset",
            ),
            (
                "version = 2\n",
                "line 1: version 2 (this tailor reads version 1)",
            ),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }

    #[test]
    fn each_role_keeps_its_side_of_the_cutover() {
        let m = Migration {
            cutovers: [(7, 100)].into(),
            source: String::new(),
        };
        let ts = [10, 99, 100, 101, 200];
        assert_eq!(m.kept(Role::Shadow, 7, &ts), 0..5);
        assert_eq!(m.kept(Role::Old, 7, &ts), 0..2, "ts < cutover");
        assert_eq!(m.kept(Role::New, 7, &ts), 2..5, "ts >= cutover");
        assert_eq!(m.kept(Role::Old, 8, &ts), 0..5, "unlisted orgs stay old");
        assert_eq!(m.kept(Role::New, 8, &ts), 0..0);
        let map = ShardMap::parse("modulus = 4\ndedicated = [7]\n").unwrap();
        assert_eq!(
            m.entries_for("org-7", &map),
            vec![Cutover { org: 7, at_ms: 100 }]
        );
        assert!(m.entries_for("org-mod-3", &map).is_empty());
    }
}
