//! The bundled prompt format: a folder of `<subject>.txt` files (subject = file stem, folders
//! read in file-name order, hidden files and other extensions ignored), one prompt per line.
//!
//! Inside a line, `\n` stands for a newline and `\\` for one backslash; any other backslash is
//! kept as it is. A trailing `\r` (CRLF files) and a leading UTF-8 byte-order mark are dropped;
//! the newline ending the last line is optional. Blank lines are errors (an empty prompt cannot
//! be profiled), reported with their line number. [`encode_prompt_line`] writes this format and
//! [`decode_prompt_line`] reads it back exactly.

use std::path::{Path, PathBuf};

use super::error::{DataError, Location, io_error};
use super::row::{Cell, RawRow, strip_bom};
use super::{Prompt, PromptSet};

/// Turns one line of a prompt file into prompt text: `\n` → newline, `\\` → backslash, any
/// other backslash kept literally.
pub fn decode_prompt_line(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.peek() {
                Some('n') => {
                    out.push('\n');
                    chars.next();
                }
                Some('\\') => {
                    out.push('\\');
                    chars.next();
                }
                _ => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Writes prompt text as one line of a prompt file (the inverse of [`decode_prompt_line`]):
/// backslash → `\\`, newline → `\n`. A `\r` directly before a newline or at the end is
/// dropped, since the reader strips it as a CRLF line ending.
pub fn encode_prompt_line(text: &str) -> String {
    let text = text.replace("\r\n", "\n");
    let text = text.strip_suffix('\r').unwrap_or(&text);
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Reads one prompt file: its prompts with their line numbers.
pub(crate) fn read_prompt_file(path: &Path) -> Result<Vec<(Location, String)>, DataError> {
    let bytes = std::fs::read(path).map_err(|e| io_error(path, e))?;
    let bytes = strip_bom(&bytes);
    let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    let mut prompts = Vec::new();
    if body.is_empty() {
        return Err(DataError::Empty {
            path: path.to_path_buf(),
        });
    }
    for (i, raw) in body.split(|&b| b == b'\n').enumerate() {
        let location = Location::Line(i as u64 + 1);
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let line = std::str::from_utf8(raw).map_err(|_| DataError::NonUtf8 {
            path: path.to_path_buf(),
            location,
            column: None,
        })?;
        let text = decode_prompt_line(line);
        if text.trim().is_empty() {
            return Err(DataError::EmptyText {
                path: path.to_path_buf(),
                location,
                column: None,
            });
        }
        prompts.push((location, text));
    }
    Ok(prompts)
}

fn subject_of(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The `<subject>.txt` files of a folder, sorted by file name.
fn prompt_files(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let meta = std::fs::metadata(dir).map_err(|e| io_error(dir, e))?;
    if !meta.is_dir() {
        return Err(DataError::NoPromptFiles {
            path: dir.to_path_buf(),
        });
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| io_error(dir, e))? {
        let entry = entry.map_err(|e| io_error(dir, e))?;
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let is_txt = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("txt"));
        if !is_txt || name.starts_with('.') {
            continue;
        }
        // Follow symlinks: a linked prompt file counts.
        if std::fs::metadata(&path).is_ok_and(|m| m.is_file()) {
            files.push(path);
        }
    }
    files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    if files.is_empty() {
        return Err(DataError::NoPromptFiles {
            path: dir.to_path_buf(),
        });
    }
    Ok(files)
}

/// Loads a folder of `<subject>.txt` prompt files (the demo's bundled prompt format; see the
/// module docs): subjects in file-name order, prompts in line order.
pub fn load_prompt_dir(dir: &Path) -> Result<PromptSet, DataError> {
    let mut prompts = Vec::new();
    for file in prompt_files(dir)? {
        let subject = subject_of(&file);
        for (_, text) in read_prompt_file(&file)? {
            prompts.push(Prompt::plain(subject.clone(), text));
        }
    }
    Ok(PromptSet {
        prompts,
        source: dir.display().to_string(),
    })
}

/// A prompt file or folder seen as a two-column table (`subject`, `text`), so that column
/// listing, preview and `load_prompts` treat it like any dataset.
pub(crate) struct PromptTable {
    pub(crate) path: PathBuf,
    columns: Vec<String>,
    rows: Vec<(Location, String, String)>,
}

impl PromptTable {
    pub(crate) fn open_file(path: &Path) -> Result<PromptTable, DataError> {
        let subject = subject_of(path);
        let rows = read_prompt_file(path)?
            .into_iter()
            .map(|(loc, text)| (loc, subject.clone(), text))
            .collect();
        Ok(Self::new(path, rows))
    }

    pub(crate) fn open_dir(dir: &Path) -> Result<PromptTable, DataError> {
        let mut rows = Vec::new();
        for file in prompt_files(dir)? {
            let subject = subject_of(&file);
            for (loc, text) in read_prompt_file(&file)? {
                rows.push((loc, subject.clone(), text));
            }
        }
        Ok(Self::new(dir, rows))
    }

    fn new(path: &Path, rows: Vec<(Location, String, String)>) -> PromptTable {
        PromptTable {
            path: path.to_path_buf(),
            columns: vec!["subject".to_string(), "text".to_string()],
            rows,
        }
    }

    pub(crate) fn columns(&self) -> &[String] {
        &self.columns
    }

    pub(crate) fn rows(self, columns: &[usize], limit: Option<usize>) -> Vec<RawRow> {
        self.rows
            .into_iter()
            .take(limit.unwrap_or(usize::MAX))
            .map(|(location, subject, text)| RawRow {
                location,
                cells: columns
                    .iter()
                    .map(|&i| match i {
                        0 => Cell::Text(subject.clone()),
                        1 => Cell::Text(text.clone()),
                        _ => Cell::Null,
                    })
                    .collect(),
            })
            .collect()
    }
}
