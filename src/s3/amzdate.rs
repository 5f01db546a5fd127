//! The SigV4 timestamp format `YYYYMMDDTHHMMSSZ`, to and from `SystemTime`, without a date crate.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Parses `YYYYMMDDTHHMMSSZ`. Returns `None` for anything else, including impossible dates.
pub fn parse(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        part.bytes().all(|c| c.is_ascii_digit()).then(|| part.parse().ok())?
    };
    let (year, month, day) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (hour, min, sec) = (num(9..11)?, num(11..13)?, num(13..15)?);
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) || hour > 23 || min > 59 || sec > 60 {
        return None;
    }
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3_600 + min * 60 + sec;
    u64::try_from(secs).ok().map(|s| UNIX_EPOCH + Duration::from_secs(s))
}

/// Formats a time as `YYYYMMDDTHHMMSSZ`.
pub fn format(t: SystemTime) -> String {
    let mut out = String::with_capacity(16);
    push(&mut out, t);
    out
}

/// Appends a time as `YYYYMMDDTHHMMSSZ` (on the request path: no `fmt`, no allocation of its own).
pub fn push(out: &mut String, t: SystemTime) {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (y, m, d, hh, mm, ss) = civil_time(secs);
    let mut b = *b"00000000T000000Z";
    if !fill(&mut b[0..4], y) {
        return push_slowly(
            out,
            &[(y, 4), (m, 2), (d, 2)],
            &[(hh, 2), (mm, 2), (ss, 2)],
            "",
            "",
            None,
        );
    }
    fill(&mut b[4..6], m);
    fill(&mut b[6..8], d);
    fill(&mut b[9..11], hh);
    fill(&mut b[11..13], mm);
    fill(&mut b[13..15], ss);
    out.push_str(ascii(&b));
}

/// Appends a time as RFC 3339 UTC with microseconds, `2026-11-28T02:38:57.727172Z` (log timestamps).
pub fn push_rfc3339_micros(out: &mut String, t: SystemTime) {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let (y, m, d, hh, mm, ss) = civil_time(since.as_secs());
    let micros = u64::from(since.subsec_micros());
    let mut b = *b"0000-00-00T00:00:00.000000Z";
    if !fill(&mut b[0..4], y) {
        let fields = [(hh, 2), (mm, 2), (ss, 2)];
        return push_slowly(out, &[(y, 4), (m, 2), (d, 2)], &fields, "-", ":", Some(micros));
    }
    fill(&mut b[5..7], m);
    fill(&mut b[8..10], d);
    fill(&mut b[11..13], hh);
    fill(&mut b[14..16], mm);
    fill(&mut b[17..19], ss);
    fill(&mut b[20..26], micros);
    out.push_str(ascii(&b));
}

/// (year, month, day, hour, minute, second) of a Unix time, UTC.
fn civil_time(secs: u64) -> (u64, u64, u64, u64, u64, u64) {
    let (y, m, d) = civil_from_days(i64::try_from(secs / 86_400).unwrap_or(0));
    let rem = secs % 86_400;
    let unsigned = |n: i64| u64::try_from(n).unwrap_or(0);
    (
        unsigned(y),
        unsigned(m),
        unsigned(d),
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
    )
}

/// Writes `n` zero-padded into all of `digits`; false (and `digits` unspecified) if it has more.
fn fill(digits: &mut [u8], mut n: u64) -> bool {
    for c in digits.iter_mut().rev() {
        *c = b'0' + (n % 10) as u8;
        n /= 10;
    }
    n == 0
}

/// The buffers above hold ASCII digits and separators only.
fn ascii(b: &[u8]) -> &str {
    std::str::from_utf8(b).unwrap_or_default()
}

/// Years past 9999: the same layout with as many digits as the year needs.
fn push_slowly(
    out: &mut String,
    date: &[(u64, usize)],
    time: &[(u64, usize)],
    date_sep: &str,
    time_sep: &str,
    micros: Option<u64>,
) {
    for (i, &(n, width)) in date.iter().enumerate() {
        if i > 0 {
            out.push_str(date_sep);
        }
        push_digits(out, n, width);
    }
    out.push('T');
    for (i, &(n, width)) in time.iter().enumerate() {
        if i > 0 {
            out.push_str(time_sep);
        }
        push_digits(out, n, width);
    }
    if let Some(micros) = micros {
        out.push('.');
        push_digits(out, micros, 6);
    }
    out.push('Z');
}

