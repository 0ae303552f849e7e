//! [`RoutingProfile`]: per-subject routing statistics of one model on one dataset.
//!
//! File format (`moescope-profile`, version 1), JSON:
//!
//! ```json
//! {"format": "moescope-profile", "version": 1,
//!  "model": {"id": "...", "architecture": "OlmoeForCausalLM", "moe_layers": [0, 1],
//!            "num_experts": 8, "top_k": 2, "score_fn": "softmax", "layout": {...}},
//!  "signals": ["count", "mass", "score"],
//!  "subjects": [{"name": "law", "sequences": 10, "tokens": 512,
//!                "count": [[...]], "mass": [[...]], "score": [[...]]}]}
//! ```
//!
//! Rows of `count` / `mass` / `score` are aligned with `model.moe_layers`; columns are experts.
//! `count[l][e]` = tokens whose chosen set contains `e`; `mass[l][e]` = sum of the routing
//! weights `e` received; `score[l][e]` = sum of the routing scores (softmax probability or
//! sigmoid score) of `e` over all tokens, chosen or not.
//!
//! `signals` says which of the three the profile carries (absent: all three, as every profile
//! MoEScope records itself). Routing imported from a serving engine ([`crate::import`]) knows
//! the chosen experts only: such a profile is `["count"]`, its subjects have no `mass` / `score`,
//! and `source` says where the routing came from. Code that needs mass or scores asks
//! [`SubjectProfile::mass`] / [`SubjectProfile::score`], which fail with [`MissingSignal`]
//! instead of reading zeros.

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

/// A per-(layer, expert) routing quantity a profile can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RoutingSignal {
    /// Tokens whose chosen set contains the expert.
    Count,
    /// Sum of the routing weights the expert received.
    Mass,
    /// Sum of the routing scores over all tokens, chosen or not.
    Score,
}

impl RoutingSignal {
    pub const ALL: [RoutingSignal; 3] = [
        RoutingSignal::Count,
        RoutingSignal::Mass,
        RoutingSignal::Score,
    ];

    /// What the signal is, for messages (`routing mass`).
    pub fn describe(self) -> &'static str {
        match self {
            RoutingSignal::Count => "routing counts",
            RoutingSignal::Mass => "routing mass (the weights experts received)",
            RoutingSignal::Score => "routing scores (over all experts)",
        }
    }
}

impl std::fmt::Display for RoutingSignal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RoutingSignal::Count => "count",
            RoutingSignal::Mass => "mass",
            RoutingSignal::Score => "score",
        })
    }
}

fn all_signals() -> Vec<RoutingSignal> {
    RoutingSignal::ALL.to_vec()
}

/// A subject's matrix of a signal its profile does not carry was asked for.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "subject '{subject}' has no {}: the profile carries routing counts only (routing imported \
     from a serving engine records which experts were chosen, not their weights or scores)",
    signal.describe()
)]
pub struct MissingSignal {
    pub signal: RoutingSignal,
    pub subject: String,
}

/// Where an imported profile's routing came from ([`crate::import`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProfileSource {
    /// The engine format (`vllm`, `sglang`, `sglang-stat`, `megatron`, `llama-cpp`, ...).
    pub format: String,
    /// The files read, as given.
    pub files: Vec<String>,
    /// Records (responses, dump rows, trace lines) read.
    pub records: u64,
    /// Token positions counted.
    pub tokens: u64,
    /// Positions without routing (vLLM prefix-cache hits, SGLang padding), skipped.
    pub skipped_positions: u64,
    /// How the engine's layer numbering maps to the model's MoE layers.
    pub layer_mapping: String,
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
    /// `[moe layer][expert]` sum of routing weights used; `None` in count-only profiles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mass: Option<Vec<Vec<f64>>>,
    /// `[moe layer][expert]` sum of routing scores over all tokens; `None` in count-only
    /// profiles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<Vec<Vec<f64>>>,
}

impl SubjectProfile {
    /// A subject with no tokens yet, carrying all three signals.
    pub fn empty(name: &str, layers: usize, experts: usize) -> Self {
        Self::empty_with(name, layers, experts, &RoutingSignal::ALL)
    }

