//! The read side of [`super`]: stored records in exactly the form their
//! writers give, read without `serde_json`'s field matching and per-string
//! scanning, which were most of a cold read's decoding. [`Canonical`]
//! recognises that one form only; at the first byte that differs it gives
//! up, and the caller reads the whole text with `serde_json` instead, so
//! what a text means is never decided here for a text the writers could
//! not have written (Lua's cjson, which rebases records after a race,
//! writes its keys in another order and escapes `/`).

use chrono::{DateTime, Utc};

use super::super::timestamp;

/// `text` read by `canonical` where it reads it, else by `serde_json`.
pub(crate) fn or_serde<T: serde::de::DeserializeOwned>(
    text: &str,
    canonical: impl FnOnce(&str) -> Option<T>,
) -> serde_json::Result<T> {
    match canonical(text) {
        Some(value) => Ok(value),
        None => serde_json::from_str(text),
    }
}

/// A cursor over JSON text in the writers' form: no whitespace, an object's
/// fields in the order given, strings without escapes. Every method returns
/// `None` where the text is not in that form.
pub(crate) struct Canonical<'a> {
    text: &'a str,
    at: usize,
    /// Whether the next field is an object's first (no comma before it).
    first: bool,
}

impl<'a> Canonical<'a> {
    /// `text` as one object whose fields `fields` reads, and nothing after it.
    pub(crate) fn object<T>(
        text: &'a str,
        fields: impl FnOnce(&mut Self) -> Option<T>,
    ) -> Option<T> {
        let mut c = Self::new(text);
        c.open()?;
        let value = fields(&mut c)?;
        c.close()?;
        c.end()?;
        Some(value)
    }

    pub(crate) fn new(text: &'a str) -> Self {
        Self {
            text,
            at: 0,
            first: false,
        }
    }

    fn byte(&mut self, b: u8) -> Option<()> {
        (self.text.as_bytes().get(self.at) == Some(&b)).then(|| self.at += 1)
    }

    fn bytes(&mut self, expected: &[u8]) -> Option<()> {
        let end = self.at + expected.len();
        (self.text.as_bytes().get(self.at..end) == Some(expected)).then(|| self.at = end)
    }

    /// `{`: an object's start; its fields follow.
    pub(crate) fn open(&mut self) -> Option<()> {
        self.byte(b'{')?;
        self.first = true;
        Some(())
    }

    /// `}`.
    pub(crate) fn close(&mut self) -> Option<()> {
        self.byte(b'}')?;
        self.first = false;
        Some(())
    }

    /// The end of the text.
    pub(crate) fn end(&self) -> Option<()> {
        (self.at == self.text.len()).then_some(())
    }

    /// `"key":` (after a comma unless it is the object's first field).
    pub(crate) fn field(&mut self, key: &str) -> Option<&mut Self> {
        let start = self.at;
        if !std::mem::take(&mut self.first) {
            self.byte(b',')?;
        }
        let found = self
            .byte(b'"')
            .and_then(|()| self.bytes(key.as_bytes()))
            .and_then(|()| self.bytes(b"\":"));
        if found.is_none() {
            self.at = start;
        }
        found.map(|()| self)
    }

    /// Whether the optional field `key` comes next; if so, its value follows.
    pub(crate) fn has(&mut self, key: &str) -> bool {
        let first = self.first;
        let found = self.field(key).is_some();
        if !found {
            self.first = first;
        }
        found
    }

    /// A string without escapes or control characters, as the text holds it:
    /// exactly the strings the writers copy whole ([`super::plain`]).
    pub(crate) fn str(&mut self) -> Option<&'a str> {
        self.byte(b'"')?;
        let len = memchr::memchr(b'"', &self.text.as_bytes()[self.at..])?;
        // Both ends are ASCII quotes, so this is a whole str.
        let s = self.text.get(self.at..self.at + len)?;
        if !super::plain(s) {
            return None;
        }
        self.at += len + 1;
        Some(s)
    }

    pub(crate) fn string(&mut self) -> Option<String> {
        self.str().map(str::to_owned)
    }

    /// `null`, or a string.
    pub(crate) fn opt_string(&mut self) -> Option<Option<String>> {
        if self.bytes(b"null").is_some() {
            return Some(None);
        }
        self.string().map(Some)
    }

    /// Digits as `itoa` writes them: no sign, no leading zero, within `u64`.
    pub(crate) fn u64(&mut self) -> Option<u64> {
        let digits = self.text.as_bytes()[self.at..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        let text = &self.text[self.at..self.at + digits];
        if digits == 0 || (digits > 1 && text.starts_with('0')) {
            return None;
        }
        let n = text.parse().ok()?;
        self.at += digits;
        Some(n)
    }

    /// A timestamp in the form [`timestamp`] writes.
    pub(crate) fn timestamp(&mut self) -> Option<DateTime<Utc>> {
        self.str().and_then(timestamp::parse)
    }

    /// `null`, or a timestamp.
    pub(crate) fn opt_timestamp(&mut self) -> Option<Option<DateTime<Utc>>> {
        if self.bytes(b"null").is_some() {
            return Some(None);
        }
        self.timestamp().map(Some)
    }

    /// An object's entries, each read by `entry` from its key, until `}`.
    pub(crate) fn entries(
        &mut self,
        mut entry: impl FnMut(&'a str, &mut Self) -> Option<()>,
    ) -> Option<()> {
        self.byte(b'{')?;
        if self.byte(b'}').is_some() {
            return Some(());
        }
        loop {
            let key = self.str()?;
            self.byte(b':')?;
            entry(key, self)?;
            if self.byte(b'}').is_some() {
                return Some(());
            }
            self.byte(b',')?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_with_escapes_or_control_characters_are_not_read() {
        for text in [r#""a\"b""#, r#""a\/b""#, "\"a\tb\"", "\"ab", "ab\""] {
            assert_eq!(Canonical::new(text).str(), None, "{text}");
        }
        let mut c = Canonical::new(r#""é/ab""#);
        assert_eq!(c.str(), Some("é/ab"));
        assert_eq!(c.end(), Some(()));
    }

    #[test]
    fn numbers_only_as_itoa_writes_them() {
        for text in ["", "-1", "01", "1.5e3", "18446744073709551616"] {
            let mut c = Canonical::new(text);
            assert!(c.u64().and_then(|_| c.end()).is_none(), "{text}");
        }
        for (text, n) in [("0", 0), ("7", 7), ("18446744073709551615", u64::MAX)] {
            assert_eq!(Canonical::new(text).u64(), Some(n));
        }
    }

    #[test]
    fn fields_in_order_with_optional_ones_skipped() {
        let mut c = Canonical::new(r#"{"a":1,"c":"x"}"#);
        c.open().unwrap();
        assert_eq!(c.field("a").and_then(Canonical::u64), Some(1));
        assert!(!c.has("b"));
        assert!(c.has("c"));
        assert_eq!(c.str(), Some("x"));
        assert!(c.close().and_then(|()| c.end()).is_some());
        let mut c = Canonical::new(r#"{ "a":1}"#);
        c.open().unwrap();
        assert!(c.field("a").is_none());
    }
}
