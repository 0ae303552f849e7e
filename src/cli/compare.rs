//! `moescope compare P1.json P2.json`: how routing changed between two profiles of the same
//! model (e.g. before/after fine-tuning, or two checkpoints): routing consistency RC, per-layer
//! hot-set Jaccard, per-subject KL shift, and with `--traces EARLIER LATER` router saturation.
//! The numbers come from [`crate::analysis::compare`].

use std::io::Write;
use std::path::PathBuf;

use crate::analysis::compare::{ProfileComparison, compare_profiles, router_saturation};
use crate::analysis::hot::{DEFAULT_BUDGET, HotSignal, check_k, experts_for_budget};
use crate::profile::traces::read_traces;
use anyhow::{Context, Result};

use super::inputs::load_profile;
use super::output::table;
use super::select::SignalArg;

#[derive(Debug, Clone, clap::Args)]
pub struct CompareArgs {
    /// The earlier / reference profile.
    pub before: PathBuf,
    /// The later / fine-tuned profile of the same model.
    pub after: PathBuf,
    /// Print one JSON object instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Hot-set size as a share of routed experts per layer, in (0, 1] (default 0.25).
    #[arg(
        long,
        value_name = "F",
        conflicts_with = "k",
        allow_negative_numbers = true
    )]
    pub budget: Option<f64>,
    /// Hot-set size in experts per layer.
    #[arg(long, value_name = "N")]
    pub k: Option<usize>,
    /// Ranking signal of the hot sets.
    #[arg(long, value_enum, default_value = "count")]
    pub signal: SignalArg,
    /// Traces of the same sequences from the two checkpoints, for router saturation.
    #[arg(long, num_args = 2, value_names = ["EARLIER", "LATER"])]
    pub traces: Option<Vec<PathBuf>>,
}

pub fn run(args: CompareArgs) -> Result<()> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    run_to(args, &mut out)
}

/// Compares the two profiles and writes tables or JSON to `out`.
pub fn run_to(args: CompareArgs, out: &mut dyn Write) -> Result<()> {
    let before = load_profile(&args.before)?;
    let after = load_profile(&args.after)?;
    let names = || format!("{} vs {}", args.before.display(), args.after.display());
    let n = before.model.num_experts;
    let k = match args.k {
        Some(k) => check_k(k, n),
        None => experts_for_budget(n, args.budget.unwrap_or(DEFAULT_BUDGET)),
    }
    .with_context(names)?;
    let signal = match args.signal {
        SignalArg::Count => HotSignal::Count,
        SignalArg::Mass => HotSignal::Mass,
    };
    let mut comparison = compare_profiles(&before, &after, signal, k).with_context(|| {
        format!(
            "{} and {} are not profiles of the same model",
            args.before.display(),
            args.after.display()
        )
    })?;
    if let Some(paths) = &args.traces {
        let [earlier, later] = paths.as_slice() else {
            anyhow::bail!("--traces takes two files: EARLIER LATER");
        };
        let (eh, et) = read_traces(earlier)?;
        let (lh, lt) = read_traces(later)?;
        crate::analysis::compare::check_same_model(&eh.model, &lh.model)
            .and_then(|_| crate::analysis::compare::check_same_model(&before.model, &eh.model))
            .with_context(|| {
                format!(
                    "{} and {} are not traces of the profiles' model",
                    earlier.display(),
                    later.display()
                )
            })?;
        comparison.router_saturation = Some(
            router_saturation(&et, &lt)
                .with_context(|| format!("{} vs {}", earlier.display(), later.display()))?,
        );
    }
    if args.json {
        serde_json::to_writer_pretty(&mut *out, &comparison)?;
        writeln!(out)?;
    } else {
        print_comparison(&comparison, out)?;
    }
    Ok(())
}

