//! JSON datasets: JSON Lines (one object per line; blank lines skipped), or one JSON array of
//! objects. Columns are the keys seen, in first-seen order.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::Value;

use super::error::{DataError, Location, io_error};
use super::row::{Cell, RawRow, strip_bom};

/// A JSON object with its keys in file order (`serde_json::Map` sorts them unless the
/// `preserve_order` feature is on, and columns should appear as the file has them).
#[derive(Debug, Default)]
struct Object(Vec<(String, Value)>);

impl Object {
    fn keys(&self) -> impl Iterator<Item = &String> {
        self.0.iter().map(|(k, _)| k)
    }

    /// The value of `key` (the last one if the key repeats, as serde_json does).
    fn get(&self, key: &str) -> Option<&Value> {
        self.0.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v)
    }
}

/// A JSON value that is an object with ordered keys, or something else (kept for the error).
enum Item {
    Object(Object),
    Other(Value),
}

impl<'de> Deserialize<'de> for Item {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ItemVisitor;

        impl<'de> Visitor<'de> for ItemVisitor {
            type Value = Item;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON value")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Item, A::Error> {
                let mut entries = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, Value>()? {
                    entries.push((k, v));
                }
                Ok(Item::Object(Object(entries)))
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<Item, A::Error> {
                let v = Value::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))?;
                Ok(Item::Other(v))
            }

            fn visit_bool<E>(self, v: bool) -> Result<Item, E> {
                Ok(Item::Other(Value::Bool(v)))
            }

            fn visit_i64<E>(self, v: i64) -> Result<Item, E> {
                Ok(Item::Other(Value::from(v)))
            }

            fn visit_u64<E>(self, v: u64) -> Result<Item, E> {
                Ok(Item::Other(Value::from(v)))
            }

            fn visit_f64<E>(self, v: f64) -> Result<Item, E> {
                Ok(Item::Other(Value::from(v)))
            }

            fn visit_str<E>(self, v: &str) -> Result<Item, E> {
                Ok(Item::Other(Value::from(v)))
            }

            fn visit_unit<E>(self) -> Result<Item, E> {
                Ok(Item::Other(Value::Null))
            }
        }

        deserializer.deserialize_any(ItemVisitor)
    }
}

pub(crate) struct JsonTable {
    pub(crate) path: PathBuf,
    columns: Vec<String>,
    objects: Vec<(Location, Object)>,
}

impl JsonTable {
    pub(crate) fn open(path: &Path, row_limit: Option<usize>) -> Result<JsonTable, DataError> {
        let bytes = std::fs::read(path).map_err(|e| io_error(path, e))?;
        let bytes = strip_bom(&bytes);
        let limit = row_limit.unwrap_or(usize::MAX);
        let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
        let objects = if first == Some(&b'[') {
            parse_array(path, bytes, limit)?
        } else {
            parse_lines(path, bytes, limit)?
        };
        let mut columns = Vec::new();
        let mut seen = HashMap::new();
        for (_, obj) in &objects {
            for key in obj.keys() {
                if !seen.contains_key(key) {
                    seen.insert(key.clone(), columns.len());
                    columns.push(key.clone());
                }
            }
        }
        Ok(JsonTable {
            path: path.to_path_buf(),
            columns,
            objects,
        })
    }

    pub(crate) fn columns(&self) -> &[String] {
        &self.columns
    }

    pub(crate) fn rows(self, columns: &[usize], limit: Option<usize>) -> Vec<RawRow> {
        let names: Vec<&str> = columns
            .iter()
            .filter_map(|&i| self.columns.get(i).map(String::as_str))
            .collect();
        self.objects
            .iter()
            .take(limit.unwrap_or(usize::MAX))
            .map(|(location, obj)| RawRow {
                location: *location,
                cells: names
                    .iter()
                    .map(|name| obj.get(name).map(cell_from_json).unwrap_or(Cell::Null))
                    .collect(),
            })
            .collect()
    }
}

fn parse_lines(
    path: &Path,
    bytes: &[u8],
    limit: usize,
) -> Result<Vec<(Location, Object)>, DataError> {
    let mut objects = Vec::new();
    for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        if objects.len() >= limit {
            break;
        }
        let location = Location::Line(i as u64 + 1);
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let line = std::str::from_utf8(raw).map_err(|_| DataError::NonUtf8 {
            path: path.to_path_buf(),
            location,
            column: None,
        })?;
        if line.trim().is_empty() {
            continue;
        }
        let value: Item = match serde_json::from_str(line) {
            Ok(value) => value,
            Err(e) => {
                let message = if objects.is_empty() && is_one_document(bytes) {
                    "the file holds one JSON document spread over several lines; expected one \
                     object per line (JSON Lines) or an array of objects"
                        .to_string()
                } else {
                    format!("{} (column {})", without_position(&e), e.column())
                };
                return Err(DataError::MalformedJson {
                    path: path.to_path_buf(),
                    location,
                    message,
                });
            }
        };
        objects.push((location, into_object(path, location, value)?));
    }
    Ok(objects)
}

/// True if the whole file is a single JSON value (e.g. a pretty-printed object).
fn is_one_document(bytes: &[u8]) -> bool {
    serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok()
}

fn parse_array(
    path: &Path,
    bytes: &[u8],
    limit: usize,
) -> Result<Vec<(Location, Object)>, DataError> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let line = bytes[..e.valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count();
        DataError::NonUtf8 {
            path: path.to_path_buf(),
            location: Location::Line(line as u64 + 1),
            column: None,
        }
    })?;
    let values: Vec<Item> = serde_json::from_str(text).map_err(|e| DataError::MalformedJson {
        path: path.to_path_buf(),
        location: Location::Line(e.line() as u64),
        message: format!("{} (column {})", without_position(&e), e.column()),
    })?;
    values
        .into_iter()
        .take(limit)
        .enumerate()
        .map(|(i, value)| {
            let location = Location::Row(i as u64 + 1);
            Ok((location, into_object(path, location, value)?))
        })
        .collect()
}

fn into_object(path: &Path, location: Location, value: Item) -> Result<Object, DataError> {
    match value {
        Item::Object(map) => Ok(map),
        Item::Other(other) => Err(DataError::MalformedJson {
            path: path.to_path_buf(),
            location,
            message: format!(
                "expected an object like {{\"subject\": ..., \"text\": ...}}, found {}",
                json_kind(&other)
            ),
        }),
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// serde_json's message without its " at line L column C" suffix (we report our own).
fn without_position(e: &serde_json::Error) -> String {
    let s = e.to_string();
    match s.rfind(" at line ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// A JSON value as a cell: objects keep their fields (a chat message's `role` and `content`).
pub(crate) fn cell_from_json(value: &Value) -> Cell {
    match value {
        Value::Null => Cell::Null,
        Value::String(s) => Cell::Text(s.clone()),
        Value::Array(items) => Cell::List(items.iter().map(cell_from_json).collect()),
        Value::Object(fields) => Cell::Map(
            fields
                .iter()
                .map(|(k, v)| (k.clone(), cell_from_json(v)))
                .collect(),
        ),
        Value::Bool(_) | Value::Number(_) => Cell::Other(value.to_string()),
    }
}
