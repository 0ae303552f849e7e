//! A Gemma 4 decoder layer ([`Gemma4Layer`], `Gemma4TextDecoderLayer`) and its MoE part
//! ([`Gemma4Moe`]: `router`, `experts` and their norms).
//!
//! Shapes are annotated as `[b, t, h]` = batch, tokens, hidden.

use candle_core::Tensor;

use super::attention::Gemma4Attention;
use crate::model::error::{ModelError, Result};
use crate::model::layers::moe::dispatch_experts_with;
use crate::model::layers::{AttentionLayer, Linear, RmsNorm, SwiGlu};
use crate::model::router::{RouteCtx, RouterConfig, RoutingDecision, route};

/// The router and experts beside a layer's dense MLP.
#[derive(Debug)]
pub struct Gemma4Moe {
    pub layer: usize,
    /// `router.norm`: RMS norm without a scale, on the residual stream.
    pub router_norm: RmsNorm,
    /// `router.scale` `[hidden]`, multiplied into the normed input, then `hidden^-0.5`.
    pub router_scale: Tensor,
    pub router_input_scale: f64,
    /// `router.proj`: `[experts, hidden]`; its output is the router logits.
    pub proj: Linear,
    /// Softmax, top-k, renormalised, times `router.per_expert_scale` of each chosen expert.
    pub router_cfg: RouterConfig,
    /// One gated MLP per expert, cut out of `experts.gate_up_proj` / `experts.down_proj`; empty
    /// when loaded for routing only.
    pub experts: Vec<SwiGlu>,
    /// `pre_feedforward_layernorm_2`: the experts' input norm.
    pub pre_experts_norm: RmsNorm,
    /// `post_feedforward_layernorm_2`: the experts' output norm.
    pub post_experts_norm: RmsNorm,
    /// `post_feedforward_layernorm_1`: the dense MLP's output norm.
    pub post_mlp_norm: RmsNorm,
}

impl Gemma4Moe {
    /// The router on the residual stream `x` `[tokens, h]` of real tokens: logits
    /// `proj(norm(x) · scale · hidden^-0.5)`, routed (and reported) by [`route`].
    pub fn route_tokens(&self, x: &Tensor, ctx: &mut RouteCtx<'_>) -> Result<RoutingDecision> {
        let h = self.router_norm.forward(x)?;
        let h = (h.broadcast_mul(&self.router_scale)? * self.router_input_scale)?;
        let logits = self.proj.forward(&h)?;
        // ^ [tokens, experts]
        route(self.layer, &logits, &self.router_cfg, ctx)
    }

    /// The experts' normed output on `x` `[tokens, h]` (the residual stream of real tokens),
    /// each token through its chosen `indices` (row-major `[tokens, k]`) weighted by `weights`.
    pub fn run_experts(
        &self,
        x: &Tensor,
        indices: &[u32],
        weights: &Tensor,
        decoding: bool,
    ) -> Result<Tensor> {
        if self.experts.is_empty() {
            return Err(ModelError::msg(format!(
                "layer {}: experts were not loaded (model loaded for routing capture only)",
                self.layer
            )));
        }
        let h = self.pre_experts_norm.forward(x)?;
        let y = dispatch_experts_with(&h, indices, weights, &self.experts, decoding)?;
        self.post_experts_norm.forward(&y)
    }
}

/// `x + post_attn_norm(attn(input_norm(x)))`, then
/// `(x + post_ff_norm(post_mlp_norm(mlp(pre_ff_norm(x))) + experts)) · layer_scalar`.
#[derive(Debug)]
pub struct Gemma4Layer {
    pub input_norm: RmsNorm,
    pub attn: Gemma4Attention,
    pub post_attention_norm: RmsNorm,
    pub pre_feedforward_norm: RmsNorm,
    /// The dense MLP every token goes through.
    pub mlp: SwiGlu,
    pub moe: Option<Gemma4Moe>,
    pub post_feedforward_norm: RmsNorm,
    /// `layer_scalar` `[1]`.
    pub layer_scalar: Tensor,
    /// Sliding-window attention (else full).
    pub sliding: bool,
}

impl Gemma4Layer {
    /// The attention half on `x` `[b, t, h]`: the residual stream after it.
    pub fn attention_part(
        &mut self,
        x: &Tensor,
        mask: Option<&Tensor>,
        offset: usize,
        use_cache: bool,
    ) -> Result<Tensor> {
        let h = self.input_norm.forward(x)?;
        let h = self.attn.forward(&h, mask, offset, use_cache)?;
        Ok((x + self.post_attention_norm.forward(&h)?)?)
    }

