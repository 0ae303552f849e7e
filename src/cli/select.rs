//! `moescope select P.json --rule ... --out S.json`: makes an expert selection from a profile
//! with one of the rules of [`crate::selection::rules`], saves it, optionally exports a PEFT
//! adapter folder to train (in the form the target stack loads) and an ESFT expert config, and prints its parameter accounting and the
//! routing coverage it captures.

use std::io::Write;
use std::path::PathBuf;

use crate::analysis::hot::{HotSignal, experts_for_budget};
use crate::model::adapter::{AdapterForm, AdapterFormChoice};
use crate::profile::{RoutingProfile, RoutingSignal};
use crate::selection::accounting::{Accounting, require_layout};
use crate::selection::export::{resolve_adapter_form, write_esft_config, write_peft_adapter};
use crate::selection::rules::random_matched;
use crate::selection::{
    AccountingOptions, AdapterScope, EsftOptions, PeftOptions, Selection, SelectionModel,
    SelectionRule, account, parse_cells, select,
};
use anyhow::{Context, Result, bail};

use super::inputs::load_profile;
use super::output::{percent, short_bytes, short_count, table};

/// The selection rules on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RuleName {
    /// Top-k experts per layer by routing count (MoE-Sieve; `--signal mass` ranks by mass).
    Hot,
    /// Top-k experts per layer by routing mass.
    Mass,
    /// Per layer, the fewest experts reaching `--coverage` of the layer's activations.
    Coverage,
    /// k·L slots: one per layer, then by marginal coverage.
    Greedy,
    /// Top-k experts per layer by domain advantage for `--domain` against `--general`.
    Das,
    /// k random experts per layer (seeded), or the budget of `--match-selection`.
    Random,
    /// The cells given with `--experts`.
    Explicit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SignalArg {
    Count,
    Mass,
}

/// What DAS is computed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DasSignalArg {
    /// Routing scores when the profile has them (the DAS paper), counts otherwise.
    Auto,
    /// Mean routing score per token (needs a profile MoEScope recorded).
    Score,
    /// Share of tokens choosing the expert: DAS on counts (works on imported routing).
    Count,
}

impl DasSignalArg {
    /// The signal for `profile`.
    pub fn resolve(self, profile: &RoutingProfile) -> RoutingSignal {
        match self {
            DasSignalArg::Auto => crate::analysis::das::default_das_signal(profile),
            DasSignalArg::Score => RoutingSignal::Score,
            DasSignalArg::Count => RoutingSignal::Count,
        }
    }

