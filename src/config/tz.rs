//! The terminal's time zone (`terminal.timezone`): an IANA name resolved in the system's
//! time-zone database when the config loads, and a chrono [`TimeZone`] over its rules.
//!
//! The rules come from the TZif file `$TZDIR/<name>` (default `/usr/share/zoneinfo`, the
//! `tzdata` package), parsed once per name and process, rather than from a database compiled
//! into the binary: the same source `chrono::Local` already reads when no zone is configured,
//! at a fraction of the size. A name that is not a plain IANA name (no `..`, no leading `/`)
//! or has no readable file is refused with the place looked in.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Mutex, OnceLock};

use chrono::{FixedOffset, MappedLocalTime, NaiveDate, NaiveDateTime, Offset, TimeZone};

/// Where TZif files are looked up when `$TZDIR` is not set.
pub const DEFAULT_TZDIR: &str = "/usr/share/zoneinfo";

/// Seconds in a day: the candidate offsets of a local time are those a day either side.
const DAY: i64 = 86_400;

/// A named time zone. Cheap to copy (each name's rules are parsed once per process and kept
/// for its lifetime, as a compiled-in database would be).
#[derive(Clone, Copy)]
pub struct Tz(&'static Zone);

struct Zone {
    name: String,
    rules: tz::TimeZone,
    /// The offset when the rules have none for an instant (a file without a rule past its
    /// last transition): the one in force when the file was loaded.
    fallback: FixedOffset,
}

impl Tz {
    /// Resolves an IANA name, e.g. `Asia/Shanghai`, in the system's time-zone database.
    pub fn named(name: &str) -> Result<Tz, String> {
        static LOADED: OnceLock<Mutex<Vec<&'static Zone>>> = OnceLock::new();
        let loaded = LOADED.get_or_init(|| Mutex::new(Vec::new()));
        let mut zones = loaded.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(z) = zones.iter().find(|z| z.name == name) {
            return Ok(Tz(z));
        }
        let zone: &'static Zone = Box::leak(Box::new(load(name)?));
        zones.push(zone);
        Ok(Tz(zone))
    }

    /// The IANA name.
    pub fn name(&self) -> &'static str {
        &self.0.name
    }

    fn at(&self, unix: i64) -> TzOffset {
        let fixed = self
            .0
            .rules
            .find_local_time_type(unix)
            .ok()
            .and_then(|t| FixedOffset::east_opt(t.ut_offset()))
            .unwrap_or(self.0.fallback);
        TzOffset { tz: *self, fixed }
    }
}

fn tzdir() -> PathBuf {
    std::env::var_os("TZDIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_TZDIR))
}

fn plain_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('/')
        && name.split('/').all(|part| {
            !part.is_empty()
                && part != "."
                && part != ".."
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '+'))
        })
}

fn load(name: &str) -> Result<Zone, String> {
    if !plain_name(name) {
        return Err(format!(
            "{name:?} is not an IANA time zone name such as \"Asia/Shanghai\""
        ));
    }
    let path = tzdir().join(name);
    let bytes = std::fs::read(&path).map_err(|e| {
        format!(
            "{name:?} is not a time zone of this system ({}: {e}); give an IANA name such as \
             \"Asia/Shanghai\", and install the time-zone database (tzdata) if it is missing",
            path.display()
        )
    })?;
    let rules = tz::TimeZone::from_tz_data(&bytes).map_err(|e| {
        format!(
            "{name:?}: {} is not a time-zone file ({e}); give an IANA name such as \
             \"Asia/Shanghai\"",
            path.display()
        )
    })?;
    // The one clock (epoch ms), in seconds.
    let now = crate::engine::clock::now_ms().div_euclid(1000);
    let fallback = rules
        .find_local_time_type(now)
        .ok()
        .and_then(|t| FixedOffset::east_opt(t.ut_offset()))
        .ok_or_else(|| format!("{name:?}: {} has no rule for today", path.display()))?;
    Ok(Zone {
        name: name.to_string(),
        rules,
        fallback,
    })
}

impl FromStr for Tz {
    type Err = String;
    fn from_str(s: &str) -> Result<Tz, String> {
        Tz::named(s)
    }
}

impl PartialEq for Tz {
    fn eq(&self, other: &Tz) -> bool {
        self.0.name == other.0.name
    }
}

impl Eq for Tz {}

impl fmt::Debug for Tz {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl fmt::Display for Tz {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The offset of a [`Tz`] at one instant (it remembers its zone, as chrono asks).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TzOffset {
    tz: Tz,
    fixed: FixedOffset,
}

impl Offset for TzOffset {
    fn fix(&self) -> FixedOffset {
        self.fixed
    }
}

impl fmt::Debug for TzOffset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.fixed, f)
    }
}

impl fmt::Display for TzOffset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.fixed, f)
    }
}

impl TimeZone for Tz {
    type Offset = TzOffset;

