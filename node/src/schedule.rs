//! Named schedules (`[[schedule]]` in the node config): when a schedule fires, update detection
//! syncs every watched packages tree with that trigger name (folders whose `.CI/config` says
//! `CI_ON_TRIGGER=NAME` are enqueued even if unchanged) and enqueues the watched AUR and git
//! packages configured with that trigger ([`crate::watch`]).
//!
//! ```toml
//! [[schedule]]
//! name = "nightly"
//! cron = "30 3 * * *"      # minute hour day-of-month month day-of-week, in UTC
//!
//! [[schedule]]
//! name = "often"
//! every = "6h"             # s, m, h, d; combined: "1h30m"
//! ```
//!
//! Two schedules exist without configuration: `hourly` (`0 * * * *`) and `daily`
//! (`0 0 * * *`); a `[[schedule]]` of the same name replaces them.
//!
//! Cron expressions have the five classic fields, evaluated in UTC: `*`, numbers, ranges
//! `a-b`, steps `*/n` and `a-b/n` (and `a/n`, from `a` to the field's end), lists `a,b-c`,
//! three-letter month (`jan`) and weekday (`mon`) names, weekday `0` or `7` for Sunday, and
//! the macros `@hourly`, `@daily`, `@midnight`, `@weekly`, `@monthly`, `@yearly`. When both
//! day-of-month and day-of-week are restricted, a day matching either fires (as in Vixie
//! cron).
//!
//! An `every` schedule fires `every` after its last firing (recorded in the watch state, so a
//! restart does not postpone it; a firing missed while the node was down happens once at
//! start-up); a schedule that never fired first fires `every` after the node starts.

use std::collections::BTreeSet;
use std::time::Duration;

use serde::Deserialize;

/// `[[schedule]]` as written.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ScheduleFile {
    /// The trigger name (`CI_ON_TRIGGER=NAME` selects folders).
    pub name: String,
    /// A fixed interval: `"90s"`, `"15m"`, `"1h"`, `"24h"`, `"1d"`, `"1h30m"`.
    pub every: Option<String>,
    /// A five-field cron expression, in UTC.
    pub cron: Option<String>,
}

/// When a schedule fires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum When {
    /// At a fixed interval after the last firing.
    Every(Duration),
    /// At the minutes a cron expression selects (UTC).
    Cron(Cron),
}

/// A resolved schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    pub name: String,
    pub when: When,
    /// The text it came from (`every = "…"` or `cron = "…"`), for messages.
    pub spec: String,
}

/// The built-in schedules, present unless configured otherwise.
pub const BUILTIN: [(&str, &str); 2] = [("hourly", "0 * * * *"), ("daily", "0 0 * * *")];

impl ScheduleFile {
    /// Validates and resolves; the error names the schedule and what is wrong.
    pub fn resolve(&self) -> Result<Schedule, String> {
        let n = &self.name;
        if n.is_empty()
            || !n
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(format!(
                "schedule name {n:?}: use letters, digits, '-', '_' or '.'"
            ));
        }
        match (&self.every, &self.cron) {
            (Some(e), None) => Ok(Schedule {
                name: n.clone(),
                when: When::Every(
                    parse_every(e).map_err(|why| format!("schedule {n}: every = {e:?}: {why}"))?,
                ),
                spec: format!("every {e}"),
            }),
            (None, Some(c)) => Ok(Schedule {
                name: n.clone(),
                when: When::Cron(
                    Cron::parse(c).map_err(|why| format!("schedule {n}: cron = {c:?}: {why}"))?,
                ),
                spec: format!("cron {c}"),
            }),
            (Some(_), Some(_)) => Err(format!("schedule {n}: give either every or cron, not both")),
            (None, None) => Err(format!(
                "schedule {n}: needs every = \"24h\" or cron = \"0 3 * * *\""
            )),
        }
    }
}

