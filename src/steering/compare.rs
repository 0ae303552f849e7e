//! Steered versus unsteered: generate after a prompt without and then with a steering spec,
//! then compare the routing of the same tokens (the prompt plus the unsteered continuation)
//! under both. The CLI's `steer` and the worker's generate job both run [`steer_and_compare`].

use std::sync::atomic::{AtomicBool, Ordering};

use tokenizers::Tokenizer;

use super::diff::{RoutingDiff, sequence_routing};
use super::error::{Result, SteerError};
use super::spec::ActiveSteering;
use crate::inference::generate::{GenerateOptions, decode, generate};
use crate::model::MoeModel;

/// Which of the two generations of a comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    Unsteered,
    Steered,
}

impl Side {
    /// `"unsteered"` or `"steered"`.
    pub fn name(self) -> &'static str {
        match self {
            Side::Unsteered => "unsteered",
            Side::Steered => "steered",
        }
    }
}

/// The outcome of a steered-versus-unsteered comparison.
#[derive(Debug, Clone, PartialEq)]
pub struct SteerResult {
    pub prompt_tokens: usize,
    /// Generated ids (the prompt excluded).
    pub unsteered_ids: Vec<u32>,
    pub steered_ids: Vec<u32>,
    /// The generated ids decoded as a whole.
    pub unsteered_text: String,
    pub steered_text: String,
    /// Routing of the prompt + unsteered continuation, unsteered vs steered.
    pub routing: RoutingDiff,
    /// Steered cells (biased or forced) after resolving the spec, `(layer, expert)`.
    pub steered_cells: Vec<(usize, usize)>,
}

impl SteerResult {
    /// Index of the first generated token where the two continuations differ.
    pub fn first_difference(&self) -> Option<usize> {
        if self.unsteered_ids == self.steered_ids {
            return None;
        }
        Some(
            self.unsteered_ids
                .iter()
                .zip(&self.steered_ids)
                .take_while(|(a, b)| a == b)
                .count(),
        )
    }

    /// Tokens whose routing was compared: the prompt plus the unsteered continuation.
    pub fn compared_tokens(&self) -> usize {
        self.prompt_tokens + self.unsteered_ids.len()
    }
}

/// Where a comparison is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareStep {
    /// `side` chose its next token.
    Token { side: Side, id: u32 },
    /// Both generations are done; the two routing passes start.
    ComparingRouting,
}

/// Why a comparison ended without a result.
#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    #[error("cancelled")]
    Cancelled,
    #[error("{} generation failed: {source}", .side.name())]
    Generation { side: Side, source: SteerError },
    #[error("comparing the routing failed: {0}")]
    Routing(SteerError),
}

/// Generates after `prompt` without and then with `steering` (the same options and seed for
/// both), then routes the prompt plus the unsteered continuation once unsteered and once
/// steered and compares the two. `on_step` sees every
/// generated token as it is chosen and the start of the routing comparison; `cancel` is
/// checked before every generation step and before the routing comparison.
pub fn steer_and_compare(
    model: &mut dyn MoeModel,
    tokenizer: &Tokenizer,
    prompt: &[u32],
    steering: &ActiveSteering,
    opts: &GenerateOptions,
    cancel: &AtomicBool,
    on_step: &mut dyn FnMut(CompareStep),
) -> std::result::Result<SteerResult, CompareError> {
    let mut outputs = Vec::with_capacity(2);
    for side in [Side::Unsteered, Side::Steered] {
        let active = (side == Side::Steered).then_some(steering);
        let out = generate(model, prompt, active, opts, None, cancel, &mut |id| {
            on_step(CompareStep::Token { side, id })
        });
        match out {
            Ok(o) => outputs.push(o),
            Err(SteerError::Cancelled) => return Err(CompareError::Cancelled),
            Err(source) => return Err(CompareError::Generation { side, source }),
        }
    }
    let steered_ids = outputs.pop().unwrap_or_default();
    let unsteered_ids = outputs.pop().unwrap_or_default();
    if cancel.load(Ordering::Relaxed) {
        return Err(CompareError::Cancelled);
    }
    on_step(CompareStep::ComparingRouting);
    // The routing change on the same tokens: the prompt plus the unsteered continuation.
    let mut seq = prompt.to_vec();
    seq.extend_from_slice(&unsteered_ids);
    let routing = (|| -> Result<RoutingDiff> {
        let before = sequence_routing(model, &seq, prompt.len(), None)?;
        let after = sequence_routing(model, &seq, prompt.len(), Some(steering))?;
        RoutingDiff::new(&before, &after, &steering.steered_experts())
    })()
    .map_err(CompareError::Routing)?;
    let steered_cells = steering
        .steered_experts()
        .into_iter()
        .flat_map(|(l, es)| es.into_iter().map(move |e| (l, e)))
        .collect();
    Ok(SteerResult {
        prompt_tokens: prompt.len(),
        unsteered_text: decode(tokenizer, &unsteered_ids),
        steered_text: decode(tokenizer, &steered_ids),
        unsteered_ids,
        steered_ids,
        routing,
        steered_cells,
    })
}
