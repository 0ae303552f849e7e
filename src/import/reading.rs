//! What every importer shares: the options (format, files, subject, positions), the errors
//! (naming file and line), progress and cancellation, reading a file a line at a time (or in
//! batches parsed on every core), and how a record's subject is decided.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// The engine whose routing is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ImportFormat {
    /// vLLM ≥ 0.21 responses with routed experts, one JSON per line.
    Vllm,
    /// SGLang `/generate` or `/v1/completions` responses (one JSON per line), or the expert
    /// distribution recorder's `.pt` dumps.
    Sglang,
    /// Megatron-LM `router_trace_rank{r}.jsonl`.
    Megatron,
    /// llama.cpp moe-trace CSV (`layer,expert`).
    LlamaCpp,
}

impl ImportFormat {
    pub fn name(self) -> &'static str {
        match self {
            ImportFormat::Vllm => "vllm",
            ImportFormat::Sglang => "sglang",
            ImportFormat::Megatron => "megatron",
            ImportFormat::LlamaCpp => "llama-cpp",
        }
    }
}

/// Which token positions of a request count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Positions {
    /// Prompt and generated tokens.
    #[default]
    All,
    /// Prompt tokens only (what `moescope profile` records).
    Prompt,
    /// Generated tokens only.
    Generated,
}

impl Positions {
    pub fn prompt(self) -> bool {
        self != Positions::Generated
    }

    pub fn generated(self) -> bool {
        self != Positions::Prompt
    }
}

/// What to import and how.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    pub format: ImportFormat,
    pub files: Vec<PathBuf>,
    /// The subject of records without a `subject` field.
    pub subject: Option<String>,
    pub positions: Positions,
}

/// Errors importing routing: each names its file, and its line for line formats.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {msg}")]
    Line {
        path: String,
        line: u64,
        msg: String,
    },
    #[error("{path}: {msg}")]
    File { path: String, msg: String },
    #[error("{0}")]
    Invalid(String),
    #[error("import cancelled; nothing was written")]
    Cancelled,
}

pub type Result<T> = std::result::Result<T, ImportError>;

/// Progress of an import: bytes read of all files.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ImportProgress {
    pub bytes_done: u64,
    pub bytes_total: u64,
}

/// Reports progress and checks for cancellation while files are read.
pub struct Monitor<'a> {
    pub cancel: &'a AtomicBool,
    pub on_progress: &'a mut dyn FnMut(ImportProgress),
    done: u64,
    /// Bytes of all files, for the progress fraction.
    pub total: u64,
    last_report: u64,
}

impl<'a> Monitor<'a> {
    pub fn new(cancel: &'a AtomicBool, on_progress: &'a mut dyn FnMut(ImportProgress)) -> Self {
        Self {
            cancel,
            on_progress,
            done: 0,
            total: 0,
            last_report: 0,
        }
    }

    /// Counts `bytes` more read; reports every 4 MB. Errors once cancelled.
    pub fn advance(&mut self, bytes: u64) -> Result<()> {
        if self.cancel.load(Ordering::Relaxed) {
            return Err(ImportError::Cancelled);
        }
        self.done += bytes;
        if self.done - self.last_report >= 4 << 20 {
            self.last_report = self.done;
            (self.on_progress)(ImportProgress {
                bytes_done: self.done,
                bytes_total: self.total,
            });
        }
        Ok(())
    }
}

/// A file's display name for errors.
pub(crate) fn display(path: &Path) -> String {
    path.display().to_string()
}

/// Reads `path` a line at a time into `line` (without the newline), calling `each` with the
/// 1-based line number; blank lines are skipped.
pub(crate) fn for_each_line(
    path: &Path,
    monitor: &mut Monitor<'_>,
    mut each: impl FnMut(u64, &[u8]) -> Result<()>,
) -> Result<()> {
    let file = std::fs::File::open(path).map_err(|source| ImportError::Io {
        path: display(path),
        source,
    })?;
    let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
    let mut line = Vec::new();
    let mut number = 0u64;
    loop {
        line.clear();
        let n = reader
            .read_until(b'\n', &mut line)
            .map_err(|source| ImportError::Io {
                path: display(path),
                source,
            })?;
        if n == 0 {
            return Ok(());
        }
        number += 1;
        monitor.advance(n as u64)?;
        let text = line.trim_ascii();
        if text.is_empty() {
            continue;
        }
        each(number, text)?;
    }
}

