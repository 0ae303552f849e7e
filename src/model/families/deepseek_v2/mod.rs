//! DeepSeek-V2 and V2-Lite (`DeepseekV2ForCausalLM`, e.g. deepseek-ai/DeepSeek-V2-Lite), as
//! transformers 4.57's native `models/deepseek_v2/modeling_deepseek_v2.py` computes them, and
//! DeepSeek-V3 / R1 and Kimi-K2 (`DeepseekV3ForCausalLM`; Kimi's config says `model_type:
//! kimi_k2`), as transformers 5's `modeling_deepseek_v3.py` does: the same decoder with
//! V3's router (below).
//!
//! - Pre-norm decoder. Layers `0..first_k_dense_replace` have a dense SwiGLU MLP
//!   (`intermediate_size`), every later layer an MoE block (transformers ignores the remote
//!   code's `moe_layer_freq`; a value other than 1 is refused).
//! - Multi-head latent attention (MLA): `q = q_proj(x)` or
//!   `q_b_proj(q_a_layernorm(q_a_proj(x)))`, split per head into a `qk_nope_head_dim` part and a
//!   `qk_rope_head_dim` part; `kv_a_proj_with_mqa(x)` gives the compressed kv (`kv_lora_rank`)
//!   and one rope key shared by all heads; `kv_b_proj(kv_a_layernorm(c))` gives each head's
//!   no-rope key and value (`v_head_dim`). The two low-rank norms use eps 1e-6 whatever
//!   `rms_norm_eps` says (transformers constructs them with the default).
//! - RoPE is the complex (interleaved) form: channel pairs `(2i, 2i+1)` are rotated, on the rope
//!   parts of q and k only. With YaRN (`rope_scaling.type == "yarn"`) the inverse frequencies are
//!   blended between interpolation and extrapolation, and cos/sin are multiplied by the
//!   attention factor `get_mscale(factor, mscale) / get_mscale(factor, mscale_all_dim)` (or
//!   `get_mscale(factor)` when either is missing). The softmax scale is `qk_head_dim^-0.5` with no
//!   further mscale² factor: that is what transformers 4.57 does (the original remote code also
//!   multiplied it by `get_mscale(factor, mscale_all_dim)²`; [`Options::yarn_mscale_softmax`]
//!   selects that behaviour, see [`load_with`]).
//! - Router: `mlp.gate.weight` (no bias), softmax over all experts in fp32, then greedy top-k or
//!   group-limited top-k (groups scored by their max score, `topk_group` groups kept, others
//!   zeroed), weights = chosen scores × `routed_scaling_factor`. transformers 4.57 never
//!   renormalises (`norm_topk_prob` is read but unused), so neither do we.
//! - V3 router: `mlp.gate.weight` in fp32, sigmoid scores (`scoring_func`), plus
//!   `mlp.gate.e_score_correction_bias` for choosing only; the `topk_group` groups (of
//!   `n_group`) with the largest sum of their two best biased scores are kept, the others ruled
//!   out; top-k of the biased scores; weights = the unbiased scores, renormalised if
//!   `norm_topk_prob`, × `routed_scaling_factor`. `topk_method` is ignored (always `noaux_tc`).
//!   RoPE is interleaved unless `rope_interleave` is false; the YaRN softmax-scale correction
//!   always applies. Kimi-K2 is the single-group case (`n_group` 1).
//! - Multi-token-prediction layers in hub checkpoints (`model.layers.N`, `N ≥
//!   num_hidden_layers`) are not part of the causal LM and are not read.
//! - Shared experts: one ungated SwiGLU `mlp.shared_experts` of width
//!   `moe_intermediate_size × n_shared_experts`, added to the routed output.

pub mod config;
pub mod load;
pub mod mla;

pub use config::{Config, rope_parameters};
pub use load::{Options, config_layout, load, load_v3, load_with};
pub use mla::MlaAttention;

#[cfg(test)]
mod tests;
