//! Worker tests on the committed fixture model (`tests/fixtures/models/olmoe`, 3 layers × 8
//! experts) and a tiny JSONL written to a temp folder.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::*;
use crate::data::{DataOptions, PromptSet, load_prompts};
use crate::inference::generate::GenerateOptions;
use crate::model::router::ExpertForce;
use crate::steering::{SteerAction, SteeringSpec};

const WAIT: Duration = Duration::from_secs(60);

fn fixture_model() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/models/olmoe")
        .display()
        .to_string()
}

fn jsonl(dir: &Path, rows: usize) -> PathBuf {
    let path = dir.join("prompts.jsonl");
    let mut f = std::fs::File::create(&path).unwrap();
    let subjects = ["law", "math", "biology"];
    for i in 0..rows {
        let s = subjects[i % subjects.len()];
        writeln!(
            f,
            r#"{{"subject": "{s}", "text": "prompt number {i} about {s} and more words"}}"#
        )
        .unwrap();
    }
    path
}

/// Waits for the first event that `pick` accepts, failing on a `Failed` event it does not.
fn wait_for<T>(worker: &Worker, what: &str, mut pick: impl FnMut(&Event) -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if let Some(ev) = worker.recv_timeout(Duration::from_millis(200)) {
            if let Some(t) = pick(&ev) {
                return t;
            }
            if let Event::Failed { error, .. } = ev {
                panic!("waiting for {what}: worker failed: {error}");
            }
        }
    }
    panic!("timed out waiting for {what}");
}

fn loaded_worker(wakes: Arc<AtomicUsize>) -> Worker {
    let worker = Worker::spawn(move || {
        wakes.fetch_add(1, Ordering::Relaxed);
    })
    .unwrap();
    wait_for(&worker, "Ready", |e| {
        matches!(e, Event::Ready).then_some(())
    });
    worker
        .send(Command::LoadModel {
            job: 1,
            model: fixture_model(),
            adapter: None,
        })
        .unwrap();
    let info = wait_for(&worker, "ModelLoaded", |e| match e {
        Event::ModelLoaded { job: 1, info } => Some((**info).clone()),
        _ => None,
    });
    assert_eq!(info.num_experts, 8);
    assert_eq!(info.moe_layers.len(), 3);
    worker
}

#[test]
fn load_profile_trace() {
    let wakes = Arc::new(AtomicUsize::new(0));
    let worker = loaded_worker(wakes.clone());
    let dir = tempfile::tempdir().unwrap();
    let prompts = load_prompts(&jsonl(dir.path(), 9), &DataOptions::default()).unwrap();
    worker
        .send(Command::Profile {
            job: 2,
            prompts: Arc::new(prompts),
            batch_size: 2,
            max_tokens: None,
        })
        .unwrap();
    let mut progress_seen = false;
    let profile = wait_for(&worker, "ProfileReady", |e| match e {
        Event::Progress {
            job: 2,
            total,
            label,
            ..
        } => {
            // Prompts, then (the fixture's weights are read in place, so the run is
            // layer-major) layers with the bytes of weights read.
            if label.starts_with("layer-major") {
                assert!(label.contains("of weights read"), "{label}");
                assert_eq!(*total, 3, "{label}");
            } else {
                assert_eq!(*total, 9, "{label}");
            }
            progress_seen = true;
            None
        }
        Event::ProfileReady {
            job: 2,
            profile,
            top_tokens,
        } => Some((profile.clone(), top_tokens.clone())),
        _ => None,
    });
    let (profile, top_tokens) = profile;
    // Every expert's top tokens are routed to it no more often than the profile counts it.
    let pooled = profile.pooled();
    let mut any = false;
    for (row, experts) in top_tokens.iter().enumerate() {
        for (e, top) in experts.iter().enumerate() {
            let routed: u64 = top.iter().map(|t| t.routed).sum();
            assert!(routed <= pooled.count[row][e], "row {row} expert {e}");
            assert!(top.windows(2).all(|w| w[0].routed >= w[1].routed));
            any |= !top.is_empty();
        }
    }
    assert!(any, "no top tokens reported");
    assert!(progress_seen, "no progress event before ProfileReady");
    assert_eq!(profile.subject_names(), vec!["law", "math", "biology"]);
    assert_eq!(profile.subjects[0].sequences, 3);
    assert!(
        wakes.load(Ordering::Relaxed) >= 3,
        "the UI was not woken per event"
    );

    worker
        .send(Command::Trace {
            job: 3,
            text: "hello routing world".into(),
        })
        .unwrap();
    let trace = wait_for(&worker, "TraceReady", |e| match e {
        Event::TraceReady { job: 3, trace } => Some(trace.clone()),
        _ => None,
    });
    assert!(!trace.tokens.is_empty());
    assert_eq!(trace.layers.len(), 3);
    for t in &trace.tokens {
        assert_eq!(t.experts.len(), 3);
        for layer in &t.experts {
            assert_eq!(layer.len(), 2, "top-2 experts per token and layer");
            assert!(layer.iter().all(|&(e, w)| e < 8 && w.is_finite()));
        }
    }
    worker.shutdown();
}

