//! Domain Advantage Score and C-DAS@k (DAS paper, eqs. 1–2; DESIGN.md "DAS").
//!
//! DAS[l][e] = mean_{t∈D_domain} g_t,l,e − mean_{t∈D_general} g_t,l,e, where g is the routing
//! score over all experts (softmax probability or sigmoid score). From a profile the means are
//! `score[l][e] / tokens`; the general set pools the `score` and `tokens` of its subjects (the
//! other subjects by default, or a named set), so its mean is over all of its tokens.
//!
//! Profiles without routing scores (imported routing carries counts only) get **DAS on counts**:
//! the same difference of per-token means with g replaced by the indicator e ∈ S_t, i.e.
//! `count[l][e] / tokens` — how much more often the domain's tokens choose the expert. Every
//! result records which signal it was computed on ([`DomainAdvantage::signal`]).

use serde::{Deserialize, Serialize};

use super::{AnalysisError, find_subject, top_k_indices};
use crate::profile::{RoutingProfile, RoutingSignal, SubjectProfile};

/// The signal DAS is computed on when none is named: routing scores when the profile carries
/// them (the paper's definition), counts otherwise.
pub fn default_das_signal(profile: &RoutingProfile) -> RoutingSignal {
    if profile.has(RoutingSignal::Score) {
        RoutingSignal::Score
    } else {
        RoutingSignal::Count
    }
}

/// Which subjects make up the general data set D_general.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "subjects")]
pub enum GeneralSet {
    /// Every subject of the profile except the domain, pooled.
    OtherSubjects,
    /// The named subjects, pooled.
    Named(Vec<String>),
}

impl GeneralSet {
    /// `OtherSubjects` for an empty list, `Named` otherwise.
    pub fn from_names(names: &[String]) -> Self {
        if names.is_empty() {
            GeneralSet::OtherSubjects
        } else {
            GeneralSet::Named(names.to_vec())
        }
    }
}

/// `signal[l][e] / tokens`: the mean per token of a signal (for scores, ḡ of the DAS paper;
/// for counts, the share of tokens choosing the expert).
pub fn per_token_means(
    subject: &SubjectProfile,
    signal: RoutingSignal,
) -> Result<Vec<Vec<f64>>, AnalysisError> {
    let sums = subject
        .signal(signal)
        .map_err(|missing| AnalysisError::missing(missing, "compute DAS on counts instead"))?;
    if subject.tokens == 0 {
        return Err(AnalysisError::NoTokens(subject.name.clone()));
    }
    let n = subject.tokens as f64;
    Ok(sums
        .iter()
        .map(|row| row.iter().map(|s| s / n).collect())
        .collect())
}

/// DAS from two (possibly pooled) subjects' sums of `signal` and token counts (eq. 1).
pub fn domain_advantage_between(
    domain: &SubjectProfile,
    general: &SubjectProfile,
    signal: RoutingSignal,
) -> Result<Vec<Vec<f64>>, AnalysisError> {
    let d = per_token_means(domain, signal)?;
    let g = per_token_means(general, signal)?;
    Ok(d.iter()
        .zip(&g)
        .map(|(dr, gr)| dr.iter().zip(gr).map(|(a, b)| a - b).collect())
        .collect())
}

/// DAS of subject `domain` against `general`, with the general subjects' names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DomainAdvantage {
    pub domain: String,
    pub general: Vec<String>,
    /// What g is: routing scores (the paper) or counts (DAS on counts).
    pub signal: RoutingSignal,
    /// `[moe layer row][expert]`.
    pub das: Vec<Vec<f64>>,
}

/// DAS[l][e] of subject `domain` against the pooled `general` subjects of the profile, on
/// `signal` ([`default_das_signal`] picks scores when the profile has them).
///
/// Errors on unknown subject names, a general set that is empty (a profile with one subject),
/// subjects without tokens and a signal the profile does not carry.
pub fn domain_advantage(
    profile: &RoutingProfile,
    domain: &str,
    general: &GeneralSet,
    signal: RoutingSignal,
) -> Result<DomainAdvantage, AnalysisError> {
    let domain_profile = find_subject(profile, domain)?;
    let general_names: Vec<String> = match general {
        GeneralSet::OtherSubjects => profile
            .subjects
            .iter()
            .filter(|s| s.name != domain)
            .map(|s| s.name.clone())
            .collect(),
        GeneralSet::Named(names) => names.clone(),
    };
    if general_names.is_empty() {
        return Err(AnalysisError::Invalid(format!(
            "no general data for DAS: '{domain}' is the profile's only subject; name a general set"
        )));
    }
    let mut pooled = SubjectProfile::empty_with(
        &general_names.join("+"),
        profile.num_layers(),
        profile.model.num_experts,
        &profile.signals,
    );
    for name in &general_names {
        pooled.add(find_subject(profile, name)?);
    }
    Ok(DomainAdvantage {
        domain: domain.to_string(),
        das: domain_advantage_between(domain_profile, &pooled, signal)?,
        general: general_names,
        signal,
    })
}