    /// A subject with no tokens yet, carrying `signals` (count always).
    pub fn empty_with(
        name: &str,
        layers: usize,
        experts: usize,
        signals: &[RoutingSignal],
    ) -> Self {
        let zeros = |signal| {
            signals
                .contains(&signal)
                .then(|| vec![vec![0.0; experts]; layers])
        };
        Self {
            name: name.to_string(),
            sequences: 0,
            tokens: 0,
            count: vec![vec![0; experts]; layers],
            mass: zeros(RoutingSignal::Mass),
            score: zeros(RoutingSignal::Score),
        }
    }

    /// The mass matrix, or which signal is missing.
    pub fn mass(&self) -> Result<&[Vec<f64>], MissingSignal> {
        self.signal_rows(RoutingSignal::Mass, self.mass.as_deref())
    }

    /// The score matrix, or which signal is missing.
    pub fn score(&self) -> Result<&[Vec<f64>], MissingSignal> {
        self.signal_rows(RoutingSignal::Score, self.score.as_deref())
    }

    /// Any signal's matrix as `f64` (counts converted).
    pub fn signal(&self, signal: RoutingSignal) -> Result<Vec<Vec<f64>>, MissingSignal> {
        Ok(match signal {
            RoutingSignal::Count => self
                .count
                .iter()
                .map(|r| r.iter().map(|&c| c as f64).collect())
                .collect(),
            RoutingSignal::Mass => self.mass()?.to_vec(),
            RoutingSignal::Score => self.score()?.to_vec(),
        })
    }

    /// Whether this subject carries `signal`.
    pub fn has(&self, signal: RoutingSignal) -> bool {
        match signal {
            RoutingSignal::Count => true,
            RoutingSignal::Mass => self.mass.is_some(),
            RoutingSignal::Score => self.score.is_some(),
        }
    }

    fn signal_rows<'a>(
        &self,
        signal: RoutingSignal,
        rows: Option<&'a [Vec<f64>]>,
    ) -> Result<&'a [Vec<f64>], MissingSignal> {
        rows.ok_or_else(|| MissingSignal {
            signal,
            subject: self.name.clone(),
        })
    }

    /// Adds another subject's statistics to this one (used for pooling). A signal the other
    /// subject lacks is dropped from the sum.
    pub fn add(&mut self, other: &SubjectProfile) {
        self.sequences += other.sequences;
        self.tokens += other.tokens;
        for (a, b) in self.count.iter_mut().zip(&other.count) {
            a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
        }
        for (mine, theirs) in [
            (&mut self.mass, &other.mass),
            (&mut self.score, &other.score),
        ] {
            match (mine.as_mut(), theirs) {
                (Some(a), Some(b)) => {
                    for (a, b) in a.iter_mut().zip(b) {
                        a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
                    }
                }
                _ => *mine = None,
            }
        }
    }
}

/// Per-subject routing statistics of one model on one dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoutingProfile {
    pub format: String,
    pub version: u32,
    pub model: ProfileModel,
    /// The signals every subject carries; `count` always.
    #[serde(default = "all_signals")]
    pub signals: Vec<RoutingSignal>,
    /// Where imported routing came from; `None` for profiles MoEScope recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<ProfileSource>,
    pub subjects: Vec<SubjectProfile>,
}

impl RoutingProfile {
    /// A profile whose signals are those its subjects carry (all three when it has none).
    pub fn new(model: ProfileModel, subjects: Vec<SubjectProfile>) -> Self {
        let signals = RoutingSignal::ALL
            .into_iter()
            .filter(|&s| subjects.iter().all(|p| p.has(s)))
            .collect();
        Self {
            format: PROFILE_FORMAT.to_string(),
            version: PROFILE_VERSION,
            model,
            signals,
            source: None,
            subjects,
        }
    }

    /// Whether every subject carries `signal`.
    pub fn has(&self, signal: RoutingSignal) -> bool {
        self.signals.contains(&signal)
    }

    /// True for profiles with counts only (imported routing).
    pub fn is_count_only(&self) -> bool {
        !self.has(RoutingSignal::Mass) && !self.has(RoutingSignal::Score)
    }

