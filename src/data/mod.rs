//! Prompt sets: subject-labelled prompts for profiling (and later training and evaluation).
//!
//! This module owns reading prompts from disk and nothing else (no tokenising, no model):
//!
//! - [`load_prompts`] reads a dataset file, picking the format from the extension:
//!   `.jsonl` / `.json` / `.ndjson` (JSON Lines of objects; a `.json` holding one array of
//!   objects also works), `.csv` / `.tsv` (header row), `.parquet` (row API, uncompressed or
//!   snappy pages), `.txt` (one prompt per line, subject = file stem) or a folder of
//!   `<subject>.txt` files (see [`load_prompt_dir`]).
//! - Column choice (see `layout.rs`): `--subject-column` / `--text-column` win; otherwise the
//!   subject comes from `subject` | `category` | `domain` | `topic` and the text from `text` |
//!   `prompt` | `question`. The MMLU-Pro layout (`question`, `options`, `category`) and the
//!   MMLU layout (`question`, `choices`, `subject`) are recognised without flags; their prompt
//!   is the question followed by the lettered options, one per line, exactly as
//!   [`format_multiple_choice`] writes it:
//!
//!   ```text
//!   What is 2 + 3?
//!   A. 4
//!   B. 5
//!   C. 6
//!   ```
//!
//!   (question with trailing whitespace removed, options trimmed, MMLU-Pro's `N/A` padding
//!   and null options dropped, no trailing newline, no "Answer:" cue). Naming a text column
//!   explicitly turns this off: `--text-column question` gives the bare question.
//! - [`dataset_columns`] and [`preview`] let the GUI's data panel show a file before choosing
//!   columns.
//!
//! Every failure is a [`DataError`] naming the file, the problem and, where it applies, the
//! line (JSON Lines, CSV, `.txt`) or row (Parquet, JSON arrays). Empty prompt text, an empty
//! subject, non-UTF-8 bytes and a dataset with zero rows are errors, never skipped silently.

mod csv_table;
mod error;
mod jsonl;
mod layout;
mod parquet_table;
mod prompt_dir;
mod table;

#[cfg(test)]
mod tests;

use std::path::Path;

use serde::{Deserialize, Serialize};

pub use error::{DataError, Location};
pub use layout::format_multiple_choice;
pub use prompt_dir::{decode_prompt_line, encode_prompt_line, load_prompt_dir};

use table::Source;

/// One prompt and the subject it belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prompt {
    pub subject: String,
    pub text: String,
}

/// Prompts in file order, with where they came from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromptSet {
    pub prompts: Vec<Prompt>,
    /// The file or folder the prompts were read from, as the user gave it.
    pub source: String,
}

impl PromptSet {
    /// Number of prompts.
    pub fn len(&self) -> usize {
        self.prompts.len()
    }

    /// True when there are no prompts.
    pub fn is_empty(&self) -> bool {
        self.prompts.is_empty()
    }

    /// Subject names in first-seen order.
    pub fn subjects(&self) -> Vec<String> {
        self.counts().into_iter().map(|(s, _)| s).collect()
    }

    /// Prompts per subject, subjects in first-seen order.
    pub fn counts(&self) -> Vec<(String, usize)> {
        let mut counts: Vec<(String, usize)> = Vec::new();
        for p in &self.prompts {
            match counts.iter_mut().find(|(s, _)| *s == p.subject) {
                Some((_, n)) => *n += 1,
                None => counts.push((p.subject.clone(), 1)),
            }
        }
        counts
    }

    /// The prompts of one subject, in order.
    pub fn prompts_for<'a>(&'a self, subject: &'a str) -> impl Iterator<Item = &'a Prompt> + 'a {
        self.prompts.iter().filter(move |p| p.subject == subject)
    }

    /// Keeps the first `n` prompts of each subject, preserving the overall order.
    pub fn limit_per_subject(&mut self, n: usize) {
        let mut kept: Vec<(String, usize)> = Vec::new();
        self.prompts
            .retain(|p| match kept.iter_mut().find(|(s, _)| *s == p.subject) {
                Some((_, k)) if *k >= n => false,
                Some((_, k)) => {
                    *k += 1;
                    true
                }
                None => {
                    kept.push((p.subject.clone(), 1));
                    n > 0
                }
            });
    }
}

/// How to read a dataset: column overrides (the CLI's `--subject-column`, `--text-column`)
/// and a per-subject cap (`--max-per-subject`, must be at least 1).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataOptions {
    pub subject_column: Option<String>,
    pub text_column: Option<String>,
    pub max_per_subject: Option<usize>,
}

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
                .zip(row.cells.iter().map(table::Cell::render))
                .collect()
        })
        .collect())
}