fn print_comparison(c: &ProfileComparison, out: &mut dyn Write) -> Result<()> {
    writeln!(out, "Model {}", c.model)?;
    let on = match c.rc_signal {
        crate::profile::RoutingSignal::Score => "",
        _ => ", on counts: a profile has no routing scores",
    };
    match c.routing_consistency {
        Some(rc) => writeln!(
            out,
            "Routing consistency RC (all subjects pooled{on}): {rc:.6e}"
        )?,
        None => writeln!(out, "Routing consistency: n/a (a profile has no tokens)")?,
    }
    writeln!(
        out,
        "\nHot-set Jaccard per layer ({}, k = {}): mean {:.3}",
        c.signal, c.k, c.mean_hot_set_jaccard
    )?;
    let mut rows = vec![vec!["layer".to_string(), "jaccard".to_string()]];
    for l in &c.hot_set_jaccard {
        rows.push(vec![l.layer.to_string(), format!("{:.3}", l.jaccard)]);
    }
    table(out, &rows)?;
    writeln!(out, "\nPer-subject KL shift (KL vs pooled, before → after)")?;
    let mut rows = vec![vec![
        "subject".to_string(),
        "mean KL before".to_string(),
        "mean KL after".to_string(),
        "mean KL(after‖before)".to_string(),
        "RC".to_string(),
    ]];
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    for s in &c.subjects {
        let finite: Vec<f64> = s.divergence.iter().flatten().copied().collect();
        let infinite = s.divergence.len() - finite.len();
        let divergence = if infinite > 0 {
            format!("{:.4} ({infinite} layers n/a)", mean(&finite))
        } else {
            format!("{:.4}", mean(&finite))
        };
        rows.push(vec![
            s.name.clone(),
            format!("{:.4}", mean(&s.kl_before)),
            format!("{:.4}", mean(&s.kl_after)),
            divergence,
            s.routing_consistency
                .map_or("n/a".to_string(), |rc| format!("{rc:.3e}")),
        ]);
    }
    table(out, &rows)?;
    if !c.only_in_before.is_empty() {
        writeln!(
            out,
            "Only in the first profile: {}",
            c.only_in_before.join(", ")
        )?;
    }
    if !c.only_in_after.is_empty() {
        writeln!(
            out,
            "Only in the second profile: {}",
            c.only_in_after.join(", ")
        )?;
    }
    if let Some(s) = &c.router_saturation {
        let per_layer: Vec<String> = s
            .per_layer
            .iter()
            .map(|l| format!("{}: {:.3}", l.layer, l.saturation))
            .collect();
        writeln!(
            out,
            "\nRouter saturation over {} tokens: {:.3} ({})",
            s.tokens,
            s.overall,
            per_layer.join(", ")
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::test_fixtures::{fixture_profile, fixture_traces, write_traces};
    use std::path::Path;

    fn args(before: &Path, after: &Path) -> CompareArgs {
        CompareArgs {
            before: before.to_path_buf(),
            after: after.to_path_buf(),
            json: false,
            budget: None,
            k: None,
            signal: SignalArg::Count,
            traces: None,
        }
    }

    fn run_string(a: CompareArgs) -> Result<String> {
        let mut out = Vec::new();
        run_to(a, &mut out)?;
        Ok(String::from_utf8(out).unwrap())
    }

    #[test]
    fn compare_with_itself_and_a_shifted_profile() {
        let dir = tempfile::tempdir().unwrap();
        let p1 = dir.path().join("p1.json");
        let p2 = dir.path().join("p2.json");
        let before = fixture_profile();
        before.save(&p1).unwrap();
        let mut after = before.clone();
        // All of math's layer-0 traffic moves from expert 0 to expert 3.
        after.subjects[0].count[0] = vec![0, 2, 1, 3];
        after.subjects[0].score.as_mut().unwrap()[0] = vec![0.3, 0.9, 0.6, 1.2];
        after.save(&p2).unwrap();

        let same: serde_json::Value = serde_json::from_str(
            &run_string(CompareArgs {
                json: true,
                ..args(&p1, &p1)
            })
            .unwrap(),
        )
        .unwrap();
        assert_eq!(same["routing_consistency"], 0.0);
        assert_eq!(same["mean_hot_set_jaccard"], 1.0);

        let t = dir.path().join("t.jsonl");
        write_traces(&t, &before.model, &fixture_traces());
        let json: serde_json::Value = serde_json::from_str(
            &run_string(CompareArgs {
                json: true,
                traces: Some(vec![t.clone(), t.clone()]),
                ..args(&p1, &p2)
            })
            .unwrap(),
        )
        .unwrap();
        // Pooled mean scores change only at layer 0, experts 0 and 3, by ∓0.9/5 = 0.18:
        // RC = 2 · 0.18² / 8 = 0.0081.
        let rc = json["routing_consistency"].as_f64().unwrap();
        assert!((rc - 0.0081).abs() < 1e-12, "{rc}");
        // Pooled layer 0 before [4, 3, 2, 1] → {0}; after [1, 3, 2, 4] → {3}.
        assert_eq!(json["hot_set_jaccard"][0]["jaccard"], 0.0);
        assert_eq!(json["hot_set_jaccard"][1]["jaccard"], 1.0);
        assert_eq!(json["subjects"][0]["name"], "math");
        // Expert 3 gets traffic it never had: KL(after ‖ before) is infinite → null.
        assert!(json["subjects"][0]["divergence"][0].is_null());
        assert_eq!(json["router_saturation"]["overall"], 1.0);

        let text = run_string(args(&p1, &p2)).unwrap();
        assert!(text.contains("Routing consistency RC"), "{text}");
        assert!(text.contains("1 layers n/a"), "{text}");
    }

    #[test]
    fn profiles_of_different_models_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let p1 = dir.path().join("p1.json");
        let p2 = dir.path().join("p2.json");
        let a = fixture_profile();
        a.save(&p1).unwrap();
        let mut b = a.clone();
        b.model.moe_layers = vec![1, 2];
        b.save(&p2).unwrap();
        let err = format!("{:#}", run_string(args(&p1, &p2)).unwrap_err());
        assert!(
            err.contains("p1.json and") && err.contains("p2.json"),
            "{err}"
        );
        assert!(err.contains("MoE layers differ: [0, 1] vs [1, 2]"), "{err}");

        let err = format!(
            "{:#}",
            run_string(CompareArgs {
                budget: Some(2.0),
                ..args(&p1, &p1)
            })
            .unwrap_err()
        );
        assert!(err.contains("budget 2 is outside"), "{err}");

        // Traces of different sequences cannot give router saturation.
        let t1 = dir.path().join("t1.jsonl");
        let t2 = dir.path().join("t2.jsonl");
        write_traces(&t1, &a.model, &fixture_traces());
        write_traces(&t2, &a.model, &fixture_traces()[..1]);
        let err = format!(
            "{:#}",
            run_string(CompareArgs {
                traces: Some(vec![t1, t2]),
                ..args(&p1, &p1)
            })
            .unwrap_err()
        );
        assert!(err.contains("3 sequences vs 1"), "{err}");
    }
}
