//! `moescope report P.json`: every single-profile metric (KL vs pooled and top layers, load
//! statistics, hot-set overlaps, DAS; with `--traces`, the per-token metrics) as tables, one JSON
//! object (`--json`) or CSV files (`--csv DIR`). The numbers come from
//! [`crate::analysis::report::build_report`]; this module only reads files and formats.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::inputs::{load_profile, load_traces};
use super::output::{percent, table};
use crate::analysis::das::{GeneralSet, domain_advantage};
use crate::analysis::report::{ProfileReport, ReportOptions, build_report};
use crate::analysis::traces::{co_activation, domain_specialisation_by_subject};
use crate::io::write_atomic;
use crate::profile::{RoutingProfile, SequenceTrace};
use anyhow::{Context, Result};

#[derive(Debug, Clone, clap::Args)]
pub struct ReportArgs {
    /// Routing profile (moescope-profile JSON, from `moescope profile`).
    pub profile: PathBuf,
    /// Print one JSON object instead of tables.
    #[arg(long, conflicts_with = "csv")]
    pub json: bool,
    /// Write CSV files into this folder (created if missing) instead of printing tables.
    #[arg(long, value_name = "DIR")]
    pub csv: Option<PathBuf>,
    /// Top layers by KL vs pooled per subject.
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub top_layers: usize,
    /// Share of routed experts per layer for hot sets, coverage and C-DAS, in (0, 1].
    #[arg(
        long,
        default_value_t = 0.25,
        value_name = "F",
        allow_negative_numbers = true
    )]
    pub budget: f64,
    /// Per-token traces (moescope-traces JSONL) of the same model, for subsample stability,
    /// domain/vocabulary specialisation, top tokens per expert and co-activation.
    #[arg(long, value_name = "FILE")]
    pub traces: Option<PathBuf>,
    /// General set for DAS, comma-separated subject names (default: the other subjects).
    #[arg(long, value_delimiter = ',', value_name = "NAMES")]
    pub general: Vec<String>,
    /// What DAS compares: routing scores, or counts (auto: scores when the profile has them;
    /// imported, count-only profiles have counts only).
    #[arg(long, value_enum, default_value = "auto")]
    pub das_signal: super::select::DasSignalArg,
    /// Seed of the subsample-stability trials.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

pub fn run(args: ReportArgs) -> Result<()> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    run_to(args, &mut out)
}

/// Runs the report, writing human-readable or JSON output to `out`.
pub fn run_to(args: ReportArgs, out: &mut dyn Write) -> Result<()> {
    let profile = load_profile(&args.profile)?;
    let traces = match &args.traces {
        Some(path) => Some(load_traces(path, &profile, &args.profile)?),
        None => None,
    };
    let options = ReportOptions {
        top_layers: args.top_layers,
        budget: args.budget,
        seed: args.seed,
        general: GeneralSet::from_names(&args.general),
        das_signal: args.das_signal.explicit(),
        ..ReportOptions::default()
    };
    let report = build_report(&profile, traces.as_deref(), &options)
        .with_context(|| format!("{}", args.profile.display()))?;
    if args.json {
        serde_json::to_writer_pretty(&mut *out, &report)?;
        writeln!(out)?;
    } else if let Some(dir) = &args.csv {
        let files = write_csv(dir, &report, &profile, &options, traces.as_deref())?;
        writeln!(out, "wrote {} CSV files to {}", files.len(), dir.display())?;
        for f in files {
            writeln!(out, "  {f}")?;
        }
    } else {
        print_tables(&report, out)?;
    }
    Ok(())
}