/// The configured schedules plus the built-ins not replaced by one of the same name. Two
/// schedules of one name are an error.
pub fn resolve_all(files: &[ScheduleFile]) -> Result<Vec<Schedule>, String> {
    let mut out: Vec<Schedule> = Vec::new();
    let mut names = BTreeSet::new();
    for f in files {
        let s = f.resolve()?;
        if !names.insert(s.name.clone()) {
            return Err(format!("schedule {} is defined twice", s.name));
        }
        out.push(s);
    }
    for (name, cron) in BUILTIN {
        if !names.contains(name) {
            out.push(Schedule {
                name: name.to_string(),
                when: When::Cron(Cron::parse(cron).expect("built-in schedules parse")),
                spec: format!("cron {cron} (built in)"),
            });
        }
    }
    Ok(out)
}

/// `"90s"`, `"15m"`, `"1h30m"`, `"2d"`: at least one second, at most 366 days.
pub fn parse_every(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty".into());
    }
    let mut total: u64 = 0;
    let mut num = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return Err(format!("unknown unit {c:?} (use s, m, h or d)")),
        };
        let n: u64 = num
            .parse()
            .map_err(|_| format!("a number must come before {c:?}"))?;
        num.clear();
        total = total
            .checked_add(n.checked_mul(unit).ok_or("too long")?)
            .ok_or("too long")?;
    }
    if !num.is_empty() {
        return Err(format!("{num} has no unit (use s, m, h or d)"));
    }
    if total == 0 {
        return Err("must be at least 1s".into());
    }
    if total > 366 * 86_400 {
        return Err("longer than a year".into());
    }
    Ok(Duration::from_secs(total))
}

/// A parsed five-field cron expression (UTC).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    minute: u64, // bit i: minute i
    hour: u64,
    dom: u64,   // bits 1..=31
    month: u64, // bits 1..=12
    dow: u64,   // bits 0..=6, Sunday 0
    dom_star: bool,
    dow_star: bool,
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const DAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

fn field(text: &str, what: &str, lo: u32, hi: u32, names: &[&str]) -> Result<(u64, bool), String> {
    let value = |v: &str| -> Result<u32, String> {
        if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(v)) {
            // Month names count from 1 (lo), weekday names from 0 (lo).
            return Ok(i as u32 + lo);
        }
        let n: u32 = v
            .parse()
            .map_err(|_| format!("{what}: {v:?} is not a number"))?;
        if n < lo || n > hi {
            return Err(format!("{what}: {n} is outside {lo}-{hi}"));
        }
        Ok(n)
    };
    let mut bits = 0u64;
    for part in text.split(',') {
        if part.is_empty() {
            return Err(format!("{what}: empty list element in {text:?}"));
        }
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => {
                let s: u32 = s
                    .parse()
                    .ok()
                    .filter(|s| *s >= 1)
                    .ok_or_else(|| format!("{what}: step {s:?} is not a number ≥ 1"))?;
                (r, s)
            }
            None => (part, 1),
        };
        let (a, b) = if range == "*" {
            (lo, hi)
        } else if let Some((a, b)) = range.split_once('-') {
            let (a, b) = (value(a)?, value(b)?);
            if a > b {
                return Err(format!("{what}: range {range:?} runs backwards"));
            }
            (a, b)
        } else {
            let a = value(range)?;
            // `a/n` runs from a to the end of the field.
            (a, if part.contains('/') { hi } else { a })
        };
        let mut i = a;
        while i <= b {
            bits |= 1 << i;
            i += step;
        }
    }
    Ok((bits, text.starts_with('*')))
}