#[test]
fn bad_path_fails_with_the_path() {
    let worker = Worker::spawn(|| {}).unwrap();
    let bad = "/definitely/not/a/model-folder";
    worker
        .send(Command::LoadModel {
            job: 7,
            model: bad.into(),
            adapter: None,
        })
        .unwrap();
    let error = wait_for(&worker, "Failed", |e| match e {
        Event::Failed {
            job: Some(7),
            error,
        } => Some(error.clone()),
        _ => None,
    });
    assert!(error.contains(bad), "error does not name the path: {error}");
    // The worker keeps working after a failure.
    worker
        .send(Command::Trace {
            job: 8,
            text: "x".into(),
        })
        .unwrap();
    let error = wait_for(&worker, "Failed", |e| match e {
        Event::Failed {
            job: Some(8),
            error,
        } => Some(error.clone()),
        _ => None,
    });
    assert!(error.contains("no model loaded"), "{error}");
    worker.shutdown();
}

#[test]
fn cancel_stops_profiling() {
    let worker = loaded_worker(Arc::new(AtomicUsize::new(0)));
    let dir = tempfile::tempdir().unwrap();
    let prompts = load_prompts(&jsonl(dir.path(), 6), &DataOptions::default()).unwrap();
    let many = load_prompts(&jsonl(dir.path(), 3000), &DataOptions::default()).unwrap();
    // Cancel before the job starts is reset: the job must run to completion.
    worker.cancel();
    worker
        .send(Command::Profile {
            job: 4,
            prompts: Arc::new(prompts),
            batch_size: 1,
            max_tokens: None,
        })
        .unwrap();
    wait_for(&worker, "ProfileReady", |e| {
        matches!(e, Event::ProfileReady { job: 4, .. }).then_some(())
    });

    worker
        .send(Command::Profile {
            job: 5,
            prompts: Arc::new(many),
            batch_size: 1,
            max_tokens: None,
        })
        .unwrap();
    wait_for(&worker, "first progress", |e| {
        matches!(e, Event::Progress { job: 5, .. }).then_some(())
    });
    worker.send(Command::Cancel).unwrap();
    let outcome = wait_for(&worker, "Cancelled", |e| match e {
        Event::Cancelled { job: 5 } => Some(true),
        Event::ProfileReady { job: 5, .. } => Some(false),
        _ => None,
    });
    assert!(outcome, "profiling finished despite the cancel");
    worker.shutdown();
}

#[test]
fn profile_without_model_fails() {
    let worker = Worker::spawn(|| {}).unwrap();
    worker
        .send(Command::Profile {
            job: 1,
            prompts: Arc::new(PromptSet::default()),
            batch_size: 1,
            max_tokens: None,
        })
        .unwrap();
    let error = wait_for(&worker, "Failed", |e| match e {
        Event::Failed {
            job: Some(1),
            error,
        } => Some(error.clone()),
        _ => None,
    });
    assert!(error.contains("no model loaded"));
    worker.shutdown();
}

fn generate_command(job: JobId, spec: SteeringSpec, max_new_tokens: usize) -> Command {
    Command::Generate {
        job,
        prompt: "the court ruled that the contract".into(),
        spec: Box::new(spec),
        options: GenerateOptions {
            max_new_tokens,
            ..GenerateOptions::default()
        },
    }
}