/// C-DAS@k: how much of each layer's positive domain advantage its top-k experts hold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CumulativeDas {
    pub k: usize,
    /// Σ_l (Σ_{e∈T_l} max(DAS_le, 0)) / (Σ_e max(DAS_le, 0)) (DAS paper eq. 2).
    pub total: f64,
    /// `total / L`, comparable across models with different depths.
    pub per_layer_mean: f64,
    /// Each layer's term; 0 for a layer with no positive DAS.
    pub per_layer: Vec<f64>,
}

/// C-DAS@k, T_l = the top-k experts of layer l by DAS (ties: lower expert). A layer with no
/// positive DAS contributes 0 (its 0/0 term is taken as no concentration).
pub fn cumulative_das(das: &[Vec<f64>], k: usize) -> CumulativeDas {
    let per_layer: Vec<f64> = das
        .iter()
        .map(|row| {
            let positive_sum: f64 = row.iter().map(|v| v.max(0.0)).sum();
            if positive_sum <= 0.0 {
                return 0.0;
            }
            let top: f64 = top_k_indices(row, k)
                .into_iter()
                .map(|e| row[e].max(0.0))
                .sum();
            top / positive_sum
        })
        .collect();
    let total: f64 = per_layer.iter().sum();
    CumulativeDas {
        k,
        total,
        per_layer_mean: if per_layer.is_empty() {
            0.0
        } else {
            total / per_layer.len() as f64
        },
        per_layer,
    }
}

/// One (layer, expert) cell with its DAS.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExpertDas {
    /// Decoder layer index.
    pub layer: usize,
    pub expert: usize,
    pub das: f64,
}

