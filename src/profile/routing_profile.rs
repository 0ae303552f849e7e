//! [`RoutingProfile`]: per-subject routing statistics of one model on one dataset.
//!
//! File format (`moescope-profile`, version 1), JSON:
//!
//! ```json
//! {"format": "moescope-profile", "version": 1,
//!  "model": {"id": "...", "architecture": "OlmoeForCausalLM", "moe_layers": [0, 1],
//!            "num_experts": 8, "top_k": 2, "score_fn": "softmax", "layout": {...}},
//!  "subjects": [{"name": "law", "sequences": 10, "tokens": 512,
//!                "count": [[...]], "mass": [[...]], "score": [[...]]}]}
//! ```
//!
//! Rows of `count` / `mass` / `score` are aligned with `model.moe_layers`; columns are experts.
//! `count[l][e]` = tokens whose chosen set contains `e`; `mass[l][e]` = sum of the routing
//! weights `e` received; `score[l][e]` = sum of the routing scores (softmax probability or
//! sigmoid score) of `e` over all tokens, chosen or not.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::FormatError;
use crate::model::router::ScoreFn;
use crate::model::{AttentionKind, ModuleLayout};

pub const PROFILE_FORMAT: &str = "moescope-profile";
pub const PROFILE_VERSION: u32 = 1;

/// The model a profile was made with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProfileModel {
    pub id: String,
    pub architecture: String,
    /// Decoder layer indices of the MoE layers, ascending; rows of every matrix follow it.
    pub moe_layers: Vec<usize>,
    pub num_experts: usize,
    pub top_k: usize,
    #[serde(default = "default_score_fn")]
    pub score_fn: ScoreFn,
    /// Module names and projection shapes, for parameter accounting and PEFT export.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout: Option<ModuleLayout>,
    /// Every decoder layer's token mixing (so also the number of decoder layers); empty in
    /// profiles that predate it and in imported ones that do not know it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attention_kinds: Vec<AttentionKind>,
}

impl ProfileModel {
    /// The heatmap caption naming dense and linear-attention layers
    /// ([`crate::model::info::layer_kinds_caption`]).
    pub fn layer_kinds_caption(&self) -> String {
        let num_layers = self
            .attention_kinds
            .len()
            .max(self.moe_layers.last().map_or(0, |l| l + 1));
        crate::model::info::layer_kinds_caption(num_layers, &self.moe_layers, &self.attention_kinds)
    }

    /// The heatmap row label of MoE layer `layer` (`L3`, `L3 lin`).
    pub fn row_label(&self, layer: usize) -> String {
        crate::model::info::row_label(layer, &self.attention_kinds)
    }
}

fn default_score_fn() -> ScoreFn {
    ScoreFn::Softmax
}

/// One subject's routing statistics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubjectProfile {
    pub name: String,
    /// Number of sequences profiled.
    pub sequences: u64,
    /// Number of tokens profiled (padding excluded).
    pub tokens: u64,
    /// `[moe layer][expert]` times chosen.
    pub count: Vec<Vec<u64>>,
    /// `[moe layer][expert]` sum of routing weights used.
    pub mass: Vec<Vec<f64>>,
    /// `[moe layer][expert]` sum of routing scores over all tokens.
    pub score: Vec<Vec<f64>>,
}

impl SubjectProfile {
    pub fn empty(name: &str, layers: usize, experts: usize) -> Self {
        Self {
            name: name.to_string(),
            sequences: 0,
            tokens: 0,
            count: vec![vec![0; experts]; layers],
            mass: vec![vec![0.0; experts]; layers],
            score: vec![vec![0.0; experts]; layers],
        }
    }

    /// Adds another subject's statistics to this one (used for pooling).
    pub fn add(&mut self, other: &SubjectProfile) {
        self.sequences += other.sequences;
        self.tokens += other.tokens;
        for (a, b) in self.count.iter_mut().zip(&other.count) {
            a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
        }
        for (a, b) in self.mass.iter_mut().zip(&other.mass) {
            a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
        }
        for (a, b) in self.score.iter_mut().zip(&other.score) {
            a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
        }
    }
}

/// Per-subject routing statistics of one model on one dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoutingProfile {
    pub format: String,
    pub version: u32,
    pub model: ProfileModel,
    pub subjects: Vec<SubjectProfile>,
}

impl RoutingProfile {
    pub fn new(model: ProfileModel, subjects: Vec<SubjectProfile>) -> Self {
        Self {
            format: PROFILE_FORMAT.to_string(),
            version: PROFILE_VERSION,
            model,
            subjects,
        }
    }

    pub fn num_layers(&self) -> usize {
        self.model.moe_layers.len()
    }

    pub fn subject(&self, name: &str) -> Option<&SubjectProfile> {
        self.subjects.iter().find(|s| s.name == name)
    }

