//! Errors from loading prompt sets: every variant names the file, the problem and, where it
//! applies, the line or row.

use std::fmt;
use std::path::{Path, PathBuf};

/// Where in a file a problem is: `Line` for line-oriented formats (JSON Lines, CSV — the line
/// the record starts on, header included —, prompt `.txt` files), `Row` for Parquet and JSON
/// arrays (1-based data row).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Location {
    /// 1-based line number in the file.
    Line(u64),
    /// 1-based data row (Parquet rows, items of a JSON array).
    Row(u64),
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Line(n) => write!(f, "line {n}"),
            Location::Row(n) => write!(f, "row {n}"),
        }
    }
}

/// Something wrong with a prompt-set file (or folder) or with the options used to load it.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The file or folder does not exist.
    #[error("{}: no such file or folder", .path.display())]
    NotFound { path: PathBuf },

    /// The file exists but could not be read.
    #[error("{}: cannot read: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The extension is not one of the supported formats.
    #[error(
        "{}: unknown data format {}; use .jsonl, .json, .csv, .tsv, .parquet, .txt \
         (one prompt per line) or a folder of <subject>.txt files",
        .path.display(),
        describe_extension(.extension)
    )]
    UnknownFormat { path: PathBuf, extension: String },

    /// A line (or the whole document) is not valid JSON, or is JSON but not an object.
    #[error("{}: {location}: malformed JSON: {message}", .path.display())]
    MalformedJson {
        path: PathBuf,
        location: Location,
        message: String,
    },

    /// The CSV reader rejected a record (e.g. a wrong number of fields).
    #[error("{}: {location}: malformed CSV: {message}", .path.display())]
    MalformedCsv {
        path: PathBuf,
        location: Location,
        message: String,
    },

    /// The Parquet file could not be decoded.
    #[error("{}: cannot read Parquet: {message}", .path.display())]
    MalformedParquet { path: PathBuf, message: String },

    /// A Parquet column uses a compression codec this build cannot decode.
    #[error(
        "{}: Parquet column `{column}` is compressed with {codec}, which MoEScope cannot read \
         (supported: uncompressed, SNAPPY); re-save the file with snappy compression, e.g. \
         pyarrow.parquet.write_table(table, path, compression=\"snappy\")",
        .path.display()
    )]
    UnsupportedCompression {
        path: PathBuf,
        column: String,
        codec: String,
    },

    /// A column named with `--subject-column` / `--text-column` is not in the file.
    #[error(
        "{}: no column named `{column}` (given with {flag}); available columns: {}",
        .path.display(),
        list_columns(.available)
    )]
    MissingColumn {
        path: PathBuf,
        column: String,
        flag: &'static str,
        available: Vec<String>,
    },

    /// No column name looks like a subject label and none was given.
    #[error(
        "{}: no subject column (looked for subject, category, domain, topic); available \
         columns: {}; name the column holding each prompt's subject with --subject-column",
        .path.display(),
        list_columns(.available)
    )]
    NoSubjectColumn {
        path: PathBuf,
        available: Vec<String>,
    },

    /// No column name looks like prompt text and none was given.
    #[error(
        "{}: no text column (looked for messages, conversations, conversation, question + \
         options/choices, text, prompt, question); available columns: {}; name the column \
         holding the prompt text with --text-column",
        .path.display(),
        list_columns(.available)
    )]
    NoTextColumn {
        path: PathBuf,
        available: Vec<String>,
    },

    /// A row's text is missing, empty or only whitespace.
    #[error(
        "{}: {location}{}: empty prompt text (empty prompts cannot be profiled; remove the \
         row or fill it in)",
        .path.display(),
        describe_column(.column)
    )]
    EmptyText {
        path: PathBuf,
        location: Location,
        column: Option<String>,
    },

    /// A row's subject is missing, empty or only whitespace.
    #[error("{}: {location}: empty subject in column `{column}`", .path.display())]
    EmptySubject {
        path: PathBuf,
        location: Location,
        column: String,
    },

    /// Bytes that are not UTF-8 (prompts must be UTF-8 text).
    #[error(
        "{}: {location}{}: not valid UTF-8 text (re-save the file as UTF-8)",
        .path.display(),
        describe_column(.column)
    )]
    NonUtf8 {
        path: PathBuf,
        location: Location,
        column: Option<String>,
    },

    /// A cell holds the wrong kind of value (e.g. a list where text was expected).
    #[error(
        "{}: {location}: column `{column}` holds {found}, expected {expected}",
        .path.display()
    )]
    WrongType {
        path: PathBuf,
        location: Location,
        column: String,
        expected: &'static str,
        found: String,
    },

    /// A conversation cell that is not a list of `{role, content}` messages (or ShareGPT
    /// `{from, value}` ones), or one of whose messages cannot be read as text.
    #[error("{}: {location}: column `{column}`: {problem}", .path.display())]
    BadConversation {
        path: PathBuf,
        location: Location,
        column: String,
        problem: String,
    },

    /// A multiple-choice row has more options than there are letters A–Z.
    #[error(
        "{}: {location}: column `{column}` has {count} options; at most 26 (A–Z) can be lettered",
        .path.display()
    )]
    TooManyOptions {
        path: PathBuf,
        location: Location,
        column: String,
        count: usize,
    },

    /// The file has no data rows (or a prompt folder no prompts).
    #[error("{}: no prompts: the dataset has zero rows", .path.display())]
    Empty { path: PathBuf },

    /// A prompt folder holds no `<subject>.txt` files.
    #[error(
        "{}: no prompt files: expected one <subject>.txt file per subject, one prompt per line",
        .path.display()
    )]
    NoPromptFiles { path: PathBuf },

    /// `max_per_subject` was 0, which would leave nothing to profile.
    #[error(
        "{}: --max-per-subject must be at least 1 (0 would leave no prompts)",
        .path.display()
    )]
    ZeroMaxPerSubject { path: PathBuf },
}

fn list_columns(columns: &[String]) -> String {
    if columns.is_empty() {
        "(none)".to_string()
    } else {
        columns
            .iter()
            .map(|c| format!("`{c}`"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn describe_column(column: &Option<String>) -> String {
    match column {
        Some(c) => format!(", column `{c}`"),
        None => String::new(),
    }
}

fn describe_extension(ext: &str) -> String {
    if ext.is_empty() {
        "(no extension)".to_string()
    } else {
        format!("`.{ext}`")
    }
}

/// Maps an I/O error on `path` to `NotFound` or `Io`.
pub(crate) fn io_error(path: &Path, e: std::io::Error) -> DataError {
    if e.kind() == std::io::ErrorKind::NotFound {
        DataError::NotFound {
            path: path.to_path_buf(),
        }
    } else {
        DataError::Io {
            path: path.to_path_buf(),
            source: e,
        }
    }
}
