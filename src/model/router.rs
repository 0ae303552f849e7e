//! The one routing layer every MoE family goes through.
//!
//! A family computes its router logits `z` (shape `[tokens, experts]`) and calls [`route`]. This
//! function applies the steering adjustment (if any) to the logits, turns them into routing scores
//! over all experts (softmax or sigmoid, in fp32), chooses each token's experts (greedy or
//! group-limited top-k), derives the weights the experts' outputs are multiplied by
//! (renormalised and/or scaled as the family's config says), and reports all of it to the
//! [`RoutingHook`]. Because capture and steering live here, they behave identically in every
//! family.
//!
//! The weights are produced as a tensor gathered from the score tensor, so gradients flow into
//! the router when a model is trained; the choice of experts is made on the host. [`route`] is
//! [`routing_scores`], then [`choose_experts`], then [`expert_weights`]; the demo's training
//! model calls those steps itself, with scores whose gradient it computes more cheaply.

use candle_core::{D, DType, Tensor};

use super::error::ModelError;

/// How router logits become routing scores over all experts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScoreFn {
    /// `p = softmax(z)` over all experts (OLMoE, Qwen-MoE, Mixtral, DeepSeek-V2).
    Softmax,
    /// `p = sigmoid(z)` per expert (DeepSeek-V3 style).
    Sigmoid,
}

/// How a group of experts is scored for group-limited routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupScore {
    /// The group's largest score (DeepSeek-V2).
    Max,
    /// The sum of the group's two largest scores (DeepSeek-V3).
    Top2Sum,
}

/// How the experts of a token are chosen from its scores.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TopkMethod {
    /// Top-k over all experts.
    Greedy,
    /// Keep the `topk_group` best of `n_group` equal groups (other groups' scores zeroed), then
    /// top-k over what is left.
    GroupLimited {
        n_group: usize,
        topk_group: usize,
        group_score: GroupScore,
    },
    /// PhiMoE's sparsemixer (eval mode): experts chosen greedily by score (= by logit); the
    /// j-th chosen expert `i_j` is weighted by its softmax over the experts not chosen before it
    /// whose logit `z_e` is within the threshold of its own, `(z_{i_j} − z_e) / max(|z_e|,
    /// z_{i_j}) ≤ 2·jitter_eps`. The weights need not sum to 1.
    SparseMixer { jitter_eps: f64 },
}

/// Everything that distinguishes one family's router from another's.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    pub num_experts: usize,
    pub top_k: usize,
    pub score_fn: ScoreFn,
    pub method: TopkMethod,
    /// Divide the chosen weights by their sum.
    pub norm_topk_prob: bool,
    /// Multiply the (possibly renormalised) weights by this factor.
    pub routed_scaling_factor: f64,
    /// Added to the scores for choosing only (DeepSeek-V3 `e_score_correction_bias`).
    pub correction_bias: Option<Vec<f32>>,
    /// One factor per expert, multiplied into a chosen expert's weight after renormalisation
    /// and scaling (Gemma 4 `router.per_expert_scale`); the weights then need not sum to 1.
    /// Shared behind one pointer, which keeps the config (held by every MoE layer) small.
    pub expert_scale: Option<std::sync::Arc<Vec<f32>>>,
}

impl RouterConfig {
    /// Softmax over all experts, greedy top-k, optional renormalisation, no scaling.
    pub fn softmax_topk(num_experts: usize, top_k: usize, norm_topk_prob: bool) -> Self {
        Self {
            num_experts,
            top_k,
            score_fn: ScoreFn::Softmax,
            method: TopkMethod::Greedy,
            norm_topk_prob,
            routed_scaling_factor: 1.0,
            correction_bias: None,
            expert_scale: None,
        }
    }
}

/// A steering adjustment for one expert of one layer.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExpertForce {
    /// The expert's logit is raised above the token's largest logit: always chosen.
    On,
    /// The expert's logit is lowered below the token's smallest logit: never chosen.
    Off,
}

