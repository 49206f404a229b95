//! Turns byte spans from the TOML parser into what people read: `file:line:col` and key
//! paths like `routes[0].auth.token_env`.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::de::{DeTable, DeValue};

/// A place in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub(crate) file: PathBuf,
    /// Unknown when the parser reported no span.
    pub(crate) position: Option<Position>,
}

/// A 1-based line and column; the column counts characters, not bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Position {
    pub(crate) line: usize,
    pub(crate) column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(Position { line, column }) = self.position {
            write!(f, ":{line}:{column}")?;
        }
        Ok(())
    }
}

/// The text of one config file, for locating spans in it.
#[derive(Debug, Clone, Copy)]
pub(super) struct SourceFile<'a> {
    pub(super) path: &'a Path,
    pub(super) text: &'a str,
}

impl SourceFile<'_> {
    pub(super) fn location(&self, span: Option<Range<usize>>) -> Location {
        Location {
            file: self.path.to_owned(),
            position: span.and_then(|span| position(self.text, span.start)),
        }
    }

    pub(super) fn line(&self, span: Range<usize>) -> Option<usize> {
        position(self.text, span.start).map(|position| position.line)
    }
}

/// The line and column of byte `offset`, or `None` when it is outside the text or not on
/// a character boundary.
pub(super) fn position(text: &str, offset: usize) -> Option<Position> {
    let before = text.get(..offset)?;
    let line_start = before.rfind('\n').map_or(0, |newline| newline + 1);
    Some(Position {
        line: before.matches('\n').count() + 1,
        column: before[line_start..].chars().count() + 1,
    })
}

/// One step of a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Key(String),
    Index(usize),
}

/// The key path of the deepest key or value in `text` that covers byte `offset`.
///
/// Serde errors carry only a span; this recovers which key they are about by parsing the
/// document again without a schema. Table values are spanned by their `[header]`, so a
/// "missing field" error pointing at a header resolves to that table's path.
pub(super) fn key_path_at(text: &str, offset: usize) -> Option<String> {
    let document = DeTable::parse(text).ok()?;
    let mut best = Vec::new();
    walk_table(document.get_ref(), offset, &mut Vec::new(), &mut best);
    (!best.is_empty()).then(|| render(&best))
}

fn walk_table(
    table: &DeTable<'_>,
    offset: usize,
    path: &mut Vec<Segment>,
    best: &mut Vec<Segment>,
) {
    for (key, value) in table {
        path.push(Segment::Key(key.get_ref().to_string()));
        if covers(&key.span(), offset) || covers(&value.span(), offset) {
            keep_deeper(path, best);
        }
        walk_value(value.get_ref(), offset, path, best);
        path.pop();
    }
}

fn walk_value(
    value: &DeValue<'_>,
    offset: usize,
    path: &mut Vec<Segment>,
    best: &mut Vec<Segment>,
) {
    match value {
        DeValue::Table(table) => walk_table(table, offset, path, best),
        DeValue::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                path.push(Segment::Index(index));
                if covers(&item.span(), offset) {
                    keep_deeper(path, best);
                }
                walk_value(item.get_ref(), offset, path, best);
                path.pop();
            }
        }
        _ => {}
    }
}

fn covers(span: &Range<usize>, offset: usize) -> bool {
    span.contains(&offset) || (span.is_empty() && span.start == offset)
}

fn keep_deeper(path: &[Segment], best: &mut Vec<Segment>) {
    if path.len() > best.len() {
        *best = path.to_vec();
    }
}

fn render(path: &[Segment]) -> String {
    let mut out = String::new();
    for segment in path {
        match segment {
            Segment::Index(index) => out.push_str(&format!("[{index}]")),
            Segment::Key(key) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(&key_text(key));
            }
        }
    }
    out
}

/// A key as TOML would accept it: bare when it can be, quoted otherwise.
pub(super) fn key_text(key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare {
        key.to_owned()
    } else {
        format!("{key:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_counts_lines_and_characters_from_one() {
        let text = "a = 1\nbé = 2\n";
        assert_eq!(position(text, 0), Some(Position { line: 1, column: 1 }));
        let second_equals = text.rfind('=').unwrap_or_default();
        assert_eq!(
            position(text, second_equals),
            Some(Position { line: 2, column: 4 })
        );
        assert_eq!(position(text, 1000), None);
    }

    #[test]
    fn key_path_names_nested_keys_and_array_indexes() {
        let text =
            "[[routes]]\nname = \"a\"\n\n[[routes]]\nname = \"b\"\n[routes.auth]\nkind = 1\n";
        let offset = text.find("kind").unwrap_or_default();
        assert_eq!(
            key_path_at(text, offset).as_deref(),
            Some("routes[1].auth.kind")
        );
        let second_header = text.rfind("[[routes]]").unwrap_or_default();
        assert_eq!(
            key_path_at(text, second_header).as_deref(),
            Some("routes[1]")
        );
    }

    #[test]
    fn key_path_quotes_keys_that_are_not_bare() {
        let text = "[routes.headers]\n\"X Bad\" = \"v\"\n";
        let offset = text.find("\"X").unwrap_or_default();
        assert_eq!(
            key_path_at(text, offset).as_deref(),
            Some("routes.headers.\"X Bad\"")
        );
    }
}
