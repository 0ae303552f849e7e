//! A forward pass's input ([`Batch`]: right-padded token ids) and how far it goes ([`Output`]).

use candle_core::{Device, Tensor};

use super::error::{ModelError, Result};

/// Right-padded token ids of a batch of sequences.
#[derive(Debug)]
pub struct Batch {
    /// `[batch, max_len]` u32, right-padded.
    pub input_ids: Tensor,
    /// Real length of each sequence.
    pub seq_lens: Vec<usize>,
    /// Position of the first token (non-zero while decoding with a KV cache).
    pub seqlen_offset: usize,
}

impl Batch {
    /// Builds a right-padded batch (pad id 0; padded positions are masked and never routed).
    pub fn from_sequences(seqs: &[Vec<u32>], device: &Device) -> Result<Self> {
        let max_len = seqs.iter().map(Vec::len).max().unwrap_or(0);
        if max_len == 0 {
            return Err(ModelError::msg("empty batch: no tokens"));
        }
        let mut flat = Vec::with_capacity(seqs.len() * max_len);
        for s in seqs {
            flat.extend_from_slice(s);
            flat.extend(std::iter::repeat_n(0u32, max_len - s.len()));
        }
        Ok(Self {
            input_ids: Tensor::from_vec(flat, (seqs.len(), max_len), device)?,
            seq_lens: seqs.iter().map(Vec::len).collect(),
            seqlen_offset: 0,
        })
    }

    pub fn is_padded(&self) -> bool {
        let max = self.seq_lens.iter().copied().max().unwrap_or(0);
        self.seq_lens.iter().any(|&l| l != max)
    }
}

/// How far a forward pass goes and what it returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Stop after the last MoE layer; return nothing (routing is reported to the hook).
    RoutingOnly,
    /// Logits `[batch, vocab]` at each sequence's last real token.
    LastLogits,
    /// Logits `[batch, seq, vocab]` at every position.
    AllLogits,
}
