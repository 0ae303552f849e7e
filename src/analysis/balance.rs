//! Load-balance statistics of routing counts (MoE-Sieve §3.1–3.2 and Table 7; DESIGN.md
//! "Layer CV", "Global CV", "Cold %", "Coverage@k", "Normalised entropy").
//!
//! All take `count[l][e]` (times expert `e` of MoE layer row `l` was chosen).

use serde::{Deserialize, Serialize};

use super::{to_f64, top_k_indices};

/// Coefficient of variation: population standard deviation / mean. 0 for an empty or all-zero
/// input (no activations, nothing imbalanced).
pub fn coefficient_of_variation(values: &[f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    if mean == 0.0 {
        return 0.0;
    }
    let variance = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    variance.sqrt() / mean
}

/// Layer CV: CV of `count[l]` over the layer's experts.
pub fn layer_cv(counts: &[u64]) -> f64 {
    coefficient_of_variation(&to_f64(counts))
}

/// Global CV: CV over experts `e` of Σ_l count[l][e] (each expert id's total over all layers).
pub fn global_cv(count: &[Vec<u64>]) -> f64 {
    let experts = count.first().map_or(0, Vec::len);
    let totals: Vec<f64> = (0..experts)
        .map(|e| {
            count
                .iter()
                .map(|row| row.get(e).copied().unwrap_or(0) as f64)
                .sum()
        })
        .collect();
    coefficient_of_variation(&totals)
}

/// Cold-expert share: fraction of the layer's experts with count < 0.5 × the uniform share
/// (Σ count / N). 0 for a layer without activations.
pub fn cold_share(counts: &[u64]) -> f64 {
    let total: u64 = counts.iter().sum();
    if counts.is_empty() || total == 0 {
        return 0.0;
    }
    let uniform = total as f64 / counts.len() as f64;
    let cold = counts
        .iter()
        .filter(|&&c| (c as f64) < 0.5 * uniform)
        .count();
    cold as f64 / counts.len() as f64
}

/// Coverage@k: share of the layer's activations taken by its `k` most-chosen experts.
/// 0 for a layer without activations.
pub fn coverage_at_k(counts: &[u64], k: usize) -> f64 {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return 0.0;
    }
    let top: u64 = top_k_indices(&to_f64(counts), k)
        .into_iter()
        .map(|e| counts[e])
        .sum();
    top as f64 / total as f64
}

/// Normalised entropy H(q_l) / ln N of the layer's activation distribution (1 = uniform).
/// 0 for a layer without activations or with a single expert.
pub fn normalised_entropy(counts: &[u64]) -> f64 {
    let total: u64 = counts.iter().sum();
    if total == 0 || counts.len() < 2 {
        return 0.0;
    }
    let h: f64 = counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / total as f64;
            -p * p.ln()
        })
        .sum();
    h / (counts.len() as f64).ln()
}

/// One MoE layer's load statistics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerLoad {
    /// Decoder layer index.
    pub layer: usize,
    pub cv: f64,
    pub cold_share: f64,
    /// Coverage@k for the report's k.
    pub coverage: f64,
    /// Normalised entropy H/ln N.
    pub entropy: f64,
}

/// Load statistics of every MoE layer, coverage at `k` experts.
pub fn layer_loads(count: &[Vec<u64>], moe_layers: &[usize], k: usize) -> Vec<LayerLoad> {
    count
        .iter()
        .zip(moe_layers)
        .map(|(row, &layer)| LayerLoad {
            layer,
            cv: layer_cv(row),
            cold_share: cold_share(row),
            coverage: coverage_at_k(row, k),
            entropy: normalised_entropy(row),
        })
        .collect()
}

/// Model-wide summary: global CV against the mean layer CV (MoE-Sieve Table 2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoadSummary {
    pub global_cv: f64,
    pub mean_layer_cv: f64,
    /// mean layer CV / global CV (`None` when the global CV is 0).
    pub layer_to_global_ratio: Option<f64>,
    pub mean_cold_share: f64,
    pub mean_coverage: f64,
    pub mean_entropy: f64,
}

