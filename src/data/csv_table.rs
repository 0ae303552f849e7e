//! CSV / TSV datasets: a header row, then one record per row (quoted fields may span lines;
//! blank lines are skipped by the `csv` crate). Every cell is text; a list column (MMLU-Pro's
//! `options` saved from pandas) is parsed later, when a prompt needs it.

use std::fs::File;
use std::path::{Path, PathBuf};

use super::error::{DataError, Location, io_error};
use super::row::{Cell, RawRow, strip_bom};

pub(crate) struct CsvTable {
    pub(crate) path: PathBuf,
    columns: Vec<String>,
    reader: csv::Reader<File>,
}

impl CsvTable {
    pub(crate) fn open(path: &Path, delimiter: u8) -> Result<CsvTable, DataError> {
        let file = File::open(path).map_err(|e| io_error(path, e))?;
        let mut reader = csv::ReaderBuilder::new()
            .delimiter(delimiter)
            .has_headers(true)
            .flexible(false)
            .from_reader(file);
        let header = reader
            .byte_headers()
            .map_err(|e| csv_error(path, e))?
            .clone();
        let mut columns = Vec::with_capacity(header.len());
        for (i, field) in header.iter().enumerate() {
            let field = if i == 0 { strip_bom(field) } else { field };
            let name = std::str::from_utf8(field).map_err(|_| DataError::NonUtf8 {
                path: path.to_path_buf(),
                location: Location::Line(1),
                column: None,
            })?;
            columns.push(name.to_string());
        }
        if columns.is_empty() {
            return Err(DataError::Empty {
                path: path.to_path_buf(),
            });
        }
        Ok(CsvTable {
            path: path.to_path_buf(),
            columns,
            reader,
        })
    }

    pub(crate) fn columns(&self) -> &[String] {
        &self.columns
    }

    pub(crate) fn rows(
        mut self,
        columns: &[usize],
        limit: Option<usize>,
    ) -> Result<Vec<RawRow>, DataError> {
        let path = self.path;
        let mut rows = Vec::new();
        let mut record = csv::ByteRecord::new();
        let limit = limit.unwrap_or(usize::MAX);
        while rows.len() < limit {
            let more = self
                .reader
                .read_byte_record(&mut record)
                .map_err(|e| csv_error(&path, e))?;
            if !more {
                break;
            }
            let location = Location::Line(record.position().map_or(0, |p| p.line()));
            let mut cells = Vec::with_capacity(columns.len());
            for &i in columns {
                let bytes = record.get(i).unwrap_or_default();
                let text = std::str::from_utf8(bytes).map_err(|_| DataError::NonUtf8 {
                    path: path.clone(),
                    location,
                    column: self.columns.get(i).cloned(),
                })?;
                cells.push(Cell::Text(text.to_string()));
            }
            rows.push(RawRow { location, cells });
        }
        Ok(rows)
    }
}

fn csv_error(path: &Path, e: csv::Error) -> DataError {
    let location = Location::Line(e.position().map_or(0, |p| p.line()));
    match e.into_kind() {
        csv::ErrorKind::Io(source) => io_error(path, source),
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => DataError::MalformedCsv {
            path: path.to_path_buf(),
            location,
            message: format!("{len} fields where the header has {expected_len}"),
        },
        csv::ErrorKind::Utf8 { .. } => DataError::NonUtf8 {
            path: path.to_path_buf(),
            location,
            column: None,
        },
        other => DataError::MalformedCsv {
            path: path.to_path_buf(),
            location,
            message: format!("{other:?}"),
        },
    }
}