fn print_tables(r: &ProfileReport, out: &mut dyn Write) -> Result<()> {
    let m = &r.model;
    writeln!(
        out,
        "Model {} ({}): {} MoE layers × {} experts, top-{}",
        m.id,
        m.architecture,
        m.moe_layers.len(),
        m.num_experts,
        m.top_k
    )?;
    if let Some(src) = &r.source {
        writeln!(
            out,
            "Routing imported from {} ({} records, {} tokens; {}): counts only",
            src.format, src.records, src.tokens, src.layer_mapping
        )?;
    }
    writeln!(
        out,
        "Budget {} of routed experts → k = {} per layer",
        percent(r.budget),
        r.hot_k
    )?;
    for note in &r.notes {
        writeln!(out, "note: {note}")?;
    }

    writeln!(
        out,
        "\nSubjects: KL vs pooled, top-{} layers",
        r.top_layers_k
    )?;
    let mut rows = vec![vec![
        "subject".into(),
        "seqs".into(),
        "tokens".into(),
        "top layers (KL)".into(),
        "mean KL".into(),
    ]];
    for s in &r.subjects {
        let top: Vec<String> = s
            .top_layers
            .iter()
            .map(|&layer| {
                let row = m.moe_layers.iter().position(|&l| l == layer).unwrap_or(0);
                format!("{layer} ({:.4})", s.kl.get(row).copied().unwrap_or(0.0))
            })
            .collect();
        let mean = s.kl.iter().sum::<f64>() / s.kl.len().max(1) as f64;
        rows.push(vec![
            s.name.clone(),
            s.sequences.to_string(),
            s.tokens.to_string(),
            top.join(", "),
            format!("{mean:.4}"),
        ]);
    }
    table(out, &rows)?;
    let o = &r.top_layer_jaccard;
    match o.mean_pairwise {
        Some(j) => writeln!(
            out,
            "Top-layer sets: mean pairwise Jaccard {j:.3} over {} pairs",
            o.pairs
        )?,
        None => writeln!(out, "Top-layer sets: one subject, no pairs to compare")?,
    }
    let mut appearances: Vec<(usize, usize)> =
        o.layer_appearances.iter().map(|(&l, &n)| (l, n)).collect();
    appearances.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let listed: Vec<String> = appearances
        .iter()
        .map(|(l, n)| format!("{l}: {n}/{}", r.subjects.len()))
        .collect();
    writeln!(out, "Layer appearances: {}", listed.join(", "))?;

    writeln!(out, "\nLoad per MoE layer (all subjects pooled)")?;
    let mut rows = vec![vec![
        "layer".into(),
        "CV".into(),
        "cold".into(),
        format!("cov@{}", r.hot_k),
        "entropy".into(),
    ]];
    for l in &r.layers {
        rows.push(vec![
            l.layer.to_string(),
            format!("{:.3}", l.cv),
            percent(l.cold_share),
            percent(l.coverage),
            format!("{:.3}", l.entropy),
        ]);
    }
    table(out, &rows)?;
    let ratio = r
        .load
        .layer_to_global_ratio
        .map_or("n/a".to_string(), |x| format!("{x:.1}×"));
    writeln!(
        out,
        "Global CV {:.3}, mean layer CV {:.3} (ratio {ratio}); mean cold {}, mean cov@{} {}",
        r.load.global_cv,
        r.load.mean_layer_cv,
        percent(r.load.mean_cold_share),
        r.hot_k,
        percent(r.load.mean_coverage)
    )?;

    let h = &r.hot_set_jaccard;
    writeln!(
        out,
        "\nHot-set Jaccard between subjects ({}, k = {}, mean over layers)",
        h.signal, h.k
    )?;
    let mut rows = vec![
        std::iter::once(String::new())
            .chain(h.subjects.iter().cloned())
            .collect::<Vec<_>>(),
    ];
    for (name, values) in h.subjects.iter().zip(&h.values) {
        rows.push(
            std::iter::once(name.clone())
                .chain(values.iter().map(|v| format!("{v:.2}")))
                .collect(),
        );
    }
    table(out, &rows)?;

    if let Some(c) = &r.count_mass_agreement {
        let per_subject: Vec<String> = c
            .subjects
            .iter()
            .map(|s| format!("{} {:.3}", s.name, s.mean_jaccard))
            .collect();
        writeln!(
            out,
            "\nCount-vs-mass hot-set agreement (k = {}): pooled {:.3}; {}",
            r.hot_k,
            c.pooled.mean_jaccard,
            per_subject.join(", ")
        )?;
    }

    if let Some(first) = r.das.first() {
        let on = match first.signal {
            crate::profile::RoutingSignal::Score => "",
            _ => " on counts (share of tokens choosing each expert)",
        };
        writeln!(
            out,
            "\nDomain advantage (DAS){on} per subject, C-DAS@{}",
            r.hot_k
        )?;
        let mut rows = vec![vec![
            "subject".into(),
            "general".into(),
            "C-DAS".into(),
            "C-DAS/L".into(),
            "top cells (layer:expert DAS)".into(),
        ]];
        for d in &r.das {
            let general = if d.general.len() + 1 == r.subjects.len() {
                "others".to_string()
            } else {
                d.general.join("+")
            };
            let cells: Vec<String> = d
                .top_experts
                .iter()
                .take(3)
                .map(|e| format!("{}:{} {:+.4}", e.layer, e.expert, e.das))
                .collect();
            rows.push(vec![
                d.subject.clone(),
                general,
                format!("{:.3}", d.c_das.total),
                format!("{:.3}", d.c_das.per_layer_mean),
                cells.join(", "),
            ]);
        }
        table(out, &rows)?;
    }

    if let Some(t) = &r.traces {
        writeln!(
            out,
            "\nTraces: {} sequences, {} tokens",
            t.sequences, t.tokens
        )?;
        let s = &t.subsample_stability;
        writeln!(
            out,
            "Subsample stability ({} trials of {} of {} sequences, k = {}): mean Jaccard {:.3}",
            s.options.trials, s.sample_sequences, s.total_sequences, s.options.k, s.mean_jaccard
        )?;
        for st in &t.subject_stability {
            writeln!(
                out,
                "  {}: {:.3} ({} of {} sequences)",
                st.subject,
                st.stability.mean_jaccard,
                st.stability.sample_sequences,
                st.stability.total_sequences
            )?;
        }
        writeln!(out, "Domain specialisation (share of the subject's tokens)")?;
        for d in &t.domain_specialisation {
            let cells: Vec<String> = d
                .top
                .iter()
                .take(5)
                .map(|c| format!("{}:{} {}", c.layer, c.expert, percent(c.share)))
                .collect();
            writeln!(out, "  {}: {}", d.subject, cells.join(", "))?;
        }
        writeln!(out, "Top tokens of each layer's hottest experts")?;
        for layer_load in &r.layers {
            let layer = layer_load.layer;
            let mut experts: Vec<_> = t
                .top_tokens
                .iter()
                .filter(|e| e.layer == layer)
                .map(|e| (e, e.tokens.iter().map(|t| t.routed).sum::<u64>()))
                .collect();
            experts.sort_by_key(|e| std::cmp::Reverse(e.1));
            for (e, _) in experts.into_iter().take(3) {
                let tokens: Vec<String> = e
                    .tokens
                    .iter()
                    .map(|t| format!("{:?} {}/{}", t.token, t.routed, t.occurrences))
                    .collect();
                writeln!(out, "  {}:{}  {}", e.layer, e.expert, tokens.join(", "))?;
            }
        }
        writeln!(
            out,
            "Co-activation (most frequent pairs, P(e2|e1) / P(e1|e2))"
        )?;
        for co in &t.co_activation {
            let pairs: Vec<String> = co
                .top_pairs
                .iter()
                .take(3)
                .map(|p| {
                    format!(
                        "{}+{} ×{} ({:.2}/{:.2})",
                        p.e1, p.e2, p.joint, p.p_e2_given_e1, p.p_e1_given_e2
                    )
                })
                .collect();
            writeln!(out, "  layer {}: {}", co.layer, pairs.join(", "))?;
        }
    }
    Ok(())
}