/// Steering for one MoE layer: a logit bias per expert plus forced experts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LayerSteering {
    /// `(expert, bias)` added to the router logit (DSMoE).
    pub bias: Vec<(usize, f32)>,
    /// `(expert, force)` (SteerMoE).
    pub force: Vec<(usize, ExpertForce)>,
}

impl LayerSteering {
    pub fn is_empty(&self) -> bool {
        self.bias.is_empty() && self.force.is_empty()
    }
}

/// Steering for a whole model, keyed by decoder layer index.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Steering {
    pub layers: std::collections::BTreeMap<usize, LayerSteering>,
}

impl Steering {
    pub fn layer(&self, layer: usize) -> Option<&LayerSteering> {
        self.layers.get(&layer).filter(|s| !s.is_empty())
    }
}

/// What one MoE layer decided for a run of tokens, reported to a [`RoutingHook`].
///
/// All slices are row-major over the tokens of the call (padding excluded, sequences in batch
/// order). `logits` are the logits the choice was made from (after steering).
#[derive(Debug)]
pub struct RouteEvent<'a> {
    /// Decoder layer index.
    pub layer: usize,
    pub num_experts: usize,
    pub top_k: usize,
    /// `[tokens * num_experts]`; empty when the hook does not want logits.
    pub logits: &'a [f32],
    /// Routing scores over all experts, `[tokens * num_experts]`.
    pub scores: &'a [f32],
    /// Chosen experts, `[tokens * top_k]`, in the order the experts use them.
    pub topk_indices: &'a [u32],
    /// Weights multiplied into the chosen experts' outputs, `[tokens * top_k]`.
    pub topk_weights: &'a [f32],
}

impl RouteEvent<'_> {
    pub fn num_tokens(&self) -> usize {
        self.topk_indices.len() / self.top_k.max(1)
    }
}

/// Receives every MoE layer's routing decision.
pub trait RoutingHook {
    fn on_route(&mut self, event: &RouteEvent<'_>);

    /// The same decision as tensors, before they leave the graph: router `logits` and `scores`
    /// (`[tokens, experts]`, f32) and chosen `indices` (`[tokens, top_k]`, u32). Training uses
    /// this for auxiliary losses (load balancing, router z-loss); the default ignores it.
    fn on_route_tensors(
        &mut self,
        _layer: usize,
        _logits: &Tensor,
        _scores: &Tensor,
        _indices: &Tensor,
    ) {
    }
}

/// A hook that ignores everything.
pub struct NoHook;

impl RoutingHook for NoHook {
    fn on_route(&mut self, _event: &RouteEvent<'_>) {}
}

/// A hook that keeps every event (used by `trace` and tests).
#[derive(Debug, Default, Clone)]
pub struct RecordingHook {
    pub layers: Vec<RecordedRoute>,
}

/// One layer's routing as kept by [`RecordingHook`].
#[derive(Debug, Clone)]
pub struct RecordedRoute {
    pub layer: usize,
    pub num_experts: usize,
    pub top_k: usize,
    pub logits: Vec<f32>,
    pub scores: Vec<f32>,
    pub topk_indices: Vec<u32>,
    pub topk_weights: Vec<f32>,
}

impl RoutingHook for RecordingHook {
    fn on_route(&mut self, e: &RouteEvent<'_>) {
        self.layers.push(RecordedRoute {
            layer: e.layer,
            num_experts: e.num_experts,
            top_k: e.top_k,
            logits: e.logits.to_vec(),
            scores: e.scores.to_vec(),
            topk_indices: e.topk_indices.to_vec(),
            topk_weights: e.topk_weights.to_vec(),
        });
    }
}

/// Per-call routing context handed down through a forward pass.
pub struct RouteCtx<'a> {
    pub hook: &'a mut dyn RoutingHook,
    pub steering: Option<&'a Steering>,
}

impl<'a> RouteCtx<'a> {
    pub fn new(hook: &'a mut dyn RoutingHook) -> Self {
        Self {
            hook,
            steering: None,
        }
    }