/// Collects a generate job's streamed text per side until its result (or failure).
fn collect_generation(worker: &Worker, job: JobId) -> ([String; 2], [usize; 2], Arc<SteerResult>) {
    let mut texts = [String::new(), String::new()];
    let mut events = [0usize; 2];
    let result = wait_for(worker, "SteerReady", |e| match e {
        Event::GeneratedText { job: j, side, text } if *j == job => {
            let i = usize::from(*side == Side::Steered);
            // The unsteered side finishes before the steered one starts.
            if i == 0 {
                assert_eq!(events[1], 0, "unsteered text after steered text");
            }
            texts[i].push_str(text);
            events[i] += 1;
            None
        }
        Event::SteerReady { job: j, result } if *j == job => Some(result.clone()),
        _ => None,
    });
    (texts, events, result)
}

#[test]
fn generate_streams_tokens_and_an_empty_spec_gives_identical_texts() {
    let worker = loaded_worker(Arc::new(AtomicUsize::new(0)));
    worker
        .send(generate_command(10, SteeringSpec::default(), 8))
        .unwrap();
    let (texts, events, r) = collect_generation(&worker, 10);
    assert!(!r.unsteered_ids.is_empty() && r.unsteered_ids.len() <= 8);
    assert_eq!(
        r.unsteered_ids, r.steered_ids,
        "empty steering changed the tokens"
    );
    assert_eq!(r.unsteered_text, r.steered_text);
    assert_eq!(r.first_difference(), None);
    for side in 0..2 {
        let full = if side == 0 {
            &r.unsteered_text
        } else {
            &r.steered_text
        };
        // Streamed increments add up to the decoded text (up to a held-back partial character).
        assert!(
            full.starts_with(&texts[side]),
            "{:?} vs {full:?}",
            texts[side]
        );
        if !full.ends_with('\u{FFFD}') {
            assert_eq!(&texts[side], full);
        }
        assert!(events[side] >= 1, "no streamed text on side {side}");
    }
    // Routing compared over the prompt + continuation: nothing changed.
    let d = &r.routing;
    assert_eq!(d.layers.len(), 3);
    assert_eq!(d.num_experts, 8);
    assert_eq!(d.tokens, r.prompt_tokens + r.unsteered_ids.len());
    assert!(d.unchanged());
    assert!(d.delta().iter().flatten().all(|&v| v == 0.0));
    assert!(r.steered_cells.is_empty());
    worker.shutdown();
}

#[test]
fn generate_with_forced_experts_changes_routing_and_bad_specs_fail() {
    let worker = loaded_worker(Arc::new(AtomicUsize::new(0)));
    // A spec naming an expert the model lacks fails with the problem named.
    let bad = SteeringSpec::from_cells([(0, 99)], SteerAction::Bias(1.0));
    worker.send(generate_command(11, bad, 4)).unwrap();
    let error = wait_for(&worker, "Failed", |e| match e {
        Event::Failed {
            job: Some(11),
            error,
        } => Some(error.clone()),
        Event::SteerReady { job: 11, .. } => panic!("a bad spec generated"),
        _ => None,
    });
    assert!(error.contains("expert 99"), "{error}");

    let layers = [0usize, 1, 2];
    let off = SteeringSpec::from_cells(
        layers.iter().flat_map(|&l| [(l, 0), (l, 1)]),
        SteerAction::Force(ExpertForce::Off),
    );
    worker.send(generate_command(12, off, 6)).unwrap();
    let (_, _, r) = collect_generation(&worker, 12);
    let d = &r.routing;
    assert_eq!(r.steered_cells.len(), 6);
    for row in 0..d.layers.len() {
        // Masked experts receive no token once steered.
        assert_eq!(d.after[row][0], 0.0);
        assert_eq!(d.after[row][1], 0.0);
        let k: f64 = d.after[row].iter().sum();
        assert!((k - 2.0).abs() < 1e-9, "shares sum to top-k: {k}");
    }
    assert!(
        d.changes.iter().any(|c| c.changed_share > 0.0),
        "masking two experts per layer changed nothing"
    );
    worker.shutdown();
}

#[test]
fn generate_without_a_model_fails() {
    let worker = Worker::spawn(|| {}).unwrap();
    worker
        .send(generate_command(1, SteeringSpec::default(), 4))
        .unwrap();
    let error = wait_for(&worker, "Failed", |e| match e {
        Event::Failed {
            job: Some(1),
            error,
        } => Some(error.clone()),
        _ => None,
    });
    assert!(error.contains("no model loaded"), "{error}");
    worker.shutdown();
}

