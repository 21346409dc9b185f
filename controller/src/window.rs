//! Maintenance windows: `"Sat 02:00-05:00 Europe/Berlin"` (days, local time span, IANA time
//! zone). Days: `Mon`..`Sun`, comma lists and ranges (`Sat,Sun`, `Mon-Fri`), or `daily`.
//! A span may cross midnight (`22:00-02:00` belongs to the day it starts on). Times follow
//! the zone's daylight-saving rules (the system's tz database, via `jiff`).

use jiff::civil::{Time, Weekday};
use jiff::tz::TimeZone;
use jiff::Timestamp;

#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    days: [bool; 7],
    start: Time,
    end: Time,
    tz: TimeZone,
    text: String,
}

fn day(s: &str) -> Result<Weekday, String> {
    Ok(match s.to_ascii_lowercase().as_str() {
        "mon" => Weekday::Monday,
        "tue" => Weekday::Tuesday,
        "wed" => Weekday::Wednesday,
        "thu" => Weekday::Thursday,
        "fri" => Weekday::Friday,
        "sat" => Weekday::Saturday,
        "sun" => Weekday::Sunday,
        _ => return Err(format!("unknown day {s:?} (Mon..Sun)")),
    })
}

fn idx(d: Weekday) -> usize {
    d.to_monday_zero_offset() as usize
}

fn time(s: &str) -> Result<Time, String> {
    let (h, m) = s
        .split_once(':')
        .ok_or_else(|| format!("bad time {s:?} (HH:MM)"))?;
    let h: i8 = h.parse().map_err(|_| format!("bad hour in {s:?}"))?;
    let m: i8 = m.parse().map_err(|_| format!("bad minute in {s:?}"))?;
    if h == 24 && m == 0 {
        return Ok(Time::MAX);
    }
    Time::new(h, m, 0, 0).map_err(|e| format!("bad time {s:?}: {e}"))
}

impl Window {
    pub fn parse(text: &str) -> Result<Window, String> {
        let parts: Vec<&str> = text.split_whitespace().collect();
        let [days, span, zone] = parts[..] else {
            return Err(format!(
                "window {text:?}: expected \"DAYS HH:MM-HH:MM ZONE\", e.g. \"Sat 02:00-05:00 Europe/Berlin\""
            ));
        };
        let mut set = [false; 7];
        if days.eq_ignore_ascii_case("daily") {
            set = [true; 7];
        } else {
            for item in days.split(',') {
                match item.split_once('-') {
                    Some((a, b)) => {
                        let (a, b) = (idx(day(a)?), idx(day(b)?));
                        let mut i = a;
                        loop {
                            set[i] = true;
                            if i == b {
                                break;
                            }
                            i = (i + 1) % 7;
                        }
                    }
                    None => set[idx(day(item)?)] = true,
                }
            }
        }
        let (a, b) = span
            .split_once('-')
            .ok_or_else(|| format!("window {text:?}: bad span {span:?} (HH:MM-HH:MM)"))?;
        let (start, end) = (time(a)?, time(b)?);
        if start == end {
            return Err(format!("window {text:?}: empty span"));
        }
        let tz = TimeZone::get(zone).map_err(|e| format!("window {text:?}: time zone: {e}"))?;
        Ok(Window {
            days: set,
            start,
            end,
            tz,
            text: text.to_string(),
        })
    }

    /// Whether the unix time `ms` falls inside the window.
    pub fn contains_ms(&self, ms: u64) -> bool {
        let Ok(ts) = Timestamp::from_millisecond(i64::try_from(ms).unwrap_or(i64::MAX)) else {
            return false;
        };
        let local = ts.to_zoned(self.tz.clone()).datetime();
        let (d, t) = (idx(local.weekday()), local.time());
        if self.start < self.end {
            self.days[d] && t >= self.start && t < self.end
        } else {
            // Crosses midnight: the evening part of a listed day, or the morning after it.
            (self.days[d] && t >= self.start) || (self.days[(d + 6) % 7] && t < self.end)
        }
    }
}

impl std::fmt::Display for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(s: &str) -> u64 {
        let ts: Timestamp = s.parse().unwrap();
        u64::try_from(ts.as_millisecond()).unwrap()
    }

    #[test]
    fn saturday_night_in_berlin_follows_dst() {
        let w = Window::parse("Sat 02:00-05:00 Europe/Berlin").unwrap();
        // 2026-11-28 is a Saturday; Berlin is UTC+1 in winter.
        assert!(w.contains_ms(ms("2026-11-28T01:30:00Z")));
        assert!(!w.contains_ms(ms("2026-11-28T00:30:00Z")));
        assert!(!w.contains_ms(ms("2026-11-28T04:00:00Z")));
        // Summer (UTC+2): 2026-07-04 is a Saturday.
        assert!(w.contains_ms(ms("2026-07-04T00:30:00Z")));
        assert!(!w.contains_ms(ms("2026-07-05T00:30:00Z")));
    }

    #[test]
    fn lists_ranges_and_midnight() {
        let w = Window::parse("Fri-Sun 22:00-02:00 UTC").unwrap();
        assert!(w.contains_ms(ms("2026-11-27T23:00:00Z"))); // Fri night
        assert!(w.contains_ms(ms("2026-11-28T01:00:00Z"))); // Sat morning, after Fri
        assert!(w.contains_ms(ms("2026-11-30T01:00:00Z"))); // Mon morning, after Sun
        assert!(!w.contains_ms(ms("2026-11-27T01:00:00Z"))); // Fri morning, after Thu
        assert!(Window::parse("daily 00:00-24:00 UTC")
            .unwrap()
            .contains_ms(ms("2026-11-25T12:00:00Z")));
    }

    #[test]
    fn bad_windows_say_why() {
        for (w, want) in [
            ("Sat 02:00-05:00", "expected"),
            ("Caturday 02:00-05:00 UTC", "unknown day"),
            ("Sat 2-5 UTC", "bad time"),
            ("Sat 02:00-02:00 UTC", "empty"),
            ("Sat 02:00-05:00 Mars/Olympus", "time zone"),
        ] {
            let e = Window::parse(w).unwrap_err();
            assert!(e.contains(want), "{w}: {e}");
        }
    }
}
