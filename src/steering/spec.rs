//! The steering spec (`moescope-steering` v1, JSON): built by hand, from a [`Selection`] or
//! from a domain's DAS ranking; validated against a model's [`ModelInfo`]; resolved into the
//! engine's [`Steering`] (the routing layer applies it, so every family supports it).
//!
//! File format:
//!
//! ```json
//! {"format": "moescope-steering", "version": 1,
//!  "model": {"id": "...", "architecture": "OlmoeForCausalLM", "moe_layers": [0, 1], "num_experts": 8},
//!  "strength": 1.0, "apply_to": "both",
//!  "source": "das top-8 of 'math' in profile.json",
//!  "experts": [{"layer": 1, "expert": 5, "bias": 2.0},
//!              {"layer": 0, "expert": 3, "force": "off"}]}
//! ```
//!
//! `model` and `source` are optional. Each entry has a `bias` (added to the router logit,
//! multiplied by `strength`), a `force` (`"on"`: above the token's largest logit, `"off"`: below
//! its smallest), or both (bias first). A strength of 0 turns the whole spec off.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::error::{Result, SteerError};
use crate::analysis::das::{GeneralSet, domain_advantage, top_das_experts};
use crate::model::ModelInfo;
use crate::model::router::{ExpertForce, LayerSteering, Steering};
use crate::profile::RoutingProfile;
use crate::selection::{Selection, SelectionModel};

pub const STEERING_FORMAT: &str = "moescope-steering";
pub const STEERING_VERSION: u32 = 1;

/// Which tokens the steering applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApplyTo {
    /// Only the prompt's tokens (the prefill pass).
    Prompt,
    /// Only generated tokens (each decoding step).
    Generated,
    /// Every token.
    #[default]
    Both,
}

impl ApplyTo {
    pub fn prompt(self) -> bool {
        matches!(self, ApplyTo::Prompt | ApplyTo::Both)
    }

    pub fn generated(self) -> bool {
        matches!(self, ApplyTo::Generated | ApplyTo::Both)
    }
}

impl std::str::FromStr for ApplyTo {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "prompt" => Ok(ApplyTo::Prompt),
            "generated" => Ok(ApplyTo::Generated),
            "both" => Ok(ApplyTo::Both),
            other => Err(format!("'{other}' is not one of prompt, generated, both")),
        }
    }
}

/// One steered (layer, expert) cell.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpertSteer {
    /// Decoder layer index (as in `moescope info`'s MoE layer list).
    pub layer: usize,
    pub expert: usize,
    /// Router-logit bias (DSMoE), scaled by the spec's strength.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bias: Option<f32>,
    /// Force the expert on or off (SteerMoE).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub force: Option<ExpertForce>,
}

/// What to do to every cell when building a spec from a selection or a ranking.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SteerAction {
    Bias(f32),
    Force(ExpertForce),
}

impl SteerAction {
    fn entry(self, layer: usize, expert: usize) -> ExpertSteer {
        let (bias, force) = match self {
            SteerAction::Bias(b) => (Some(b), None),
            SteerAction::Force(f) => (None, Some(f)),
        };
        ExpertSteer {
            layer,
            expert,
            bias,
            force,
        }
    }
}

/// A saved steering intervention.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SteeringSpec {
    pub format: String,
    pub version: u32,
    /// The model the spec was made for, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<SelectionModel>,
    /// Multiplies every bias; 0 turns the spec off (forces included).
    #[serde(default = "one")]
    pub strength: f32,
    #[serde(default)]
    pub apply_to: ApplyTo,
    /// How the spec was made (free text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default)]
    pub experts: Vec<ExpertSteer>,
}

fn one() -> f32 {
    1.0
}

impl Default for SteeringSpec {
    fn default() -> Self {
        Self::new(Vec::new())
    }
}

/// A spec resolved for one model: the engine's steering plus its scope.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ActiveSteering {
    pub steering: Steering,
    pub apply_to: ApplyTo,
}

impl ActiveSteering {
    pub fn is_empty(&self) -> bool {
        self.steering.layers.values().all(LayerSteering::is_empty)
    }

    /// The steering for a prompt (prefill) pass, if any.
    pub fn for_prompt(&self) -> Option<&Steering> {
        (self.apply_to.prompt() && !self.is_empty()).then_some(&self.steering)
    }

