//! Reading a dataset file or prompt folder into a [`PromptSet`], and looking at one (its
//! columns, its first rows) before choosing columns.

use std::path::Path;

use super::error::DataError;
use super::layout;
use super::prompts::{DataOptions, PromptSet};
use super::row::Cell;
use super::table::Source;

/// Loads a subject-labelled prompt set from a dataset file or prompt folder (format by
/// extension; see the module docs for formats and column choice).
pub fn load_prompts(path: &Path, opts: &DataOptions) -> Result<PromptSet, DataError> {
    if opts.max_per_subject == Some(0) {
        return Err(DataError::ZeroMaxPerSubject {
            path: path.to_path_buf(),
        });
    }
    let source = Source::open(path, None)?;
    let columns = source.columns().to_vec();
    if columns.is_empty() {
        return Err(DataError::Empty {
            path: path.to_path_buf(),
        });
    }
    let plan = layout::resolve(path, &columns, opts)?;
    let indices: Vec<usize> = plan
        .columns()
        .iter()
        .filter_map(|name| columns.iter().position(|c| c == name))
        .collect();
    let file = source.path().clone();
    let rows = source.rows(&indices, None)?;
    if rows.is_empty() {
        return Err(DataError::Empty { path: file });
    }
    let prompts = rows
        .iter()
        .map(|row| plan.to_prompt(&file, row))
        .collect::<Result<Vec<_>, _>>()?;
    let mut set = PromptSet {
        prompts,
        source: path.display().to_string(),
    };
    if let Some(n) = opts.max_per_subject {
        set.limit_per_subject(n);
    }
    Ok(set)
}

/// The column names of a dataset, in file order (for a prompt file or folder: `subject`,
/// `text`). For JSON, the keys of all objects in first-seen order.
pub fn dataset_columns(path: &Path) -> Result<Vec<String>, DataError> {
    Ok(Source::open(path, None)?.columns().to_vec())
}

/// The first `n` rows of a dataset as (column, value) pairs, every column in
/// [`dataset_columns`] order (for JSON, the columns of those rows). Values are shown as text:
/// strings as they are, lists as JSON arrays, missing/null values as "".
pub fn preview(path: &Path, n: usize) -> Result<Vec<Vec<(String, String)>>, DataError> {
    let source = Source::open(path, Some(n))?;
    let columns = source.columns().to_vec();
    let all: Vec<usize> = (0..columns.len()).collect();
    let rows = source.rows(&all, Some(n))?;
    Ok(rows
        .into_iter()
        .map(|row| {
            columns
                .iter()
                .cloned()
                .zip(row.cells.iter().map(Cell::render))
                .collect()
        })
        .collect())
}