    /// `None` for auto.
    pub fn explicit(self) -> Option<RoutingSignal> {
        match self {
            DasSignalArg::Auto => None,
            DasSignalArg::Score => Some(RoutingSignal::Score),
            DasSignalArg::Count => Some(RoutingSignal::Count),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AdapterDtype {
    F32,
    Bf16,
    F16,
}

#[derive(Debug, Clone, clap::Args)]
pub struct SelectArgs {
    /// Routing profile (moescope-profile JSON).
    pub profile: PathBuf,
    #[arg(long, value_enum)]
    pub rule: RuleName,
    /// Experts per layer as a share of the routed experts, in (0, 1] (default 0.25).
    #[arg(
        long,
        value_name = "F",
        conflicts_with = "k",
        allow_negative_numbers = true
    )]
    pub budget: Option<f64>,
    /// Experts per layer.
    #[arg(long, value_name = "N")]
    pub k: Option<usize>,
    /// Target share of each layer's activations for `--rule coverage`.
    #[arg(
        long,
        value_name = "F",
        default_value_t = 0.6,
        allow_negative_numbers = true
    )]
    pub coverage: f64,
    /// Ranking signal for hot, coverage and greedy.
    #[arg(long, value_enum, default_value = "count")]
    pub signal: SignalArg,
    /// The domain subject for `--rule das`; for hot / mass / coverage / greedy, rank this
    /// subject's data instead of all subjects pooled.
    #[arg(long, value_name = "NAME")]
    pub domain: Option<String>,
    /// General set for `--rule das`, comma-separated (default: the other subjects).
    #[arg(long, value_delimiter = ',', value_name = "NAMES")]
    pub general: Vec<String>,
    /// What `--rule das` compares: routing scores, or counts (the only choice for imported,
    /// count-only profiles; auto picks it for them).
    #[arg(long, value_enum, default_value = "auto")]
    pub das_signal: DasSignalArg,
    /// Seed for `--rule random`, and for the initial `A` of a padded or fused `--peft-config`.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// For `--rule random`: as many experts per layer as this selection has.
    #[arg(long, value_name = "FILE")]
    pub match_selection: Option<PathBuf>,
    /// For `--rule explicit`: cells as `LAYER:E,E;LAYER:E` (decoder layer indices).
    #[arg(long, value_name = "CELLS")]
    pub experts: Option<String>,
    /// LoRA rank for the accounting and the PEFT config.
    #[arg(long, default_value_t = 32)]
    pub rank: usize,
    /// LoRA alpha for the PEFT config (default 2 × rank).
    #[arg(long)]
    pub alpha: Option<f64>,
    /// LoRA dropout for the PEFT config.
    #[arg(long, default_value_t = 0.05)]
    pub dropout: f64,
    /// Also adapt attention projections (all decoder layers).
    #[arg(long)]
    pub attention: bool,
    /// Also adapt the routers.
    #[arg(long)]
    pub router: bool,
    /// Also adapt the shared experts (families that have them).
    #[arg(long)]
    pub shared_experts: bool,
    /// Decoder layers with attention (default: last MoE layer + 1).
    #[arg(long, value_name = "N")]
    pub num_layers: Option<usize>,
    /// Storage type of the adapter, for its size.
    #[arg(long, value_enum, default_value = "f32")]
    pub adapter_dtype: AdapterDtype,
    /// Where to save the selection (moescope-selection JSON).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Write a PEFT adapter folder for training this selection into DIR: adapter_config.json
    /// (per-expert form), plus initial weights with the unselected experts exactly zero
    /// (padded and fused forms, which hold every expert).
    #[arg(long, value_name = "DIR")]
    pub peft_config: Option<PathBuf>,
    /// Form of the --peft-config adapter: per-expert (transformers 4.x), padded, fused
    /// (transformers 5.x `target_parameters`), or auto (from the model's family and, when
    /// --base-model is a local folder, its config.json).
    #[arg(long, value_enum, default_value = "auto")]
    pub adapter_form: AdapterFormChoice,
    /// base_model_name_or_path for the PEFT config (default: the profile's model id).
    #[arg(long, value_name = "ID")]
    pub base_model: Option<String>,
    /// Write an ESFT-style expert config to FILE.
    #[arg(long, value_name = "FILE")]
    pub esft: Option<PathBuf>,
    /// Print the accounting as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: SelectArgs) -> Result<()> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    run_to(args, &mut out)
}

fn signal(s: SignalArg) -> HotSignal {
    match s {
        SignalArg::Count => HotSignal::Count,
        SignalArg::Mass => HotSignal::Mass,
    }
}

/// Experts per layer from `--k` or `--budget` (default 25 %).
fn experts_per_layer(args: &SelectArgs, num_experts: usize) -> Result<usize> {
    match (args.k, args.budget) {
        (Some(k), _) => Ok(crate::analysis::hot::check_k(k, num_experts)?),
        (None, budget) => Ok(experts_for_budget(
            num_experts,
            budget.unwrap_or(crate::analysis::hot::DEFAULT_BUDGET),
        )?),
    }
}

