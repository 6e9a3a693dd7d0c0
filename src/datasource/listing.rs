//! Listing a shard's payload files (spec section 1):
//! `<root>/<shard>/dt=<YYYY-MM-DD>/hour=<HH>/<topic>+<partition>+<offset>.tsp`.
//!
//! Only names ending in `.tsp` are payload files; everything else under a
//! shard (`_tmp`, `.crc`, markers) is ignored, and counted and listed as such
//! so that nothing disappears without a trace.

use std::fmt;

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};

use futures::TryStreamExt;
use object_store::ObjectMeta;
use serde::Serialize;

use crate::datasource::error::StoreOpError;
use crate::datasource::store::StoreRoot;

/// A UTC hour, `YYYY-MM-DDTHH`; orders as time does.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Hour(String);

impl Hour {
    /// Parses `YYYY-MM-DDTHH` (also accepts a space or `/` for `T`, and `:00`
    /// minutes after the hour).
    pub fn parse(s: &str) -> Option<Hour> {
        let s = s.trim().trim_end_matches(":00").trim_end_matches('Z');
        // Non-ASCII input could put byte 10 inside a character.
        if s.len() != 13 || !s.is_ascii() {
            return None;
        }
        let (date, rest) = s.split_at(10);
        let sep = rest.as_bytes()[0];
        if !matches!(sep, b'T' | b' ' | b'/') {
            return None;
        }
        Self::from_parts(date, &rest[1..])
    }

    /// From the `dt=` and `hour=` values of a key: exactly `YYYY-MM-DD`
    /// (a date of the calendar) and `HH` (00 to 23).
    pub fn from_parts(date: &str, hour: &str) -> Option<Hour> {
        let d = date.as_bytes();
        let shaped = d.len() == 10
            && d[4] == b'-'
            && d[7] == b'-'
            && d.iter()
                .enumerate()
                .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit())
            && hour.len() == 2
            && hour.bytes().all(|c| c.is_ascii_digit());
        if !shaped {
            return None;
        }
        let day = NaiveDate::parse_from_str(date, "%Y-%m-%d").ok()?;
        let h: u32 = hour.parse().ok()?;
        day.and_hms_opt(h, 0, 0)?;
        Some(Hour(format!("{date}T{hour}")))
    }

    /// The hour holding the instant `ms` (milliseconds since the epoch).
    pub fn of_ms(ms: i64) -> Option<Hour> {
        let t = DateTime::<Utc>::from_timestamp_millis(ms)?;
        Some(Hour(t.format("%Y-%m-%dT%H").to_string()))
    }

    /// The hour's first instant, in milliseconds since the epoch.
    pub fn start_ms(&self) -> i64 {
        NaiveDateTime::parse_from_str(&format!("{}:00", self.0), "%Y-%m-%dT%H:%M")
            .expect("an Hour is a valid hour")
            .and_utc()
            .timestamp_millis()
    }

    /// The hour after this one.
    pub fn next(&self) -> Hour {
        Hour::of_ms(self.start_ms() + 3_600_000).expect("in range")
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
    pub fn date(&self) -> &str {
        &self.0[..10]
    }
    pub fn hour(&self) -> &str {
        &self.0[11..]
    }
}

impl fmt::Display for Hour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An inclusive range of hours; either end open.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Window {
    pub from: Option<Hour>,
    pub to: Option<Hour>,
}

impl Window {
    pub fn contains(&self, h: &Hour) -> bool {
        self.from.as_ref().is_none_or(|f| h >= f) && self.to.as_ref().is_none_or(|t| h <= t)
    }

    /// Whether a committed window covering hours `from..=to` (as its
    /// manifest writes them) is selected by this one: committed windows
    /// are read whole, so one only partly inside is an error naming it
    /// (`what`), never left out unseen.
    pub fn selects(&self, from: &str, to: &str, what: &str) -> Result<bool, String> {
        let starts_after = |f: &Hour| from >= f.as_str();
        let ends_before = |t: &Hour| to <= t.as_str();
        if self.from.as_ref().is_none_or(starts_after) && self.to.as_ref().is_none_or(ends_before) {
            return Ok(true);
        }
        let overlaps = self.from.as_ref().is_none_or(|f| to >= f.as_str())
            && self.to.as_ref().is_none_or(|t| from <= t.as_str());
        if overlaps {
            return Err(format!(
                "window {what} ({from} to {to}) is only partly inside --from/--to; \
                 windows are read whole: move --from/--to to window bounds"
            ));
        }
        Ok(false)
    }
}

