//! Assembles every single-profile metric into one serialisable [`ProfileReport`]: what
//! `moescope report` prints (as tables, JSON or CSV) and what the GUI's analysis panels show.

use serde::{Deserialize, Serialize};

use super::balance::{LayerLoad, LoadSummary, layer_loads, load_summary};
use super::das::{
    CumulativeDas, ExpertDas, GeneralSet, cumulative_das, default_das_signal, domain_advantage,
    top_das_experts,
};
use super::divergence::{TopLayerOverlap, subject_divergences, top_layer_overlap};
use super::hot::{
    CountMassAgreement, HotSetJaccardMatrix, HotSignal, check_k, count_mass_agreement,
    experts_for_budget, hot_set_jaccard_matrix,
};
use super::traces::{
    CoActivationPair, DomainSpecialisation, StabilityOptions, SubsampleStability, TopToken,
    TopTokenOrder, check_traces, co_activation, count_traces, domain_specialisation_by_subject,
    subjects_in_order, subsample_stability, token_routing_table, top_co_activation_pairs,
    top_tokens_for_expert,
};
use super::{AnalysisError, top_k_indices};
use crate::profile::{ProfileSource, RoutingProfile, RoutingSignal, SequenceTrace};

/// What the report computes and how much of it it lists.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportOptions {
    /// Top layers by KL per subject (the blog uses 3).
    pub top_layers: usize,
    /// Share of routed experts per layer for hot sets, coverage and C-DAS (MoE-Sieve: 0.25).
    pub budget: f64,
    /// Seed of the subsample-stability trials.
    pub seed: u64,
    /// General set for each subject's DAS.
    pub general: GeneralSet,
    /// What DAS is computed on; `None`: routing scores when the profile has them, else counts.
    #[serde(default)]
    pub das_signal: Option<RoutingSignal>,
    /// Cells listed per subject in the DAS summary.
    pub das_top: usize,
    /// Top tokens listed per expert (traces only).
    pub top_tokens: usize,
    /// Expert pairs listed per layer in the co-activation summary (traces only).
    pub co_activation_pairs: usize,
    /// Cells listed per subject in the domain-specialisation summary (traces only).
    pub specialisation_top: usize,
}

impl Default for ReportOptions {
    fn default() -> Self {
        Self {
            top_layers: 3,
            budget: super::hot::DEFAULT_BUDGET,
            seed: 0,
            general: GeneralSet::OtherSubjects,
            das_signal: None,
            das_top: 10,
            top_tokens: 5,
            co_activation_pairs: 10,
            specialisation_top: 10,
        }
    }
}

/// The profiled model, as the report shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportModel {
    pub id: String,
    pub architecture: String,
    pub moe_layers: Vec<usize>,
    pub num_experts: usize,
    pub top_k: usize,
}

/// One subject's size, KL vs pooled per MoE layer and top layers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubjectSummary {
    pub name: String,
    pub sequences: u64,
    pub tokens: u64,
    /// KL vs pooled per MoE layer (rows of `model.moe_layers`).
    pub kl: Vec<f64>,
    /// Decoder layer indices, highest KL first.
    pub top_layers: Vec<usize>,
    /// Load statistics of the subject's own counts.
    pub load: LoadSummary,
}

/// Count-vs-mass agreement of the pooled profile and of each subject.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CountMassReport {
    pub pooled: CountMassAgreement,
    pub subjects: Vec<CountMassAgreement>,
}

/// One subject's DAS against the general set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DasSummary {
    pub subject: String,
    pub general: Vec<String>,
    /// Routing scores (the paper's DAS) or counts (DAS on counts).
    pub signal: RoutingSignal,
    pub c_das: CumulativeDas,
    /// Highest-DAS cells across all layers.
    pub top_experts: Vec<ExpertDas>,
}

