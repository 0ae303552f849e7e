//! Worker tests on the committed fixture model (`tests/fixtures/models/olmoe`, 3 layers × 8
//! experts) and a tiny JSONL written to a temp folder.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicUsize;

use super::*;
use crate::data::{DataOptions, load_prompts};

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
        Event::Progress { job: 2, total, .. } => {
            assert_eq!(*total, 9);
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