/// Makes the selection the arguments ask for.
fn make_selection(args: &SelectArgs, profile: &RoutingProfile) -> Result<Selection> {
    let n = profile.model.num_experts;
    let data = args.domain.as_deref();
    let rule = match args.rule {
        RuleName::Hot => SelectionRule::Hot {
            signal: signal(args.signal),
            k: experts_per_layer(args, n)?,
        },
        RuleName::Mass => SelectionRule::Hot {
            signal: HotSignal::Mass,
            k: experts_per_layer(args, n)?,
        },
        RuleName::Coverage => SelectionRule::Coverage {
            signal: signal(args.signal),
            threshold: args.coverage,
        },
        RuleName::Greedy => SelectionRule::Greedy {
            signal: signal(args.signal),
            k: experts_per_layer(args, n)?,
        },
        RuleName::Das => {
            let Some(domain) = &args.domain else {
                bail!(
                    "--rule das needs --domain NAME (one of: {})",
                    profile.subject_names().join(", ")
                );
            };
            SelectionRule::Das {
                domain: domain.clone(),
                general: args.general.clone(),
                k: experts_per_layer(args, n)?,
                signal: args.das_signal.resolve(profile),
            }
        }
        RuleName::Random => {
            if let Some(path) = &args.match_selection {
                let other = Selection::load(path)?;
                other
                    .validate_for(&profile.model)
                    .with_context(|| format!("{}", path.display()))?;
                return Ok(random_matched(&other, args.seed)?);
            }
            SelectionRule::Random {
                k: experts_per_layer(args, n)?,
                seed: args.seed,
            }
        }
        RuleName::Explicit => {
            let Some(cells) = &args.experts else {
                bail!("--rule explicit needs --experts LAYER:E,E;LAYER:E");
            };
            return Ok(Selection::explicit(
                SelectionModel::from(&profile.model),
                parse_cells(cells)?,
            )?);
        }
    };
    Ok(select(profile, &rule, data)?)
}

/// Makes, saves and exports the selection, then prints its accounting to `out`.
pub fn run_to(args: SelectArgs, out: &mut dyn Write) -> Result<()> {
    let profile = load_profile(&args.profile)?;
    let context = || format!("{}", args.profile.display());
    let mut selection = make_selection(&args, &profile).with_context(context)?;
    selection.source_profile = Some(args.profile.display().to_string());
    let scope = AdapterScope {
        attention: args.attention,
        router: args.router,
        shared_experts: args.shared_experts,
        num_decoder_layers: args.num_layers,
    };
    let accounting = account(
        &selection,
        &profile,
        &AccountingOptions {
            rank: args.rank,
            scope: scope.clone(),
            bytes_per_param: match args.adapter_dtype {
                AdapterDtype::F32 => 4,
                AdapterDtype::Bf16 | AdapterDtype::F16 => 2,
            },
        },
    )
    .with_context(context)?;
    let layout = require_layout(&profile.model).with_context(context)?;

    selection.save(&args.out)?;
    let mut written = vec![args.out.display().to_string()];
    let mut adapter_form = None;
    if let Some(dir) = &args.peft_config {
        let options = PeftOptions {
            rank: args.rank,
            alpha: args.alpha.unwrap_or(2.0 * args.rank as f64),
            dropout: args.dropout,
            base_model: args
                .base_model
                .clone()
                .unwrap_or_else(|| profile.model.id.clone()),
            scope: scope.clone(),
        };
        let form = resolve_adapter_form(
            args.adapter_form,
            &profile.model.architecture,
            &options.base_model,
        );
        let paths = write_peft_adapter(dir, &selection, layout, &options, form, args.seed)?;
        written.extend(paths.iter().map(|p| p.display().to_string()));
        adapter_form = Some(form);
    }
    if let Some(path) = &args.esft {
        let options = EsftOptions {
            shared_experts: args.shared_experts,
            non_expert_modules: args.attention || args.router,
        };
        write_esft_config(path, &selection, &options)?;
        written.push(path.display().to_string());
    }

    if args.json {
        let value = serde_json::json!({
            "selection": selection,
            "accounting": accounting,
            "written": written,
            "adapter_form": adapter_form,
        });
        serde_json::to_writer_pretty(&mut *out, &value)?;
        writeln!(out)?;
    } else {
        print_accounting(&selection, &accounting, out)?;
        writeln!(out, "wrote {}", written.join(", "))?;
        if let (Some(form), Some(dir)) = (adapter_form, &args.peft_config) {
            writeln!(
                out,
                "adapter form: {} (loads in {})",
                form.label(),
                form.loads_in()
            )?;
            if form != AdapterForm::PerExpert {
                writeln!(
                    out,
                    "train it with PeftModel.from_pretrained(model, \"{}\", is_trainable=True): \
                     unselected experts start at zero and stay zero",
                    dir.display()
                )?;
            }
        }
    }
    Ok(())
}