/// Everything `moescope report` shows for one profile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProfileReport {
    pub model: ReportModel,
    /// The signals the profile carries (`["count"]` for imported routing).
    pub signals: Vec<RoutingSignal>,
    /// Where imported routing came from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<ProfileSource>,
    pub budget: f64,
    /// Experts per layer the budget gives (hot sets, coverage, C-DAS).
    pub hot_k: usize,
    pub top_layers_k: usize,
    pub subjects: Vec<SubjectSummary>,
    pub top_layer_jaccard: TopLayerOverlap,
    /// Pooled load statistics per MoE layer.
    pub layers: Vec<LayerLoad>,
    /// Pooled model-wide load summary (`global_cv`, `mean_layer_cv`, ...).
    #[serde(flatten)]
    pub load: LoadSummary,
    pub hot_set_jaccard: HotSetJaccardMatrix,
    /// Absent for count-only profiles (a note says so).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count_mass_agreement: Option<CountMassReport>,
    pub das: Vec<DasSummary>,
    /// Things left out and why (e.g. DAS for a subject without tokens).
    pub notes: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traces: Option<TraceReport>,
}

/// Subsample stability of one subject's sequences.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubjectStability {
    pub subject: String,
    pub stability: SubsampleStability,
}

/// One cell with its domain specialisation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExpertShare {
    /// Decoder layer index.
    pub layer: usize,
    pub expert: usize,
    pub share: f64,
}

/// The most specialised cells of one subject.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DomainSpecialisationSummary {
    pub subject: String,
    pub tokens: u64,
    pub top: Vec<ExpertShare>,
}

/// Top tokens of one expert.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExpertTopTokens {
    /// Decoder layer index.
    pub layer: usize,
    pub expert: usize,
    pub tokens: Vec<TopToken>,
}

/// The most frequent expert pairs of one layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerCoActivation {
    /// Decoder layer index.
    pub layer: usize,
    pub top_pairs: Vec<CoActivationPair>,
}

/// Metrics from per-token traces.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceReport {
    pub sequences: usize,
    pub tokens: u64,
    /// All sequences.
    pub subsample_stability: SubsampleStability,
    pub subject_stability: Vec<SubjectStability>,
    pub domain_specialisation: Vec<DomainSpecialisationSummary>,
    /// Every expert of every layer, tokens ranked by occurrences routed to the expert.
    pub top_tokens: Vec<ExpertTopTokens>,
    pub co_activation: Vec<LayerCoActivation>,
}

