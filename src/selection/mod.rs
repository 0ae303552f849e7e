//! Expert selections: which (decoder layer, expert) cells to adapt or steer, and how they were
//! chosen (DESIGN.md "Selection rules"; MoE-Sieve §4 and §6, DAS §3.2, ESFT).
//!
//! - this module: the [`Selection`] type and its file format (`moescope-selection` v1, JSON),
//!   validation against a model;
//! - [`rules`]: the rules that make selections from a profile (hot top-k by count or mass,
//!   coverage threshold, greedy budget, DAS top-k, seeded random baseline, explicit lists);
//! - [`accounting`]: LoRA trainable parameters, adapter bytes and the routing coverage a selection
//!   captures;
//! - [`export`]: PEFT `adapter_config.json` and the ESFT-style expert config.
//!
//! File format:
//!
//! ```json
//! {"format": "moescope-selection", "version": 1,
//!  "model": {"id": "allenai/OLMoE-1B-7B-0924", "architecture": "OlmoeForCausalLM",
//!            "moe_layers": [0, 1, ...], "num_experts": 64},
//!  "rule": {"name": "hot", "signal": "count", "k": 16},
//!  "source_profile": "profile.json", "data": "pooled",
//!  "experts": {"0": [3, 17, ...], "1": [...]}}
//! ```

pub mod accounting;
pub mod export;
pub mod rules;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::analysis::AnalysisError;
use crate::profile::ProfileModel;

pub use accounting::{Accounting, AccountingOptions, AdapterScope, account};
pub use export::{EsftOptions, PeftOptions, esft_config, peft_adapter_config, target_modules};
pub use rules::{SelectionRule, select};

pub const SELECTION_FORMAT: &str = "moescope-selection";
pub const SELECTION_VERSION: u32 = 1;

/// Decoder layer → selected expert ids (layers without a selected expert are absent).
pub type LayerExperts = BTreeMap<usize, BTreeSet<usize>>;

/// Errors making, reading, validating or exporting selections.
#[derive(Debug, thiserror::Error)]
pub enum SelectionError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: not valid JSON for a moescope selection: {source}")]
    Json {
        path: String,
        source: serde_json::Error,
    },
    #[error("{path}: {msg}")]
    Format { path: String, msg: String },
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Analysis(#[from] AnalysisError),
}

impl SelectionError {
    fn io(path: &Path, source: std::io::Error) -> Self {
        SelectionError::Io {
            path: path.display().to_string(),
            source,
        }
    }
}

/// The model a selection was made for: enough to validate it and to name its modules.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SelectionModel {
    pub id: String,
    pub architecture: String,
    /// Decoder layer indices of the MoE layers, ascending.
    pub moe_layers: Vec<usize>,
    pub num_experts: usize,
}

impl From<&ProfileModel> for SelectionModel {
    fn from(m: &ProfileModel) -> Self {
        Self {
            id: m.id.clone(),
            architecture: m.architecture.clone(),
            moe_layers: m.moe_layers.clone(),
            num_experts: m.num_experts,
        }
    }
}

/// A set of (decoder layer, expert) cells and how it was made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Selection {
    pub format: String,
    pub version: u32,
    pub model: SelectionModel,
    /// The rule and its parameters.
    pub rule: SelectionRule,
    /// The profile file the rule read, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_profile: Option<String>,
    /// Which of the profile's data the rule ranked: `"pooled"` or a subject name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    pub experts: LayerExperts,
}

impl Selection {
    /// A selection of `experts` for `model`, validated (empty layers dropped).
    pub fn new(
        model: SelectionModel,
        rule: SelectionRule,
        experts: LayerExperts,
    ) -> Result<Self, SelectionError> {
        let selection = Self {
            format: SELECTION_FORMAT.into(),
            version: SELECTION_VERSION,
            rule,
            source_profile: None,
            data: None,
            experts: experts.into_iter().filter(|(_, e)| !e.is_empty()).collect(),
            model,
        };
        selection.validate(&selection.model.moe_layers, selection.model.num_experts)?;
        Ok(selection)
    }

    /// An explicit list of (decoder layer, expert) cells, e.g. clicked in the GUI.
    pub fn explicit(
        model: SelectionModel,
        cells: impl IntoIterator<Item = (usize, usize)>,
    ) -> Result<Self, SelectionError> {
        let mut experts = LayerExperts::new();
        for (layer, expert) in cells {
            experts.entry(layer).or_default().insert(expert);
        }
        Self::new(model, SelectionRule::Explicit, experts)
    }