/// A payload file of the input.
#[derive(Debug, Clone, Serialize)]
pub struct InputObject {
    /// The key, relative to the store (what the scan reports).
    pub key: String,
    pub size: u64,
    pub e_tag: Option<String>,
    pub shard: String,
    pub hour: Hour,
    #[serde(skip)]
    pub meta: ObjectMeta,
}

/// An object under the root that is not a payload file of the window.
#[derive(Debug, Clone, Serialize)]
pub struct Ignored {
    pub key: String,
    pub size: u64,
    pub reason: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Listing {
    /// In input order (key bytes).
    pub objects: Vec<InputObject>,
    /// Non-payload objects (non-`.tsp`, or `.tsp` outside the layout).
    pub ignored: Vec<Ignored>,
}

impl Listing {
    pub fn total_bytes(&self) -> u64 {
        self.objects.iter().map(|o| o.size).sum()
    }
    /// The hours present, sorted.
    pub fn hours(&self) -> Vec<Hour> {
        let mut h: Vec<Hour> = self.objects.iter().map(|o| o.hour.clone()).collect();
        h.sort();
        h.dedup();
        h
    }
}

/// Lists the payload files under `root` (all shards, or one) whose hour is
/// in `window`.
pub async fn list_inputs(
    root: &StoreRoot,
    shard: Option<&str>,
    window: &Window,
) -> Result<Listing, StoreOpError> {
    let prefix = match shard {
        Some(s) => root.child(s),
        None => root.prefix.clone(),
    };
    let metas: Vec<ObjectMeta> =
        root.store
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(|source| StoreOpError {
                op: "LIST",
                target: match &source {
                    // Naming the prefix that cannot be listed, and why.
                    object_store::Error::InvalidPath { .. } => format!(
                        "{}/ (an object under it has a key that is not a valid object path; \
                         nothing under the prefix can be listed until it is renamed or removed)",
                        root.display_of(&prefix)
                    ),
                    _ => format!("{}/", root.display_of(&prefix)),
                },
                source,
            })?;
    let mut listing = Listing::default();
    for meta in metas {
        let key = meta.location.to_string();
        let rel = root.relative(&meta.location).unwrap_or(&key).to_string();
        let parts: Vec<&str> = rel.split('/').collect();
        if !key.ends_with(".tsp") {
            listing.ignored.push(Ignored {
                key,
                size: meta.size,
                reason: "not a payload file (name does not end in .tsp)".into(),
            });
            continue;
        }
        let parsed = match parts.as_slice() {
            [shard, dt, hour, _name] => dt
                .strip_prefix("dt=")
                .zip(hour.strip_prefix("hour="))
                .and_then(|(d, h)| Hour::from_parts(d, h))
                .map(|h| (shard.to_string(), h)),
            _ => None,
        };
        let Some((shard, hour)) = parsed else {
            listing.ignored.push(Ignored {
                key,
                size: meta.size,
                reason: "a .tsp object outside the <shard>/dt=YYYY-MM-DD/hour=HH/ layout".into(),
            });
            continue;
        };
        if !window.contains(&hour) {
            continue;
        }
        listing.objects.push(InputObject {
            key,
            size: meta.size,
            e_tag: meta.e_tag.clone(),
            shard,
            hour,
            meta,
        });
    }
    listing
        .objects
        .sort_by(|a, b| a.key.as_bytes().cmp(b.key.as_bytes()));
    listing.ignored.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(listing)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hours_parse_and_order() {
        let a = Hour::parse("2026-11-21T03").unwrap();
        let b = Hour::from_parts("2026-11-21", "13").unwrap();
        assert!(a < b);
        assert_eq!(Hour::parse("2026-11-21 03:00").unwrap(), a);
        for bad in [
            "2026-11-21",
            "2026-13-01T00",
            "2026-11-21T24",
            "20261121T03",
            "2026-11-2é03",
            "2026-11-21é3",
        ] {
            assert_eq!(Hour::parse(bad), None, "{bad}");
        }
        let w = Window {
            from: Some(a.clone()),
            to: Some(b.clone()),
        };
        assert!(w.contains(&a) && w.contains(&b));
        assert!(!w.contains(&Hour::parse("2026-11-21T14").unwrap()));
    }
}