/// Computes the report of `profile` (and of `traces`, if given: they must be of the same model).
pub fn build_report(
    profile: &RoutingProfile,
    traces: Option<&[SequenceTrace]>,
    options: &ReportOptions,
) -> Result<ProfileReport, AnalysisError> {
    let model = &profile.model;
    let (num_layers, num_experts) = (profile.num_layers(), model.num_experts);
    let hot_k = experts_for_budget(num_experts, options.budget)?;
    if options.top_layers == 0 {
        return Err(AnalysisError::Invalid(
            "the number of top layers per subject must be at least 1".into(),
        ));
    }
    let mut notes = Vec::new();
    let top_layers_k = options.top_layers.min(num_layers);
    if top_layers_k < options.top_layers {
        notes.push(format!(
            "the model has {num_layers} MoE layers, so top layers are the top {top_layers_k}, not {}",
            options.top_layers
        ));
    }
    if let GeneralSet::Named(names) = &options.general {
        for name in names {
            super::find_subject(profile, name)?;
        }
    }
    let pooled = profile.pooled();
    let divergences = subject_divergences(profile, top_layers_k);
    let top_layer_jaccard = top_layer_overlap(
        &divergences
            .iter()
            .map(|d| d.top_layers.clone())
            .collect::<Vec<_>>(),
    );
    let subjects = profile
        .subjects
        .iter()
        .zip(divergences)
        .map(|(s, d)| SubjectSummary {
            name: s.name.clone(),
            sequences: s.sequences,
            tokens: s.tokens,
            kl: d.kl,
            top_layers: d.top_layers,
            load: load_summary(&s.count, &layer_loads(&s.count, &model.moe_layers, hot_k)),
        })
        .collect();
    let layers = layer_loads(&pooled.count, &model.moe_layers, hot_k);
    let load = load_summary(&pooled.count, &layers);

    let das_signal = options
        .das_signal
        .unwrap_or_else(|| default_das_signal(profile));
    if !profile.has(das_signal)
        && let Some(first) = profile.subjects.first()
    {
        let missing = crate::profile::MissingSignal {
            signal: das_signal,
            subject: first.name.clone(),
        };
        return Err(AnalysisError::missing(
            missing,
            "compute DAS on counts instead",
        ));
    }
    if das_signal != RoutingSignal::Score && options.das_signal.is_none() {
        notes.push(format!(
            "DAS is on counts (how much more often a subject's tokens choose each expert): \
             the profile has no routing scores ({})",
            profile.signals_caption()
        ));
    }
    let mut das = Vec::new();
    for s in &profile.subjects {
        if let GeneralSet::Named(names) = &options.general
            && names.contains(&s.name)
        {
            continue;
        }
        match domain_advantage(profile, &s.name, &options.general, das_signal) {
            Ok(d) => das.push(DasSummary {
                subject: s.name.clone(),
                signal: d.signal,
                c_das: cumulative_das(&d.das, hot_k),
                top_experts: top_das_experts(&d.das, &model.moe_layers, options.das_top),
                general: d.general,
            }),
            Err(e) => notes.push(format!("no DAS for '{}': {e}", s.name)),
        }
    }

    let count_mass_agreement = if profile.has(RoutingSignal::Mass) {
        Some(CountMassReport {
            pooled: count_mass_agreement(&pooled, hot_k)?,
            subjects: profile
                .subjects
                .iter()
                .map(|s| count_mass_agreement(s, hot_k))
                .collect::<Result<_, _>>()?,
        })
    } else {
        notes.push(format!(
            "no count-vs-mass agreement: the profile has no routing mass ({})",
            profile.signals_caption()
        ));
        None
    };
    let traces = match traces {
        Some(t) => Some(trace_report(profile, t, hot_k, options)?),
        None => None,
    };
    Ok(ProfileReport {
        signals: profile.signals.clone(),
        source: profile.source.clone(),
        model: ReportModel {
            id: model.id.clone(),
            architecture: model.architecture.clone(),
            moe_layers: model.moe_layers.clone(),
            num_experts,
            top_k: model.top_k,
        },
        budget: options.budget,
        hot_k,
        top_layers_k,
        subjects,
        top_layer_jaccard,
        layers,
        load,
        hot_set_jaccard: hot_set_jaccard_matrix(profile, HotSignal::Count, hot_k)?,
        count_mass_agreement,
        das,
        notes,
        traces,
    })
}