fn describe_rule(rule: &SelectionRule) -> String {
    match rule {
        SelectionRule::Hot { signal, k } => format!("hot top-{k} per layer by {signal}"),
        SelectionRule::Coverage { signal, threshold } => {
            format!(
                "fewest experts covering {} of each layer's {signal}",
                percent(*threshold)
            )
        }
        SelectionRule::Greedy { signal, k } => {
            format!("greedy budget of {k} × L slots by {signal} coverage")
        }
        SelectionRule::Das {
            domain,
            general,
            k,
            signal,
        } => {
            let general = if general.is_empty() {
                "the other subjects".to_string()
            } else {
                general.join("+")
            };
            let on = match signal {
                RoutingSignal::Score => String::new(),
                other => format!(" (DAS on {other}s)"),
            };
            format!("DAS top-{k} per layer for {domain} against {general}{on}")
        }
        SelectionRule::Random { k, seed } => format!("{k} random experts per layer (seed {seed})"),
        SelectionRule::RandomMatched { seed, matched, .. } => format!(
            "random experts at the per-layer budget of [{}] (seed {seed})",
            describe_rule(matched)
        ),
        SelectionRule::Explicit => "explicit list".to_string(),
    }
}

pub(crate) fn print_accounting(
    selection: &Selection,
    a: &Accounting,
    out: &mut dyn Write,
) -> Result<()> {
    writeln!(
        out,
        "Selection: {} on {} data of {}",
        describe_rule(&selection.rule),
        selection.data.as_deref().unwrap_or("no"),
        selection.model.id
    )?;
    let counts: Vec<String> = selection
        .per_layer_counts()
        .iter()
        .map(|(l, n)| format!("{l}:{n}"))
        .collect();
    writeln!(
        out,
        "  {} of {} routed experts ({}); per layer {}",
        a.selected_experts,
        a.total_experts,
        percent(a.selected_experts as f64 / a.total_experts.max(1) as f64),
        counts.join(" ")
    )?;
    writeln!(out, "LoRA rank {} trainable parameters", a.rank)?;
    let mut rows = vec![vec![
        String::new(),
        "selection".into(),
        "all experts".into(),
    ]];
    let row = |name: &str, s: u64, f: u64| vec![name.to_string(), short_count(s), short_count(f)];
    rows.push(row("experts", a.selected.experts, a.all_experts.experts));
    if a.scope.attention {
        rows.push(row(
            "attention",
            a.selected.attention,
            a.all_experts.attention,
        ));
    }
    if a.scope.router {
        rows.push(row("router", a.selected.router, a.all_experts.router));
    }
    if a.scope.shared_experts {
        rows.push(row(
            "shared experts",
            a.selected.shared_experts,
            a.all_experts.shared_experts,
        ));
    }
    rows.push(row("total", a.selected.total, a.all_experts.total));
    rows.push(vec![
        "adapter size".into(),
        short_bytes(a.adapter_bytes),
        short_bytes(a.all_experts_adapter_bytes),
    ]);
    table(out, &rows)?;
    writeln!(
        out,
        "  reduction vs LoRA on all experts: {} of total parameters ({} of expert parameters)",
        percent(a.total_reduction),
        percent(a.expert_reduction)
    )?;
    let mass = |share: Option<f64>| share.map_or_else(|| "n/a (counts only)".into(), percent);
    writeln!(
        out,
        "Routing captured (share of activations / of routing weight)"
    )?;
    let mut rows = vec![vec![
        "(all subjects)".to_string(),
        percent(a.pooled_coverage.count_share),
        mass(a.pooled_coverage.mass_share),
    ]];
    for c in &a.coverage {
        rows.push(vec![
            c.subject.clone(),
            percent(c.count_share),
            mass(c.mass_share),
        ]);
    }
    table(out, &rows)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::test_fixtures::fixture_profile;
    use std::path::Path;

    fn args(profile: &Path, rule: RuleName, out: &Path) -> SelectArgs {
        SelectArgs {
            profile: profile.to_path_buf(),
            rule,
            budget: None,
            k: None,
            coverage: 0.6,
            signal: SignalArg::Count,
            domain: None,
            general: vec![],
            das_signal: DasSignalArg::Auto,
            seed: 0,
            match_selection: None,
            experts: None,
            rank: 2,
            alpha: None,
            dropout: 0.05,
            attention: false,
            router: false,
            shared_experts: false,
            num_layers: None,
            adapter_dtype: AdapterDtype::F32,
            out: out.to_path_buf(),
            peft_config: None,
            adapter_form: AdapterFormChoice::Auto,
            base_model: None,
            esft: None,
            json: false,
        }
    }

    fn run_string(a: SelectArgs) -> Result<String> {
        let mut out = Vec::new();
        run_to(a, &mut out)?;
        Ok(String::from_utf8(out).unwrap())
    }

    #[test]
    fn hot_selection_with_peft_and_esft_exports() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("p.json");
        fixture_profile().save(&p).unwrap();
        let s = dir.path().join("s.json");
        let peft = dir.path().join("adapter");
        let esft = dir.path().join("esft.json");
        let text = run_string(SelectArgs {
            k: Some(2),
            peft_config: Some(peft.clone()),
            esft: Some(esft.clone()),
            ..args(&p, RuleName::Hot, &s)
        })
        .unwrap();
        assert!(text.contains("hot top-2 per layer by count"), "{text}");
        assert!(text.contains("4 of 8 routed experts"), "{text}");
        // 4 experts · 3 · 2 · 24 = 576 vs 1152: 50 % reduction.
        assert!(text.contains("576") && text.contains("1.2k"), "{text}");
        assert!(text.contains("50.0 %"), "{text}");

        let selection = Selection::load(&s).unwrap();
        // Pooled counts: layer 0 [4, 3, 2, 1] → {0, 1}; layer 1 [3, 3, 2, 2] → {0, 1}.
        assert_eq!(
            selection.cells().collect::<Vec<_>>(),
            vec![(0, 0), (0, 1), (1, 0), (1, 1)]
        );
        assert_eq!(
            selection.source_profile.as_deref(),
            Some(p.display().to_string().as_str())
        );
        let config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(peft.join("adapter_config.json")).unwrap())
                .unwrap();
        let targets: Vec<&str> = config["target_modules"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        let mut expected = Vec::new();
        for (l, e) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
            for proj in ["down_proj", "gate_proj", "up_proj"] {
                expected.push(format!("model.layers.{l}.mlp.experts.{e}.{proj}"));
            }
        }
        assert_eq!(targets, expected);
        assert_eq!(config["r"], 2);
        assert_eq!(config["lora_alpha"], 4);
        assert_eq!(config["base_model_name_or_path"], "tiny-olmoe");
        let esft: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&esft).unwrap()).unwrap();
        assert_eq!(esft["experts"]["1"], serde_json::json!([0, 1]));
    }

    #[test]
    fn every_rule_runs() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("p.json");
        fixture_profile().save(&p).unwrap();
        let s = dir.path().join("s.json");
        for rule in [
            RuleName::Hot,
            RuleName::Mass,
            RuleName::Coverage,
            RuleName::Greedy,
        ] {
            run_string(args(&p, rule, &s)).unwrap();
        }
        run_string(SelectArgs {
            domain: Some("math".into()),
            ..args(&p, RuleName::Das, &s)
        })
        .unwrap();
        let das = Selection::load(&s).unwrap();
        assert!(matches!(das.rule, SelectionRule::Das { k: 1, .. }));
        let cov = dir.path().join("cov.json");
        run_string(SelectArgs {
            coverage: 0.9,
            ..args(&p, RuleName::Coverage, &cov)
        })
        .unwrap();
        let matched = dir.path().join("random.json");
        run_string(SelectArgs {
            match_selection: Some(cov.clone()),
            seed: 5,
            ..args(&p, RuleName::Random, &matched)
        })
        .unwrap();
        assert_eq!(
            Selection::load(&matched).unwrap().per_layer_counts(),
            Selection::load(&cov).unwrap().per_layer_counts()
        );
        let json: serde_json::Value = serde_json::from_str(
            &run_string(SelectArgs {
                experts: Some("0:3;1:2,3".into()),
                json: true,
                ..args(&p, RuleName::Explicit, &s)
            })
            .unwrap(),
        )
        .unwrap();
        assert_eq!(json["accounting"]["selected_experts"], 3);
        assert_eq!(json["selection"]["experts"]["1"], serde_json::json!([2, 3]));
    }

    #[test]
    fn bad_input_is_rejected_before_writing() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("p.json");
        fixture_profile().save(&p).unwrap();
        let s = dir.path().join("s.json");
        let check = |a: SelectArgs, expected: &str| {
            let err = format!("{:#}", run_string(a).unwrap_err());
            assert!(err.contains(expected), "{err}");
            assert!(!s.exists(), "nothing is written on error");
        };
        check(
            SelectArgs {
                budget: Some(1.5),
                ..args(&p, RuleName::Hot, &s)
            },
            "budget 1.5 is outside (0, 1]",
        );
        check(
            SelectArgs {
                budget: Some(0.0),
                ..args(&p, RuleName::Hot, &s)
            },
            "p.json",
        );
        check(
            SelectArgs {
                k: Some(9),
                ..args(&p, RuleName::Greedy, &s)
            },
            "k = 9 is outside 1..=4",
        );
        check(args(&p, RuleName::Das, &s), "--rule das needs --domain");
        check(
            SelectArgs {
                domain: Some("poetry".into()),
                ..args(&p, RuleName::Das, &s)
            },
            "unknown subject 'poetry' (the profile has: math, law)",
        );
        check(
            SelectArgs {
                domain: Some("math".into()),
                general: vec!["nope".into()],
                ..args(&p, RuleName::Das, &s)
            },
            "unknown subject 'nope'",
        );
        check(
            SelectArgs {
                experts: Some("5:1".into()),
                ..args(&p, RuleName::Explicit, &s)
            },
            "layer 5, which is not an MoE layer of tiny-olmoe",
        );
        check(
            SelectArgs {
                experts: Some("1:4".into()),
                ..args(&p, RuleName::Explicit, &s)
            },
            "expert 4 of layer 1",
        );
        check(
            SelectArgs {
                coverage: 0.0,
                ..args(&p, RuleName::Coverage, &s)
            },
            "coverage threshold 0 is outside (0, 1]",
        );
        // A selection file for a bigger model cannot set the random budget.
        let big = dir.path().join("big.json");
        let mut model = SelectionModel::from(&fixture_profile().model);
        model.num_experts = 8;
        Selection::explicit(model, [(1, 7)])
            .unwrap()
            .save(&big)
            .unwrap();
        check(
            SelectArgs {
                match_selection: Some(big),
                ..args(&p, RuleName::Random, &s)
            },
            "expert 7 of layer 1",
        );
        // A profile without a module layout cannot be accounted.
        let mut no_layout = fixture_profile();
        no_layout.model.layout = None;
        no_layout.save(&p).unwrap();
        check(args(&p, RuleName::Hot, &s), "no module layout");
    }
}
