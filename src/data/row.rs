//! One data row as every reader delivers it: the [`Cell`] values of the requested columns and
//! where the row is in its file, plus the byte-level helper the text readers share.

use super::error::Location;

/// One value of a dataset cell, as much structure as prompt building needs.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Cell {
    /// Absent (missing JSON key, Parquet null).
    Null,
    /// A string.
    Text(String),
    /// A list (JSON array, Parquet LIST).
    List(Vec<Cell>),
    /// An object (JSON object, Parquet struct): its fields in order, e.g. one chat message.
    Map(Vec<(String, Cell)>),
    /// Any other scalar or structure, rendered as text (numbers, booleans, dates, Parquet maps).
    Other(String),
}

impl Cell {
    /// How the cell reads in a preview table: strings as they are, lists as a JSON array.
    pub(crate) fn render(&self) -> String {
        match self {
            Cell::Null => String::new(),
            Cell::Text(s) | Cell::Other(s) => s.clone(),
            Cell::List(_) | Cell::Map(_) => self.to_json().to_string(),
        }
    }

    fn to_json(&self) -> serde_json::Value {
        match self {
            Cell::Null => serde_json::Value::Null,
            Cell::Text(s) | Cell::Other(s) => serde_json::Value::String(s.clone()),
            Cell::List(items) => {
                serde_json::Value::Array(items.iter().map(Cell::to_json).collect())
            }
            Cell::Map(fields) => serde_json::Value::Object(
                fields
                    .iter()
                    .map(|(k, v)| (k.clone(), v.to_json()))
                    .collect(),
            ),
        }
    }

    /// The value of field `name` of an object cell.
    pub(crate) fn field(&self, name: &str) -> Option<&Cell> {
        match self {
            Cell::Map(fields) => fields.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v),
            _ => None,
        }
    }

    /// A short description for "holds X, expected Y" errors.
    pub(crate) fn kind(&self) -> String {
        match self {
            Cell::Null => "nothing (null)".to_string(),
            Cell::Text(_) => "text".to_string(),
            Cell::List(items) => format!("a list of {} items", items.len()),
            Cell::Map(_) => format!("the object {}", shorten(&self.render(), 40)),
            Cell::Other(s) => format!("the non-text value {}", shorten(s, 40)),
        }
    }
}

fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let head: String = s.chars().take(max).collect();
        format!("{head}…")
    }
}

/// One data row: where it is in the file and the requested cells, in request order.
#[derive(Debug, Clone)]
pub(crate) struct RawRow {
    pub location: Location,
    pub cells: Vec<Cell>,
}

/// Strips a leading UTF-8 byte-order mark.
pub(crate) fn strip_bom(bytes: &[u8]) -> &[u8] {
    bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes)
}