/// The trace-based part of the report.
fn trace_report(
    profile: &RoutingProfile,
    traces: &[SequenceTrace],
    hot_k: usize,
    options: &ReportOptions,
) -> Result<TraceReport, AnalysisError> {
    let model = &profile.model;
    let (num_layers, num_experts) = (profile.num_layers(), model.num_experts);
    check_traces(traces, &model.moe_layers, num_experts)?;
    check_k(hot_k, num_experts)?;
    let stability_options = StabilityOptions::moe_sieve(hot_k, options.seed);
    let all: Vec<&SequenceTrace> = traces.iter().collect();
    let subsample = subsample_stability(&all, num_layers, num_experts, &stability_options)?;
    let mut subject_stability = Vec::new();
    for subject in subjects_in_order(traces) {
        let own: Vec<&SequenceTrace> = traces.iter().filter(|t| t.subject == subject).collect();
        subject_stability.push(SubjectStability {
            stability: subsample_stability(&own, num_layers, num_experts, &stability_options)?,
            subject,
        });
    }
    let domain_specialisation = domain_specialisation_by_subject(traces, num_layers, num_experts)
        .into_iter()
        .map(|d| summarise_specialisation(d, &model.moe_layers, options.specialisation_top))
        .collect();
    let mut top_tokens = Vec::new();
    let mut co = Vec::new();
    for (row, &layer) in model.moe_layers.iter().enumerate() {
        let table = token_routing_table(traces, row, num_experts);
        for expert in 0..num_experts {
            top_tokens.push(ExpertTopTokens {
                layer,
                expert,
                tokens: top_tokens_for_expert(
                    &table,
                    expert,
                    options.top_tokens,
                    TopTokenOrder::RoutedCount,
                ),
            });
        }
        co.push(LayerCoActivation {
            layer,
            top_pairs: top_co_activation_pairs(
                &co_activation(traces, row, layer, num_experts),
                options.co_activation_pairs,
            ),
        });
    }
    Ok(TraceReport {
        sequences: traces.len(),
        tokens: count_traces(traces, 0, 0).tokens,
        subsample_stability: subsample,
        subject_stability,
        domain_specialisation,
        top_tokens,
        co_activation: co,
    })
}

