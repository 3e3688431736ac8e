//! The CSV subset MMLU's files use, read the way Python's `csv.reader` reads a file opened in text mode
//! (the reference prompts were built that way, so field bytes must match it exactly).

/// A CSV record: its first line number (1-based) and fields.
pub type CsvRecord = (usize, Vec<String>);

/// Minimal CSV reader matching Python's `csv.reader` default dialect on a file opened in text mode:
/// `"` quoting with `""` escapes, and `\r\n` read as `\n` (universal newlines), also inside quoted fields.
/// Blank lines are skipped like Python does.
pub fn parse_csv(text: &str) -> std::result::Result<Vec<CsvRecord>, (usize, String)> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text).replace("\r\n", "\n");
    let mut out = Vec::new();
    let (mut fields, mut field) = (Vec::new(), String::new());
    let (mut in_quotes, mut line, mut start_line) = (false, 1usize, 1usize);
    let mut chars = text.chars().peekable();
    let mut at_field_start = true;
    while let Some(ch) = chars.next() {
        if in_quotes {
            match ch {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => in_quotes = false,
                '\n' => {
                    line += 1;
                    field.push('\n');
                }
                _ => field.push(ch),
            }
            continue;
        }
        match ch {
            '"' if at_field_start => {
                in_quotes = true;
                at_field_start = false;
            }
            ',' => {
                fields.push(std::mem::take(&mut field));
                at_field_start = true;
            }
            '\n' => {
                if !(fields.is_empty() && field.is_empty() && at_field_start) {
                    fields.push(std::mem::take(&mut field));
                    out.push((start_line, std::mem::take(&mut fields)));
                }
                line += 1;
                start_line = line;
                at_field_start = true;
            }
            _ => {
                field.push(ch);
                at_field_start = false;
            }
        }
    }
    if in_quotes {
        return Err((start_line, "quoted field never closed".into()));
    }
    if !fields.is_empty() || !field.is_empty() {
        fields.push(field);
        out.push((start_line, fields));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_commas_newlines() {
        let t = "\"a, b\",\"x\"\"y\",c\r\n\r\nq,\"multi\r\nline\",z";
        let r = parse_csv(t).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0], (1, vec!["a, b".to_string(), "x\"y".into(), "c".into()]));
        assert_eq!(r[1], (3, vec!["q".to_string(), "multi\nline".into(), "z".into()]));
        assert!(parse_csv("\"open").is_err());
    }
}
