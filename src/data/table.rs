//! A format-neutral view of a dataset file: column names, then rows of cells for the
//! columns a caller asks for. Each format module (JSON, CSV, Parquet, prompt text) opens into a
//! [`Source`]; `load_prompts`, `dataset_columns` and `preview` only talk to this module.

use std::path::{Path, PathBuf};

use super::error::{DataError, io_error};
use super::row::RawRow;
use super::{csv_table, jsonl, parquet_table, prompt_dir};

/// The supported layouts, picked from the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// `.jsonl` / `.json`: JSON Lines of objects (a `.json` file holding one array of objects
    /// is accepted too).
    Json,
    /// `.csv` (comma) / `.tsv` (tab) with a header row.
    Delimited(u8),
    /// `.parquet`.
    Parquet,
    /// A single `<subject>.txt` prompt file.
    PromptFile,
    /// A folder of `<subject>.txt` prompt files.
    PromptDir,
}

impl Format {
    /// Picks the format from the path (a folder is a prompt folder), checking the path exists.
    pub(crate) fn detect(path: &Path) -> Result<Format, DataError> {
        let meta = std::fs::metadata(path).map_err(|e| io_error(path, e))?;
        if meta.is_dir() {
            return Ok(Format::PromptDir);
        }
        let ext = path
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default();
        match ext.as_str() {
            "jsonl" | "json" | "ndjson" => Ok(Format::Json),
            "csv" => Ok(Format::Delimited(b',')),
            "tsv" => Ok(Format::Delimited(b'\t')),
            "parquet" => Ok(Format::Parquet),
            "txt" => Ok(Format::PromptFile),
            _ => Err(DataError::UnknownFormat {
                path: path.to_path_buf(),
                extension: ext,
            }),
        }
    }
}

/// An opened dataset: its columns are known, its rows not read yet.
pub(crate) enum Source {
    Json(jsonl::JsonTable),
    Delimited(csv_table::CsvTable),
    Parquet(parquet_table::ParquetTable),
    Prompts(prompt_dir::PromptTable),
}

impl Source {
    /// Opens `path`. `row_limit` bounds how much of a JSON file is parsed up front (its
    /// columns are the keys of the rows parsed); other formats ignore it here.
    pub(crate) fn open(path: &Path, row_limit: Option<usize>) -> Result<Source, DataError> {
        Ok(match Format::detect(path)? {
            Format::Json => Source::Json(jsonl::JsonTable::open(path, row_limit)?),
            Format::Delimited(delimiter) => {
                Source::Delimited(csv_table::CsvTable::open(path, delimiter)?)
            }
            Format::Parquet => Source::Parquet(parquet_table::ParquetTable::open(path)?),
            Format::PromptFile => Source::Prompts(prompt_dir::PromptTable::open_file(path)?),
            Format::PromptDir => Source::Prompts(prompt_dir::PromptTable::open_dir(path)?),
        })
    }

    /// Column names in file order.
    pub(crate) fn columns(&self) -> &[String] {
        match self {
            Source::Json(t) => t.columns(),
            Source::Delimited(t) => t.columns(),
            Source::Parquet(t) => t.columns(),
            Source::Prompts(t) => t.columns(),
        }
    }

    /// Reads up to `limit` rows, each holding the cells of `columns` (indices into
    /// [`Source::columns`]) in that order.
    pub(crate) fn rows(
        self,
        columns: &[usize],
        limit: Option<usize>,
    ) -> Result<Vec<RawRow>, DataError> {
        match self {
            Source::Json(t) => Ok(t.rows(columns, limit)),
            Source::Delimited(t) => t.rows(columns, limit),
            Source::Parquet(t) => t.rows(columns, limit),
            Source::Prompts(t) => Ok(t.rows(columns, limit)),
        }
    }

    /// The path the rows come from.
    pub(crate) fn path(&self) -> &PathBuf {
        match self {
            Source::Json(t) => &t.path,
            Source::Delimited(t) => &t.path,
            Source::Parquet(t) => &t.path,
            Source::Prompts(t) => &t.path,
        }
    }
}