/// An MMLU-Pro-layout JSONL of `n` questions in two subjects.
fn mc_jsonl(dir: &Path, n: usize) -> PathBuf {
    let path = dir.join("mc.jsonl");
    let mut f = std::fs::File::create(&path).unwrap();
    for i in 0..n {
        let subject = if i % 2 == 0 { "math" } else { "history" };
        let answer = ["A", "B", "C", "D"][i % 4];
        let row = serde_json::json!({
            "question": format!("Question {i}: which one is right?"),
            "options": ["one", "two", "three", "four"],
            "answer": answer,
            "category": subject,
        });
        writeln!(f, "{row}").unwrap();
    }
    path
}

#[test]
fn eval_reports_progress_and_per_subject_accuracy() {
    let worker = loaded_worker(Arc::new(AtomicUsize::new(0)));
    let dir = tempfile::tempdir().unwrap();
    let data = mc_jsonl(dir.path(), 12);
    let spec = SteeringSpec::from_cells(
        [(0, 0), (1, 0), (2, 0)],
        SteerAction::Force(ExpertForce::Off),
    );
    worker
        .send(Command::Eval {
            job: 20,
            data: data.clone(),
            spec: Some(Box::new(spec)),
            limit: Some(5),
        })
        .unwrap();
    let mut totals = Vec::new();
    let report = wait_for(&worker, "EvalReady", |e| match e {
        Event::Progress {
            job: 20,
            done,
            total,
            ..
        } => {
            totals.push((*done, *total));
            None
        }
        Event::EvalReady { job: 20, report } => Some(report.clone()),
        _ => None,
    });
    assert!(
        totals.iter().any(|&(d, t)| t == 10 && d == 10),
        "no final progress over the 10 questions: {totals:?}"
    );
    assert_eq!(report.subjects.len(), 2);
    assert_eq!(report.subjects[0].subject, "math");
    assert_eq!(report.subjects[0].questions, 5);
    assert_eq!(report.overall.questions, 10);
    let o = &report.overall;
    let s = o.steered.expect("steered accuracy");
    let d = o.delta.expect("delta");
    assert!((0.0..=1.0).contains(&o.unsteered.value) && (0.0..=1.0).contains(&s.value));
    assert!(o.unsteered.ci_low <= o.unsteered.value && o.unsteered.value <= o.unsteered.ci_high);
    assert!((d.value - (s.value - o.unsteered.value)).abs() < 1e-12);

    // A missing file fails naming it.
    let missing = dir.path().join("no-such-eval.jsonl");
    worker
        .send(Command::Eval {
            job: 21,
            data: missing.clone(),
            spec: None,
            limit: None,
        })
        .unwrap();
    let error = wait_for(&worker, "Failed", |e| match e {
        Event::Failed {
            job: Some(21),
            error,
        } => Some(error.clone()),
        _ => None,
    });
    assert!(error.contains("no-such-eval.jsonl"), "{error}");
    worker.shutdown();
}

#[test]
fn eval_can_be_cancelled() {
    let worker = loaded_worker(Arc::new(AtomicUsize::new(0)));
    let dir = tempfile::tempdir().unwrap();
    let data = mc_jsonl(dir.path(), 4000);
    worker
        .send(Command::Eval {
            job: 30,
            data,
            spec: Some(Box::new(SteeringSpec::from_cells(
                [(1, 3)],
                SteerAction::Bias(2.0),
            ))),
            limit: None,
        })
        .unwrap();
    wait_for(&worker, "scoring progress", |e| match e {
        Event::Progress {
            job: 30,
            total: 4000,
            ..
        } => Some(()),
        Event::EvalReady { job: 30, .. } => panic!("finished before any progress"),
        _ => None,
    });
    worker.send(Command::Cancel).unwrap();
    let cancelled = wait_for(&worker, "Cancelled", |e| match e {
        Event::Cancelled { job: 30 } => Some(true),
        Event::EvalReady { job: 30, .. } => Some(false),
        _ => None,
    });
    assert!(cancelled, "eval finished despite the cancel");
    worker.shutdown();
}