/// The `n` cells with the highest DAS across all layers (ties: lower layer, then lower expert).
pub fn top_das_experts(das: &[Vec<f64>], moe_layers: &[usize], n: usize) -> Vec<ExpertDas> {
    let mut cells: Vec<ExpertDas> = das
        .iter()
        .zip(moe_layers)
        .flat_map(|(row, &layer)| {
            row.iter()
                .enumerate()
                .map(move |(expert, &das)| ExpertDas { layer, expert, das })
        })
        .collect();
    cells.sort_by(|a, b| b.das.total_cmp(&a.das));
    cells.truncate(n);
    cells
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::ProfileModel;

    const SCORE: RoutingSignal = RoutingSignal::Score;

    fn subject(name: &str, tokens: u64, score: Vec<Vec<f64>>) -> SubjectProfile {
        let mut s = SubjectProfile::empty(name, score.len(), score[0].len());
        s.tokens = tokens;
        s.score = Some(score);
        s
    }

    fn profile() -> RoutingProfile {
        let model = ProfileModel {
            attention_kinds: Vec::new(),
            id: "t".into(),
            architecture: "X".into(),
            moe_layers: vec![2, 4],
            num_experts: 3,
            top_k: 1,
            score_fn: crate::model::router::ScoreFn::Softmax,
            layout: None,
        };
        RoutingProfile::new(
            model,
            vec![
                // Means: [0.6, 0.3, 0.1], [0.2, 0.2, 0.6]
                subject("math", 10, vec![vec![6.0, 3.0, 1.0], vec![2.0, 2.0, 6.0]]),
                // Means: [0.2, 0.4, 0.4], [0.5, 0.25, 0.25]
                subject("law", 20, vec![vec![4.0, 8.0, 8.0], vec![10.0, 5.0, 5.0]]),
                // Means: [0.2, 0.2, 0.6], [0.2, 0.6, 0.2]
                subject("code", 10, vec![vec![2.0, 2.0, 6.0], vec![2.0, 6.0, 2.0]]),
            ],
        )
    }

    fn close_rows(a: &[Vec<f64>], b: &[Vec<f64>]) -> bool {
        a.iter()
            .flatten()
            .zip(b.iter().flatten())
            .all(|(x, y)| (x - y).abs() < 1e-12)
    }

    #[test]
    fn das_against_a_named_subject() {
        let p = profile();
        let d =
            domain_advantage(&p, "math", &GeneralSet::Named(vec!["law".into()]), SCORE).unwrap();
        assert_eq!(d.general, vec!["law"]);
        assert!(close_rows(
            &d.das,
            &[vec![0.4, -0.1, -0.3], vec![-0.3, -0.05, 0.35]]
        ));
    }

    #[test]
    fn das_against_other_subjects_pools_tokens() {
        let p = profile();
        let d = domain_advantage(&p, "math", &GeneralSet::OtherSubjects, SCORE).unwrap();
        assert_eq!(d.general, vec!["law", "code"]);
        // General = law + code: 30 tokens; layer 0 sums [6, 10, 14] → [0.2, 1/3, 14/30].
        // Layer 1 sums [12, 11, 7] → [0.4, 11/30, 7/30].
        let expected = vec![
            vec![0.6 - 0.2, 0.3 - 1.0 / 3.0, 0.1 - 14.0 / 30.0],
            vec![0.2 - 0.4, 0.2 - 11.0 / 30.0, 0.6 - 7.0 / 30.0],
        ];
        assert!(close_rows(&d.das, &expected));
    }

    #[test]
    fn das_errors() {
        let p = profile();
        let err = domain_advantage(&p, "poetry", &GeneralSet::OtherSubjects, SCORE).unwrap_err();
        assert!(
            err.to_string().contains("unknown subject 'poetry'"),
            "{err}"
        );
        assert!(err.to_string().contains("math, law, code"), "{err}");
        let err = domain_advantage(&p, "math", &GeneralSet::Named(vec!["nope".into()]), SCORE)
            .unwrap_err();
        assert!(matches!(err, AnalysisError::UnknownSubject { .. }));
        let mut single = p.clone();
        single.subjects.truncate(1);
        assert!(domain_advantage(&single, "math", &GeneralSet::OtherSubjects, SCORE).is_err());
        let mut empty = p.clone();
        empty.subjects[0].tokens = 0;
        assert_eq!(
            domain_advantage(&empty, "math", &GeneralSet::OtherSubjects, SCORE).unwrap_err(),
            AnalysisError::NoTokens("math".into())
        );
    }

    #[test]
    fn das_on_counts_compares_how_often_experts_are_chosen() {
        let mut p = profile();
        // math: 10 tokens, law: 20, code: 10; top-1 counts per layer.
        let counts = [
            vec![vec![6, 3, 1], vec![2, 2, 6]],
            vec![vec![4, 8, 8], vec![10, 5, 5]],
            vec![vec![2, 2, 6], vec![2, 6, 2]],
        ];
        for (s, c) in p.subjects.iter_mut().zip(counts) {
            s.count = c;
            s.score = None;
            s.mass = None;
        }
        let p = RoutingProfile::new(p.model, p.subjects);
        assert_eq!(default_das_signal(&p), RoutingSignal::Count);
        let d =
            domain_advantage(&p, "math", &GeneralSet::OtherSubjects, RoutingSignal::Count).unwrap();
        assert_eq!(d.signal, RoutingSignal::Count);
        // General = law + code, 30 tokens: layer 0 [6, 10, 14] / 30, layer 1 [12, 11, 7] / 30.
        let expected = vec![
            vec![0.6 - 0.2, 0.3 - 1.0 / 3.0, 0.1 - 14.0 / 30.0],
            vec![0.2 - 0.4, 0.2 - 11.0 / 30.0, 0.6 - 7.0 / 30.0],
        ];
        assert!(close_rows(&d.das, &expected));
        let err = domain_advantage(&p, "math", &GeneralSet::OtherSubjects, SCORE).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("routing scores") && text.contains("DAS on counts"),
            "{text}"
        );
    }

    #[test]
    fn c_das_hand_computed() {
        let das = vec![vec![0.4, -0.1, 0.1, 0.3], vec![-0.2, -0.1, -0.3, -0.4]];
        let c = cumulative_das(&das, 1);
        // Layer 0: positive sum 0.8, top-1 = 0.4 → 0.5. Layer 1: nothing positive → 0.
        assert!((c.per_layer[0] - 0.5).abs() < 1e-12);
        assert_eq!(c.per_layer[1], 0.0);
        assert!((c.total - 0.5).abs() < 1e-12);
        assert!((c.per_layer_mean - 0.25).abs() < 1e-12);
        let c2 = cumulative_das(&das, 2);
        assert!((c2.per_layer[0] - 0.875).abs() < 1e-12);
    }

    #[test]
    fn top_cells_by_das() {
        let das = vec![vec![0.4, -0.1], vec![0.4, 0.5]];
        let top = top_das_experts(&das, &[2, 4], 2);
        assert_eq!((top[0].layer, top[0].expert), (4, 1));
        assert_eq!((top[1].layer, top[1].expert), (2, 0));
    }
}
