//! Building blocks shared by the MoE families: linear layers, RMSNorm, rotary embeddings,
//! grouped-query attention with a KV cache, SwiGLU experts, the sparse expert dispatch, and the
//! pre-norm decoder stack that most families are made of.
//!
//! Each block's forward decides in one place which path it takes — the direct f32 CPU kernel
//! ([`crate::model::kernels`]), a frozen-part training op ([`crate::model::autograd`]) or candle
//! tensor ops — and runs it.

pub mod attention;
pub mod decoder;
pub mod gated_attention;
pub mod gated_delta_net;
pub mod linear;
pub mod mlp;
pub mod moe;
pub mod norm;
pub(crate) mod path;
pub mod rotary;

pub use attention::{
    Attention, AttentionConfig, AttentionLayer, QkNorm, append_kv, attention_mask,
    scaled_attention, scaled_attention_with_sinks, softmax_last_dim, window_mask,
};
pub use decoder::{DecoderLayer, DecoderStack, FeedForward};
pub use gated_attention::{GatedAttention, GatedAttentionConfig};
pub use gated_delta_net::{GatedDeltaNet, GatedDeltaNetConfig};
pub use linear::Linear;
pub use mlp::{GluActivation, SharedExpert, SwiGlu};
pub use moe::{MoeBlock, dispatch_experts};
pub use norm::{LayerNorm, Norm, NormKind, RmsNorm};
pub use rotary::Rotary;