/// Summarises [`layer_loads`] and the global CV of `count`.
pub fn load_summary(count: &[Vec<u64>], layers: &[LayerLoad]) -> LoadSummary {
    let mean = |f: fn(&LayerLoad) -> f64| {
        if layers.is_empty() {
            0.0
        } else {
            layers.iter().map(f).sum::<f64>() / layers.len() as f64
        }
    };
    let global_cv = global_cv(count);
    let mean_layer_cv = mean(|l| l.cv);
    LoadSummary {
        global_cv,
        mean_layer_cv,
        layer_to_global_ratio: (global_cv > 0.0).then(|| mean_layer_cv / global_cv),
        mean_cold_share: mean(|l| l.cold_share),
        mean_coverage: mean(|l| l.coverage),
        mean_entropy: mean(|l| l.entropy),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn cv_is_population_std_over_mean() {
        // [2, 4, 4, 4, 5, 5, 7, 9]: mean 5, population std 2.
        assert!(close(
            coefficient_of_variation(&[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]),
            0.4
        ));
        assert!(close(layer_cv(&[2, 4, 4, 4, 5, 5, 7, 9]), 0.4));
        assert_eq!(layer_cv(&[3, 3, 3]), 0.0);
        assert_eq!(layer_cv(&[0, 0]), 0.0);
    }

    #[test]
    fn global_cv_sums_each_expert_over_layers() {
        // Layer skew cancels out: expert totals are [4, 4] → global CV 0, layer CV 1 each.
        let count = vec![vec![4, 0], vec![0, 4]];
        assert_eq!(global_cv(&count), 0.0);
        assert!(close(layer_cv(&count[0]), 1.0));
        // Totals [1+3, 3+5] = [4, 8]: mean 6, std 2.
        assert!(close(global_cv(&[vec![1, 3], vec![3, 5]]), 2.0 / 6.0));
    }

    #[test]
    fn cold_share_below_half_uniform() {
        // Total 20 over 4 experts: uniform 5, threshold 2.5 → 0, 2 are cold; 3 is not.
        assert_eq!(cold_share(&[0, 2, 3, 15]), 0.5);
        assert_eq!(cold_share(&[5, 5, 5, 5]), 0.0);
        assert_eq!(cold_share(&[0, 0]), 0.0);
    }

    #[test]
    fn coverage_of_top_k() {
        assert!(close(coverage_at_k(&[1, 6, 2, 1], 1), 0.6));
        assert!(close(coverage_at_k(&[1, 6, 2, 1], 2), 0.8));
        assert_eq!(coverage_at_k(&[1, 6, 2, 1], 10), 1.0);
        assert_eq!(coverage_at_k(&[0, 0], 1), 0.0);
    }

    #[test]
    fn entropy_normalised_by_ln_n() {
        assert!(close(normalised_entropy(&[5, 5, 5, 5]), 1.0));
        assert_eq!(normalised_entropy(&[9, 0, 0, 0]), 0.0);
        // q = [0.5, 0.5, 0, 0]: H = ln 2, ln 4 = 2 ln 2 → 0.5.
        assert!(close(normalised_entropy(&[3, 3, 0, 0]), 0.5));
    }

    #[test]
    fn layer_loads_and_summary() {
        let count = vec![vec![4, 0], vec![2, 2]];
        let loads = layer_loads(&count, &[3, 7], 1);
        assert_eq!(loads[0].layer, 3);
        assert!(close(loads[0].cv, 1.0));
        assert_eq!(loads[0].cold_share, 0.5);
        assert_eq!(loads[0].coverage, 1.0);
        assert_eq!(loads[0].entropy, 0.0);
        assert_eq!(loads[1].layer, 7);
        assert_eq!(loads[1].coverage, 0.5);
        assert!(close(loads[1].entropy, 1.0));
        let s = load_summary(&count, &loads);
        // Totals [6, 2]: mean 4, std 2 → 0.5.
        assert!(close(s.global_cv, 0.5));
        assert!(close(s.mean_layer_cv, 0.5));
        assert!(close(s.layer_to_global_ratio.unwrap(), 1.0));
        assert_eq!(s.mean_cold_share, 0.25);
    }
}
