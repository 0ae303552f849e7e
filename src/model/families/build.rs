//! [`build`]: the one entry point that builds any supported family.

use crate::model::weights::WeightSource;

use super::common::BuildCtx;
use super::{
    deepseek_v2, gemma4, glm4_moe, gpt_oss, minimax_m2, mixtral, olmoe, phimoe, qwen2_moe,
    qwen3_5_moe, qwen3_moe,
};
use crate::model::error::Result;
use crate::model::info::Family;
use crate::model::moe_model::MoeModel;

/// Builds the model of `family` from its `config.json` text and weights.
pub fn build(
    family: Family,
    config_json: &str,
    vb: WeightSource,
    ctx: &BuildCtx,
) -> Result<Box<dyn MoeModel>> {
    match family {
        Family::Olmoe => olmoe::load(config_json, vb, ctx),
        Family::Qwen2Moe => qwen2_moe::load(config_json, vb, ctx),
        Family::Qwen3Moe => qwen3_moe::load(config_json, vb, ctx),
        Family::Mixtral => mixtral::load(config_json, vb, ctx),
        Family::DeepseekV2 => deepseek_v2::load(config_json, vb, ctx),
        Family::DeepseekV3 => deepseek_v2::load_v3(config_json, vb, ctx),
        Family::Glm4Moe => glm4_moe::load(config_json, vb, ctx),
        Family::MiniMaxM2 => minimax_m2::load(config_json, vb, ctx),
        Family::Gemma4 => gemma4::load(config_json, vb, ctx),
        Family::PhiMoe => phimoe::load(config_json, vb, ctx),
        Family::GptOss => gpt_oss::load(config_json, vb, ctx),
        Family::Qwen3_5Moe => qwen3_5_moe::load(config_json, vb, ctx),
    }
}