/// Serialises rows to CSV in memory and writes them atomically.
pub(crate) fn write_csv_file(path: &Path, header: &[&str], rows: &[Vec<String>]) -> Result<()> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(header)?;
    for row in rows {
        w.write_record(row)?;
    }
    let bytes = w
        .into_inner()
        .map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.error()))?;
    write_atomic(path, &bytes).with_context(|| format!("writing {}", path.display()))
}

fn write_csv(
    dir: &Path,
    r: &ProfileReport,
    profile: &RoutingProfile,
    options: &ReportOptions,
    traces: Option<&[SequenceTrace]>,
) -> Result<Vec<String>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut written = Vec::new();
    let mut file = |name: &str, header: &[&str], rows: Vec<Vec<String>>| -> Result<()> {
        write_csv_file(&dir.join(name), header, &rows)?;
        written.push(name.to_string());
        Ok(())
    };
    let layers = &r.model.moe_layers;

    let mut summary = vec![
        vec!["model".into(), r.model.id.clone()],
        vec!["budget".into(), r.budget.to_string()],
        vec!["hot_k".into(), r.hot_k.to_string()],
        vec!["top_layers_k".into(), r.top_layers_k.to_string()],
        vec!["global_cv".into(), r.load.global_cv.to_string()],
        vec!["mean_layer_cv".into(), r.load.mean_layer_cv.to_string()],
        vec!["mean_cold_share".into(), r.load.mean_cold_share.to_string()],
        vec!["mean_coverage".into(), r.load.mean_coverage.to_string()],
        vec!["mean_entropy".into(), r.load.mean_entropy.to_string()],
    ];
    if let Some(c) = &r.count_mass_agreement {
        summary.push(vec![
            "count_mass_agreement".into(),
            c.pooled.mean_jaccard.to_string(),
        ]);
    }
    if let Some(j) = r.top_layer_jaccard.mean_pairwise {
        summary.push(vec![
            "top_layer_mean_pairwise_jaccard".into(),
            j.to_string(),
        ]);
    }
    if let Some(t) = &r.traces {
        summary.push(vec![
            "subsample_stability".into(),
            t.subsample_stability.mean_jaccard.to_string(),
        ]);
    }
    file("summary.csv", &["metric", "value"], summary)?;

    file(
        "subjects.csv",
        &[
            "subject",
            "sequences",
            "tokens",
            "top_layers",
            "global_cv",
            "mean_layer_cv",
        ],
        r.subjects
            .iter()
            .map(|s| {
                vec![
                    s.name.clone(),
                    s.sequences.to_string(),
                    s.tokens.to_string(),
                    s.top_layers
                        .iter()
                        .map(usize::to_string)
                        .collect::<Vec<_>>()
                        .join(" "),
                    s.load.global_cv.to_string(),
                    s.load.mean_layer_cv.to_string(),
                ]
            })
            .collect(),
    )?;
    file(
        "kl.csv",
        &["subject", "layer", "kl"],
        r.subjects
            .iter()
            .flat_map(|s| {
                s.kl.iter()
                    .zip(layers)
                    .map(|(kl, l)| vec![s.name.clone(), l.to_string(), kl.to_string()])
            })
            .collect(),
    )?;
    file(
        "layer_appearances.csv",
        &["layer", "subjects"],
        r.top_layer_jaccard
            .layer_appearances
            .iter()
            .map(|(l, n)| vec![l.to_string(), n.to_string()])
            .collect(),
    )?;
    file(
        "layers.csv",
        &["layer", "cv", "cold_share", "coverage", "entropy"],
        r.layers
            .iter()
            .map(|l| {
                vec![
                    l.layer.to_string(),
                    l.cv.to_string(),
                    l.cold_share.to_string(),
                    l.coverage.to_string(),
                    l.entropy.to_string(),
                ]
            })
            .collect(),
    )?;
    let h = &r.hot_set_jaccard;
    let header: Vec<&str> = std::iter::once("subject")
        .chain(h.subjects.iter().map(String::as_str))
        .collect();
    file(
        "hot_set_jaccard.csv",
        &header,
        h.subjects
            .iter()
            .zip(&h.values)
            .map(|(n, v)| {
                std::iter::once(n.clone())
                    .chain(v.iter().map(f64::to_string))
                    .collect()
            })
            .collect(),
    )?;
    if let Some(c) = &r.count_mass_agreement {
        let agreements = std::iter::once(("(pooled)", &c.pooled))
            .chain(c.subjects.iter().map(|a| (a.name.as_str(), a)));
        file(
            "count_mass_agreement.csv",
            &["data", "layer", "jaccard"],
            agreements
                .flat_map(|(name, a)| {
                    a.per_layer
                        .iter()
                        .zip(layers)
                        .map(move |(j, l)| vec![name.to_string(), l.to_string(), j.to_string()])
                })
                .collect(),
        )?;
    }
    file(
        "c_das.csv",
        &[
            "subject",
            "general",
            "signal",
            "k",
            "c_das",
            "c_das_per_layer",
        ],
        r.das
            .iter()
            .map(|d| {
                vec![
                    d.subject.clone(),
                    d.general.join(" "),
                    d.signal.to_string(),
                    d.c_das.k.to_string(),
                    d.c_das.total.to_string(),
                    d.c_das.per_layer_mean.to_string(),
                ]
            })
            .collect(),
    )?;
    let mut das_rows = Vec::new();
    for d in &r.das {
        let full = domain_advantage(profile, &d.subject, &options.general, d.signal)?;
        for (row, &layer) in full.das.iter().zip(layers) {
            for (e, v) in row.iter().enumerate() {
                das_rows.push(vec![
                    d.subject.clone(),
                    layer.to_string(),
                    e.to_string(),
                    v.to_string(),
                ]);
            }
        }
    }
    file("das.csv", &["subject", "layer", "expert", "das"], das_rows)?;

    if let (Some(t), Some(traces)) = (&r.traces, traces) {
        let mut rows = vec![vec![
            "(all)".to_string(),
            t.subsample_stability.sample_sequences.to_string(),
            t.subsample_stability.total_sequences.to_string(),
            t.subsample_stability.mean_jaccard.to_string(),
        ]];
        rows.extend(t.subject_stability.iter().map(|s| {
            vec![
                s.subject.clone(),
                s.stability.sample_sequences.to_string(),
                s.stability.total_sequences.to_string(),
                s.stability.mean_jaccard.to_string(),
            ]
        }));
        file(
            "subsample_stability.csv",
            &[
                "data",
                "sample_sequences",
                "total_sequences",
                "mean_jaccard",
            ],
            rows,
        )?;
        let n = r.model.num_experts;
        let mut rows = Vec::new();
        for d in domain_specialisation_by_subject(traces, layers.len(), n) {
            for (row, &layer) in d.share.iter().zip(layers) {
                for (e, share) in row.iter().enumerate() {
                    rows.push(vec![
                        d.subject.clone(),
                        layer.to_string(),
                        e.to_string(),
                        share.to_string(),
                    ]);
                }
            }
        }
        file(
            "domain_specialisation.csv",
            &["subject", "layer", "expert", "share"],
            rows,
        )?;
        let mut rows = Vec::new();
        for e in &t.top_tokens {
            for (rank, tok) in e.tokens.iter().enumerate() {
                rows.push(vec![
                    e.layer.to_string(),
                    e.expert.to_string(),
                    (rank + 1).to_string(),
                    tok.token_id.to_string(),
                    tok.token.clone(),
                    tok.routed.to_string(),
                    tok.occurrences.to_string(),
                    tok.share.to_string(),
                ]);
            }
        }
        file(
            "top_tokens.csv",
            &[
                "layer",
                "expert",
                "rank",
                "token_id",
                "token",
                "routed",
                "occurrences",
                "vocabulary_specialisation",
            ],
            rows,
        )?;
        let mut rows = Vec::new();
        for (row, &layer) in layers.iter().enumerate() {
            let co = co_activation(traces, row, layer, n);
            for e1 in 0..n {
                for e2 in 0..n {
                    if e1 != e2 && co.joint[e1][e2] > 0 {
                        rows.push(vec![
                            layer.to_string(),
                            e1.to_string(),
                            e2.to_string(),
                            co.joint[e1][e2].to_string(),
                            co.probability[e1][e2].to_string(),
                        ]);
                    }
                }
            }
        }
        file(
            "co_activation.csv",
            &["layer", "e1", "e2", "joint", "p_e2_given_e1"],
            rows,
        )?;
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::test_fixtures::{fixture_profile, fixture_traces, write_traces};

    fn args(profile: &Path) -> ReportArgs {
        ReportArgs {
            profile: profile.to_path_buf(),
            json: false,
            csv: None,
            top_layers: 3,
            budget: 0.25,
            traces: None,
            general: vec![],
            das_signal: crate::cli::select::DasSignalArg::Auto,
            seed: 0,
        }
    }

    fn run_string(a: ReportArgs) -> Result<String> {
        let mut out = Vec::new();
        run_to(a, &mut out)?;
        Ok(String::from_utf8(out).unwrap())
    }

    #[test]
    fn tables_json_and_csv() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("p.json");
        let profile = fixture_profile();
        profile.save(&p).unwrap();
        let traces = dir.path().join("t.jsonl");
        write_traces(&traces, &profile.model, &fixture_traces());

        let text = run_string(ReportArgs {
            traces: Some(traces.clone()),
            ..args(&p)
        })
        .unwrap();
        assert!(text.contains("Model tiny-olmoe"), "{text}");
        assert!(text.contains("mean pairwise Jaccard"), "{text}");
        assert!(text.contains("Subsample stability"), "{text}");
        assert!(text.contains("\"tok7\""), "{text}");

        let json: serde_json::Value = serde_json::from_str(
            &run_string(ReportArgs {
                json: true,
                top_layers: 1,
                traces: Some(traces.clone()),
                ..args(&p)
            })
            .unwrap(),
        )
        .unwrap();
        assert_eq!(json["subjects"][0]["name"], "math");
        assert_eq!(json["subjects"][0]["kl"].as_array().unwrap().len(), 2);
        assert_eq!(json["subjects"][0]["top_layers"], serde_json::json!([1]));
        assert_eq!(json["top_layer_jaccard"]["mean_pairwise"], 1.0);
        assert_eq!(json["top_layer_jaccard"]["layer_appearances"]["1"], 2);
        let layer = &json["layers"][0];
        for key in ["layer", "cv", "cold_share", "coverage", "entropy"] {
            assert!(layer.get(key).is_some(), "{key}");
        }
        assert!(json["global_cv"].is_number());
        assert!(json["hot_set_jaccard"]["values"].is_array());
        assert!(json["count_mass_agreement"]["pooled"]["mean_jaccard"].is_number());
        assert_eq!(json["das"][0]["subject"], "math");
        assert!(json["traces"]["subsample_stability"]["mean_jaccard"].is_number());

        let csv_dir = dir.path().join("csv");
        let text = run_string(ReportArgs {
            csv: Some(csv_dir.clone()),
            traces: Some(traces),
            ..args(&p)
        })
        .unwrap();
        assert!(text.contains("wrote 13 CSV files"), "{text}");
        let kl = std::fs::read_to_string(csv_dir.join("kl.csv")).unwrap();
        assert!(kl.starts_with("subject,layer,kl\nmath,0,"), "{kl}");
        let das = std::fs::read_to_string(csv_dir.join("das.csv")).unwrap();
        assert_eq!(das.lines().count(), 1 + 2 * 2 * 4);
        let co = std::fs::read_to_string(csv_dir.join("co_activation.csv")).unwrap();
        assert!(co.contains("1,0,1,3,1"), "{co}");
    }

    #[test]
    fn bad_input_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("p.json");
        let mut profile = fixture_profile();
        profile.save(&p).unwrap();

        let err = run_string(ReportArgs {
            budget: 0.0,
            ..args(&p)
        })
        .unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("p.json") && msg.contains("budget 0 is outside (0, 1]"),
            "{msg}"
        );

        let err = run_string(ReportArgs {
            general: vec!["poetry".into()],
            ..args(&p)
        })
        .unwrap_err();
        assert!(
            format!("{err:#}").contains("unknown subject 'poetry'"),
            "{err:#}"
        );

        let missing = dir.path().join("missing.json");
        let err = run_string(args(&missing)).unwrap_err();
        assert!(format!("{err:#}").contains("missing.json"), "{err:#}");

        profile.version = 2;
        profile.save(&p).unwrap();
        let err = run_string(args(&p)).unwrap_err();
        assert!(
            format!("{err:#}").contains("version 2 is not supported"),
            "{err:#}"
        );

        let mut ragged = fixture_profile();
        ragged.subjects[0].count[1].pop();
        ragged.save(&p).unwrap();
        let err = run_string(args(&p)).unwrap_err();
        assert!(
            format!("{err:#}").contains("count row 1 has 3 entries"),
            "{err:#}"
        );

        // Traces of another model.
        let good = fixture_profile();
        good.save(&p).unwrap();
        let mut other = good.model.clone();
        other.num_experts = 8;
        let t = dir.path().join("other.jsonl");
        write_traces(&t, &other, &[]);
        let err = run_string(ReportArgs {
            traces: Some(t),
            ..args(&p)
        })
        .unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("other.jsonl") && msg.contains("expert counts differ"),
            "{msg}"
        );
    }
}