impl Cron {
    /// Parses five fields (or a macro such as `@daily`).
    pub fn parse(s: &str) -> Result<Cron, String> {
        let s = match s.trim() {
            "@hourly" => "0 * * * *",
            "@daily" | "@midnight" => "0 0 * * *",
            "@weekly" => "0 0 * * 0",
            "@monthly" => "0 0 1 * *",
            "@yearly" | "@annually" => "0 0 1 1 *",
            m if m.starts_with('@') => return Err(format!("unknown macro {m}")),
            other => other,
        };
        let f: Vec<&str> = s.split_whitespace().collect();
        if f.len() != 5 {
            return Err(format!(
                "{} fields; expected 5 (minute hour day-of-month month day-of-week)",
                f.len()
            ));
        }
        let (minute, _) = field(f[0], "minute", 0, 59, &[])?;
        let (hour, _) = field(f[1], "hour", 0, 23, &[])?;
        let (dom, dom_star) = field(f[2], "day of month", 1, 31, &[])?;
        let (month, _) = field(f[3], "month", 1, 12, &MONTHS)?;
        let (mut dow, dow_star) = field(f[4], "day of week", 0, 7, &DAYS)?;
        if dow & (1 << 7) != 0 {
            dow = (dow | 1) & !(1 << 7);
        }
        Ok(Cron {
            minute,
            hour,
            dom,
            month,
            dow,
            dom_star,
            dow_star,
        })
    }

    fn day_matches(&self, dom: u32, dow: u32) -> bool {
        let d = self.dom & (1 << dom) != 0;
        let w = self.dow & (1 << dow) != 0;
        match (self.dom_star, self.dow_star) {
            (false, false) => d || w,
            _ => d && w,
        }
    }

    /// The first firing strictly after `t` (Unix seconds), or `None` if none within eight
    /// years (e.g. `0 0 31 2 *`).
    pub fn next_after(&self, t: u64) -> Option<u64> {
        // Start at the next whole minute.
        let mut m = t / 60 + 1;
        let end = m + 8 * 366 * 24 * 60;
        while m < end {
            let days = m / 1440;
            let (_, month, dom) = civil_from_days(days as i64);
            let dow = ((days + 4) % 7) as u32; // 1970-01-01 was a Thursday
            if self.month & (1 << month) == 0 || !self.day_matches(dom, dow) {
                m = (days + 1) * 1440;
                continue;
            }
            let hour = (m % 1440) / 60;
            if self.hour & (1 << hour) == 0 {
                m = (m / 60 + 1) * 60;
                continue;
            }
            if self.minute & (1 << (m % 60)) == 0 {
                m += 1;
                continue;
            }
            return Some(m * 60);
        }
        None
    }
}

/// (year, month 1-12, day 1-31) of a day count since 1970-01-01 (Howard Hinnant's algorithm).
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// `t` (Unix seconds) as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn format_utc(t: u64) -> String {
    let (y, mo, d) = civil_from_days((t / 86_400) as i64);
    let s = t % 86_400;
    format!(
        "{y:04}-{mo:02}-{d:02} {:02}:{:02}:{:02} UTC",
        s / 3600,
        (s % 3600) / 60,
        s % 60
    )
}

