//! What client commands print on stdout: JSON with `--json`, otherwise text
//! and tables with a header row. Every write goes through here so that a
//! closed pipe (`agentvault ls | head -1`) ends the command quietly instead
//! of a panic from `println!`.

use std::io::{ErrorKind, Write};

use serde_json::Value;

use super::CliError;

/// How a command prints its data.
#[derive(Debug, Clone, Copy)]
pub struct Output {
    pub json: bool,
}

impl Output {
    /// One line of text.
    pub fn line(&self, text: impl AsRef<str>) -> Result<(), CliError> {
        write_out(text.as_ref())
    }

    /// A JSON value, pretty-printed.
    pub fn json(&self, value: &Value) -> Result<(), CliError> {
        write_out(&serde_json::to_string_pretty(value).unwrap_or_default())
    }

    /// A JSON value on one line (streams: one object per line).
    pub fn json_line(&self, value: &Value) -> Result<(), CliError> {
        write_out(&value.to_string())
    }

    /// `value` with `--json`, else the text `render` makes of it.
    pub fn data(&self, value: &Value, render: impl FnOnce() -> String) -> Result<(), CliError> {
        if self.json {
            self.json(value)
        } else {
            self.line(render())
        }
    }

    /// Rows under a header, columns padded to their widest cell.
    pub fn table(&self, header: &[&str], rows: &[Vec<String>]) -> Result<(), CliError> {
        write_out(&render_table(header, rows))
    }
}

/// A header and rows as aligned text: two spaces between columns, no
/// trailing blanks.
pub fn render_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            match widths.get_mut(i) {
                Some(w) => *w = (*w).max(cell.chars().count()),
                None => widths.push(cell.chars().count()),
            }
        }
    }
    let render = |cells: &mut dyn Iterator<Item = &str>| {
        let mut line = String::new();
        for (i, cell) in cells.enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            let pad = widths.get(i).copied().unwrap_or(0);
            line.extend(std::iter::repeat_n(
                ' ',
                pad.saturating_sub(cell.chars().count()),
            ));
        }
        line.trim_end().to_owned()
    };
    let mut text = render(&mut header.iter().copied());
    for row in rows {
        text.push('\n');
        text.push_str(&render(&mut row.iter().map(String::as_str)));
    }
    text
}

/// A JSON field as table text: strings bare, null as `-`.
pub fn cell(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_owned(),
        other => other.to_string(),
    }
}

fn write_out(text: &str) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}")
        .and_then(|()| out.flush())
        .map_err(|e| match e.kind() {
            ErrorKind::BrokenPipe => CliError::closed_pipe(),
            _ => CliError::new(super::exit::OTHER, format!("writing to stdout: {e}")),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tables_align_columns_under_their_header() {
        let rows = vec![
            vec!["prod/openai/api-key".to_owned(), "1".to_owned()],
            vec!["db".to_owned(), "12".to_owned()],
        ];
        assert_eq!(
            render_table(&["PATH", "VERSION"], &rows),
            "PATH                 VERSION\nprod/openai/api-key  1\ndb                   12"
        );
        assert_eq!(render_table(&["A"], &[]), "A");
    }

    #[test]
    fn cells_show_null_as_a_dash_and_strings_bare() {
        assert_eq!(cell(&json!(null)), "-");
        assert_eq!(cell(&json!("a")), "a");
        assert_eq!(cell(&json!(3)), "3");
        assert_eq!(cell(&json!(true)), "true");
    }
}
