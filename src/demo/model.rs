//! The demo model for training: a differentiable forward pass over exactly the weights the
//! engine's OLMoE builder reads.
//!
//! The weights live in one [`VarMap`] under the checkpoint names (`model.layers.3.mlp.gate.weight`
//! …). [`build_vars`] creates them by building the engine model through
//! `families::build(Family::Olmoe, config.json, VarBuilder::from_varmap(..))` — the same path the
//! loader takes — and [`init_weights`] then gives them their seeded initial values. [`TrainModel`]
//! holds the same `Var`s and computes the same function as the engine, but with ops that have
//! gradients in Candle (the engine uses the fused `softmax_last_dim` and `rope` kernels, which
//! have no backward pass): `rope_slow` and the fused ops of [`crate::model::autograd`] (RMSNorm,
//! causal softmax, cross-entropy). Routing goes through the shared router
//! ([`crate::model::router`]): the experts are chosen by [`choose_experts`] from the router's
//! scores of the detached logits, as [`crate::model::router::route`] chooses them, so the experts
//! chosen are the engine's; their weights are [`expert_weights`] of the differentiable scores. A
//! test checks that both give the same logits.
//!
//! The forward also returns the auxiliary router losses (per MoE layer, averaged over layers):
//! - load balancing (Switch / OLMoE): `N · Σ_e f_e · P_e`, `f_e` the fraction of tokens whose
//!   top-k contains `e` (a constant), `P_e` the mean router probability of `e` (differentiable);
//!   it is `k` when routing is perfectly balanced;
//! - router z-loss (ST-MoE): `mean_t (logsumexp_e z_te)²`.

