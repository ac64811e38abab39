//! A small RFC 4180 CSV reader: quoted fields, doubled quotes, CRLF, BOM. Errors name the file
//! and line.

use crate::{Error, Result};
use std::path::Path;

/// A parsed CSV file: header and rows, each row with its 1-based line number.
#[derive(Debug, Clone)]
pub struct Csv {
    pub header: Vec<String>,
    pub rows: Vec<(usize, Vec<String>)>,
}

impl Csv {
    /// Index of a column, or an error that lists the columns found.
    pub fn column(&self, name: &str, path: &Path) -> Result<usize> {
        self.header.iter().position(|h| h == name).ok_or_else(|| {
            Error::data(format!(
                "{}: missing column `{name}` (found: {}); HAM10000_metadata.csv has lesion_id,image_id,dx,...",
                path.display(),
                self.header.join(",")
            ))
        })
    }
}

/// Parses CSV text.
pub fn parse_csv(text: &str, path: &Path) -> Result<Csv> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut records: Vec<(usize, Vec<String>)> = Vec::new();
    let mut field = String::new();
    let mut row: Vec<String> = Vec::new();
    let mut in_quotes = false;
    let mut line = 1usize;
    let mut row_line = 1usize;
    let mut chars = text.chars().peekable();
    let mut any = false;
    while let Some(c) = chars.next() {
        any = true;
        if in_quotes {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => in_quotes = false,
                '\n' => {
                    line += 1;
                    field.push(c);
                }
                _ => field.push(c),
            }
            continue;
        }
        match c {
            '"' if field.is_empty() => in_quotes = true,
            ',' => row.push(std::mem::take(&mut field)),
            '\r' => {}
            '\n' => {
                row.push(std::mem::take(&mut field));
                if !(row.len() == 1 && row[0].is_empty()) {
                    records.push((row_line, std::mem::take(&mut row)));
                } else {
                    row.clear();
                }
                line += 1;
                row_line = line;
            }
            _ => field.push(c),
        }
    }
    if in_quotes {
        return Err(Error::data(format!(
            "{}: line {row_line}: a quoted field is never closed",
            path.display()
        )));
    }
    if any && (!field.is_empty() || !row.is_empty()) {
        row.push(field);
        records.push((row_line, row));
    }
    let mut it = records.into_iter();
    let header = it
        .next()
        .ok_or_else(|| {
            Error::data(format!(
                "{}: the file is empty (expected a header line)",
                path.display()
            ))
        })?
        .1
        .into_iter()
        .map(|h| h.trim().to_string())
        .collect();
    Ok(Csv {
        header,
        rows: it.collect(),
    })
}

/// Reads and parses a CSV file; non-UTF-8 content is an error naming the line.
pub fn read_csv(path: &Path) -> Result<Csv> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse_csv_bytes(bytes, path)
}

/// Parses CSV bytes read from `path` (named in errors); non-UTF-8 content is an error naming
/// the line.
pub fn parse_csv_bytes(bytes: Vec<u8>, path: &Path) -> Result<Csv> {
    let text = match String::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            let upto = &e.as_bytes()[..e.utf8_error().valid_up_to()];
            let line = upto.iter().filter(|&&b| b == b'\n').count() + 1;
            return Err(Error::data(format!(
                "{}: line {line}: not valid UTF-8 text; save the file as UTF-8",
                path.display()
            )));
        }
    };
    parse_csv(&text, path)
}

/// Quotes a field when needed.
pub fn quote(s: &str) -> String {
    if s.contains(',') || s.contains('"') || s.contains('\n') {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn parses_quotes_and_crlf() {
        let c = parse_csv(
            "\u{feff}a,b,c\r\n1,\"x, y\",\"say \"\"hi\"\"\"\r\n\n2,,\n",
            Path::new("t.csv"),
        )
        .unwrap();
        assert_eq!(c.header, vec!["a", "b", "c"]);
        assert_eq!(c.rows[0].1, vec!["1", "x, y", "say \"hi\""]);
        assert_eq!(c.rows[1], (4, vec!["2".to_string(), "".into(), "".into()]));
        assert!(parse_csv("a\n\"open", Path::new("t.csv"))
            .unwrap_err()
            .to_string()
            .contains("never closed"));
        assert!(parse_csv("", Path::new("t.csv")).is_err());
        assert_eq!(quote("a,b"), "\"a,b\"");
    }
}
