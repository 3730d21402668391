//! JSON text for the hot path, byte for byte what `serde_json` writes for
//! the same values, without its per-byte escaping loop: a string that needs
//! no escaping (no control character, `"` or `\`, as nearly every path, id
//! and code is) is checked in one pass the compiler vectorizes and copied
//! whole; any other string goes to `serde_json`. Every audit event is
//! encoded with these (see [`super::audit::AuditEvent::to_json`]); the
//! escaping loop was an eighth of a cached read's instructions.

/// Whether `serde_json` writes `s` between quotes exactly as it is.
fn plain(s: &str) -> bool {
    s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\')
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

/// `"key":`, for keys that are plain by construction.
pub(crate) fn key(out: &mut Vec<u8>, key: &str) {
    debug_assert!(plain(key));
    out.push(b'"');
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"\":");
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
