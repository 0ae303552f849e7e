//! One file per supported MoE family. Each parses its HF `config.json` (field names exactly as
//! HF's), builds its layers from checkpoint key names, and routes through
//! [`crate::model::router::route`]. [`layout_from_config`] gives a model's module layout from
//! its config alone, through the same code the loaders use.

pub mod build;
pub mod common;
pub mod config_layout;
pub mod deepseek_v2;
pub mod gemma4;
pub mod glm4_moe;
pub mod gpt_oss;
pub mod minimax_m2;
pub mod mixtral;
pub mod olmoe;
pub mod phimoe;
pub mod qwen2_moe;
pub mod qwen3_5_moe;
pub mod qwen3_moe;
pub mod standard;

pub use build::build;
pub use common::{
    BuildCtx, HeadSpec, InfoParts, load_embed_norm_head, parse_config, rotary_dtype,
    standard_attention_projections, swiglu_projections,
};
pub use config_layout::layout_from_config;
