//! Pure functions over routing profiles and traces: every metric of DESIGN.md "Metrics".
//!
//! Plain data in, plain (serde-serialisable) data out; nothing here touches tensors or the GUI.
//!
//! - [`divergence`]: per-subject KL vs pooled per layer, top-k layers per subject, mean pairwise
//!   Jaccard of the top-layer sets and how often each layer appears (the blog post's analysis).
//! - [`balance`]: expert load-balance statistics per layer and globally: layer CV, global CV, cold-expert
//!   share, coverage@k, normalised entropy (MoE-Sieve §3).
//! - [`hot`]: hot sets (top-k experts per layer by count or mass), the budget → k rule,
//!   cross-subject hot-set Jaccard, count-vs-mass agreement (MoE-Sieve §3.2–3.3, §6.3).
//! - [`das`]: the Domain Advantage Score and C-DAS@k (DAS paper eqs. 1–2).
//! - [`traces`]: metrics that need individual tokens: subsample stability, domain and
//!   vocabulary specialisation, top tokens per expert, co-activation.
//! - [`compare`]: two profiles (or two traces files) of the same model: routing consistency RC,
//!   per-layer hot-set Jaccard, per-subject KL shift, router saturation.
//! - [`report`]: assembles all single-profile metrics into a [`report::ProfileReport`] (what
//!   `moescope report` prints); [`compare::compare_profiles`] does the same for two profiles.
//!
//! Conventions: matrices are `[moe layer row][expert]`, rows aligned with
//! `ProfileModel::moe_layers`; results that name a layer use the *decoder* layer index. Rankings
//! break ties by the lower index (lower layer / lower expert first).

pub mod balance;
pub mod compare;
pub mod das;
pub mod divergence;
pub mod hot;
pub mod report;
pub mod traces;

use std::collections::BTreeSet;

pub use compare::ProfileComparison;
pub use hot::{HotSignal, experts_for_budget};
pub use report::{ProfileReport, ReportOptions};

/// Errors from analysing profiles and traces (bad arguments or mismatched inputs).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AnalysisError {
    #[error("unknown subject '{name}' (the profile has: {available})")]
    UnknownSubject { name: String, available: String },
    #[error("budget {0} is outside (0, 1]: give the share of routed experts per layer")]
    InvalidBudget(f64),
    #[error("k = {k} is outside 1..={max}")]
    InvalidK { k: usize, max: usize },
    #[error("subject '{0}' has no tokens")]
    NoTokens(String),
    #[error("different models: {0}")]
    DifferentModels(String),
    #[error("traces do not match: {0}")]
    TraceMismatch(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{missing}; {alternative}")]
    MissingSignal {
        missing: crate::profile::MissingSignal,
        alternative: String,
    },
}

impl AnalysisError {
    /// A signal the profile lacks, with what to do instead (`rank by count instead`).
    pub fn missing(missing: crate::profile::MissingSignal, alternative: &str) -> Self {
        AnalysisError::MissingSignal {
            missing,
            alternative: alternative.to_string(),
        }
    }
}

/// Looks a subject up by name, with an error listing the profile's subjects.
pub fn find_subject<'a>(
    profile: &'a crate::profile::RoutingProfile,
    name: &str,
) -> Result<&'a crate::profile::SubjectProfile, AnalysisError> {
    profile
        .subject(name)
        .ok_or_else(|| AnalysisError::UnknownSubject {
            name: name.to_string(),
            available: profile.subject_names().join(", "),
        })
}

/// Jaccard index |A ∩ B| / |A ∪ B| of two sets given as slices (duplicates ignored).
/// Two empty sets are identical, so their Jaccard is 1.
pub fn jaccard<T: Ord + Copy>(a: &[T], b: &[T]) -> f64 {
    let a: BTreeSet<T> = a.iter().copied().collect();
    let b: BTreeSet<T> = b.iter().copied().collect();
    let union = a.union(&b).count();
    if union == 0 {
        return 1.0;
    }
    a.intersection(&b).count() as f64 / union as f64
}

/// Indices of the `k` largest values, largest first; ties go to the lower index.
/// `k` larger than `values.len()` returns every index.
pub fn top_k_indices(values: &[f64], k: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    // Stable sort: equal values keep ascending index order.
    order.sort_by(|&a, &b| values[b].total_cmp(&values[a]));
    order.truncate(k);
    order
}

/// `u64` counts as `f64` (for functions shared by count and mass signals).
pub fn to_f64(row: &[u64]) -> Vec<f64> {
    row.iter().map(|&c| c as f64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jaccard_hand_computed() {
        assert_eq!(jaccard(&[1, 2, 3], &[2, 3, 4]), 0.5);
        assert_eq!(jaccard(&[1], &[2]), 0.0);
        assert_eq!(jaccard::<usize>(&[], &[]), 1.0);
        assert_eq!(jaccard(&[1, 1, 2], &[2, 1]), 1.0);
    }

    #[test]
    fn top_k_breaks_ties_by_lower_index() {
        assert_eq!(top_k_indices(&[1.0, 3.0, 3.0, 2.0], 2), vec![1, 2]);
        assert_eq!(top_k_indices(&[0.0, 0.0, 0.0], 2), vec![0, 1]);
        assert_eq!(top_k_indices(&[5.0, 1.0], 9), vec![0, 1]);
    }
}
