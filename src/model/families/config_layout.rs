//! [`layout_from_config`]: a model's [`ModuleLayout`] and per-layer [`AttentionKind`]s from its
//! `config.json` alone, for models whose weights are never loaded (routing imported from a
//! serving engine): LoRA parameter accounting and PEFT export need nothing more.
//!
//! Each family's loader builds its layout through the same functions, so the two agree.
//! Qwen3.5-MoE is the one family whose layout can depend on the checkpoint: its loader names
//! modules under `model.language_model` or `model` by the tensors it finds, while the config
//! alone says `model.language_model` for a multimodal (nested `text_config`) config and `model`
//! for a text-only (flat) one, which is how transformers saves them.

use super::standard::StandardSpec;
use super::{
    deepseek_v2, gemma4, glm4_moe, gpt_oss, minimax_m2, mixtral, olmoe, phimoe, qwen2_moe,
    qwen3_5_moe, qwen3_moe,
};
use crate::model::error::Result;
use crate::model::info::{AttentionKind, Family, ModuleLayout};

/// The module layout and per-layer token mixing of a model from its config.json text alone.
///
/// `family` is the one [`detect_family`](crate::model::loader::detect_family) finds in the same
/// config. The config is checked as the family's loader checks it, so a config the loader
/// refuses is refused here too.
pub fn layout_from_config(
    family: Family,
    json: &str,
) -> Result<(ModuleLayout, Vec<AttentionKind>)> {
    let standard = |spec: StandardSpec| Ok((spec.layout(), spec.attention_kinds()));
    match family {
        Family::Olmoe => standard(olmoe::spec(json)?),
        Family::Qwen2Moe => standard(qwen2_moe::spec(json)?),
        Family::Qwen3Moe => standard(qwen3_moe::spec(json)?),
        Family::Mixtral => standard(mixtral::spec(json)?),
        Family::Glm4Moe => standard(glm4_moe::spec(json)?),
        Family::MiniMaxM2 => standard(minimax_m2::spec(json)?),
        Family::PhiMoe => standard(phimoe::spec(json)?),
        Family::DeepseekV2 | Family::DeepseekV3 => deepseek_v2::config_layout(json, family),
        Family::Gemma4 => gemma4::config_layout(json),
        Family::GptOss => gpt_oss::config_layout(json),
        Family::Qwen3_5Moe => qwen3_5_moe::config_layout(json),
    }
}
