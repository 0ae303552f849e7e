//! The LoRA variables a run trains: one record per adapted module, and the dropout round that
//! means "none" (PEFT's initialisation of `A` and the per-module seed are
//! [`crate::model::adapter::init`]'s).

use candle_core::Var;

/// An adapted module: its LoRA pair and whether it is still being trained.
pub(super) struct AdaptedModule {
    pub(super) name: String,
    pub(super) a: Var,
    pub(super) b: Var,
    pub(super) trainable: bool,
}

/// Dropout round meaning "no dropout" (evaluation passes).
pub(super) const NO_DROPOUT: u64 = u64::MAX;
