//! RFC 3339 timestamps, written byte for byte as chrono's `Serialize` writes
//! them (`SecondsFormat::AutoSi`, `Z`), without its `fmt` machinery: every
//! answer and every audit event carries at least one, and chrono's formatting
//! was a tenth of a warm read's JSON. Read back as chrono reads them, with
//! the form written here parsed directly (chrono's general parser was a
//! third of decoding a record); any other form goes to chrono.

use std::fmt;

use chrono::{
    DateTime, Datelike, FixedOffset, NaiveDate, NaiveTime, SecondsFormat, TimeZone, Timelike, Utc,
};
use serde::{de, Deserialize, Deserializer, Serializer};

/// Longest form written here: `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ`.
const MAX_LEN: usize = 30;

/// Writes `at` into `buf` and returns its length; `None` for what only chrono
/// writes (a year outside 0..=9999, which takes a sign).
fn write(at: &DateTime<Utc>, buf: &mut [u8; MAX_LEN]) -> Option<usize> {
    // The UTC date and time once: each of `DateTime`'s own accessors
    // converts to local time again.
    let utc = at.naive_utc();
    let (date, time) = (utc.date(), utc.time());
    let year = u32::try_from(date.year()).ok().filter(|y| *y <= 9999)?;
    let (mut sec, mut nano) = (time.second(), time.nanosecond());
    // A leap second is held as nanoseconds past 1e9 of second 59.
    if nano >= 1_000_000_000 {
        sec += 1;
        nano -= 1_000_000_000;
    }
    let mut len = put_digits(buf, 0, 4, year);
    for (sep, value) in [
        (b'-', date.month()),
        (b'-', date.day()),
        (b'T', time.hour()),
        (b':', time.minute()),
        (b':', sec),
    ] {
        buf[len] = sep;
        len = put_digits(buf, len + 1, 2, value);
    }
    let (digits, fraction) = match nano {
        0 => (0, 0),
        n if n % 1_000_000 == 0 => (3, n / 1_000_000),
        n if n % 1_000 == 0 => (6, n / 1_000),
        n => (9, n),
    };
    if digits > 0 {
        buf[len] = b'.';
        len = put_digits(buf, len + 1, digits, fraction);
    }
    buf[len] = b'Z';
    Some(len + 1)
}

/// Writes the last `digits` decimal digits of `value` at `from`, zero-padded;
/// returns where they end.
fn put_digits(buf: &mut [u8], from: usize, digits: usize, mut value: u32) -> usize {
    for slot in buf[from..from + digits].iter_mut().rev() {
        *slot = b'0' + (value % 10) as u8;
        value /= 10;
    }
    from + digits
}

/// What chrono writes for `at`: the form for what [`write`] leaves to it.
fn by_chrono(at: &DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// For `#[serde(serialize_with = "timestamp::serialize")]`.
pub fn serialize<S: Serializer>(at: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    let mut buf = [0u8; MAX_LEN];
    match write(at, &mut buf) {
        // Only ASCII digits and separators were written.
        Some(len) => s.serialize_str(std::str::from_utf8(&buf[..len]).unwrap_or_default()),
        None => s.serialize_str(&by_chrono(at)),
    }
}

/// `at` as a JSON string, as [`serialize`] gives it to `serde_json`.
pub(crate) fn write_json(at: &DateTime<Utc>, out: &mut Vec<u8>) {
    let mut buf = [0u8; MAX_LEN];
    match write(at, &mut buf) {
        // Digits and separators: nothing to escape.
        Some(len) => {
            out.push(b'"');
            out.extend_from_slice(&buf[..len]);
            out.push(b'"');
        }
        None => super::json::string(out, &by_chrono(at)),
    }
}

/// `at` as [`write_json`] writes it, or `null`.
pub(crate) fn write_json_opt(at: Option<&DateTime<Utc>>, out: &mut Vec<u8>) {
    match at {
        Some(at) => write_json(at, out),
        None => out.extend_from_slice(b"null"),
    }
}

/// For `#[serde(serialize_with = "timestamp::serialize_opt")]`.
pub fn serialize_opt<S: Serializer>(at: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
    match at {
        Some(at) => serialize(at, s),
        None => s.serialize_none(),
    }
}

/// `text` in exactly the form [`write`] gives (`YYYY-MM-DDTHH:MM:SS`, 1 to 9
/// fraction digits or none, `Z`); `None` for anything else, valid or not.
pub(crate) fn parse(text: &str) -> Option<DateTime<Utc>> {
    let b = text.as_bytes();
    let shape = b.len() >= 20
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && b[b.len() - 1] == b'Z';
    if !shape {
        return None;
    }
    let number = |digits: &[u8]| {
        digits.iter().try_fold(0u32, |n, c| {
            c.is_ascii_digit().then(|| n * 10 + u32::from(c - b'0'))
        })
    };
    let nano = match &b[19..b.len() - 1] {
        [] => 0,
        [b'.', digits @ ..] if (1..=9).contains(&digits.len()) => {
            number(digits)? * 10u32.pow(9 - digits.len() as u32)
        }
        _ => return None,
    };
    let date = NaiveDate::from_ymd_opt(
        i32::try_from(number(&b[0..4])?).ok()?,
        number(&b[5..7])?,
        number(&b[8..10])?,
    )?;
    // A leap second (`:60`) is left to chrono.
    let time = NaiveTime::from_hms_nano_opt(
        number(&b[11..13])?,
        number(&b[14..16])?,
        number(&b[17..19])?,
        nano,
    )?;
    Some(Utc.from_utc_datetime(&date.and_time(time)))
}

struct Visitor;

impl de::Visitor<'_> for Visitor {
    type Value = DateTime<Utc>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an RFC 3339 formatted date and time string")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
        match parse(text) {
            Some(at) => Ok(at),
            None => text
                .parse::<DateTime<FixedOffset>>()
                .map(|at| at.with_timezone(&Utc))
                .map_err(E::custom),
        }
    }
}