/// The `n` most specialised cells of a subject (ties: lower layer, then lower expert).
fn summarise_specialisation(
    d: DomainSpecialisation,
    moe_layers: &[usize],
    n: usize,
) -> DomainSpecialisationSummary {
    let experts = d.share.first().map_or(0, Vec::len);
    let flat: Vec<f64> = d.share.iter().flatten().copied().collect();
    let top = if experts == 0 {
        Vec::new()
    } else {
        top_k_indices(&flat, n)
            .into_iter()
            .filter_map(|i| {
                Some(ExpertShare {
                    layer: *moe_layers.get(i / experts)?,
                    expert: i % experts,
                    share: flat[i],
                })
            })
            .collect()
    };
    DomainSpecialisationSummary {
        subject: d.subject,
        tokens: d.tokens,
        top,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::analysis::traces::tests::trace;
    use crate::profile::{ProfileModel, SubjectProfile};

    pub(crate) fn profile() -> RoutingProfile {
        let model = ProfileModel {
            attention_kinds: Vec::new(),
            id: "tiny".into(),
            architecture: "OlmoeForCausalLM".into(),
            moe_layers: vec![0, 1],
            num_experts: 4,
            top_k: 2,
            score_fn: crate::model::router::ScoreFn::Softmax,
            layout: None,
        };
        let mut a = SubjectProfile::empty("math", 2, 4);
        a.sequences = 2;
        a.tokens = 3;
        a.count = vec![vec![3, 2, 1, 0], vec![3, 3, 0, 0]];
        a.mass = Some(vec![vec![1.5, 1.0, 0.5, 0.0], vec![1.5, 1.5, 0.0, 0.0]]);
        a.score = Some(vec![vec![1.2, 0.9, 0.6, 0.3], vec![1.5, 1.2, 0.2, 0.1]]);
        let mut b = SubjectProfile::empty("law", 2, 4);
        b.sequences = 1;
        b.tokens = 2;
        b.count = vec![vec![1, 1, 1, 1], vec![0, 0, 2, 2]];
        b.mass = Some(vec![vec![0.5, 0.5, 0.5, 0.5], vec![0.0, 0.0, 1.0, 1.0]]);
        b.score = Some(vec![vec![0.5, 0.5, 0.5, 0.5], vec![0.2, 0.2, 0.8, 0.8]]);
        RoutingProfile::new(model, vec![a, b])
    }

    pub(crate) fn traces() -> Vec<SequenceTrace> {
        vec![
            trace(
                "math",
                &[7, 8],
                &[vec![vec![0, 1], vec![0, 2]], vec![vec![0, 1], vec![0, 1]]],
            ),
            trace("math", &[7], &[vec![vec![0, 1]], vec![vec![0, 1]]]),
            trace(
                "law",
                &[9, 7],
                &[vec![vec![2, 3], vec![1, 0]], vec![vec![2, 3], vec![2, 3]]],
            ),
        ]
    }

    #[test]
    fn report_of_a_small_profile() {
        let p = profile();
        let r = build_report(
            &p,
            None,
            &ReportOptions {
                top_layers: 1,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(r.hot_k, 1);
        assert_eq!(r.subjects.len(), 2);
        // Layer 1 is where both subjects differ most from the pool.
        assert_eq!(r.subjects[0].top_layers, vec![1]);
        assert_eq!(r.subjects[1].top_layers, vec![1]);
        assert_eq!(r.top_layer_jaccard.mean_pairwise, Some(1.0));
        assert_eq!(r.top_layer_jaccard.layer_appearances[&1], 2);
        // Pooled layer 0 counts [4, 3, 2, 1]: coverage@1 = 0.4.
        assert!((r.layers[0].coverage - 0.4).abs() < 1e-12);
        assert_eq!(r.das.len(), 2);
        assert_eq!(r.das[0].general, vec!["law"]);
        // math vs law DAS: layer 0 [0.15, 0.05, -0.05, -0.15], layer 1 [0.4, 0.3, -1/3, -11/30].
        let top = &r.das[0].top_experts[0];
        assert_eq!((top.layer, top.expert), (1, 0));
        assert!(r.traces.is_none());
        let json = serde_json::to_value(&r).unwrap();
        assert!(json["global_cv"].is_number());
        assert!(json["top_layer_jaccard"]["layer_appearances"]["1"].is_number());
        assert!(json.get("traces").is_none());
    }

    #[test]
    fn report_with_traces() {
        let p = profile();
        let t = traces();
        let r = build_report(&p, Some(&t), &ReportOptions::default()).unwrap();
        let tr = r.traces.unwrap();
        assert_eq!(tr.sequences, 3);
        assert_eq!(tr.tokens, 5);
        assert_eq!(tr.subsample_stability.trial_jaccards.len(), 50);
        assert_eq!(tr.subject_stability.len(), 2);
        assert_eq!(tr.top_tokens.len(), 8);
        assert_eq!(tr.top_tokens[0].tokens[0].token, "t7");
        assert_eq!(tr.co_activation[1].top_pairs[0].joint, 3);
        // math: expert 0 of both layers in all 3 tokens.
        assert_eq!(tr.domain_specialisation[0].top[0].share, 1.0);
    }

    #[test]
    fn report_rejects_bad_options_and_traces() {
        let p = profile();
        let bad_budget = ReportOptions {
            budget: 1.5,
            ..Default::default()
        };
        assert_eq!(
            build_report(&p, None, &bad_budget).unwrap_err(),
            AnalysisError::InvalidBudget(1.5)
        );
        let no_layers = ReportOptions {
            top_layers: 0,
            ..Default::default()
        };
        assert!(build_report(&p, None, &no_layers).is_err());
        // More top layers than MoE layers: all layers, with a note.
        let r = build_report(&p, None, &ReportOptions::default()).unwrap();
        assert_eq!(r.top_layers_k, 2);
        assert_eq!(r.subjects[0].top_layers, vec![1, 0]);
        assert!(r.notes[0].contains("2 MoE layers"), "{:?}", r.notes);
        let unknown = ReportOptions {
            general: GeneralSet::Named(vec!["poetry".into()]),
            ..Default::default()
        };
        assert!(matches!(
            build_report(&p, None, &unknown).unwrap_err(),
            AnalysisError::UnknownSubject { .. }
        ));
        let mut t = traces();
        t[0].layers.pop();
        assert!(matches!(
            build_report(&p, Some(&t), &ReportOptions::default()).unwrap_err(),
            AnalysisError::TraceMismatch(_)
        ));
    }
}