    /// The steering for a decoding step, if any.
    pub fn for_generated(&self) -> Option<&Steering> {
        (self.apply_to.generated() && !self.is_empty()).then_some(&self.steering)
    }

    /// Steered experts per decoder layer (biased or forced).
    pub fn steered_experts(&self) -> BTreeMap<usize, Vec<usize>> {
        self.steering
            .layers
            .iter()
            .map(|(&l, s)| {
                let mut e: Vec<usize> = s
                    .bias
                    .iter()
                    .map(|b| b.0)
                    .chain(s.force.iter().map(|f| f.0))
                    .collect();
                e.sort_unstable();
                e.dedup();
                (l, e)
            })
            .filter(|(_, e)| !e.is_empty())
            .collect()
    }
}

impl SteeringSpec {
    /// A spec of these entries, strength 1, applied to every token.
    pub fn new(experts: Vec<ExpertSteer>) -> Self {
        Self {
            format: STEERING_FORMAT.into(),
            version: STEERING_VERSION,
            model: None,
            strength: 1.0,
            apply_to: ApplyTo::Both,
            source: None,
            experts,
        }
    }

    /// The same action on every (layer, expert) cell.
    pub fn from_cells(
        cells: impl IntoIterator<Item = (usize, usize)>,
        action: SteerAction,
    ) -> Self {
        Self::new(cells.into_iter().map(|(l, e)| action.entry(l, e)).collect())
    }

    /// Every cell of a selection gets `action` (e.g. a bias of 2 or force off).
    pub fn from_selection(selection: &Selection, action: SteerAction) -> Self {
        let mut spec = Self::from_cells(selection.cells(), action);
        spec.model = Some(selection.model.clone());
        spec.source = Some(format!("selection ({} cells)", selection.len()));
        spec
    }

    /// The `top_n` cells with the highest positive DAS of `domain` across all layers
    /// (DSMoE style), each given `action`.
    pub fn from_das(
        profile: &RoutingProfile,
        domain: &str,
        general: &GeneralSet,
        top_n: usize,
        action: SteerAction,
    ) -> Result<Self> {
        if top_n == 0 {
            return Err(SteerError::Invalid("top-N must be at least 1".into()));
        }
        let signal = crate::analysis::das::default_das_signal(profile);
        let das = domain_advantage(profile, domain, general, signal)?;
        let cells: Vec<(usize, usize)> =
            top_das_experts(&das.das, &profile.model.moe_layers, top_n)
                .into_iter()
                .filter(|c| c.das > 0.0)
                .map(|c| (c.layer, c.expert))
                .collect();
        if cells.is_empty() {
            return Err(SteerError::Invalid(format!(
                "no expert has a positive domain advantage for '{domain}'"
            )));
        }
        let mut spec = Self::from_cells(cells, action);
        spec.model = Some(SelectionModel::from(&profile.model));
        spec.source = Some(format!("DAS top-{top_n} of '{domain}'"));
        Ok(spec)
    }

    pub fn is_empty(&self) -> bool {
        self.experts.is_empty()
    }

    /// Checks the spec against a model: every layer an MoE layer, every expert in range,
    /// finite biases and strength, no cell listed twice, each entry doing something.
    pub fn validate(&self, info: &ModelInfo) -> Result<()> {
        if !self.strength.is_finite() {
            return Err(SteerError::Invalid(format!(
                "strength is not finite ({})",
                self.strength
            )));
        }
        let mut seen = BTreeMap::new();
        for (i, s) in self.experts.iter().enumerate() {
            let at = format!("entry {i} (layer {}, expert {})", s.layer, s.expert);
            if !info.moe_layers.contains(&s.layer) {
                return Err(SteerError::Invalid(format!(
                    "{at}: layer {} is not an MoE layer of {} (MoE layers: {:?})",
                    s.layer, info.id, info.moe_layers
                )));
            }
            if s.expert >= info.num_experts {
                return Err(SteerError::Invalid(format!(
                    "{at}: expert {} is out of range: {} has {} experts per layer (0..={})",
                    s.expert,
                    info.id,
                    info.num_experts,
                    info.num_experts.saturating_sub(1)
                )));
            }
            if let Some(b) = s.bias
                && !b.is_finite()
            {
                return Err(SteerError::Invalid(format!(
                    "{at}: bias is not a finite number ({b})"
                )));
            }
            if s.bias.is_none() && s.force.is_none() {
                return Err(SteerError::Invalid(format!(
                    "{at}: has neither a \"bias\" nor a \"force\""
                )));
            }
            if let Some(j) = seen.insert((s.layer, s.expert), i) {
                return Err(SteerError::Invalid(format!(
                    "{at}: the cell is already steered by entry {j}"
                )));
            }
        }
        let forced_on = |layer: usize| {
            self.experts
                .iter()
                .filter(|s| s.layer == layer && s.force == Some(ExpertForce::On))
                .count()
        };
        for &layer in &info.moe_layers {
            let on = forced_on(layer);
            if on > info.top_k {
                return Err(SteerError::Invalid(format!(
                    "layer {layer}: {on} experts are forced on but only {} are chosen per token",
                    info.top_k
                )));
            }
        }
        Ok(())
    }