    /// The feed-forward half on the residual stream `x` `[b, t, h]`, given the experts' normed
    /// output `experts` `[b, t, h]` (zeros at padding) on a MoE layer.
    pub fn feed_forward_part(&self, x: &Tensor, experts: Option<&Tensor>) -> Result<Tensor> {
        let mut h = self.mlp.forward(&self.pre_feedforward_norm.forward(x)?)?;
        if let (Some(moe), Some(e)) = (&self.moe, experts) {
            h = (moe.post_mlp_norm.forward(&h)? + e)?;
        }
        let x = (x + self.post_feedforward_norm.forward(&h)?)?;
        Ok(x.broadcast_mul(&self.layer_scalar)?)
    }
}

/// `tanh(logits / cap) · cap` (Gemma's final logit soft-capping).
pub fn soft_cap(logits: &Tensor, cap: f64) -> Result<Tensor> {
    let cap_t = Tensor::new(cap as f32, logits.device())?.to_dtype(logits.dtype())?;
    let capped = logits.broadcast_div(&cap_t)?.tanh()?;
    Ok(capped.broadcast_mul(&cap_t)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::router::{RecordingHook, RouterConfig};
    use candle_core::Device;

    #[test]
    fn soft_cap_bounds_logits_by_tanh() {
        let x = Tensor::new(&[0f32, 30.0, -60.0, 3.0], &Device::Cpu).unwrap();
        let y: Vec<f32> = soft_cap(&x, 30.0).unwrap().to_vec1().unwrap();
        let want = [
            0.0,
            30.0 * 1f32.tanh(),
            -30.0 * 2f32.tanh(),
            30.0 * 0.1f32.tanh(),
        ];
        for (a, b) in y.iter().zip(want) {
            assert!((a - b).abs() < 1e-5, "{y:?} vs {want:?}");
        }
        // 30·tanh(1) = 22.847..., 30·tanh(-2) = -28.920...
        assert!((y[1] - 22.847_6).abs() < 1e-3 && (y[2] + 28.920_8).abs() < 1e-3);
    }

    #[test]
    fn router_normalises_and_scales_its_input_before_the_projection() {
        // x = [3, 4]: rms = sqrt(12.5), normed = [0.8485, 1.1314]; scale [2, 0.5] and
        // hidden^-0.5 = 1/sqrt(2) give [1.2, 0.4]; proj rows [1, 0], [0, 1], [1, 1] give logits
        // [1.2, 0.4, 1.6].
        let dev = Device::Cpu;
        let mut cfg = RouterConfig::softmax_topk(3, 2, true);
        cfg.expert_scale = Some(std::sync::Arc::new(vec![1.0, 1.0, 2.0]));
        let moe = Gemma4Moe {
            layer: 0,
            router_norm: RmsNorm {
                weight: Tensor::ones(2, candle_core::DType::F32, &dev).unwrap(),
                eps: 0.0,
            },
            router_scale: Tensor::new(&[2f32, 0.5], &dev).unwrap(),
            router_input_scale: 0.5f64.sqrt(),
            proj: Linear::new(
                Tensor::new(&[[1f32, 0.0], [0.0, 1.0], [1.0, 1.0]], &dev).unwrap(),
                None,
            ),
            router_cfg: cfg,
            experts: vec![],
            pre_experts_norm: RmsNorm {
                weight: Tensor::ones(2, candle_core::DType::F32, &dev).unwrap(),
                eps: 0.0,
            },
            post_experts_norm: RmsNorm {
                weight: Tensor::ones(2, candle_core::DType::F32, &dev).unwrap(),
                eps: 0.0,
            },
            post_mlp_norm: RmsNorm {
                weight: Tensor::ones(2, candle_core::DType::F32, &dev).unwrap(),
                eps: 0.0,
            },
        };
        let x = Tensor::new(&[[3f32, 4.0]], &dev).unwrap();
        let mut hook = RecordingHook::default();
        moe.route_tokens(&x, &mut RouteCtx::new(&mut hook)).unwrap();
        let r = &hook.layers[0];
        for (a, b) in r.logits.iter().zip([1.2f32, 0.4, 1.6]) {
            assert!((a - b).abs() < 1e-5, "{:?}", r.logits);
        }
        // softmax [e^1.2, e^0.4, e^1.6] / Σ; top-2 {2, 0} renormalised: e^1.6 / (e^1.6 + e^1.2)
        // = sigmoid(0.4), times expert 2's scale 2; expert 0's sigmoid(-0.4), times 1.
        assert_eq!(r.topk_indices, vec![2, 0]);
        let s = 1.0 / (1.0 + (-0.4f32).exp());
        assert!((r.topk_weights[0] - 2.0 * s).abs() < 1e-5);
        assert!((r.topk_weights[1] - (1.0 - s)).abs() < 1e-5);
        let z: f32 = [1.2f32, 0.4, 1.6].iter().map(|v| v.exp()).sum();
        assert!((r.scores[1] - 0.4f32.exp() / z).abs() < 1e-6);
    }
}
