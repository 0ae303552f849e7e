//! Parquet datasets, read with the `parquet` crate's row API (no arrow): columns are the
//! schema's top-level fields; only the requested ones are decoded (a projection), so a large
//! unused column (MMLU-Pro's `cot_content`) costs nothing. This build decodes uncompressed and
//! snappy pages only (the crate is built with just the `snap` feature); other codecs are caught
//! from the metadata before any page is read and reported by name.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parquet::basic::Compression;
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::Field;
use parquet::schema::types::Type;

use super::error::{DataError, Location, io_error};
use super::row::{Cell, RawRow};

pub(crate) struct ParquetTable {
    pub(crate) path: PathBuf,
    columns: Vec<String>,
    reader: SerializedFileReader<File>,
}

impl ParquetTable {
    pub(crate) fn open(path: &Path) -> Result<ParquetTable, DataError> {
        let file = File::open(path).map_err(|e| io_error(path, e))?;
        let reader = SerializedFileReader::new(file).map_err(|e| malformed(path, e))?;
        let columns = reader
            .metadata()
            .file_metadata()
            .schema()
            .get_fields()
            .iter()
            .map(|f| f.name().to_string())
            .collect();
        Ok(ParquetTable {
            path: path.to_path_buf(),
            columns,
            reader,
        })
    }

    pub(crate) fn columns(&self) -> &[String] {
        &self.columns
    }

    pub(crate) fn rows(
        self,
        columns: &[usize],
        limit: Option<usize>,
    ) -> Result<Vec<RawRow>, DataError> {
        let path = &self.path;
        let names: Vec<&str> = columns
            .iter()
            .filter_map(|&i| self.columns.get(i).map(String::as_str))
            .collect();
        self.check_codecs(&names)?;

        let schema = self.reader.metadata().file_metadata().schema();
        let fields: Vec<Arc<Type>> = schema
            .get_fields()
            .iter()
            .filter(|f| names.contains(&f.name()))
            .cloned()
            .collect();
        let projection = Type::group_type_builder(schema.name())
            .with_fields(fields)
            .build()
            .map_err(|e| malformed(path, e))?;
        let iter = self
            .reader
            .get_row_iter(Some(projection))
            .map_err(|e| malformed(path, e))?;

        let mut rows = Vec::new();
        for (i, row) in iter.take(limit.unwrap_or(usize::MAX)).enumerate() {
            let location = Location::Row(i as u64 + 1);
            let row = row.map_err(|e| row_error(path, location, e))?;
            let mut cells = vec![Cell::Null; names.len()];
            for (name, field) in row.get_column_iter() {
                if let Some(pos) = names.iter().position(|n| n == name) {
                    cells[pos] = cell_from_field(path, location, name, field)?;
                }
            }
            rows.push(RawRow { location, cells });
        }
        Ok(rows)
    }

    /// Fails with the codec's name if a requested column uses one this build cannot decode.
    fn check_codecs(&self, names: &[&str]) -> Result<(), DataError> {
        for group in self.reader.metadata().row_groups() {
            for chunk in group.columns() {
                let top = chunk
                    .column_path()
                    .parts()
                    .first()
                    .map(String::as_str)
                    .unwrap_or_default();
                if !names.contains(&top) {
                    continue;
                }
                let codec = chunk.compression();
                if !matches!(codec, Compression::UNCOMPRESSED | Compression::SNAPPY) {
                    return Err(DataError::UnsupportedCompression {
                        path: self.path.clone(),
                        column: top.to_string(),
                        codec: codec_name(codec),
                    });
                }
            }
        }
        Ok(())
    }
}

/// `ZSTD(ZstdLevel(1))` → `ZSTD`.
fn codec_name(codec: Compression) -> String {
    let debug = format!("{codec:?}");
    match debug.find('(') {
        Some(i) => debug[..i].to_string(),
        None => debug,
    }
}

fn malformed(path: &Path, e: parquet::errors::ParquetError) -> DataError {
    DataError::MalformedParquet {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

fn row_error(path: &Path, location: Location, e: parquet::errors::ParquetError) -> DataError {
    let message = e.to_string();
    // The row API converts UTF8-annotated byte arrays with `String::from_utf8` and reports a
    // failure as a general error with this text.
    if message.contains("BYTE_ARRAY as String") {
        DataError::NonUtf8 {
            path: path.to_path_buf(),
            location,
            column: None,
        }
    } else {
        DataError::MalformedParquet {
            path: path.to_path_buf(),
            message: format!("{location}: {message}"),
        }
    }
}

fn cell_from_field(
    path: &Path,
    location: Location,
    column: &str,
    field: &Field,
) -> Result<Cell, DataError> {
    Ok(match field {
        Field::Null => Cell::Null,
        Field::Str(s) => Cell::Text(s.clone()),
        Field::Bytes(bytes) => {
            // Plain BYTE_ARRAY without a STRING annotation: text if it is UTF-8.
            let text = std::str::from_utf8(bytes.data()).map_err(|_| DataError::NonUtf8 {
                path: path.to_path_buf(),
                location,
                column: Some(column.to_string()),
            })?;
            Cell::Text(text.to_string())
        }
        Field::ListInternal(list) => Cell::List(
            list.elements()
                .iter()
                .map(|f| cell_from_field(path, location, column, f))
                .collect::<Result<_, _>>()?,
        ),
        // A struct, e.g. one `{role, content}` message of a list-of-struct `messages` column.
        Field::Group(row) => Cell::Map(
            row.get_column_iter()
                .map(|(name, f)| Ok((name.clone(), cell_from_field(path, location, column, f)?)))
                .collect::<Result<_, DataError>>()?,
        ),
        other => Cell::Other(other.to_string()),
    })
}