    /// Validates and turns the spec into the engine's steering. Zero biases and a zero strength
    /// give empty steering (bit-identical to none).
    pub fn resolve(&self, info: &ModelInfo) -> Result<ActiveSteering> {
        self.validate(info)?;
        let mut steering = Steering::default();
        if self.strength != 0.0 {
            for s in &self.experts {
                let layer = steering.layers.entry(s.layer).or_default();
                if let Some(b) = s.bias {
                    let b = b * self.strength;
                    if !b.is_finite() {
                        return Err(SteerError::Invalid(format!(
                            "layer {} expert {}: bias × strength overflows ({} × {})",
                            s.layer,
                            s.expert,
                            s.bias.unwrap_or(0.0),
                            self.strength
                        )));
                    }
                    if b != 0.0 {
                        layer.bias.push((s.expert, b));
                    }
                }
                if let Some(f) = s.force {
                    layer.force.push((s.expert, f));
                }
            }
        }
        steering.layers.retain(|_, s| !s.is_empty());
        Ok(ActiveSteering {
            steering,
            apply_to: self.apply_to,
        })
    }

    /// Reads a spec file (format tag and version checked; not yet validated against a model).
    pub fn load(path: &Path) -> Result<Self> {
        let p = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| SteerError::Io {
            path: p.clone(),
            source,
        })?;
        let value: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|source| SteerError::Json {
                path: p.clone(),
                source,
            })?;
        let bad = |msg: String| SteerError::Format {
            path: p.clone(),
            msg,
        };
        crate::io::check_header(&value, STEERING_FORMAT, STEERING_VERSION, "steering spec")
            .map_err(bad)?;
        serde_json::from_value(value).map_err(|source| SteerError::Json { path: p, source })
    }

    /// Reads a spec file and resolves it for `info`; errors name the file.
    pub fn load_for(path: &Path, info: &ModelInfo) -> Result<(Self, ActiveSteering)> {
        let spec = Self::load(path)?;
        let active = spec.resolve_from_file(path, info)?;
        Ok((spec, active))
    }

    /// [`Self::resolve`] for a spec read from `path`: validation errors name the file.
    pub fn resolve_from_file(&self, path: &Path, info: &ModelInfo) -> Result<ActiveSteering> {
        self.resolve(info).map_err(|e| match e {
            SteerError::Invalid(msg) => SteerError::Format {
                path: path.display().to_string(),
                msg,
            },
            other => other,
        })
    }

    /// Writes the spec as JSON atomically (temp file + rename).
    pub fn save(&self, path: &Path) -> Result<()> {
        let p = path.display().to_string();
        let bytes = serde_json::to_vec_pretty(self).map_err(|source| SteerError::Json {
            path: p.clone(),
            source,
        })?;
        crate::io::write_atomic(path, &bytes).map_err(|source| SteerError::Io { path: p, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::router::ScoreFn;
    use crate::model::{Family, ModuleLayout};

    pub(crate) fn info() -> ModelInfo {
        ModelInfo {
            id: "tiny".into(),
            architecture: "OlmoeForCausalLM".into(),
            family: Family::Olmoe,
            num_layers: 3,
            moe_layers: vec![1, 2],
            attention_kinds: Vec::new(),
            num_experts: 8,
            top_k: 2,
            num_shared_experts: 0,
            hidden_size: 4,
            vocab_size: 10,
            max_position_embeddings: 16,
            total_params: 0,
            active_params: 0,
            dtype: "f32".into(),
            mapped: false,
            device: "cpu".into(),
            score_fn: ScoreFn::Softmax,
            layout: ModuleLayout {
                expert_prefix: String::new(),
                expert_projections: vec![],
                shared_expert_prefix: None,
                shared_expert_projections: vec![],
                attention_prefix: String::new(),
                attention_projections: vec![],
                attention_overrides: Default::default(),
                router: String::new(),
                router_in: 4,
            },
            storage: Vec::new(),
        }
    }

    fn entry(
        layer: usize,
        expert: usize,
        bias: Option<f32>,
        force: Option<ExpertForce>,
    ) -> ExpertSteer {
        ExpertSteer {
            layer,
            expert,
            bias,
            force,
        }
    }

    #[test]
    fn resolve_scales_biases_and_keeps_forces() {
        let mut spec = SteeringSpec::new(vec![
            entry(1, 3, Some(2.0), None),
            entry(2, 0, None, Some(ExpertForce::Off)),
            entry(2, 5, Some(0.0), None),
        ]);
        spec.strength = 0.5;
        let a = spec.resolve(&info()).unwrap();
        assert_eq!(a.steering.layers[&1].bias, vec![(3, 1.0)]);
        assert_eq!(a.steering.layers[&2].force, vec![(0, ExpertForce::Off)]);
        assert!(a.steering.layers[&2].bias.is_empty());
        assert_eq!(
            a.steered_experts(),
            BTreeMap::from([(1, vec![3]), (2, vec![0])])
        );
        spec.strength = 0.0;
        assert!(spec.resolve(&info()).unwrap().is_empty());
        assert!(
            SteeringSpec::default()
                .resolve(&info())
                .unwrap()
                .for_prompt()
                .is_none()
        );
    }

    #[test]
    fn bad_specs_name_the_problem() {
        let check = |e: ExpertSteer, want: &str| {
            let err = SteeringSpec::new(vec![e])
                .validate(&info())
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{err}");
        };
        check(
            entry(0, 1, Some(1.0), None),
            "layer 0 is not an MoE layer of tiny",
        );
        check(entry(1, 8, Some(1.0), None), "expert 8 is out of range");
        check(
            entry(1, 1, Some(f32::NAN), None),
            "bias is not a finite number",
        );
        check(entry(1, 1, Some(f32::INFINITY), None), "not a finite");
        check(entry(1, 1, None, None), "neither");
        let dup = SteeringSpec::new(vec![
            entry(1, 1, Some(1.0), None),
            entry(1, 1, Some(2.0), None),
        ]);
        assert!(
            dup.validate(&info())
                .unwrap_err()
                .to_string()
                .contains("already steered")
        );
        let on = SteeringSpec::from_cells(
            [(1, 0), (1, 1), (1, 2)],
            SteerAction::Force(ExpertForce::On),
        );
        assert!(
            on.validate(&info())
                .unwrap_err()
                .to_string()
                .contains("3 experts are forced on")
        );
    }

    #[test]
    fn file_round_trip_and_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("steer.json");
        let mut spec = SteeringSpec::from_cells([(1, 2), (2, 7)], SteerAction::Bias(1.5));
        spec.apply_to = ApplyTo::Generated;
        spec.save(&path).unwrap();
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(json["format"], "moescope-steering");
        assert_eq!(json["apply_to"], "generated");
        assert_eq!(json["experts"][1]["bias"], 1.5);
        assert_eq!(SteeringSpec::load(&path).unwrap(), spec);

        std::fs::write(
            &path,
            r#"{"format":"moescope-steering","version":1,"experts":[{"layer":1,"expert":9,"bias":1}]}"#,
        )
        .unwrap();
        let err = SteeringSpec::load_for(&path, &info())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("steer.json") && err.contains("expert 9"),
            "{err}"
        );
        std::fs::write(&path, r#"{"format":"moescope-steering","version":3}"#).unwrap();
        let err = SteeringSpec::load(&path).unwrap_err().to_string();
        assert!(
            err.contains("steer.json") && err.contains("version 3"),
            "{err}"
        );
        std::fs::write(&path, r#"{"format":"moescope-steering","version":1,"experts":[{"layer":1,"expert":1,"bias":NaN}]}"#).unwrap();
        let err = SteeringSpec::load(&path).unwrap_err().to_string();
        assert!(
            err.contains("steer.json") && err.contains("not valid JSON"),
            "{err}"
        );
    }
}
