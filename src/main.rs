//! The `moescope` binary: the explorer window by default, headless subcommands over the same
//! library.

use clap::{Parser, Subcommand};
use moescope::cli::{adapter, compare, demo, engine, import, merge, report, select, steer, train};

/// MoEScope: see inside Mixture-of-Experts language models.
#[derive(Debug, Parser)]
#[command(name = "moescope", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Architecture, layers, experts, parameters of a model.
    Info(engine::InfoArgs),
    /// Routing of one text through every MoE layer.
    Trace(engine::TraceArgs),
    /// Profile a subject-labelled dataset: per-subject routing counts, masses and scores.
    Profile(engine::ProfileArgs),
    /// Routing recorded by vLLM, SGLang, Megatron-LM or llama.cpp, as a count-only profile.
    Import(import::ImportArgs),
    /// Every routing metric of a profile: KL vs pooled, top layers, load, hot sets, DAS.
    Report(report::ReportArgs),
    /// Pick experts by a rule and print the LoRA accounting; export PEFT / ESFT configs.
    Select(select::SelectArgs),
    /// Compare two profiles of the same model: RC, hot-set Jaccard, KL shift.
    Compare(compare::CompareArgs),
    /// Generate text with the KV cache (optionally steered), streaming to stdout.
    Generate(steer::GenerateArgs),
    /// Unsteered and steered continuations side by side, plus the routing change per layer.
    Steer(steer::SteerArgs),
    /// Multiple-choice accuracy per subject with and without steering, with bootstrap CIs.
    Eval(steer::EvalArgs),
    /// Write a steering spec from a selection, a DAS ranking or a list of cells.
    SteerSpec(steer::SteerSpecArgs),
    /// Selective LoRA on chosen experts (or DAS's two-stage recipe); writes a PEFT adapter.
    Train(train::TrainArgs),
    /// Rewrite a LoRA adapter in another form (per-expert, padded, transformers 5's fused).
    ConvertAdapter(adapter::ConvertAdapterArgs),
    /// Fold a LoRA adapter into the base model's weights: a safetensors checkpoint in the
    /// model's own layout.
    Merge(merge::MergeArgs),
    /// Open the explorer window (the default with no subcommand; the embedded demo unless told).
    Gui(moescope::gui::GuiArgs),
    /// Train the embedded demo MoE (tokenizer + model) from the demo corpus.
    TrainDemo(demo::TrainDemoArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if cli
        .command
        .as_ref()
        .is_some_and(|c| !matches!(c, Command::Gui(_)))
    {
        quiet_on_closed_stdout();
    }
    let result = match cli.command {
        Some(Command::Info(a)) => engine::info(a),
        Some(Command::Trace(a)) => engine::trace(a),
        Some(Command::Profile(a)) => engine::profile(a),
        Some(Command::Import(a)) => import::run(a),
        Some(Command::Report(a)) => report::run(a),
        Some(Command::Select(a)) => select::run(a),
        Some(Command::Compare(a)) => compare::run(a),
        Some(Command::Generate(a)) => steer::generate_cmd(a),
        Some(Command::Steer(a)) => steer::steer_cmd(a),
        Some(Command::Eval(a)) => steer::eval_cmd(a),
        Some(Command::SteerSpec(a)) => steer::steer_spec_cmd(a),
        Some(Command::Train(a)) => train::run(a),
        Some(Command::ConvertAdapter(a)) => adapter::run(a),
        Some(Command::Merge(a)) => merge::run(a),
        Some(Command::TrainDemo(a)) => demo::train_demo(a),
        Some(Command::Gui(a)) => moescope::gui::run(a),
        None => moescope::gui::run(moescope::gui::GuiArgs::default()),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Lets a subcommand whose output is piped into a reader that stops early (`moescope trace …
/// | head`) end quietly, as other command-line tools do, instead of panicking in `println!`.
/// Rust ignores SIGPIPE so writes fail with `EPIPE`; the default action ends the process at
/// the failed write. Files are unaffected (they are written to a temporary file and renamed),
/// and sockets opened by the standard library never raise SIGPIPE.
fn quiet_on_closed_stdout() {
    #[cfg(unix)]
    // SAFETY: called on the main thread before any other thread starts; restoring a signal's
    // default disposition has no other effect on the program's state.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