    /// Number of selected cells.
    pub fn len(&self) -> usize {
        self.experts.values().map(BTreeSet::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn contains(&self, layer: usize, expert: usize) -> bool {
        self.experts
            .get(&layer)
            .is_some_and(|e| e.contains(&expert))
    }

    /// All cells as (decoder layer, expert), ascending.
    pub fn cells(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.experts
            .iter()
            .flat_map(|(&layer, experts)| experts.iter().map(move |&e| (layer, e)))
    }

    /// Selected experts per MoE layer (0 for layers without any).
    pub fn per_layer_counts(&self) -> BTreeMap<usize, usize> {
        self.model
            .moe_layers
            .iter()
            .map(|&l| (l, self.experts.get(&l).map_or(0, BTreeSet::len)))
            .collect()
    }

    /// Errors if a selected layer is not one of `moe_layers` or an expert id is ≥ `num_experts`,
    /// naming the offending cell.
    pub fn validate(&self, moe_layers: &[usize], num_experts: usize) -> Result<(), SelectionError> {
        self.validate_against(&self.model.id, moe_layers, num_experts)
    }

    fn validate_against(
        &self,
        model_id: &str,
        moe_layers: &[usize],
        num_experts: usize,
    ) -> Result<(), SelectionError> {
        for (&layer, experts) in &self.experts {
            if !moe_layers.contains(&layer) {
                return Err(SelectionError::Invalid(format!(
                    "the selection names layer {layer}, which is not an MoE layer of {model_id} \
                     (MoE layers: {moe_layers:?})"
                )));
            }
            if let Some(&expert) = experts.iter().find(|&&e| e >= num_experts) {
                return Err(SelectionError::Invalid(format!(
                    "the selection names expert {expert} of layer {layer}, but {model_id} has \
                     {num_experts} experts per layer (0..={})",
                    num_experts.saturating_sub(1)
                )));
            }
        }
        Ok(())
    }

    /// Validates the selection against a profile's model: also checks the architecture.
    pub fn validate_for(&self, model: &ProfileModel) -> Result<(), SelectionError> {
        if model.architecture != self.model.architecture {
            return Err(SelectionError::Invalid(format!(
                "the selection was made for a {} model, not {} ({})",
                self.model.architecture, model.architecture, model.id
            )));
        }
        self.validate_against(&model.id, &model.moe_layers, model.num_experts)
    }

    /// Writes the selection as JSON atomically (temp file + rename).
    pub fn save(&self, path: &Path) -> Result<(), SelectionError> {
        let bytes = serde_json::to_vec_pretty(self).map_err(|source| SelectionError::Json {
            path: path.display().to_string(),
            source,
        })?;
        crate::io::write_atomic(path, &bytes).map_err(|e| SelectionError::io(path, e))
    }

    /// Reads a selection file, checking its format tag, version and that its cells fit the model
    /// it records.
    pub fn load(path: &Path) -> Result<Self, SelectionError> {
        let p = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|e| SelectionError::io(path, e))?;
        let value: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|source| SelectionError::Json {
                path: p.clone(),
                source,
            })?;
        let bad = |msg: String| SelectionError::Format {
            path: p.clone(),
            msg,
        };
        crate::io::check_header(&value, SELECTION_FORMAT, SELECTION_VERSION, "selection")
            .map_err(bad)?;
        let selection: Selection =
            serde_json::from_value(value).map_err(|source| SelectionError::Json {
                path: p.clone(),
                source,
            })?;
        selection
            .validate(&selection.model.moe_layers, selection.model.num_experts)
            .map_err(|e| bad(e.to_string()))?;
        Ok(selection)
    }
}