    fn from_offset(offset: &TzOffset) -> Tz {
        offset.tz
    }

    fn offset_from_local_date(&self, local: &NaiveDate) -> MappedLocalTime<TzOffset> {
        self.offset_from_local_datetime(&local.and_time(chrono::NaiveTime::MIN))
    }

    /// A local time maps to every offset `o` in force at `local − o`: one (most times), none
    /// (in the gap of a spring-forward) or two (in the repeated hour of a fall-back).
    fn offset_from_local_datetime(&self, local: &NaiveDateTime) -> MappedLocalTime<TzOffset> {
        let l = local.and_utc().timestamp();
        let mut found: Vec<TzOffset> = Vec::with_capacity(2);
        for probe in [l - DAY, l, l + DAY] {
            let o = self.at(probe);
            let back = self.at(l - i64::from(o.fixed.local_minus_utc()));
            if back.fixed == o.fixed && !found.iter().any(|f| f.fixed == o.fixed) {
                found.push(o);
            }
        }
        // The earlier instant first: the larger offset.
        found.sort_by_key(|o| std::cmp::Reverse(o.fixed.local_minus_utc()));
        match found.as_slice() {
            [] => MappedLocalTime::None,
            [one] => MappedLocalTime::Single(*one),
            [first, .., last] => MappedLocalTime::Ambiguous(*first, *last),
        }
    }

    fn offset_from_utc_date(&self, utc: &NaiveDate) -> TzOffset {
        self.offset_from_utc_datetime(&utc.and_time(chrono::NaiveTime::MIN))
    }

    fn offset_from_utc_datetime(&self, utc: &NaiveDateTime) -> TzOffset {
        self.at(utc.and_utc().timestamp())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Datelike as _, Timelike as _};

    fn utc(s: &str) -> NaiveDateTime {
        chrono::DateTime::parse_from_rfc3339(s).unwrap().naive_utc()
    }

    fn local(s: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S").unwrap()
    }

    #[test]
    fn shanghai_is_utc_plus_8_all_year() {
        let tz = Tz::named("Asia/Shanghai").unwrap();
        for t in [
            "2026-01-15T12:00:00Z",
            "2026-07-15T12:00:00Z",
            "2090-07-15T12:00:00Z",
        ] {
            let d = tz.from_utc_datetime(&utc(t));
            assert_eq!(d.offset().fix().local_minus_utc(), 8 * 3600, "{t}");
        }
        let d = tz.from_utc_datetime(&utc("2026-11-21T20:00:00Z"));
        assert_eq!((d.day(), d.hour()), (22, 4));
        assert_eq!(tz.to_string(), "Asia/Shanghai");
    }

    #[test]
    fn daylight_saving_gaps_and_repeats_follow_the_rules_past_the_last_transition() {
        let tz = Tz::named("Europe/Berlin").unwrap();
        let summer = tz.from_utc_datetime(&utc("2026-07-01T12:00:00Z"));
        assert_eq!(summer.offset().fix().local_minus_utc(), 2 * 3600);
        let winter = tz.from_utc_datetime(&utc("2026-12-01T12:00:00Z"));
        assert_eq!(winter.offset().fix().local_minus_utc(), 3600);
        // Far in the future, from the file's rule rather than a listed transition.
        let later = tz.from_utc_datetime(&utc("2095-07-01T12:00:00Z"));
        assert_eq!(later.offset().fix().local_minus_utc(), 2 * 3600);
        // 2026-03-29 02:30 does not exist in Berlin; 2026-10-25 02:30 happens twice.
        assert!(matches!(
            tz.from_local_datetime(&local("2026-03-29 02:30:00")),
            MappedLocalTime::None
        ));
        match tz.from_local_datetime(&local("2026-10-25 02:30:00")) {
            MappedLocalTime::Ambiguous(a, b) => {
                assert_eq!(a.to_rfc3339(), "2026-10-25T02:30:00+02:00");
                assert_eq!(b.to_rfc3339(), "2026-10-25T02:30:00+01:00");
            }
            other => panic!("expected two instants, got {other:?}"),
        }
        let noon = tz
            .from_local_datetime(&local("2026-10-25 12:00:00"))
            .unwrap();
        assert_eq!(noon.to_rfc3339(), "2026-10-25T12:00:00+01:00");
    }

    #[test]
    fn a_name_that_is_not_a_zone_is_refused_saying_what_to_give() {
        for bad in [
            "Mars/Olympus",
            "../etc/passwd",
            "/etc/localtime",
            "",
            "Asia//Shanghai",
        ] {
            let e = Tz::named(bad).unwrap_err();
            assert!(e.contains("Asia/Shanghai"), "{bad}: {e}");
        }
        assert_eq!(
            "Asia/Shanghai".parse::<Tz>().unwrap(),
            Tz::named("Asia/Shanghai").unwrap()
        );
    }
}
