//! A `.env` parser for imports. Values are taken literally: there is no
//! `$VAR` interpolation, because interpolating from the sidecar's own
//! environment would let an import read the sidecar's settings back out.
//! Errors name a line number and never quote the line (it may hold a secret).

use std::collections::BTreeMap;

use super::SecretValue;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct ParseError {
    pub line: usize,
    pub reason: &'static str,
}

/// One variable as the file last assigned it.
#[derive(Debug, Clone)]
pub struct Entry {
    pub name: String,
    pub value: SecretValue,
    pub line: usize,
}

/// A parsed file: entries in first-appearance order, and the names assigned
/// more than once with every line that assigned them.
#[derive(Debug, Default)]
pub struct Parsed {
    pub entries: Vec<Entry>,
    pub duplicates: BTreeMap<String, Vec<usize>>,
}

fn is_name_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')
}

/// Parses a whole file: comments, blank lines, `export ` prefixes, single and
/// double quotes (double quotes take `\n \r \t \" \\ \$` escapes), quoted
/// values over several lines, empty values, and inline ` #` comments after
/// unquoted values. A later assignment of a name wins.
pub fn parse(text: &str) -> Result<Parsed, ParseError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut parsed = Parsed::default();
    let mut index: BTreeMap<String, usize> = BTreeMap::new();
    let chars: Vec<char> = text.chars().collect();
    let mut pos = 0;
    let mut line = 1;
    while pos < chars.len() {
        let start_line = line;
        let rest_is = |p: usize, s: &str| {
            s.chars()
                .enumerate()
                .all(|(i, c)| chars.get(p + i) == Some(&c))
        };
        // Leading whitespace, blank lines and comments.
        while pos < chars.len() && matches!(chars[pos], ' ' | '\t' | '\r') {
            pos += 1;
        }
        if pos >= chars.len() {
            break;
        }
        if chars[pos] == '\n' {
            pos += 1;
            line += 1;
            continue;
        }
        if chars[pos] == '#' {
            while pos < chars.len() && chars[pos] != '\n' {
                pos += 1;
            }
            continue;
        }
        if rest_is(pos, "export ") || rest_is(pos, "export\t") {
            pos += 7;
            while pos < chars.len() && matches!(chars[pos], ' ' | '\t') {
                pos += 1;
            }
        }
        let fail = |reason| ParseError {
            line: start_line,
            reason,
        };
        let name_start = pos;
        if pos >= chars.len() || !is_name_start(chars[pos]) {
            return Err(fail(
                "expected NAME=value (a name starts with a letter or _)",
            ));
        }
        while pos < chars.len() && is_name_char(chars[pos]) {
            pos += 1;
        }
        let name: String = chars[name_start..pos].iter().collect();
        while pos < chars.len() && matches!(chars[pos], ' ' | '\t') {
            pos += 1;
        }
        if chars.get(pos) != Some(&'=') {
            return Err(fail("expected `=` after the name"));
        }
        pos += 1;
        while pos < chars.len() && matches!(chars[pos], ' ' | '\t') {
            pos += 1;
        }
        let mut value = String::new();
        match chars.get(pos) {
            Some(&quote @ ('"' | '\'')) => {
                pos += 1;
                loop {
                    let Some(&c) = chars.get(pos) else {
                        return Err(fail("quoted value is never closed"));
                    };
                    pos += 1;
                    match c {
                        '\n' => {
                            line += 1;
                            value.push('\n');
                        }
                        c if c == quote => break,
                        '\\' if quote == '"' => {
                            let Some(&next) = chars.get(pos) else {
                                return Err(fail("quoted value is never closed"));
                            };
                            pos += 1;
                            match next {
                                'n' => value.push('\n'),
                                'r' => value.push('\r'),
                                't' => value.push('\t'),
                                '"' | '\\' | '$' => value.push(next),
                                '\n' => {
                                    line += 1;
                                    value.push_str("\\\n");
                                }
                                other => {
                                    value.push('\\');
                                    value.push(other);
                                }
                            }
                        }
                        c => value.push(c),
                    }
                }
                while pos < chars.len() && matches!(chars[pos], ' ' | '\t' | '\r') {
                    pos += 1;
                }
                match chars.get(pos) {
                    None | Some('\n') => {}
                    Some('#') => {
                        while pos < chars.len() && chars[pos] != '\n' {
                            pos += 1;
                        }
                    }
                    Some(_) => return Err(fail("unexpected text after the closing quote")),
                }
            }
            _ => {
                while pos < chars.len() && chars[pos] != '\n' {
                    let c = chars[pos];
                    if c == '#' && (value.is_empty() || value.ends_with([' ', '\t'])) {
                        while pos < chars.len() && chars[pos] != '\n' {
                            pos += 1;
                        }
                        break;
                    }
                    value.push(c);
                    pos += 1;
                }
                let trimmed = value.trim_end_matches([' ', '\t', '\r']).len();
                value.truncate(trimmed);
            }
        }
        let entry = Entry {
            name: name.clone(),
            value: SecretValue::new(value),
            line: start_line,
        };
        match index.get(&name) {
            Some(&i) => {
                let first = parsed.entries[i].line;
                parsed
                    .duplicates
                    .entry(name)
                    .or_insert_with(|| vec![first])
                    .push(start_line);
                parsed.entries[i] = entry;
            }
            None => {
                index.insert(name, parsed.entries.len());
                parsed.entries.push(entry);
            }
        }
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(text: &str) -> Vec<(String, String)> {
        parse(text)
            .unwrap()
            .entries
            .into_iter()
            .map(|e| (e.name, e.value.expose().to_owned()))
            .collect()
    }

    #[test]
    fn parses_the_common_forms() {
        let text = "\u{feff}# comment\n\nA=1\nexport B = two words  \nC=\"dq \\\"x\\\" \\n\\t \\$HOME \\\\\"\n\
                    D='single $HOME \\n'\nE=\nF=\"\"\nG=val # trailing comment\nH=a#b\n  I=indented\r\n";
        assert_eq!(
            values(text),
            [
                ("A", "1"),
                ("B", "two words"),
                ("C", "dq \"x\" \n\t $HOME \\"),
                ("D", "single $HOME \\n"),
                ("E", ""),
                ("F", ""),
                ("G", "val"),
                ("H", "a#b"),
                ("I", "indented"),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
        );
    }

    #[test]
    fn multi_line_values_keep_line_numbers_right() {
        let text = "KEY=\"-----BEGIN-----\nabc\n-----END-----\"\nNEXT='a\nb'\nBAD LINE\n";
        let err = parse(text).unwrap_err();
        assert_eq!(err.line, 6);
        let ok = "KEY=\"-----BEGIN-----\nabc\n-----END-----\"\nNEXT='a\nb'\n";
        assert_eq!(values(ok)[0].1, "-----BEGIN-----\nabc\n-----END-----");
        assert_eq!(values(ok)[1].1, "a\nb");
    }

    #[test]
    fn duplicates_last_wins_and_are_reported() {
        let parsed = parse("A=1\nB=2\nA=3\nA=4\n").unwrap();
        let names: Vec<_> = parsed
            .entries
            .iter()
            .map(|e| (e.name.as_str(), e.value.expose()))
            .collect();
        assert_eq!(names, [("A", "4"), ("B", "2")]);
        assert_eq!(parsed.duplicates["A"], vec![1, 3, 4]);
    }

    #[test]
    fn malformed_lines_name_their_line_and_not_their_text() {
        for (text, line) in [
            ("A=1\nnot a pair\n", 2),
            ("A=1\n\n=value\n", 3),
            ("1A=x\n", 1),
            ("A=\"unterminated\nB=2\n", 1),
            ("A='x' trailing\n", 1),
            ("A=\"sk-secret\" junk\n", 1),
            ("A=\"x\\", 1),
        ] {
            let err = parse(text).unwrap_err();
            assert_eq!(err.line, line, "{text:?}");
            assert!(!err.to_string().contains("sk-secret"));
        }
    }

    proptest::proptest! {
        /// Any file is parsed or refused with the number of a line it has,
        /// never a panic.
        #[test]
        fn any_text_parses_or_names_one_of_its_lines(text in "(?s).{0,400}") {
            if let Err(e) = parse(&text) {
                proptest::prop_assert!(e.line >= 1 && e.line <= text.matches('\n').count() + 1);
            }
        }

        /// Values written double-quoted (backslash and quote escaped) read
        /// back exactly, in order, `$` included and never interpolated.
        #[test]
        fn double_quoted_values_read_back(
            vars in proptest::collection::btree_map("[A-Z_][A-Z0-9_]{0,12}", "[ -~\n\t]{0,40}", 1..8)
        ) {
            let text: String = vars
                .iter()
                .map(|(k, v)| {
                    let escaped = v
                        .replace('\\', "\\\\")
                        .replace('"', "\\\"")
                        .replace('\n', "\\n")
                        .replace('\t', "\\t");
                    format!("{k}=\"{escaped}\"\n")
                })
                .collect();
            let read = values(&text);
            let written: Vec<(String, String)> =
                vars.into_iter().collect();
            proptest::prop_assert_eq!(read, written);
        }
    }
}