/// Parses an explicit expert list: `LAYER:E,E,...` groups separated by `;` or spaces, e.g.
/// `"3:1,5;4:2"` → (3, 1), (3, 5), (4, 2).
pub fn parse_cells(text: &str) -> Result<Vec<(usize, usize)>, SelectionError> {
    let mut cells = Vec::new();
    for group in text.split([';', ' ']).filter(|g| !g.trim().is_empty()) {
        let (layer, experts) = group.split_once(':').ok_or_else(|| {
            SelectionError::Invalid(format!(
                "'{group}' is not LAYER:EXPERT,EXPERT,... (e.g. 3:1,5;4:2)"
            ))
        })?;
        let parse = |s: &str, what: &str| {
            s.trim().parse::<usize>().map_err(|_| {
                SelectionError::Invalid(format!("'{s}' in '{group}' is not a {what} number"))
            })
        };
        let layer = parse(layer, "layer")?;
        for e in experts.split(',').filter(|e| !e.trim().is_empty()) {
            cells.push((layer, parse(e, "expert")?));
        }
    }
    if cells.is_empty() {
        return Err(SelectionError::Invalid(
            "the expert list is empty (expected e.g. 3:1,5;4:2)".into(),
        ));
    }
    Ok(cells)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn model() -> SelectionModel {
        SelectionModel {
            id: "tiny-olmoe".into(),
            architecture: "OlmoeForCausalLM".into(),
            moe_layers: vec![1, 2, 3],
            num_experts: 8,
        }
    }

    #[test]
    fn explicit_selection_and_queries() {
        let s = Selection::explicit(model(), [(3, 5), (1, 0), (3, 1), (3, 5)]).unwrap();
        assert_eq!(s.len(), 3);
        assert!(s.contains(3, 5) && !s.contains(2, 5));
        assert_eq!(s.cells().collect::<Vec<_>>(), vec![(1, 0), (3, 1), (3, 5)]);
        assert_eq!(
            s.per_layer_counts(),
            BTreeMap::from([(1, 1), (2, 0), (3, 2)])
        );
    }

    #[test]
    fn validation_names_the_bad_cell() {
        let err = Selection::explicit(model(), [(0, 1)])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("layer 0, which is not an MoE layer of tiny-olmoe"),
            "{err}"
        );
        let err = Selection::explicit(model(), [(2, 8)])
            .unwrap_err()
            .to_string();
        assert!(err.contains("expert 8 of layer 2"), "{err}");
        assert!(err.contains("8 experts per layer"), "{err}");

        let s = Selection::explicit(model(), [(3, 7)]).unwrap();
        let mut other = ProfileModel {
            attention_kinds: Vec::new(),
            id: "smaller".into(),
            architecture: "OlmoeForCausalLM".into(),
            moe_layers: vec![1, 2, 3],
            num_experts: 4,
            top_k: 2,
            score_fn: crate::model::router::ScoreFn::Softmax,
            layout: None,
        };
        let err = s.validate_for(&other).unwrap_err().to_string();
        assert!(
            err.contains("expert 7 of layer 3, but smaller has 4 experts"),
            "{err}"
        );
        other.num_experts = 8;
        assert!(s.validate_for(&other).is_ok());
        other.moe_layers = vec![1, 2];
        assert!(
            s.validate_for(&other)
                .unwrap_err()
                .to_string()
                .contains("layer 3")
        );
        other.architecture = "MixtralForCausalLM".into();
        assert!(s.validate_for(&other).is_err());
    }

    #[test]
    fn save_load_round_trip_and_format_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        let mut s = Selection::explicit(model(), [(1, 2), (3, 4)]).unwrap();
        s.source_profile = Some("p.json".into());
        s.save(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(json["format"], "moescope-selection");
        assert_eq!(json["version"], 1);
        assert_eq!(json["experts"]["3"], serde_json::json!([4]));
        assert_eq!(json["rule"]["name"], "explicit");
        assert_eq!(Selection::load(&path).unwrap(), s);

        let write = |v: serde_json::Value| std::fs::write(&path, v.to_string()).unwrap();
        let mut v2 = json.clone();
        v2["version"] = 2.into();
        write(v2);
        let err = Selection::load(&path).unwrap_err().to_string();
        assert!(
            err.contains("s.json") && err.contains("version 2 is not supported"),
            "{err}"
        );

        let mut wrong = json.clone();
        wrong["format"] = "moescope-profile".into();
        write(wrong);
        let err = Selection::load(&path).unwrap_err().to_string();
        assert!(err.contains("format is 'moescope-profile'"), "{err}");

        let mut bad_cell = json.clone();
        bad_cell["experts"]["9"] = serde_json::json!([1]);
        write(bad_cell);
        let err = Selection::load(&path).unwrap_err().to_string();
        assert!(err.contains("s.json") && err.contains("layer 9"), "{err}");

        std::fs::write(&path, "{oops").unwrap();
        let err = Selection::load(&path).unwrap_err().to_string();
        assert!(err.contains("not valid JSON"), "{err}");
        let err = Selection::load(&dir.path().join("missing.json"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing.json"), "{err}");
    }

    #[test]
    fn parse_explicit_cells() {
        assert_eq!(
            parse_cells("3:1,5;4:2").unwrap(),
            vec![(3, 1), (3, 5), (4, 2)]
        );
        assert_eq!(parse_cells("3:1 4:2,").unwrap(), vec![(3, 1), (4, 2)]);
        assert!(parse_cells("3").is_err());
        assert!(parse_cells("x:1").is_err());
        assert!(parse_cells("").is_err());
    }
}