    pub fn with_steering(mut self, steering: Option<&'a Steering>) -> Self {
        self.steering = steering;
        self
    }
}

/// The experts chosen for a run of tokens and the weights their outputs get.
#[derive(Debug)]
pub struct RoutingDecision {
    /// `[tokens, top_k]` u32.
    pub indices: Tensor,
    /// `[tokens, top_k]` f32 (differentiable w.r.t. the router logits).
    pub weights: Tensor,
    /// Host copy of `indices`, row-major.
    pub indices_host: Vec<u32>,
    /// Host copy of `weights`, row-major.
    pub weights_host: Vec<f32>,
}

/// Steers, scores, chooses and weights the experts for `logits` (`[tokens, experts]`) of decoder
/// layer `layer`, reporting the decision to `ctx.hook`.
pub fn route(
    layer: usize,
    logits: &Tensor,
    cfg: &RouterConfig,
    ctx: &mut RouteCtx<'_>,
) -> Result<RoutingDecision, ModelError> {
    let (num_tokens, num_experts) = logits.dims2()?;
    if num_experts != cfg.num_experts {
        return Err(ModelError::Msg(format!(
            "layer {layer}: router produced {num_experts} logits, config says {} experts",
            cfg.num_experts
        )));
    }
    let device = logits.device().clone();
    let mut logits = logits.to_dtype(DType::F32)?;
    let mut logits_host: Vec<f32> = logits.flatten_all()?.to_vec1()?;

    if let Some(steer) = ctx.steering.and_then(|s| s.layer(layer)) {
        apply_steering(&mut logits_host, num_experts, steer, layer)?;
        // Steering is an inference-time intervention: the steered logits carry no gradient.
        logits = Tensor::from_slice(&logits_host, (num_tokens, num_experts), &device)?;
    }

    let scores = routing_scores(&logits, cfg)?;
    let scores_host: Vec<f32> = scores.flatten_all()?.to_vec1()?;

    let k = cfg.top_k;
    let forced = ctx
        .steering
        .and_then(|s| s.layer(layer))
        .map_or(&[][..], |s| s.force.as_slice());
    let indices_host = choose_experts_forced(&scores_host, cfg, forced);
    let indices = Tensor::from_slice(&indices_host, (num_tokens, k), &device)?;
    let weights = match cfg.method {
        TopkMethod::SparseMixer { jitter_eps } => {
            sparsemixer_weights(&logits_host, &scores, &indices_host, cfg, jitter_eps)?
        }
        _ => expert_weights(&scores, &indices, cfg)?,
    };
    let weights_host: Vec<f32> = weights.flatten_all()?.to_vec1()?;

    ctx.hook.on_route_tensors(layer, &logits, &scores, &indices);
    ctx.hook.on_route(&RouteEvent {
        layer,
        num_experts,
        top_k: k,
        logits: &logits_host,
        scores: &scores_host,
        topk_indices: &indices_host,
        topk_weights: &weights_host,
    });

    Ok(RoutingDecision {
        indices,
        weights,
        indices_host,
        weights_host,
    })
}

/// Routing scores over all experts (`[tokens, experts]`, f32) from router logits: softmax or
/// sigmoid as the config says.
pub fn routing_scores(logits: &Tensor, cfg: &RouterConfig) -> Result<Tensor, ModelError> {
    Ok(match cfg.score_fn {
        ScoreFn::Softmax => super::layers::softmax_last_dim(logits)?,
        ScoreFn::Sigmoid => candle_nn::ops::sigmoid(logits)?,
    })
}

/// Each token's experts, row-major `[tokens * top_k]`, from its row of host `scores`
/// (`[tokens * experts]`): the correction bias added for choosing, groups masked for
/// group-limited routing, then top-k.
pub fn choose_experts(scores: &[f32], cfg: &RouterConfig) -> Vec<u32> {
    choose_experts_forced(scores, cfg, &[])
}

/// [`choose_experts`] with steering's forced experts: after the correction bias and the group
/// limit, a forced-on expert outranks every other and a forced-off one ranks below all, so the
/// choice holds whatever bias or group rule the family's router has (the steered logits alone
/// cannot promise that once a selection bias is added to saturated sigmoid scores).
pub fn choose_experts_forced(
    scores: &[f32],
    cfg: &RouterConfig,
    forced: &[(usize, ExpertForce)],
) -> Vec<u32> {
    let (num_experts, k) = (cfg.num_experts, cfg.top_k);
    let mut indices = Vec::with_capacity(scores.len() / num_experts.max(1) * k);
    let mut choice_scores = vec![0f32; num_experts];
    for row in scores.chunks_exact(num_experts.max(1)) {
        choice_scores.copy_from_slice(row);
        if let Some(bias) = &cfg.correction_bias {
            for (s, b) in choice_scores.iter_mut().zip(bias) {
                *s += b;
            }
        }
        if let TopkMethod::GroupLimited {
            n_group,
            topk_group,
            group_score,
        } = cfg.method
        {
            mask_groups(&mut choice_scores, n_group, topk_group, group_score);
        }
        for &(e, force) in forced {
            if let Some(s) = choice_scores.get_mut(e) {
                // Forced-on experts keep their relative order (scores lie in [0, 1]).
                *s = match force {
                    ExpertForce::On => 1e30 * (1.0 + row[e]),
                    ExpertForce::Off => f32::NEG_INFINITY,
                };
            }
        }
        indices.extend(top_k_indices(&choice_scores, k));
    }
    indices
}

/// Sparsemixer weights (`[tokens, top_k]`, see [`TopkMethod::SparseMixer`]) from the router
/// `logits` (host, row-major), softmax `scores` and chosen `indices`: the chosen expert's
/// probability over the sum of the probabilities of the experts its mask keeps, which is the
/// softmax of the masked logits HF takes. Differentiable through `scores`; the masks are
/// constants, as in HF.
pub fn sparsemixer_weights(
    logits: &[f32],
    scores: &Tensor,
    indices: &[u32],
    cfg: &RouterConfig,
    jitter_eps: f64,
) -> Result<Tensor, ModelError> {
    let (n, k) = (cfg.num_experts, cfg.top_k);
    let tokens = indices.len() / k.max(1);
    let threshold = (2.0 * jitter_eps) as f32;
    let mut keep = vec![0f32; tokens * k * n];
    for t in 0..tokens {
        let z = &logits[t * n..(t + 1) * n];
        let chosen = &indices[t * k..(t + 1) * k];
        for (j, &i) in chosen.iter().enumerate() {
            let top = z[i as usize];
            let row = &mut keep[(t * k + j) * n..(t * k + j + 1) * n];
            for (e, keep_e) in row.iter_mut().enumerate() {
                let earlier = chosen[..j].contains(&(e as u32));
                let factor = z[e].abs().max(top);
                // A NaN (0 / 0) comparison keeps the expert, as in torch.
                let masked = (top - z[e]) / factor > threshold;
                *keep_e = if earlier || masked { 0.0 } else { 1.0 };
            }
        }
    }
    let device = scores.device();
    let keep = Tensor::from_vec(keep, (tokens, k, n), device)?;
    let kept_mass = scores.unsqueeze(1)?.broadcast_mul(&keep)?.sum(D::Minus1)?;
    let idx = Tensor::from_slice(indices, (tokens, k), device)?;
    Ok(scores.gather(&idx, D::Minus1)?.div(&kept_mass)?)
}

/// The weights the chosen experts' outputs are multiplied by (`[tokens, top_k]`): their scores
/// gathered from `scores` (so gradients flow back into the router), renormalised and scaled as
/// the config says, then multiplied by each chosen expert's own scale if the config has one.
pub fn expert_weights(
    scores: &Tensor,
    indices: &Tensor,
    cfg: &RouterConfig,
) -> Result<Tensor, ModelError> {
    let mut weights = scores.gather(indices, D::Minus1)?;
    if cfg.norm_topk_prob {
        let denom = (weights.sum_keepdim(D::Minus1)? + 1e-20)?;
        weights = weights.broadcast_div(&denom)?;
    }
    if cfg.routed_scaling_factor != 1.0 {
        weights = (weights * cfg.routed_scaling_factor)?;
    }
    if let Some(scale) = &cfg.expert_scale {
        let (tokens, k) = indices.dims2()?;
        let scale = Tensor::from_slice(scale.as_slice(), scale.len(), weights.device())?;
        let chosen = scale
            .index_select(&indices.flatten_all()?, 0)?
            .reshape((tokens, k))?;
        weights = (weights * chosen)?;
    }
    Ok(weights)
}

/// Applies one layer's steering to row-major logits `[tokens * num_experts]`.
///
/// Biases are added first; then a forced-on expert gets `max + 1 + |max|·1e-3`-style headroom
/// above the token's largest (biased) logit and a forced-off one the same below its smallest, so
/// forced-on experts outrank every other expert and forced-off ones rank below all of them.
pub fn apply_steering(
    logits: &mut [f32],
    num_experts: usize,
    steer: &LayerSteering,
    layer: usize,
) -> Result<(), ModelError> {
    for &(e, b) in &steer.bias {
        if e >= num_experts {
            return Err(ModelError::Msg(format!(
                "steering: layer {layer} has {num_experts} experts, expert {e} does not exist"
            )));
        }
        if !b.is_finite() {
            return Err(ModelError::Msg(format!(
                "steering: bias for layer {layer} expert {e} is not finite ({b})"
            )));
        }
    }
    for &(e, _) in &steer.force {
        if e >= num_experts {
            return Err(ModelError::Msg(format!(
                "steering: layer {layer} has {num_experts} experts, expert {e} does not exist"
            )));
        }
    }
    for row in logits.chunks_exact_mut(num_experts) {
        for &(e, b) in &steer.bias {
            row[e] += b;
        }
        if steer.force.is_empty() {
            continue;
        }
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let min = row.iter().copied().fold(f32::INFINITY, f32::min);
        let margin = 1.0 + (max - min).abs();
        // Forced-on experts keep their relative order (by their own logit) above the rest.
        for &(e, force) in &steer.force {
            row[e] = match force {
                ExpertForce::On => max + margin + (row[e] - min) * 1e-3,
                ExpertForce::Off => min - margin,
            };
        }
    }
    Ok(())
}

/// Rules out every expert outside the `topk_group` best groups (its choice score becomes −∞, as
/// DeepSeek-V3's `masked_fill(..., -inf)`; V2's zero gives the same choice, its scores being
/// positive probabilities).
fn mask_groups(scores: &mut [f32], n_group: usize, topk_group: usize, how: GroupScore) {
    let n = scores.len();
    if n_group <= 1 || !n.is_multiple_of(n_group) || topk_group >= n_group {
        return;
    }
    let group_size = n / n_group;
    let group_scores: Vec<f32> = scores
        .chunks_exact(group_size)
        .map(|g| match how {
            GroupScore::Max => g.iter().copied().fold(f32::NEG_INFINITY, f32::max),
            GroupScore::Top2Sum => {
                let top = top_k_indices(g, 2.min(g.len()));
                top.iter().map(|&i| g[i as usize]).sum()
            }
        })
        .collect();
    let keep = top_k_indices(&group_scores, topk_group);
    for (g, chunk) in scores.chunks_exact_mut(group_size).enumerate() {
        if !keep.contains(&(g as u32)) {
            chunk.iter_mut().for_each(|s| *s = f32::NEG_INFINITY);
        }
    }
}

/// Indices of the `k` largest values, largest first; ties go to the lower index (as
/// `torch.topk` does on CPU for distinct values; exact ties are broken deterministically).
pub fn top_k_indices(values: &[f32], k: usize) -> Vec<u32> {
    let mut idx: Vec<u32> = (0..values.len() as u32).collect();
    let k = k.min(values.len());
    let cmp = |a: &u32, b: &u32| {
        values[*b as usize]
            .partial_cmp(&values[*a as usize])
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(a.cmp(b))
    };
    if k < idx.len() {
        idx.select_nth_unstable_by(k, cmp);
        idx.truncate(k);
    }
    idx.sort_by(cmp);
    idx
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn run(
        logits: &[f32],
        n: usize,
        cfg: &RouterConfig,
        steering: Option<&Steering>,
    ) -> RecordedRoute {
        let t = Tensor::from_slice(logits, (logits.len() / n, n), &Device::Cpu).unwrap();
        let mut hook = RecordingHook::default();
        let mut ctx = RouteCtx::new(&mut hook).with_steering(steering);
        route(3, &t, cfg, &mut ctx).unwrap();
        hook.layers.pop().unwrap()
    }

    #[test]
    fn sparsemixer_weights_each_pick_over_the_experts_near_it() {
        // z = [2.0, 1.9, 0.0, -1.0], 2·eps = 0.2. First pick 0 keeps {0, 1} ((2 − 1.9) / 2 =
        // 0.05), masks 2 and 3 (1.0, 1.5): w = 1 / (1 + e^-0.1). Second pick 1 (0 excluded)
        // keeps only itself: w = 1.
        let cfg = RouterConfig {
            method: TopkMethod::SparseMixer { jitter_eps: 0.1 },
            ..RouterConfig::softmax_topk(4, 2, false)
        };
        let r = run(&[2.0, 1.9, 0.0, -1.0], 4, &cfg, None);
        assert_eq!(r.topk_indices, [0, 1]);
        let w0 = 1.0 / (1.0 + (-0.1f32).exp());
        assert!(
            (r.topk_weights[0] - w0).abs() < 1e-6,
            "{:?}",
            r.topk_weights
        );
        assert!(
            (r.topk_weights[1] - 1.0).abs() < 1e-6,
            "{:?}",
            r.topk_weights
        );
    }

    #[test]
    fn softmax_topk_matches_hand_computation() {
        // logits [0, ln 2, ln 3, ln 4] -> softmax [0.1, 0.2, 0.3, 0.4]
        let z = [0.0, 2f32.ln(), 3f32.ln(), 4f32.ln()];
        let r = run(&z, 4, &RouterConfig::softmax_topk(4, 2, false), None);
        assert_eq!(r.topk_indices, vec![3, 2]);
        assert!((r.topk_weights[0] - 0.4).abs() < 1e-6);
        assert!((r.topk_weights[1] - 0.3).abs() < 1e-6);
        assert!((r.scores.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        let r = run(&z, 4, &RouterConfig::softmax_topk(4, 2, true), None);
        assert!((r.topk_weights[0] - 0.4 / 0.7).abs() < 1e-6);
        assert!((r.topk_weights[1] - 0.3 / 0.7).abs() < 1e-6);
    }

    #[test]
    fn group_limited_keeps_best_groups_and_scales() {
        // 4 experts in 2 groups: group 0 = {0.1, 0.2}, group 1 = {0.3, 0.4}; p as above.
        // Top-1 group keeps {2, 3}; top-2 from it -> [3, 2]. Scaled by 2.
        let z = [0.0, 2f32.ln(), 3f32.ln(), 4f32.ln()];
        let mut cfg = RouterConfig::softmax_topk(4, 2, false);
        cfg.method = TopkMethod::GroupLimited {
            n_group: 2,
            topk_group: 1,
            group_score: GroupScore::Max,
        };
        cfg.routed_scaling_factor = 2.0;
        let r = run(&z, 4, &cfg, None);
        assert_eq!(r.topk_indices, vec![3, 2]);
        assert!((r.topk_weights[0] - 0.8).abs() < 1e-6);
        // group {0.1, 0.45} beats {0.2, 0.25} by max, loses by nothing else
        let p = [0.1f32, 0.45, 0.2, 0.25];
        let z: Vec<f32> = p.iter().map(|x| x.ln()).collect();
        let r = run(&z, 4, &cfg, None);
        assert_eq!(r.topk_indices, vec![1, 0]);
    }

    #[test]
    fn expert_scale_multiplies_the_renormalised_weights() {
        // softmax [0.1, 0.2, 0.3, 0.4]; top-2 {3, 2} renormalised to [4/7, 3/7], then times
        // the chosen experts' scales 0.5 and 3: [2/7, 9/7] (summing to 11/7, not 1).
        let z = [0.0, 2f32.ln(), 3f32.ln(), 4f32.ln()];
        let mut cfg = RouterConfig::softmax_topk(4, 2, true);
        cfg.expert_scale = Some(std::sync::Arc::new(vec![7.0, 11.0, 3.0, 0.5]));
        let r = run(&z, 4, &cfg, None);
        assert_eq!(r.topk_indices, vec![3, 2]);
        assert!((r.topk_weights[0] - 2.0 / 7.0).abs() < 1e-6);
        assert!((r.topk_weights[1] - 9.0 / 7.0).abs() < 1e-6);
        // The scores stay the plain softmax.
        assert!((r.scores[3] - 0.4).abs() < 1e-6);
    }

    #[test]
    fn masked_expert_never_chosen_forced_always_chosen() {
        let n = 8;
        let logits: Vec<f32> = (0..64 * n)
            .map(|i| ((i * 37 % 101) as f32) / 13.0)
            .collect();
        let cfg = RouterConfig::softmax_topk(n, 2, true);
        let mut steering = Steering::default();
        steering.layers.insert(
            3,
            LayerSteering {
                bias: vec![],
                force: vec![(5, ExpertForce::On), (1, ExpertForce::Off)],
            },
        );
        let r = run(&logits, n, &cfg, Some(&steering));
        for row in r.topk_indices.chunks(2) {
            assert!(row.contains(&5), "forced expert missing in {row:?}");
            assert!(!row.contains(&1), "masked expert chosen in {row:?}");
        }
        // Steering on another layer changes nothing here.
        let mut other = Steering::default();
        other.layers.insert(0, steering.layers[&3].clone());
        let plain = run(&logits, n, &cfg, None);
        let r = run(&logits, n, &cfg, Some(&other));
        assert_eq!(plain.topk_indices, r.topk_indices);
        assert_eq!(plain.topk_weights, r.topk_weights);
    }

    #[test]
    fn bias_raises_score_and_bad_steering_is_rejected() {
        let z = [0.0f32, 0.0, 0.0, 0.0];
        let cfg = RouterConfig::softmax_topk(4, 1, false);
        let mut s = Steering::default();
        s.layers.insert(
            3,
            LayerSteering {
                bias: vec![(2, 1.0)],
                force: vec![],
            },
        );
        let r = run(&z, 4, &cfg, Some(&s));
        assert_eq!(r.topk_indices, vec![2]);
        let e = 1f32.exp();
        assert!((r.topk_weights[0] - e / (e + 3.0)).abs() < 1e-6);

        let t = Tensor::from_slice(&z, (1, 4), &Device::Cpu).unwrap();
        for bad in [
            LayerSteering {
                bias: vec![(9, 1.0)],
                force: vec![],
            },
            LayerSteering {
                bias: vec![(0, f32::NAN)],
                force: vec![],
            },
            LayerSteering {
                bias: vec![],
                force: vec![(4, ExpertForce::On)],
            },
        ] {
            let mut s = Steering::default();
            s.layers.insert(3, bad);
            let mut hook = NoHook;
            let mut ctx = RouteCtx::new(&mut hook).with_steering(Some(&s));
            assert!(route(3, &t, &cfg, &mut ctx).is_err());
        }
    }

    #[test]
    fn top_k_orders_descending_with_stable_ties() {
        assert_eq!(top_k_indices(&[0.2, 0.5, 0.5, 0.1], 3), vec![1, 2, 0]);
        assert_eq!(top_k_indices(&[1.0], 4), vec![0]);
    }
}