    pub fn subject_names(&self) -> Vec<&str> {
        self.subjects.iter().map(|s| s.name.as_str()).collect()
    }

    /// All subjects summed.
    pub fn pooled(&self) -> SubjectProfile {
        let mut p = SubjectProfile::empty("pooled", self.num_layers(), self.model.num_experts);
        for s in &self.subjects {
            p.add(s);
        }
        p
    }

    /// Checks the format tag, version and that every matrix is `moe_layers × num_experts`.
    pub fn validate(&self, path: &str) -> Result<(), FormatError> {
        let bad = |msg: String| FormatError::Invalid {
            path: path.to_string(),
            msg,
        };
        crate::io::check_format_version(
            Some(&self.format),
            Some(u64::from(self.version)),
            PROFILE_FORMAT,
            PROFILE_VERSION,
            "profile",
        )
        .map_err(bad)?;
        let (l, n) = (self.num_layers(), self.model.num_experts);
        if n == 0 || l == 0 {
            return Err(bad("model has no MoE layers or no experts".into()));
        }
        if self.model.top_k == 0 || self.model.top_k > n {
            return Err(bad(format!(
                "top_k {} is outside 1..={n}",
                self.model.top_k
            )));
        }
        let mut seen = std::collections::HashSet::new();
        for s in &self.subjects {
            if !seen.insert(s.name.as_str()) {
                return Err(bad(format!("subject '{}' appears twice", s.name)));
            }
            for (what, rows) in [
                ("count", s.count.iter().map(Vec::len).collect::<Vec<_>>()),
                ("mass", s.mass.iter().map(Vec::len).collect()),
                ("score", s.score.iter().map(Vec::len).collect()),
            ] {
                if rows.len() != l {
                    return Err(bad(format!(
                        "subject '{}': {what} has {} rows, model has {l} MoE layers",
                        s.name,
                        rows.len()
                    )));
                }
                if let Some((i, len)) = rows.iter().enumerate().find(|(_, len)| **len != n) {
                    return Err(bad(format!(
                        "subject '{}': {what} row {i} has {len} entries, model has {n} experts",
                        s.name
                    )));
                }
            }
        }
        Ok(())
    }

    /// Reads and validates a profile file.
    pub fn load(path: &Path) -> Result<Self, FormatError> {
        let p = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| FormatError::Io {
            path: p.clone(),
            source,
        })?;
        let profile: RoutingProfile =
            serde_json::from_slice(&bytes).map_err(|source| FormatError::Json {
                path: p.clone(),
                what: "moescope profile",
                source,
            })?;
        profile.validate(&p)?;
        Ok(profile)
    }

    /// Writes the profile atomically (temp file + rename).
    pub fn save(&self, path: &Path) -> Result<(), FormatError> {
        let bytes = serde_json::to_vec(self).expect("profile serialises");
        crate::io::write_atomic(path, &bytes).map_err(|source| FormatError::Io {
            path: path.display().to_string(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> RoutingProfile {
        let model = ProfileModel {
            attention_kinds: Vec::new(),
            id: "t".into(),
            architecture: "OlmoeForCausalLM".into(),
            moe_layers: vec![0, 2],
            num_experts: 3,
            top_k: 1,
            score_fn: ScoreFn::Softmax,
            layout: None,
        };
        let mut a = SubjectProfile::empty("a", 2, 3);
        a.count = vec![vec![1, 2, 3], vec![0, 0, 6]];
        a.tokens = 6;
        let mut b = SubjectProfile::empty("b", 2, 3);
        b.count = vec![vec![4, 0, 0], vec![1, 1, 2]];
        b.tokens = 4;
        RoutingProfile::new(model, vec![a, b])
    }

    #[test]
    fn pooled_sums_subjects() {
        let p = tiny().pooled();
        assert_eq!(p.count, vec![vec![5, 2, 3], vec![1, 1, 8]]);
        assert_eq!(p.tokens, 10);
    }

    #[test]
    fn round_trip_and_validation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.json");
        let p = tiny();
        p.save(&path).unwrap();
        assert_eq!(RoutingProfile::load(&path).unwrap(), p);

        let mut ragged = tiny();
        ragged.subjects[1].mass[1].pop();
        ragged.save(&path).unwrap();
        let err = RoutingProfile::load(&path).unwrap_err().to_string();
        assert!(err.contains("mass row 1 has 2 entries"), "{err}");

        let mut v2 = tiny();
        v2.version = 2;
        v2.save(&path).unwrap();
        let err = RoutingProfile::load(&path).unwrap_err().to_string();
        assert!(err.contains("version 2 is not supported"), "{err}");

        std::fs::write(&path, b"{not json").unwrap();
        let err = RoutingProfile::load(&path).unwrap_err().to_string();
        assert!(
            err.contains("p.json") && err.contains("not valid JSON"),
            "{err}"
        );
    }
}
