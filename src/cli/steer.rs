//! Steering commands: `generate`, `steer` (unsteered vs steered side by side with the routing
//! change), `eval` (multiple-choice accuracy with and without steering) and `steer-spec`
//! (build a steering spec from a selection, a DAS ranking or a list of cells).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::json;

use super::engine::ModelArgs;
use crate::analysis::das::GeneralSet;
use crate::inference::eval::{Estimate, EvalOptions, EvalReport, load_items, run_eval};
use crate::inference::generate::{GenerateOptions, TextStream, generate, stop_ids};
use crate::model::router::ExpertForce;
use crate::model::{LoadedModel, ModelInfo, tokenize};
use crate::profile::RoutingProfile;
use crate::selection::{Selection, parse_cells};
use crate::steering::compare::{CompareError, steer_and_compare};
use crate::steering::{ActiveSteering, ApplyTo, SteerAction, SteerError, SteeringSpec};

/// A Ctrl-C flag (the handler is installed once per process).
fn cancel_flag() -> Arc<AtomicBool> {
    let cancel = Arc::new(AtomicBool::new(false));
    let c = cancel.clone();
    // A second handler registration fails only if one exists already; ignore that.
    let _ = ctrlc::set_handler(move || c.store(true, Ordering::Relaxed));
    cancel
}

/// Steering options shared by the commands.
#[derive(Debug, Clone, Args)]
pub struct SteerFileArgs {
    /// Steering spec (JSON, `moescope-steering` v1; make one with `moescope steer-spec`).
    #[arg(long)]
    pub steer: Option<PathBuf>,
    /// Override the spec's strength (multiplies every bias; 0 turns steering off).
    #[arg(long)]
    pub strength: Option<f32>,
    /// Override which tokens the spec steers: prompt, generated or both.
    #[arg(long)]
    pub apply_to: Option<ApplyTo>,
}

impl SteerFileArgs {
    fn load(&self, info: &ModelInfo) -> Result<Option<(SteeringSpec, ActiveSteering)>> {
        let Some(path) = &self.steer else {
            if self.strength.is_some() || self.apply_to.is_some() {
                bail!("--strength / --apply-to need --steer SPEC");
            }
            return Ok(None);
        };
        let mut spec = SteeringSpec::load(path)?;
        if let Some(s) = self.strength {
            spec.strength = s;
        }
        if let Some(a) = self.apply_to {
            spec.apply_to = a;
        }
        let active = spec.resolve_from_file(path, info)?;
        Ok(Some((spec, active)))
    }
}

/// Sampling options.
#[derive(Debug, Clone, Args)]
pub struct SamplingArgs {
    /// Tokens to generate at most.
    #[arg(long, default_value_t = 64)]
    pub max_new_tokens: usize,
    /// Sampling temperature; 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    /// Nucleus sampling threshold in (0, 1].
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
    /// Random seed for sampling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Do not stop at end-of-text tokens.
    #[arg(long)]
    pub no_stop: bool,
}

impl SamplingArgs {
    fn options(&self, loaded: &LoadedModel) -> GenerateOptions {
        GenerateOptions {
            max_new_tokens: self.max_new_tokens,
            temperature: self.temperature,
            top_p: self.top_p,
            seed: self.seed,
            stop_ids: if self.no_stop {
                Vec::new()
            } else {
                stop_ids(&loaded.tokenizer)
            },
        }
    }
}