/// A timestamp read by [`deserialize`], for `Option`s.
struct Read(DateTime<Utc>);

impl<'de> Deserialize<'de> for Read {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(Visitor).map(Read)
    }
}

/// For `#[serde(deserialize_with = "timestamp::deserialize")]`.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
    Read::deserialize(d).map(|read| read.0)
}

/// For `#[serde(default, deserialize_with = "timestamp::deserialize_opt")]`
/// (`default`: a missing field is `None`, as without `deserialize_with`).
pub fn deserialize_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
    Ok(Option::<Read>::deserialize(d)?.map(|read| read.0))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    fn ours(at: &chrono::DateTime<chrono::Utc>) -> serde_json::Value {
        super::serialize(at, serde_json::value::Serializer).unwrap()
    }

    /// `secs` and `nanos` with the nanoseconds rounded to the precision
    /// `round` picks: nano, micro, milli or whole seconds.
    fn instant(secs: i64, nanos: u32, round: usize) -> chrono::DateTime<chrono::Utc> {
        let nanos = nanos - nanos % [1, 1_000, 1_000_000, 1_000_000_000][round];
        chrono::DateTime::from_timestamp(secs, nanos).unwrap()
    }

    proptest! {
        /// Byte for byte what chrono's own `Serialize` writes, for every
        /// precision AutoSi picks (whole seconds, milli, micro, nano).
        #[test]
        fn written_as_chrono_writes_them(
            secs in -62_167_219_200i64..253_402_300_799,
            nanos in 0u32..1_000_000_000,
            round in 0usize..4,
        ) {
            let at = instant(secs, nanos, round);
            prop_assert_eq!(ours(&at), serde_json::to_value(at).unwrap());
        }
    }

    fn read(text: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
        super::deserialize(serde_json::Value::from(text)).map_err(|e| e.to_string())
    }

    fn chrono_reads(text: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
        serde_json::from_value(serde_json::Value::from(text)).map_err(|e| e.to_string())
    }

    proptest! {
        /// What is written here reads back as the same instant.
        #[test]
        fn reads_back_what_it_writes(
            secs in 0i64..253_402_300_799,
            nanos in 0u32..1_000_000_000,
            round in 0usize..4,
        ) {
            let at = instant(secs, nanos, round);
            let written = ours(&at);
            prop_assert_eq!(read(written.as_str().unwrap()), Ok(at));
        }

        /// Text of the written shape, valid or not (month 13, 30 February,
        /// hour 24, second 60, ten fraction digits), reads as chrono reads it.
        #[test]
        fn reads_what_chrono_reads_and_refuses_what_it_refuses(
            y in 0u32..10_000, mo in 0u32..14, d in 0u32..33,
            h in 0u32..26, mi in 0u32..62, s in 0u32..62,
            fraction in prop::sample::select(vec!["", ".5", ".12", ".123", ".1234567", ".123456789", ".1234567890", "."]),
        ) {
            let text = format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}{fraction}Z");
            prop_assert_eq!(read(&text).ok(), chrono_reads(&text).ok(), "{}", text);
        }
    }

    #[test]
    fn other_forms_are_left_to_chrono() {
        for text in [
            "2025-12-02T10:00:00+02:00",
            "2025-12-02 10:00:00Z",
            "2025-12-02t10:00:00z",
            "2016-12-31T23:59:60Z",
            "+12345-01-02T03:04:05Z",
            "2025-12-02T10:00Z",
            "not a time",
        ] {
            assert_eq!(read(text).ok(), chrono_reads(text).ok(), "{text}");
        }
        assert!(read("2025-13-02T10:00:00Z").is_err());
    }

    #[test]
    fn years_chrono_signs_and_leap_seconds_are_written_as_chrono_writes_them() {
        use chrono::{NaiveDate, TimeZone, Utc};
        let leap = NaiveDate::from_ymd_opt(2016, 12, 31)
            .unwrap()
            .and_hms_nano_opt(23, 59, 59, 1_500_000_000)
            .unwrap();
        let far = NaiveDate::from_ymd_opt(12_345, 1, 2)
            .unwrap()
            .and_hms_opt(3, 4, 5)
            .unwrap();
        let before = NaiveDate::from_ymd_opt(-1, 1, 2)
            .unwrap()
            .and_hms_opt(3, 4, 5)
            .unwrap();
        for naive in [leap, far, before] {
            let at = Utc.from_utc_datetime(&naive);
            assert_eq!(ours(&at), serde_json::to_value(at).unwrap(), "{naive}");
        }
    }
}