use crate::model::weights::WeightSource;
use candle_core::{D, DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::config::DemoConfig;
use super::{DemoError, Result};
use crate::model::autograd::{causal_softmax, rms_norm, softmax_detached_max};
use crate::model::families::{self, BuildCtx};
use crate::model::layers::{Linear, RmsNorm, SwiGlu, dispatch_experts};
use crate::model::router::{RouterConfig, choose_experts, expert_weights, routing_scores};
use crate::model::{Family, MoeModel};

/// Creates every weight of the demo model in `varmap` (zero-filled; see [`init_weights`]) by
/// building the engine's model from the config, and returns that engine model (it shares the
/// `Var`s' storage, so it sees every update).
pub fn build_vars(cfg: &DemoConfig, varmap: &VarMap, device: &Device) -> Result<Box<dyn MoeModel>> {
    cfg.validate()?;
    let json = cfg.to_hf_json(0, 1, "float32").to_string();
    let vb = VarBuilder::from_varmap(varmap, DType::F32, device);
    let ctx = BuildCtx {
        id: "demo (in memory)".into(),
        dtype: DType::F32,
        weight_dtype: DType::F32,
        mapped: false,
        device: device.clone(),
        routing_only: false,
    };
    let mut model = families::build(Family::Olmoe, &json, vb.into(), &ctx)?;
    let total: usize = varmap.all_vars().iter().map(|v| v.elem_count()).sum();
    model.set_param_counts(total as u64);
    Ok(model)
}

/// Whether a weight is a norm's scale (initialised to one, never decayed).
pub fn is_norm(name: &str) -> bool {
    name.ends_with("norm.weight") || name.ends_with("layernorm.weight")
}

/// Initial standard deviation of a (non-norm) weight: 0.02, divided by `sqrt(2·layers)` for the
/// projections that write into the residual stream (`o_proj`, `down_proj`; GPT-2's scheme).
pub fn init_std(name: &str, cfg: &DemoConfig) -> f64 {
    let base = 0.02;
    if name.contains("o_proj") || name.contains("down_proj") {
        base / (2.0 * cfg.num_hidden_layers as f64).sqrt()
    } else {
        base
    }
}

/// Gives every `Var` of `varmap` its initial value from `seed`: norms one, everything else
/// normal(0, [`init_std`]). Vars are visited in name order, so the result depends on the seed
/// only.
pub fn init_weights(varmap: &VarMap, cfg: &DemoConfig, seed: u64) -> Result<()> {
    let data = varmap
        .data()
        .lock()
        .map_err(|_| DemoError::msg("weight map lock poisoned"))?;
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    let mut rng = StdRng::seed_from_u64(seed);
    for name in names {
        let var = &data[name];
        let shape = var.shape().clone();
        let n = shape.elem_count();
        let values: Vec<f32> = if is_norm(name) {
            vec![1.0; n]
        } else {
            let std = init_std(name, cfg) as f32;
            (0..n).map(|_| normal(&mut rng) * std).collect()
        };
        var.set(&Tensor::from_vec(values, shape, var.device())?)?;
    }
    Ok(())
}

/// A standard normal sample (Box–Muller).
fn normal(rng: &mut StdRng) -> f32 {
    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.random::<f64>();
    ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
}

/// One decoder layer's weights.
struct TrainLayer {
    input_norm: RmsNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    q_norm: RmsNorm,
    k_norm: RmsNorm,
    post_norm: RmsNorm,
    router: Linear,
    experts: Vec<SwiGlu>,
}

/// What a training forward pass returns.
pub struct ForwardOut {
    /// `[b·t, vocab]` f32.
    pub logits: Tensor,
    /// Load-balancing loss, mean over MoE layers (scalar).
    pub balance_loss: Tensor,
    /// Router z-loss, mean over MoE layers (scalar).
    pub z_loss: Tensor,
    /// `[layer][expert]` tokens routed to each expert in this batch.
    pub counts: Vec<Vec<u64>>,
}

/// The demo model's differentiable forward pass (see the module docs).
pub struct TrainModel {
    cfg: DemoConfig,
    embed: Tensor,
    layers: Vec<TrainLayer>,
    norm: RmsNorm,
    lm_head: Linear,
    /// `[max_pos, head_dim/2]`, as the engine's `Rotary::new` computes them.
    cos: Tensor,
    sin: Tensor,
    /// OLMoE's router: softmax over all experts, greedy top-k, no renormalisation.
    router_cfg: RouterConfig,
}

impl TrainModel {
    /// Takes the weights from `varmap` (which [`build_vars`] filled); fails if a name is missing.
    pub fn new(varmap: &VarMap, cfg: &DemoConfig, device: &Device) -> Result<Self> {
        let before = varmap.all_vars().len();
        let vb: WeightSource = VarBuilder::from_varmap(varmap, DType::F32, device).into();
        let (h, eps) = (cfg.hidden_size, cfg.rms_norm_eps);
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for li in 0..cfg.num_hidden_layers {
            let l = vb.pp(format!("model.layers.{li}"));
            let a = l.pp("self_attn");
            let m = l.pp("mlp");
            layers.push(TrainLayer {
                input_norm: RmsNorm::load(&l.pp("input_layernorm"), h, eps)?,
                q: Linear::load(&a.pp("q_proj"), h, h, false)?,
                k: Linear::load(&a.pp("k_proj"), h, h, false)?,
                v: Linear::load(&a.pp("v_proj"), h, h, false)?,
                o: Linear::load(&a.pp("o_proj"), h, h, false)?,
                q_norm: RmsNorm::load(&a.pp("q_norm"), h, eps)?,
                k_norm: RmsNorm::load(&a.pp("k_norm"), h, eps)?,
                post_norm: RmsNorm::load(&l.pp("post_attention_layernorm"), h, eps)?,
                router: Linear::load(&m.pp("gate"), h, cfg.num_experts, false)?,
                experts: (0..cfg.num_experts)
                    .map(|e| SwiGlu::load(&m.pp(format!("experts.{e}")), h, cfg.intermediate_size))
                    .collect::<crate::model::Result<Vec<_>>>()?,
            });
        }
        let embed = vb
            .pp("model.embed_tokens")
            .get((cfg.vocab_size, h), "weight")?;
        let norm = RmsNorm::load(&vb.pp("model.norm"), h, eps)?;
        let lm_head = if cfg.tie_word_embeddings {
            Linear::new(embed.clone(), None)
        } else {
            Linear::load(&vb.pp("lm_head"), h, cfg.vocab_size, false)?
        };
        if varmap.all_vars().len() != before {
            return Err(DemoError::msg(
                "the training model asked for weights the engine's OLMoE builder does not have",
            ));
        }
        let (cos, sin) = rotary_tables(cfg, device)?;
        Ok(Self {
            cfg: cfg.clone(),
            embed,
            layers,
            norm,
            lm_head,
            cos,
            sin,
            router_cfg: RouterConfig::softmax_topk(cfg.num_experts, cfg.num_experts_per_tok, false),
        })
    }

    /// Runs `ids` `[b, t]` (u32, no padding) through the model.
    pub fn forward(&self, ids: &Tensor) -> Result<ForwardOut> {
        let (b, t) = ids.dims2()?;
        if t > self.cfg.max_position_embeddings {
            return Err(DemoError::msg(format!(
                "training sequence of {t} tokens is longer than the context of {}",
                self.cfg.max_position_embeddings
            )));
        }
        let h = self.cfg.hidden_size;
        let (nh, hd) = (self.cfg.num_attention_heads, self.cfg.head_dim());
        let mut x = self
            .embed
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((b, t, h))?;
        let cos = self.cos.narrow(0, 0, t)?;
        let sin = self.sin.narrow(0, 0, t)?;
        let scale = 1.0 / (hd as f64).sqrt();
        let mut balance = Vec::with_capacity(self.layers.len());
        let mut zl = Vec::with_capacity(self.layers.len());
        let mut counts = Vec::with_capacity(self.layers.len());
        for layer in &self.layers {
            // Attention (OLMoE: q/k RMSNorm over the whole projection, then RoPE).
            let hs = norm(&layer.input_norm, &x)?;
            let q = norm(&layer.q_norm, &layer.q.forward(&hs)?)?;
            let k = norm(&layer.k_norm, &layer.k.forward(&hs)?)?;
            let v = layer.v.forward(&hs)?;
            let heads = |z: Tensor| -> Result<Tensor> {
                Ok(z.reshape((b, t, nh, hd))?.transpose(1, 2)?.contiguous()?)
            };
            let q = candle_nn::rotary_emb::rope_slow(&heads(q)?, &cos, &sin)?;
            let k = candle_nn::rotary_emb::rope_slow(&heads(k)?, &cos, &sin)?;
            let v = heads(v)?;
            let att = causal_softmax(&(q.matmul(&k.t()?.contiguous()?)? * scale)?)?;
            let y = att.matmul(&v)?.transpose(1, 2)?.reshape((b, t, h))?;
            x = (x + layer.o.forward(&y)?)?;
            // MoE.
            let hs = norm(&layer.post_norm, &x)?.reshape((b * t, h))?;
            let (y, lb, z, c) = self.moe(layer, &hs)?;
            balance.push(lb);
            zl.push(z);
            counts.push(c);
            x = (x + y.reshape((b, t, h))?)?;
        }
        let x = norm(&self.norm, &x)?.reshape((b * t, h))?;
        let logits = self.lm_head.forward(&x)?;
        let n = self.layers.len() as f64;
        Ok(ForwardOut {
            logits,
            balance_loss: (Tensor::stack(&balance, 0)?.sum_all()? / n)?,
            z_loss: (Tensor::stack(&zl, 0)?.sum_all()? / n)?,
            counts,
        })
    }

    /// One MoE block on `x` `[n, h]`: output, balance loss, z-loss, per-expert counts.
    fn moe(&self, layer: &TrainLayer, x: &Tensor) -> Result<(Tensor, Tensor, Tensor, Vec<u64>)> {
        let (n, _) = x.dims2()?;
        let (ne, k) = (self.cfg.num_experts, self.cfg.num_experts_per_tok);
        let logits = layer.router.forward(x)?;
        let scores = softmax_detached_max(&logits)?;
        // Choose exactly as the engine does: from the router's scores of the logits (which,
        // detached, are the fused softmax's), on the host.
        let router = &self.router_cfg;
        let host: Vec<f32> = routing_scores(&logits.detach(), router)?
            .flatten_all()?
            .to_vec1()?;
        let idx = choose_experts(&host, router);
        let mut counts = vec![0u64; ne];
        idx.iter().for_each(|&e| counts[e as usize] += 1);
        let idx_t = Tensor::from_slice(&idx, (n, k), x.device())?;
        let weights = expert_weights(&scores, &idx_t, router)?;
        let y = dispatch_experts(x, &idx, &weights, &layer.experts)?;
        // Load balancing: N · Σ f_e · P_e.
        let f: Vec<f32> = counts.iter().map(|&c| c as f32 / n as f32).collect();
        let f = Tensor::from_vec(f, ne, x.device())?;
        let p = scores.mean(0)?;
        let lb = ((f * p)?.sum_all()? * ne as f64)?;
        // z-loss: mean (logsumexp z)².
        let max = logits.max_keepdim(D::Minus1)?.detach();
        let lse = (logits
            .broadcast_sub(&max)?
            .exp()?
            .sum_keepdim(D::Minus1)?
            .log()?
            + max)?;
        let z = lse.sqr()?.mean_all()?;
        Ok((y, lb, z, counts))
    }
}

/// The engine's RMSNorm, computed by the fused kernel.
fn norm(n: &RmsNorm, x: &Tensor) -> Result<Tensor> {
    Ok(rms_norm(x, &n.weight, n.eps)?)
}

/// Rotary tables computed exactly as `crate::model::layers::Rotary::new` does.
fn rotary_tables(cfg: &DemoConfig, device: &Device) -> Result<(Tensor, Tensor)> {
    let dim = cfg.head_dim();
    let max_pos = cfg.max_position_embeddings;
    let inv_freq: Vec<f32> = (0..dim / 2)
        .map(|i| 1.0 / cfg.rope_theta.powf(2.0 * i as f64 / dim as f64) as f32)
        .collect();
    let inv = Tensor::from_slice(&inv_freq, (1, dim / 2), device)?;
    let pos = Tensor::arange(0u32, max_pos as u32, device)?
        .to_dtype(DType::F32)?
        .reshape((max_pos, 1))?;
    let freqs = pos.broadcast_mul(&inv)?;
    Ok((freqs.cos()?, freqs.sin()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::router::{RecordingHook, RouteCtx};
    use crate::model::{Batch, Output};

    pub(crate) fn tiny() -> DemoConfig {
        DemoConfig {
            vocab_size: 300,
            hidden_size: 32,
            intermediate_size: 16,
            num_hidden_layers: 2,
            num_attention_heads: 2,
            num_experts: 4,
            num_experts_per_tok: 2,
            max_position_embeddings: 32,
            rope_theta: 10000.0,
            rms_norm_eps: 1e-5,
            tie_word_embeddings: true,
        }
    }

    #[test]
    fn training_forward_matches_the_engine() {
        let cfg = tiny();
        let dev = Device::Cpu;
        let vm = VarMap::new();
        let mut engine = build_vars(&cfg, &vm, &dev).unwrap();
        init_weights(&vm, &cfg, 3).unwrap();
        assert_eq!(
            vm.all_vars()
                .iter()
                .map(|v| v.elem_count() as u64)
                .sum::<u64>(),
            cfg.num_params()
        );
        let train = TrainModel::new(&vm, &cfg, &dev).unwrap();
        let ids: Vec<u32> = (0..24).map(|i| (i * 37 % 300) as u32).collect();
        let x = Tensor::from_vec(ids.clone(), (2, 12), &dev).unwrap();
        let out = train.forward(&x).unwrap();
        let seqs = vec![ids[..12].to_vec(), ids[12..].to_vec()];
        let batch = Batch::from_sequences(&seqs, &dev).unwrap();
        let mut hook = RecordingHook::default();
        let want = engine
            .forward(&batch, Output::AllLogits, &mut RouteCtx::new(&mut hook))
            .unwrap()
            .unwrap()
            .reshape((24, 300))
            .unwrap();
        let diff = (out.logits - want)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-4, "max logit difference {diff}");
        // Same expert counts as the engine's routing.
        for (l, rec) in hook.layers.iter().enumerate() {
            let mut c = vec![0u64; cfg.num_experts];
            rec.topk_indices.iter().for_each(|&e| c[e as usize] += 1);
            assert_eq!(c, out.counts[l]);
        }
        let lb = out.balance_loss.to_scalar::<f32>().unwrap();
        assert!(
            lb >= 1.0 && lb < 2.0 * cfg.num_experts_per_tok as f32,
            "balance loss {lb}"
        );
    }

    #[test]
    fn every_weight_gets_a_gradient() {
        let cfg = tiny();
        let dev = Device::Cpu;
        let vm = VarMap::new();
        build_vars(&cfg, &vm, &dev).unwrap();
        init_weights(&vm, &cfg, 1).unwrap();
        let m = TrainModel::new(&vm, &cfg, &dev).unwrap();
        let ids = Tensor::from_vec(
            (0..64u32).map(|i| i * 7 % 300).collect::<Vec<_>>(),
            (4, 16),
            &dev,
        )
        .unwrap();
        let tg = Tensor::from_vec(
            (0..64u32).map(|i| i * 11 % 300).collect::<Vec<_>>(),
            64,
            &dev,
        )
        .unwrap();
        let out = m.forward(&ids).unwrap();
        let loss = (crate::model::autograd::cross_entropy(&out.logits, &tg).unwrap()
            + (out.balance_loss * 0.01).unwrap()
            + (out.z_loss * 0.001).unwrap())
        .unwrap();
        let grads = loss.backward().unwrap();
        let data = vm.data().lock().unwrap();
        for (name, var) in data.iter() {
            if name.contains("experts") {
                continue; // an expert no token chose in this batch has no gradient
            }
            assert!(
                grads.get(var.as_tensor()).is_some(),
                "{name} has no gradient"
            );
        }
    }
}
