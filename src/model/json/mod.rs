//! JSON text for the hot path, byte for byte what `serde_json` writes for
//! the same values, without its per-byte escaping loop: a string that needs
//! no escaping (no control character, `"` or `\`, as nearly every path, id
//! and code is) is checked in one vectorized pass and copied whole; any
//! other string goes to `serde_json`. Every audit event is
//! encoded with these (see [`super::audit::AuditEvent::to_json`]); the
//! escaping loop was an eighth of a cached read's instructions.
//! [`Canonical`] reads the stored records back in that same form.

mod read;

pub(crate) use read::{or_serde, Canonical};

/// Whether `serde_json` writes `s` between quotes exactly as it is. A fold
/// over every byte rather than `all`, which would stop at the first
/// escape: without the early exit the compiler vectorizes the loop.
fn plain(s: &str) -> bool {
    s.bytes().fold(true, |plain, b| {
        plain & (b >= 0x20) & (b != b'"') & (b != b'\\')
    })
}

/// `s` as a JSON string.
pub(crate) fn string(out: &mut Vec<u8>, s: &str) {
    if plain(s) {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        // Writing into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, s);
    }
}

/// `s` as a JSON string, or `null`.
pub(crate) fn opt_string(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => string(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

/// An integer.
pub(crate) fn int<I: itoa::Integer>(out: &mut Vec<u8>, n: I) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// An integer, or `null`.
pub(crate) fn opt_int<I: itoa::Integer>(out: &mut Vec<u8>, n: Option<I>) {
    match n {
        Some(n) => int(out, n),
        None => out.extend_from_slice(b"null"),
    }
}

/// A JSON array of strings.
pub(crate) fn strings(out: &mut Vec<u8>, items: &[String]) {
    out.push(b'[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        string(out, item);
    }
    out.push(b']');
}

/// A JSON object of string values, in the map's order.
pub(crate) fn string_map(out: &mut Vec<u8>, map: &std::collections::BTreeMap<String, String>) {
    let mut o = Object::new(out);
    for (key, value) in map {
        string(o.entry(key), value);
    }
    o.end();
}

/// A JSON object being written: each [`Object::field`] puts the comma
/// before it and the key, and hands back the buffer for the value.
pub(crate) struct Object<'a> {
    out: &'a mut Vec<u8>,
    empty: bool,
}

impl<'a> Object<'a> {
    pub(crate) fn new(out: &'a mut Vec<u8>) -> Self {
        out.push(b'{');
        Self { out, empty: true }
    }

    /// `"key":`, for a key that needs no escaping (a field name); the value
    /// is written next, into what this returns.
    pub(crate) fn field(&mut self, key: &str) -> &mut Vec<u8> {
        debug_assert!(plain(key));
        self.separate();
        self.out.push(b'"');
        self.out.extend_from_slice(key.as_bytes());
        self.out.extend_from_slice(b"\":");
        self.out
    }

    /// `"key":` for any key, escaped as it needs (a map's keys).
    pub(crate) fn entry(&mut self, key: &str) -> &mut Vec<u8> {
        self.separate();
        string(self.out, key);
        self.out.push(b':');
        self.out
    }

    fn separate(&mut self) {
        if !std::mem::take(&mut self.empty) {
            self.out.push(b',');
        }
    }

    pub(crate) fn end(self) {
        self.out.push(b'}');
    }
}

/// For property tests of a hand-written encoder: `ours` is byte for byte
/// what `serde_json` writes for `value`, and reads back as `value`.
#[cfg(test)]
pub(crate) fn check_is_serde_jsons<T>(
    ours: &[u8],
    value: &T,
) -> Result<(), proptest::test_runner::TestCaseError>
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    proptest::prop_assert_eq!(
        std::str::from_utf8(ours).unwrap(),
        serde_json::to_string(value).unwrap()
    );
    proptest::prop_assert_eq!(&serde_json::from_slice::<T>(ours).unwrap(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    fn ours(s: &str) -> String {
        let mut out = Vec::new();
        super::string(&mut out, s);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn plain_strings_are_copied_and_others_escaped_as_serde_json_does() {
        for s in [
            "",
            "bench/k7",
            "spiffe://dev.local/agent",
            "é ☃ \u{7f}",
            "a\"b",
            "a\\b",
            "\n\t\u{1}",
            "\u{1f}x",
        ] {
            assert_eq!(ours(s), serde_json::to_string(s).unwrap(), "{s:?}");
        }
    }

    proptest! {
        #[test]
        fn any_string_is_written_as_serde_json_writes_it(s in any::<String>()) {
            prop_assert_eq!(ours(&s), serde_json::to_string(&s).unwrap());
        }

        #[test]
        fn ascii_with_escapes_is_written_as_serde_json_writes_it(s in "[\\x00-\\x7f]{0,40}") {
            prop_assert_eq!(ours(&s), serde_json::to_string(&s).unwrap());
        }
    }
}
