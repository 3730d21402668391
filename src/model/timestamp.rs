//! RFC 3339 timestamps, written byte for byte as chrono's `Serialize` writes
//! them (`SecondsFormat::AutoSi`, `Z`), without its `fmt` machinery: every
//! answer and every audit event carries at least one, and chrono's formatting
//! was a tenth of a warm read's JSON.

use chrono::{DateTime, Datelike, SecondsFormat, Timelike, Utc};
use serde::Serializer;

/// Longest form written here: `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ`.
const MAX_LEN: usize = 30;

/// `at` in RFC 3339, as chrono writes it.
pub fn format(at: &DateTime<Utc>) -> String {
    let mut buf = [0u8; MAX_LEN];
    match write(at, &mut buf) {
        Some(len) => String::from_utf8_lossy(&buf[..len]).into_owned(),
        None => at.to_rfc3339_opts(SecondsFormat::AutoSi, true),
    }
}

/// Writes `at` into `buf` and returns its length; `None` for what only chrono
/// writes (a year outside 0..=9999, which takes a sign).
fn write(at: &DateTime<Utc>, buf: &mut [u8; MAX_LEN]) -> Option<usize> {
    let year = u32::try_from(at.year()).ok().filter(|y| *y <= 9999)?;
    let (mut sec, mut nano) = (at.second(), at.nanosecond());
    // A leap second is held as nanoseconds past 1e9 of second 59.
    if nano >= 1_000_000_000 {
        sec += 1;
        nano -= 1_000_000_000;
    }
    let mut len = put_digits(buf, 0, 4, year);
    for (sep, value) in [
        (b'-', at.month()),
        (b'-', at.day()),
        (b'T', at.hour()),
        (b':', at.minute()),
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

/// For `#[serde(serialize_with = "timestamp::serialize")]`.
pub fn serialize<S: Serializer>(at: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    let mut buf = [0u8; MAX_LEN];
    match write(at, &mut buf) {
        // Only ASCII digits and separators were written.
        Some(len) => s.serialize_str(std::str::from_utf8(&buf[..len]).unwrap_or_default()),
        None => s.serialize_str(&at.to_rfc3339_opts(SecondsFormat::AutoSi, true)),
    }
}

/// For `#[serde(serialize_with = "timestamp::serialize_opt")]`.
pub fn serialize_opt<S: Serializer>(at: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
    match at {
        Some(at) => serialize(at, s),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    fn ours(at: &chrono::DateTime<chrono::Utc>) -> serde_json::Value {
        super::serialize(at, serde_json::value::Serializer).unwrap()
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
            let nanos = nanos - nanos % [1, 1_000, 1_000_000, 1_000_000_000][round];
            let at = chrono::DateTime::from_timestamp(secs, nanos).unwrap();
            prop_assert_eq!(ours(&at), serde_json::to_value(at).unwrap());
            prop_assert_eq!(super::format(&at), at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true));
        }
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