/// `n` in decimal, zero-padded to `width` digits (more when it needs them).
fn push_digits(out: &mut String, n: u64, width: usize) {
    let digits = n.to_string();
    for _ in digits.len()..width {
        out.push('0');
    }
    out.push_str(&digits);
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

// Howard Hinnant's days_from_civil / civil_from_days.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Parses an HTTP date as SigV2 clients send it: `Tue, 27 Mar 2007 19:36:42 +0000` or `... GMT`.
pub fn parse_http_date(s: &str) -> Option<SystemTime> {
    let parts: Vec<&str> = s.split_whitespace().collect();
    let [_, day, month, year, time, zone] = parts.as_slice() else {
        return None;
    };
    if !matches!(*zone, "GMT" | "UTC" | "+0000" | "Z") {
        return None;
    }
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS.iter().position(|m| m == month)? + 1;
    let hms: Vec<&str> = time.split(':').collect();
    let [h, mi, se] = hms.as_slice() else { return None };
    let stamp = format!("{year:0>4}{month:02}{day:0>2}T{h:0>2}{mi:0>2}{se:0>2}Z");
    parse(&stamp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_log_timestamps_as_rfc3339_with_microseconds() {
        let cases = [
            (0, 0, "1970-01-01T00:00:00.000000Z"),
            (1_795_000_000, 123_456_789, "2026-11-18T11:06:40.123456Z"),
            (951_782_400, 999_999_999, "2000-02-29T00:00:00.999999Z"),
        ];
        for (secs, nanos, want) in cases {
            let mut s = String::from(">");
            push_rfc3339_micros(&mut s, UNIX_EPOCH + Duration::new(secs, nanos));
            assert_eq!(s, format!(">{want}"));
        }
    }

    /// Both formatters against `format!` of the same fields, over instants from 1970 past 9999.
    #[test]
    fn formatters_agree_with_fmt() {
        let mut instants = vec![253_402_300_799, 253_402_300_800, 4_102_444_800];
        let mut secs = 0u64;
        while secs < 300_000_000_000 {
            instants.push(secs);
            secs = secs * 3 / 2 + 86_399;
        }
        for secs in instants {
            for nanos in [0, 1_000, 999_999_999] {
                let t = UNIX_EPOCH + Duration::new(secs, nanos);
                let (y, m, d) = civil_from_days(i64::try_from(secs / 86_400).unwrap());
                let rem = secs % 86_400;
                let (hh, mm, ss) = (rem / 3600, rem % 3600 / 60, rem % 60);
                let mut got = String::from("<");
                push(&mut got, t);
                assert_eq!(got, format!("<{y:04}{m:02}{d:02}T{hh:02}{mm:02}{ss:02}Z"), "{secs}");
                let mut got = String::new();
                push_rfc3339_micros(&mut got, t);
                let micros = nanos / 1_000;
                assert_eq!(
                    got,
                    format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}.{micros:06}Z"),
                    "{secs}"
                );
            }
        }
    }

    #[test]
    fn round_trips_known_instants() {
        let cases = [
            ("19700101T000000Z", 0u64),
            ("20130524T000000Z", 1_369_353_600),
            ("20000229T235959Z", 951_868_799),
            ("20261127T231500Z", 1_795_821_300),
        ];
        for (s, secs) in cases {
            let t = parse(s).unwrap();
            assert_eq!(t, UNIX_EPOCH + Duration::from_secs(secs), "{s}");
            assert_eq!(format(t), s);
            let mut pushed = String::from("<");
            push(&mut pushed, t);
            assert_eq!(pushed, format!("<{s}"));
        }
    }

    #[test]
    fn rejects_malformed_timestamps() {
        for bad in [
            "",
            "20130524",
            "20130524T000000",
            "2013-05-24T00:00:00Z",
            "20130229T000000Z",
            "20131324T000000Z",
            "20130524T250000Z",
            "2013052AT000000Z",
            "+0130524T000000Z",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }
}
