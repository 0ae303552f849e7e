//! Per-sequence routing traces (`moescope-traces` v1), JSON Lines.
//!
//! The first line is a [`TraceHeader`] (`{"format": "moescope-traces", "version": 1, "model":
//! {...}}`); every further line is one [`SequenceTrace`]: its subject, token ids and decoded
//! token strings, and for every MoE layer (in `model.moe_layers` order) the chosen experts and
//! their weights per token.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::FormatError;
use super::routing_profile::ProfileModel;

pub const TRACES_FORMAT: &str = "moescope-traces";
pub const TRACES_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceHeader {
    pub format: String,
    pub version: u32,
    pub model: ProfileModel,
}

/// One MoE layer's choices for every token of a sequence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceLayer {
    /// Decoder layer index.
    pub layer: usize,
    /// `[token][k]` chosen experts.
    pub indices: Vec<Vec<u32>>,
    /// `[token][k]` routing weights.
    pub weights: Vec<Vec<f32>>,
}

/// One profiled sequence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SequenceTrace {
    pub subject: String,
    pub token_ids: Vec<u32>,
    /// Each token decoded on its own (for top-token tables).
    pub tokens: Vec<String>,
    pub layers: Vec<TraceLayer>,
}

/// Streams traces to a temporary file and renames it into place on [`TraceWriter::finish`];
/// dropping the writer without finishing leaves nothing behind.
pub struct TraceWriter {
    out: std::io::BufWriter<tempfile::NamedTempFile>,
    path: std::path::PathBuf,
}

impl TraceWriter {
    pub fn create(path: &Path, model: &ProfileModel) -> Result<Self, FormatError> {
        let io = |source| FormatError::Io {
            path: path.display().to_string(),
            source,
        };
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let tmp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
        let mut w = Self {
            out: std::io::BufWriter::new(tmp),
            path: path.to_path_buf(),
        };
        let header = TraceHeader {
            format: TRACES_FORMAT.into(),
            version: TRACES_VERSION,
            model: model.clone(),
        };
        w.write_line(&header)?;
        Ok(w)
    }

    fn write_line<T: Serialize>(&mut self, value: &T) -> Result<(), FormatError> {
        let io = |source| FormatError::Io {
            path: self.path.display().to_string(),
            source,
        };
        serde_json::to_writer(&mut self.out, value)
            .map_err(std::io::Error::from)
            .map_err(io)?;
        self.out.write_all(b"\n").map_err(io)
    }

    pub fn write(&mut self, trace: &SequenceTrace) -> Result<(), FormatError> {
        self.write_line(trace)
    }

    pub fn finish(self) -> Result<(), FormatError> {
        let path = self.path.clone();
        let io = |source| FormatError::Io {
            path: path.display().to_string(),
            source,
        };
        let tmp = self.out.into_inner().map_err(|e| io(e.into_error()))?;
        tmp.as_file().sync_all().map_err(io)?;
        tmp.persist(&path).map_err(|e| io(e.error))?;
        Ok(())
    }
}

/// Reads a whole traces file, checking the header and every line's shape.
pub fn read_traces(path: &Path) -> Result<(TraceHeader, Vec<SequenceTrace>), FormatError> {
    let p = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|source| FormatError::Io {
        path: p.clone(),
        source,
    })?;
    let mut lines = BufReader::new(file).lines();
    let bad = |msg: String| FormatError::Invalid {
        path: p.clone(),
        msg,
    };
    let first = lines
        .next()
        .ok_or_else(|| bad("empty file, expected a moescope-traces header".into()))?
        .map_err(|source| FormatError::Io {
            path: p.clone(),
            source,
        })?;
    let header: TraceHeader = serde_json::from_str(&first).map_err(|source| FormatError::Json {
        path: p.clone(),
        what: "moescope traces header",
        source,
    })?;
    if header.format != TRACES_FORMAT || header.version != TRACES_VERSION {
        return Err(bad(format!(
            "header says {} v{}, expected {TRACES_FORMAT} v{TRACES_VERSION}",
            header.format, header.version
        )));
    }
    let mut traces = Vec::new();
    for (i, line) in lines.enumerate() {
        let line = line.map_err(|source| FormatError::Io {
            path: p.clone(),
            source,
        })?;
        if line.trim().is_empty() {
            continue;
        }
        let t: SequenceTrace = serde_json::from_str(&line)
            .map_err(|e| bad(format!("line {}: not a sequence trace: {e}", i + 2)))?;
        if t.layers.len() != header.model.moe_layers.len()
            || t.layers.iter().any(|l| {
                l.indices.len() != t.token_ids.len()
                    || l.weights.len() != t.token_ids.len()
                    || l.indices
                        .iter()
                        .any(|r| r.iter().any(|&e| e as usize >= header.model.num_experts))
            })
        {
            return Err(bad(format!(
                "line {}: layers or token counts do not match the header's model",
                i + 2
            )));
        }
        traces.push(t);
    }
    Ok((header, traces))
}