fn encode_prompt(loaded: &LoadedModel, prompt: &str) -> Result<Vec<u32>> {
    if prompt.trim().is_empty() {
        bail!("--prompt is empty");
    }
    let ids = tokenize::encode(&loaded.tokenizer, prompt)?;
    if ids.is_empty() {
        bail!("the prompt encodes to no tokens");
    }
    Ok(ids)
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prompt text (tokenised with the tokenizer's special tokens).
    #[arg(long, short = 'p')]
    pub prompt: String,
    #[command(flatten)]
    pub steer: SteerFileArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

/// `moescope generate`: streams the continuation to stdout.
pub fn generate_cmd(args: GenerateArgs) -> Result<()> {
    let mut loaded = args.model.load(true, false)?;
    let info = loaded.model.info().clone();
    let steering = args.steer.load(&info)?;
    let ids = encode_prompt(&loaded, &args.prompt)?;
    let opts = args.sampling.options(&loaded);
    opts.validate()?;
    let cancel = cancel_flag();
    let mut stream = TextStream::default();
    let tokenizer = loaded.tokenizer.clone();
    let mut stdout = std::io::stdout().lock();
    let _ = write!(stdout, "{}", args.prompt);
    let _ = stdout.flush();
    let started = std::time::Instant::now();
    let result = generate(
        loaded.model.as_mut(),
        &ids,
        steering.as_ref().map(|s| &s.1),
        &opts,
        None,
        &cancel,
        &mut |t| {
            if let Some(text) = stream.push(&tokenizer, t) {
                let _ = write!(stdout, "{text}");
                let _ = stdout.flush();
            }
        },
    );
    let _ = writeln!(stdout);
    let out = match result {
        Ok(o) => o,
        Err(SteerError::Cancelled) => bail!("cancelled"),
        Err(e) => return Err(e.into()),
    };
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "{} tokens in {:.2} s ({:.1} tokens/s){}",
        out.len(),
        secs,
        out.len() as f64 / secs.max(1e-9),
        match &steering {
            Some((spec, _)) => format!(
                ", steered: {} cells, strength {}, {:?}",
                spec.experts.len(),
                spec.strength,
                spec.apply_to
            ),
            None => String::new(),
        }
    );
    Ok(())
}

#[derive(Debug, Args)]
pub struct SteerArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prompt text.
    #[arg(long, short = 'p')]
    pub prompt: String,
    #[command(flatten)]
    pub steer: SteerFileArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// `moescope steer`: unsteered and steered continuations plus the routing change per layer.
pub fn steer_cmd(args: SteerArgs) -> Result<()> {
    if args.steer.steer.is_none() {
        bail!("--steer SPEC is required (make one with `moescope steer-spec`)");
    }
    let mut loaded = args.model.load(!args.json, false)?;
    let info = loaded.model.info().clone();
    let (spec, active) = args.steer.load(&info)?.context("no steering spec")?;
    let ids = encode_prompt(&loaded, &args.prompt)?;
    let opts = args.sampling.options(&loaded);
    opts.validate()?;
    let cancel = cancel_flag();
    let result = match steer_and_compare(
        loaded.model.as_mut(),
        &loaded.tokenizer,
        &ids,
        &active,
        &opts,
        &cancel,
        &mut |_| {},
    ) {
        Ok(r) => r,
        Err(CompareError::Cancelled) => bail!("cancelled"),
        Err(CompareError::Generation { source, .. } | CompareError::Routing(source)) => {
            return Err(source.into());
        }
    };
    let (plain, steered) = (&result.unsteered_ids, &result.steered_ids);
    let (plain_text, steered_text) = (&result.unsteered_text, &result.steered_text);
    let changes = &result.routing.changes;
    if args.json {
        let out = json!({
            "model": info.id,
            "prompt": args.prompt,
            "steering": spec,
            "unsteered": {"ids": plain, "text": plain_text},
            "steered": {"ids": steered, "text": steered_text},
            "first_different_token": result.first_difference(),
            "routing_change": changes,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "{} · steering {} cells (strength {}, {:?}){}",
        info.id,
        spec.experts.len(),
        spec.strength,
        spec.apply_to,
        spec.source
            .as_deref()
            .map(|s| format!(" · {s}"))
            .unwrap_or_default()
    );
    println!("\nprompt:    {}", args.prompt);
    println!("unsteered: {}", one_line(plain_text));
    println!("steered:   {}", one_line(steered_text));
    match result.first_difference() {
        None => println!("(identical continuations)"),
        Some(first_diff) => println!("(continuations differ from generated token {first_diff})"),
    }
    println!(
        "\nrouting change on the prompt + unsteered continuation ({} tokens):",
        result.compared_tokens()
    );
    println!(
        "  {:>5}  {:>8}  {:>11}  {:>10}  {:>8}  {:>8}  steered experts",
        "layer", "changed", "mass before", "mass after", "onto", "off"
    );
    for c in changes {
        println!(
            "  {:>5}  {:>7.1}%  {:>11.4}  {:>10.4}  {:>8.4}  {:>8.4}  {:?}",
            c.layer,
            100.0 * c.changed_share,
            c.steered_mass_before,
            c.steered_mass_after,
            c.mass_onto,
            c.mass_off,
            c.steered_experts
        );
    }
    Ok(())
}

fn one_line(s: &str) -> String {
    format!("{s:?}")
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Multiple-choice dataset: MMLU-Pro (question, options, answer, category) or MMLU
    /// (question, choices, answer, subject) as JSONL, CSV or Parquet.
    #[arg(long)]
    pub data: PathBuf,
    /// Only these subjects (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub subjects: Vec<String>,
    #[command(flatten)]
    pub steer: SteerFileArgs,
    /// At most N questions per subject.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Bootstrap resamples for the 95 % intervals.
    #[arg(long, default_value_t = 1000)]
    pub resamples: usize,
    /// Bootstrap seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Also write the JSON report here.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// `moescope eval`.
pub fn eval_cmd(args: EvalArgs) -> Result<()> {
    if args.limit == Some(0) {
        bail!("--limit must be at least 1");
    }
    if args.resamples == 0 {
        bail!("--resamples must be at least 1");
    }
    let items = load_items(&args.data, &args.subjects, args.limit)?;
    let mut loaded = args.model.load(!args.json, false)?;
    let info = loaded.model.info().clone();
    let steering = args.steer.load(&info)?;
    if let Some((spec, _)) = &steering
        && spec.apply_to == ApplyTo::Generated
    {
        eprintln!(
            "warning: the spec steers generated tokens only; multiple-choice scoring reads prompt \
             tokens, so steered and unsteered scores will be equal"
        );
    }
    let cancel = cancel_flag();
    let bar = if args.json {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(items.len() as u64)
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "scoring [{bar:30}] {pos}/{len} questions {elapsed} eta {eta}",
        )
        .expect("valid template"),
    );
    let opts = EvalOptions {
        resamples: args.resamples,
        seed: args.seed,
    };
    let result = run_eval(
        loaded.model.as_mut(),
        &loaded.tokenizer,
        &items,
        steering.as_ref().map(|s| &s.1),
        &opts,
        &cancel,
        &mut |done, _| bar.set_position(done as u64),
    );
    bar.finish_and_clear();
    let report = match result {
        Ok(r) => r,
        Err(SteerError::Cancelled) => bail!("cancelled; nothing was written"),
        Err(e) => return Err(e.into()),
    };
    let out = json!({
        "model": info.id,
        "data": args.data.display().to_string(),
        "steering": steering.as_ref().map(|s| &s.0),
        "steering_file": args.steer.steer.as_ref().map(|p| p.display().to_string()),
        "report": report,
    });
    if let Some(path) = &args.out {
        crate::io::write_atomic(path, serde_json::to_string_pretty(&out)?.as_bytes())
            .with_context(|| format!("{}: cannot write", path.display()))?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print_table(&info.id, &args.data, &report);
    }
    Ok(())
}

fn pct(e: &Estimate) -> String {
    format!(
        "{:5.1}% [{:5.1}, {:5.1}]",
        100.0 * e.value,
        100.0 * e.ci_low,
        100.0 * e.ci_high
    )
}

fn print_table(model: &str, data: &Path, r: &EvalReport) {
    println!(
        "{model} · {} · {} questions · 95 % bootstrap CIs ({} resamples, seed {})",
        data.display(),
        r.overall.questions,
        r.resamples,
        r.seed
    );
    let steered = r.overall.steered.is_some();
    let width = r
        .subjects
        .iter()
        .map(|s| s.subject.len())
        .max()
        .unwrap_or(7)
        .max(7);
    print!("{:<width$}  {:>5}  {:<22}", "subject", "n", "unsteered");
    if steered {
        print!("  {:<22}  {:<22}", "steered", "steered − unsteered");
    }
    println!();
    for s in r.subjects.iter().chain(std::iter::once(&r.overall)) {
        print!(
            "{:<width$}  {:>5}  {:<22}",
            s.subject,
            s.questions,
            pct(&s.unsteered)
        );
        if let (Some(st), Some(d)) = (&s.steered, &s.delta) {
            print!("  {:<22}  {}", pct(st), pct(d));
        }
        println!();
    }
    if r.truncated > 0 {
        println!(
            "({} questions were cut from the left to fit the model's context)",
            r.truncated
        );
    }
}

#[derive(Debug, Args)]
pub struct SteerSpecArgs {
    /// Where to write the spec (JSON).
    #[arg(long)]
    pub out: PathBuf,
    /// Steer the cells of this selection file.
    #[arg(long, conflicts_with_all = ["profile", "cells"])]
    pub selection: Option<PathBuf>,
    /// Steer the top-N DAS experts of --domain in this profile.
    #[arg(long, requires = "domain", conflicts_with = "cells")]
    pub profile: Option<PathBuf>,
    /// The domain (subject) whose DAS ranking to use.
    #[arg(long)]
    pub domain: Option<String>,
    /// General subjects for DAS (comma-separated); all other subjects by default.
    #[arg(long, value_delimiter = ',')]
    pub general: Vec<String>,
    /// How many DAS experts to steer (across all layers).
    #[arg(long, default_value_t = 8)]
    pub top_n: usize,
    /// Explicit cells: LAYER:E,E;LAYER:E (e.g. 3:1,5;4:2).
    #[arg(long)]
    pub cells: Option<String>,
    /// Router-logit bias for each cell (DSMoE). Default 2 unless --force is given.
    #[arg(long, conflicts_with = "force")]
    pub bias: Option<f32>,
    /// Force each cell on or off (SteerMoE) instead of biasing it.
    #[arg(long, value_parser = parse_force)]
    pub force: Option<ExpertForce>,
    /// Global strength.
    #[arg(long, default_value_t = 1.0)]
    pub strength: f32,
    /// Which tokens to steer: prompt, generated or both.
    #[arg(long, default_value = "both")]
    pub apply_to: ApplyTo,
    /// Check the spec against this model (folder or hub id) before writing.
    #[arg(long)]
    pub model: Option<String>,
}

fn parse_force(s: &str) -> std::result::Result<ExpertForce, String> {
    match s.to_ascii_lowercase().as_str() {
        "on" => Ok(ExpertForce::On),
        "off" => Ok(ExpertForce::Off),
        other => Err(format!("'{other}' is not on or off")),
    }
}

/// `moescope steer-spec`: writes a steering spec.
pub fn steer_spec_cmd(args: SteerSpecArgs) -> Result<()> {
    let action = match (args.force, args.bias) {
        (Some(f), _) => SteerAction::Force(f),
        (None, b) => SteerAction::Bias(b.unwrap_or(2.0)),
    };
    let mut spec = match (&args.selection, &args.profile, &args.cells) {
        (Some(path), _, _) => SteeringSpec::from_selection(&Selection::load(path)?, action),
        (None, Some(path), _) => {
            let profile = RoutingProfile::load(path)?;
            let domain = args.domain.as_deref().context("--profile needs --domain")?;
            let mut spec = SteeringSpec::from_das(
                &profile,
                domain,
                &GeneralSet::from_names(&args.general),
                args.top_n,
                action,
            )
            .with_context(|| format!("{}: cannot rank experts", path.display()))?;
            spec.source = Some(format!(
                "DAS top-{} of '{domain}' in {}",
                args.top_n,
                path.display()
            ));
            spec
        }
        (None, None, Some(cells)) => {
            let mut spec = SteeringSpec::from_cells(parse_cells(cells)?, action);
            spec.source = Some(format!("cells {cells}"));
            spec
        }
        (None, None, None) => bail!("give --selection FILE, --profile FILE --domain D, or --cells"),
    };
    spec.strength = args.strength;
    spec.apply_to = args.apply_to;
    if let Some(m) = &args.model {
        let margs = ModelArgs {
            model: Some(m.clone()),
            revision: None,
            dtype: None,
            device: Default::default(),
            adapter: None,
        };
        let loaded = margs.load(true, true)?;
        spec.resolve(loaded.model.info())
            .with_context(|| format!("the spec does not fit {m}"))?;
    }
    spec.save(&args.out)?;
    eprintln!(
        "wrote {} steered cells ({}) -> {}",
        spec.experts.len(),
        spec.source.as_deref().unwrap_or("by hand"),
        args.out.display()
    );
    Ok(())
}