impl Schedule {
    /// The next firing (Unix seconds) given the last one (`None`: never fired) and the time
    /// the node started. An overdue `every` firing is due now.
    pub fn next(&self, last: Option<u64>, started: u64, now: u64) -> Option<u64> {
        match &self.when {
            When::Every(d) => {
                let base = last.unwrap_or(started);
                Some((base + d.as_secs()).max(now))
            }
            When::Cron(c) => c.next_after(last.unwrap_or(0).max(now.saturating_sub(1))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // 2026-03-14 15:09:26 UTC (a Saturday).
    const T: u64 = 1_773_500_966;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(format_utc(T), "2026-03-14 15:09:26 UTC");
        assert_eq!(format_utc(951_782_400), "2000-02-29 00:00:00 UTC");
    }

    #[test]
    fn every_parses() {
        assert_eq!(parse_every("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_every("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_every("1d"), Ok(Duration::from_secs(86_400)));
        for bad in ["", "5", "0s", "h", "3x", "400d", "99999999999999999999s"] {
            assert!(parse_every(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cron_fires_when_expected() {
        let next = |c: &str, t: u64| format_utc(Cron::parse(c).unwrap().next_after(t).unwrap());
        assert_eq!(next("* * * * *", T), "2026-03-14 15:10:00 UTC");
        assert_eq!(next("0 3 * * *", T), "2026-03-15 03:00:00 UTC");
        assert_eq!(next("*/20 * * * *", T), "2026-03-14 15:20:00 UTC");
        assert_eq!(next("5,50 9-17/2 * * *", T), "2026-03-14 15:50:00 UTC");
        assert_eq!(next("0 0 1 * *", T), "2026-04-01 00:00:00 UTC");
        assert_eq!(next("0 12 * * mon", T), "2026-03-16 12:00:00 UTC");
        assert_eq!(next("0 12 * * 7", T), "2026-03-15 12:00:00 UTC");
        assert_eq!(next("0 0 * feb-mar/1 *", T), "2026-03-15 00:00:00 UTC");
        // Day of month OR day of week when both are restricted.
        assert_eq!(next("0 0 20 * sun", T), "2026-03-15 00:00:00 UTC");
        assert_eq!(next("0 0 29 2 *", T), "2028-02-29 00:00:00 UTC");
        assert_eq!(next("@daily", T), "2026-03-15 00:00:00 UTC");
        assert_eq!(next("30/15 * * * *", T), "2026-03-14 15:30:00 UTC");
        // A firing exactly at t is not "after" t.
        assert_eq!(next("10 15 * * *", T + 34), "2026-03-15 15:10:00 UTC");
        assert_eq!(Cron::parse("0 0 31 2 *").unwrap().next_after(T), None);
    }

    #[test]
    fn bad_cron_is_named() {
        for (c, want) in [
            ("* * * *", "4 fields"),
            ("60 * * * *", "minute: 60 is outside 0-59"),
            ("* 5-2 * * *", "runs backwards"),
            ("* * * * fri/0", "step"),
            ("* * 0 * *", "day of month: 0"),
            ("* * * foo *", "\"foo\" is not a number"),
            ("@sometimes", "unknown macro"),
            ("1,,2 * * * *", "empty list element"),
        ] {
            let e = Cron::parse(c).unwrap_err();
            assert!(e.contains(want), "{c}: {e}");
        }
    }

    #[test]
    fn schedules_resolve_with_builtins() {
        let all = resolve_all(&[ScheduleFile {
            name: "daily".into(),
            every: Some("12h".into()),
            cron: None,
        }])
        .unwrap();
        let names: Vec<&str> = all.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["daily", "hourly"]);
        assert_eq!(all[0].when, When::Every(Duration::from_secs(43_200)));
        let dup = ScheduleFile {
            name: "x".into(),
            every: Some("1h".into()),
            cron: None,
        };
        assert!(
            resolve_all(&[dup.clone(), dup])
                .unwrap_err()
                .contains("defined twice")
        );
        let both = ScheduleFile {
            name: "x".into(),
            every: Some("1h".into()),
            cron: Some("* * * * *".into()),
        };
        assert!(both.resolve().unwrap_err().contains("not both"));
        let bad = ScheduleFile {
            name: "x y".into(),
            every: Some("1h".into()),
            cron: None,
        };
        assert!(bad.resolve().is_err());
    }

    #[test]
    fn next_firing() {
        let s = ScheduleFile {
            name: "fast".into(),
            every: Some("2s".into()),
            cron: None,
        }
        .resolve()
        .unwrap();
        assert_eq!(s.next(None, 100, 100), Some(102));
        assert_eq!(s.next(Some(150), 100, 151), Some(152));
        // Overdue (the node was down): due now, once.
        assert_eq!(s.next(Some(150), 100, 500), Some(500));
        let c = Schedule {
            name: "c".into(),
            when: When::Cron(Cron::parse("0 * * * *").unwrap()),
            spec: String::new(),
        };
        assert_eq!(c.next(None, 0, 3599), Some(3600));
        assert_eq!(c.next(Some(3600), 0, 3600), Some(7200));
    }
}