/// Lines of text read per parallel batch: enough to keep every core busy, small enough that
/// memory stays flat whatever the file's size.
const BATCH_BYTES: usize = 32 << 20;

/// [`for_each_line`] with the parsing spread over the cores: lines are read in batches of about
/// [`BATCH_BYTES`], `parse` runs on a batch's lines in parallel while `consume` takes the
/// previous batch's results, in file order (so the first error reported is the first in the
/// file).
pub(crate) fn for_each_parsed_line<T: Send>(
    path: &Path,
    monitor: &mut Monitor<'_>,
    parse: impl Fn(u64, &[u8]) -> Result<T> + Sync,
    mut consume: impl FnMut(u64, T) -> Result<()> + Send,
) -> Result<()> {
    use rayon::prelude::*;
    type Parsed<T> = Vec<(u64, Result<T>)>;
    let parse_batch = |batch: Vec<(u64, Vec<u8>)>| -> Parsed<T> {
        batch
            .into_par_iter()
            .map(|(line, text)| (line, parse(line, &text)))
            .collect()
    };
    let mut consume_batch = |parsed: Parsed<T>| -> Result<()> {
        for (line, item) in parsed {
            consume(line, item?)?;
        }
        Ok(())
    };
    let mut pending: Parsed<T> = Vec::new();
    let mut batch: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut batch_bytes = 0usize;
    for_each_line(path, monitor, |line, text| {
        batch_bytes += text.len();
        batch.push((line, text.to_vec()));
        if batch_bytes >= BATCH_BYTES {
            batch_bytes = 0;
            let ready = std::mem::take(&mut batch);
            let previous = std::mem::take(&mut pending);
            let (parsed, consumed) = rayon::join(|| parse_batch(ready), || consume_batch(previous));
            consumed?;
            pending = parsed;
        }
        Ok(())
    })?;
    consume_batch(pending)?;
    consume_batch(parse_batch(batch))
}

/// [`for_each_parsed_line`] over lines holding one JSON value each (`what` names the format in
/// the error for a line that is not one).
pub(crate) fn for_each_json_line<T: serde::de::DeserializeOwned + Send>(
    path: &Path,
    monitor: &mut Monitor<'_>,
    what: &str,
    consume: impl FnMut(u64, T) -> Result<()> + Send,
) -> Result<()> {
    let parse = |line: u64, text: &[u8]| -> Result<T> {
        serde_json::from_slice(text)
            .map_err(|e| line_error(path, line)(format!("not {what} line: {e}")))
    };
    for_each_parsed_line(path, monitor, parse, consume)
}

/// A function making the error of `line` of `path` from its message.
pub(crate) fn line_error(path: &Path, line: u64) -> impl Fn(String) -> ImportError + '_ {
    move |msg| ImportError::Line {
        path: display(path),
        line,
        msg,
    }
}

/// The subject of a record: its own `subject` field, else `--subject`.
pub(crate) fn record_subject<'a>(
    own: Option<&'a str>,
    options: &'a ImportOptions,
    path: &Path,
    line: u64,
) -> Result<&'a str> {
    own.filter(|s| !s.is_empty())
        .or(options.subject.as_deref())
        .ok_or_else(|| ImportError::Line {
            path: display(path),
            line,
            msg: "no subject: the record has no \"subject\" field; name one with --subject".into(),
        })
}

/// The subject of a file without subject labels (recorder dumps, CSV traces): `--subject`,
/// else the file's name without its extension.
pub(crate) fn file_subject(path: &Path, default: Option<&str>) -> String {
    default.map(str::to_string).unwrap_or_else(|| {
        path.file_stem()
            .map_or_else(|| display(path), |s| s.to_string_lossy().into_owned())
    })
}