    /// A short line saying which signals the profile carries and, for imported ones, from
    /// where (`counts only, imported from vllm (3 files)`).
    pub fn signals_caption(&self) -> String {
        let carried = if self.is_count_only() {
            "counts only".to_string()
        } else {
            let names: Vec<String> = self.signals.iter().map(|s| s.to_string()).collect();
            names.join(", ")
        };
        match &self.source {
            Some(src) => format!(
                "{carried}, imported from {} ({} file{})",
                src.format,
                src.files.len(),
                if src.files.len() == 1 { "" } else { "s" }
            ),
            None => carried,
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
        let mut p = SubjectProfile::empty_with(
            "pooled",
            self.num_layers(),
            self.model.num_experts,
            &self.signals,
        );
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
        if !self.has(RoutingSignal::Count) {
            return Err(bad("signals must include \"count\"".into()));
        }
        let mut seen = std::collections::HashSet::new();
        for s in &self.subjects {
            if !seen.insert(s.name.as_str()) {
                return Err(bad(format!("subject '{}' appears twice", s.name)));
            }
            for signal in [RoutingSignal::Mass, RoutingSignal::Score] {
                match (self.has(signal), s.has(signal)) {
                    (true, false) => {
                        return Err(bad(format!(
                            "subject '{}' has no {signal} matrix, but signals lists \"{signal}\"",
                            s.name
                        )));
                    }
                    (false, true) => {
                        return Err(bad(format!(
                            "subject '{}' has a {signal} matrix, but signals does not list \"{signal}\"",
                            s.name
                        )));
                    }
                    _ => {}
                }
            }
            let lens = |m: &Option<Vec<Vec<f64>>>| -> Vec<usize> {
                m.as_ref()
                    .map_or_else(|| vec![n; l], |rows| rows.iter().map(Vec::len).collect())
            };
            for (what, rows) in [
                ("count", s.count.iter().map(Vec::len).collect::<Vec<_>>()),
                ("mass", lens(&s.mass)),
                ("score", lens(&s.score)),
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
    fn count_only_profiles_round_trip_without_mass_or_score() {
        let mut p = tiny();
        for s in &mut p.subjects {
            s.mass = None;
            s.score = None;
        }
        let p = RoutingProfile::new(p.model, p.subjects);
        assert_eq!(p.signals, vec![RoutingSignal::Count]);
        assert!(p.is_count_only());
        let pooled = p.pooled();
        assert_eq!(pooled.count, vec![vec![5, 2, 3], vec![1, 1, 8]]);
        let err = pooled.mass().unwrap_err();
        assert_eq!(err.signal, RoutingSignal::Mass);
        assert!(err.to_string().contains("counts only"), "{err}");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.json");
        p.save(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(r#""signals":["count"]"#), "{text}");
        assert!(
            !text.contains("mass") && !text.contains("score\""),
            "{text}"
        );
        assert_eq!(RoutingProfile::load(&path).unwrap(), p);
    }

    #[test]
    fn profiles_without_a_signals_field_carry_all_three() {
        let mut value = serde_json::to_value(tiny()).unwrap();
        value.as_object_mut().unwrap().remove("signals");
        let p: RoutingProfile = serde_json::from_value(value).unwrap();
        assert_eq!(p.signals, RoutingSignal::ALL.to_vec());
        p.validate("old.json").unwrap();
    }

    #[test]
    fn round_trip_and_validation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.json");
        let p = tiny();
        p.save(&path).unwrap();
        assert_eq!(RoutingProfile::load(&path).unwrap(), p);

        let mut ragged = tiny();
        ragged.subjects[1].mass.as_mut().unwrap()[1].pop();
        ragged.save(&path).unwrap();
        let err = RoutingProfile::load(&path).unwrap_err().to_string();
        assert!(err.contains("mass row 1 has 2 entries"), "{err}");

        let mut v2 = tiny();
        v2.version = 2;
        v2.save(&path).unwrap();
        let err = RoutingProfile::load(&path).unwrap_err().to_string();
        assert!(err.contains("version 2 is not supported"), "{err}");

        let mut half = tiny();
        half.subjects[0].score = None;
        half.save(&path).unwrap();
        let err = RoutingProfile::load(&path).unwrap_err().to_string();
        assert!(
            err.contains("subject 'a' has no score matrix, but signals lists \"score\""),
            "{err}"
        );

        std::fs::write(&path, b"{not json").unwrap();
        let err = RoutingProfile::load(&path).unwrap_err().to_string();
        assert!(
            err.contains("p.json") && err.contains("not valid JSON"),
            "{err}"
        );
    }
}
