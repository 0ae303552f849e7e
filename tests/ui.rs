//! GUI tests with egui_kittest on a profile of the fixture model
//! (`tests/fixtures/models/olmoe`: 3 MoE layers × 8 experts), not the demo.
//!
//! The click / drag / rule / event tests need no GPU. The wgpu snapshot test needs an adapter
//! (Mesa's lavapipe or llvmpipe are enough); without one it is skipped, saying so, unless
//! `REQUIRE_WGPU` is set. Update snapshots with `UPDATE_SNAPSHOTS=1 cargo test --test ui`.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use egui_kittest::Harness;
use egui_kittest::kittest::Queryable;
use moescope::data::{Prompt, PromptSet};
use moescope::gui::state::{JobKind, RunningJob};
use moescope::gui::{MoeScopeApp, Tab, UiState};
use moescope::inference::profiling::{ProfileOptions, run_profile};
use moescope::model::adapter::AdapterFormChoice;
use moescope::model::{LoadOptions, load_model};
use moescope::profile::{ProfileSource, RoutingProfile, RoutingSignal};
use moescope::worker::Event;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/models/olmoe");

fn prompts() -> PromptSet {
    let mut prompts = Vec::new();
    for (subject, words) in [
        ("law", "the court ruled that the contract was void"),
        ("math", "the integral of x squared is x cubed over three"),
        ("biology", "cells divide by mitosis and meiosis"),
    ] {
        for i in 0..4 {
            prompts.push(Prompt::plain(subject, format!("{words} {i}")));
        }
    }
    PromptSet {
        prompts,
        source: "ui-test".into(),
    }
}

/// A profile of the fixture model, made once per test binary.
fn profile() -> Arc<RoutingProfile> {
    static PROFILE: OnceLock<Arc<RoutingProfile>> = OnceLock::new();
    PROFILE
        .get_or_init(|| {
            let opts = LoadOptions {
                model: FIXTURE.into(),
                routing_only: true,
                ..LoadOptions::default()
            };
            let mut loaded = load_model(&opts, None).expect("fixture model loads");
            let mut p = run_profile(
                loaded.model.as_mut(),
                &loaded.tokenizer,
                &prompts(),
                &ProfileOptions::default(),
                &std::sync::atomic::AtomicBool::new(false),
                &mut |_| {},
            )
            .expect("fixture profile");
            // The id is the absolute fixture path; the snapshot must not depend on the checkout.
            p.model.id = "tests/fixtures/models/olmoe".into();
            Arc::new(p)
        })
        .clone()
}

fn app(cc: &eframe::CreationContext<'_>) -> MoeScopeApp {
    let mut app = MoeScopeApp::bare(cc, UiState::default());
    app.state.set_profile(profile(), None);
    app.state.set_prompts(prompts());
    app
}

fn harness() -> Harness<'static, MoeScopeApp> {
    let mut h = Harness::builder()
        .with_size(egui::vec2(1200.0, 760.0))
        .with_pixels_per_point(1.0)
        .build_eframe(|cc| app(cc));
    settle(&mut h);
    h
}

/// Runs until the worker thread has said it is ready and has woken the UI for it, so that
/// wake-up cannot add frames in the middle of a click (a press and a release more than 0.8 s of
/// frame time apart are no click) or push `run` past its step limit.
fn settle(h: &mut Harness<'_, MoeScopeApp>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !h.state().state.worker_ready {
        assert!(Instant::now() < deadline, "the worker never got ready");
        h.step();
        std::thread::sleep(Duration::from_millis(5));
    }
    run_after_wake(h);
}

/// The worker wakes the UI just after queueing an event: waits for that wake-up (unless the
/// steps so far already consumed it), then runs until the UI settles.
fn run_after_wake(h: &mut Harness<'_, MoeScopeApp>) {
    let deadline = Instant::now() + Duration::from_millis(300);
    while !h.ctx.has_requested_repaint() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    h.run();
}

/// Press and release at `pos`.
fn click_at(h: &mut Harness<'_, MoeScopeApp>, pos: egui::Pos2) {
    h.hover_at(pos);
    h.run();
    h.drag_at(pos);
    h.run();
    h.drop_at(pos);
    h.run();
}

fn center(h: &Harness<'_, MoeScopeApp>, row: usize, col: usize) -> egui::Pos2 {
    let layout = h.state().heatmap.last_layout.expect("heatmap drawn");
    layout.cell_center(row, col).expect("cell visible")
}

#[test]
fn clicking_a_cell_selects_exactly_it() {
    let mut h = harness();
    let layers = profile().model.moe_layers.clone();
    let p = center(&h, 1, 5);
    click_at(&mut h, p);
    let selected: Vec<_> = h.state().state.selected.iter().copied().collect();
    assert_eq!(selected, vec![(layers[1], 5)]);
    // Clicking again deselects.
    click_at(&mut h, p);
    assert!(h.state().state.selected.is_empty());
    // The heatmap is findable by its accessible label.
    let _ = h.get_by_label("Routing heatmap");
}

#[test]
fn dragging_selects_the_rectangle() {
    let mut h = harness();
    let layers = profile().model.moe_layers.clone();
    let a = center(&h, 0, 2);
    let b = center(&h, 1, 4);
    h.hover_at(a);
    h.run();
    h.drag_at(a);
    h.run();
    let mid = a + (b - a) * 0.5;
    h.hover_at(mid);
    h.run();
    h.hover_at(b);
    h.run();
    h.drop_at(b);
    h.run();
    let mut expected = Vec::new();
    for &layer in &layers[0..=1] {
        for e in 2..=4 {
            expected.push((layer, e));
        }
    }
    expected.sort();
    let selected: Vec<_> = h.state().state.selected.iter().copied().collect();
    assert_eq!(selected, expected);
}

#[test]
fn a_rule_fills_the_selection() {
    let mut h = harness();
    h.state_mut().state.ui.tab = Tab::Selection;
    h.run();
    h.get_by_label("Apply rule").click();
    h.run();
    let p = profile();
    let n = h.state().state.selected.len();
    // Hot top-k with k = N/4 = 2 per layer.
    assert_eq!(n, p.model.moe_layers.len() * (p.model.num_experts / 4));
    for (l, e) in h.state().state.selected.iter() {
        assert!(p.model.moe_layers.contains(l) && *e < p.model.num_experts);
    }
    // The accounting shows up.
    assert!(h.query_by_label_contains("reduction").is_some());
}

#[test]
fn the_selection_exports_a_fused_peft_adapter_to_train() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("fused");
    let mut h = harness();
    h.state_mut().state.ui.tab = Tab::Selection;
    h.run();
    h.get_by_label("Apply rule").click();
    h.run();
    h.state_mut().selection.peft_dir = dir.display().to_string();
    h.state_mut().selection.peft_form = AdapterFormChoice::Fused;
    h.run();
    h.get_by_label("Export PEFT adapter").click();
    h.run();
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("adapter_config.json")).unwrap()).unwrap();
    let parameters = config["target_parameters"].as_array().unwrap();
    assert!(
        parameters
            .iter()
            .any(|p| p.as_str().unwrap().ends_with("mlp.experts.gate_up_proj")),
        "{config}"
    );
    assert!(dir.join("adapter_model.safetensors").exists());
    assert!(
        h.query_by_label_contains("fused form").is_some(),
        "the status line names the form"
    );
}

#[test]
fn worker_events_update_the_panels() {
    let mut h = harness();
    {
        let s = &mut h.state_mut().state;
        s.profile = None;
        s.jobs.push(RunningJob {
            id: 42,
            kind: JobKind::Profile,
            done: 0,
            total: 0,
            label: "profiling".into(),
        });
        s.handle_event(Event::Progress {
            job: 42,
            done: 3,
            total: 12,
            label: "3 / 12 prompts".into(),
        });
    }
    h.run_steps(3);
    let job = h
        .state()
        .state
        .job(JobKind::Profile)
        .cloned()
        .expect("job running");
    assert_eq!((job.done, job.total), (3, 12));
    assert!(h.query_all_by_label_contains("3 / 12 prompts").count() >= 1);
    assert!(h.query_by_label_contains("No profile yet").is_some());

    let layers = profile().model.moe_layers.len();
    let mut top_tokens = vec![vec![Vec::new(); 8]; layers];
    top_tokens[0][0] = vec![moescope::analysis::traces::TopToken {
        token_id: 17,
        token: " court".into(),
        routed: 4,
        occurrences: 5,
        share: 0.8,
    }];
    h.state_mut().state.handle_event(Event::ProfileReady {
        job: 42,
        profile: profile(),
        top_tokens: Arc::new(top_tokens),
    });
    h.run();
    // Hovering a cell shows its tooltip, with the expert's top tokens.
    h.ctx.all_styles_mut(|s| s.interaction.tooltip_delay = 0.0);
    let p = center(&h, 0, 0);
    h.hover_at(p);
    h.run();
    h.hover_at(p);
    h.run();
    assert!(
        h.query_by_label_contains("layer 0, expert 0").is_some(),
        "tooltip shown"
    );
    assert!(
        h.query_by_label_contains("\" court\" 4/5").is_some(),
        "top tokens in the tooltip"
    );
    assert!(h.state().state.job(JobKind::Profile).is_none());
    assert!(h.state().state.profile.is_some());
    assert!(
        h.state().heatmap.last_layout.is_some(),
        "heatmap drawn after ProfileReady"
    );

    h.state_mut().state.handle_event(Event::Failed {
        job: None,
        error: "something broke: /some/file".into(),
    });
    h.run();
    assert!(h.query_by_label_contains("something broke").is_some());
}

#[test]
fn a_bad_model_path_shows_the_error_and_the_app_keeps_working() {
    let mut h = harness();
    let bad = "/no/such/model-folder";
    h.state_mut().model_panel.model_field = bad.into();
    h.run();
    h.get_by_label("Load model").click();
    let deadline = Instant::now() + Duration::from_secs(30);
    while h.state().state.last_error().is_none() && Instant::now() < deadline {
        h.run_steps(1);
        std::thread::sleep(Duration::from_millis(20));
    }
    let error = h
        .state()
        .state
        .last_error()
        .map(str::to_string)
        .expect("an error message");
    assert!(error.contains(bad), "{error}");
    run_after_wake(&mut h);
    assert!(
        h.query_by_label_contains("model-folder").is_some(),
        "error shown in the status bar"
    );
    assert!(h.state().state.jobs.is_empty());
    // Still usable: clicking a heatmap cell works.
    let p = center(&h, 0, 0);
    click_at(&mut h, p);
    assert_eq!(h.state().state.selected.len(), 1);
}

/// A wgpu renderer, or `None` (skip) when there is no adapter and `REQUIRE_WGPU` is unset.
fn wgpu_renderer() -> Option<egui_kittest::wgpu::WgpuTestRenderer> {
    let made = std::panic::catch_unwind(egui_kittest::wgpu::WgpuTestRenderer::new);
    match made {
        Ok(r) => Some(r),
        Err(_) if std::env::var_os("REQUIRE_WGPU").is_some() => {
            panic!("REQUIRE_WGPU is set but no wgpu adapter could be created")
        }
        Err(_) => {
            eprintln!(
                "skipping the wgpu snapshot test: no wgpu adapter (set REQUIRE_WGPU=1 to fail instead)"
            );
            None
        }
    }
}

#[test]
fn heatmap_snapshot_with_the_wgpu_shader() {
    let Some(renderer) = wgpu_renderer() else {
        return;
    };
    let mut h = Harness::builder()
        .with_size(egui::vec2(1200.0, 760.0))
        .with_pixels_per_point(1.0)
        .renderer(renderer)
        .build_eframe(|cc| app(cc));
    settle(&mut h);
    assert!(h.state().gpu, "the wgpu renderer was not registered");
    let p = center(&h, 2, 3);
    click_at(&mut h, p);
    h.hover_at(egui::pos2(5.0, 5.0));
    h.run();
    let image = h.render().expect("render");
    // Cell centres drawn by the shader match the CPU colour map (unselected cells).
    let profile = profile();
    let m = moescope::gui::panels::heatmap::metric_matrix(
        &profile,
        moescope::gui::HeatmapMetric::CountShare,
        None,
    )
    .expect("matrix");
    let style = moescope::render::HeatmapStyle::fit(
        &m.values,
        moescope::render::ColorMap::Viridis,
        moescope::render::ColorScale::Linear,
    );
    for (row, col) in [(0, 0), (1, 5), (2, 7)] {
        let c = center(&h, row, col);
        let px = image.get_pixel(c.x as u32, c.y as u32);
        let want = style.color(m.get(row, col).expect("cell"));
        for (got, want) in px.0.iter().zip([want.r(), want.g(), want.b()]) {
            assert!(
                (i32::from(*got) - i32::from(want)).abs() <= 3,
                "cell ({row}, {col}): got {:?}, want {want:?}",
                px.0
            );
        }
    }
    // The selected cell has the red outline at its edge.
    let layout = h.state().heatmap.last_layout.expect("layout");
    let r = layout.cell_rect(2, 3).expect("cell");
    let edge = image.get_pixel(r.min.x as u32, r.center().y as u32);
    assert!(
        edge.0[0] > 200 && edge.0[1] < 120,
        "selection outline missing: {:?}",
        edge.0
    );
    h.snapshot("main_window_heatmap");
}

/// Steps the app (without waiting for it to settle: a running job animates) until `done`.
fn wait_until(
    h: &mut Harness<'_, MoeScopeApp>,
    what: &str,
    mut done: impl FnMut(&MoeScopeApp) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !done(h.state()) {
        if let Some(e) = h.state().state.last_error() {
            panic!("waiting for {what}: {e}");
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        h.run_steps(1);
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The harness with the fixture model loaded in the worker.
fn harness_with_model() -> Harness<'static, MoeScopeApp> {
    let mut h = harness();
    h.state_mut().state.load_model(FIXTURE);
    wait_until(&mut h, "the fixture model", |a| a.state.model.is_some());
    run_after_wake(&mut h);
    h
}

#[test]
fn generate_in_the_steering_tab_shows_both_texts_and_the_routing_difference() {
    let mut h = harness_with_model();
    let layers = profile().model.moe_layers.clone();
    {
        let app = h.state_mut();
        app.state.ui.tab = Tab::Steering;
        app.state
            .add_cells([(layers[0], 0), (layers[1], 1), (layers[2], 2)]);
        app.steering.prompt = "the court ruled that the contract".into();
        app.steering.max_new_tokens = 8;
        app.steering.new_bias = 4.0;
    }
    h.run();
    h.get_by_label("From selection (3)").click();
    h.run();
    assert_eq!(h.state().steering.rows.len(), 3);
    assert!(h.query_by_label_contains("3 steered cells").is_some());
    h.get_by_label("Generate").click();
    h.run_steps(2);
    assert!(
        h.state().state.job(JobKind::Generate).is_some() || h.state().state.steer_output.is_some(),
        "Generate started no job"
    );
    wait_until(&mut h, "the steering result", |a| {
        a.state
            .steer_output
            .as_ref()
            .is_some_and(|o| o.result.is_some())
    });
    run_after_wake(&mut h);
    let out = h.state().state.steer_output.clone().expect("output");
    let result = out.result.clone().expect("result");
    assert_eq!(out.unsteered, result.unsteered_text);
    assert_eq!(out.steered, result.steered_text);
    assert!(!result.unsteered_ids.is_empty() && !result.steered_ids.is_empty());
    assert!(h.query_by_label("Unsteered").is_some());
    assert!(h.query_by_label("Steered").is_some());
    // Both continuations are on screen (as far as they are plain ASCII).
    for text in [&out.unsteered, &out.steered] {
        let shown: String = text
            .chars()
            .take_while(|c| c.is_ascii_graphic() || *c == ' ')
            .take(12)
            .collect();
        if !shown.trim().is_empty() {
            assert!(
                h.query_all_by_label_contains(shown.trim()).count() >= 1,
                "{shown:?} not shown"
            );
        }
    }
    // The routing-difference heatmap and the per-layer table are drawn.
    let _ = h.get_by_label("Routing difference heatmap");
    assert!(h.state().steering.last_layout.is_some());
    assert!(h.query_by_label("changed sets").is_some());
    assert_eq!(result.routing.layers, layers);
    assert_eq!(result.steered_cells.len(), 3);
    assert!(h.state().state.jobs.is_empty());
}

#[test]
fn a_bad_steering_spec_file_shows_an_error_instead_of_panicking() {
    let mut h = harness_with_model();
    h.state_mut().state.ui.tab = Tab::Steering;
    h.run();
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("broken.json", "{ this is not json", "not valid JSON"),
        (
            "wrong_expert.json",
            r#"{"format": "moescope-steering", "version": 1,
                "experts": [{"layer": 1, "expert": 99, "bias": 2.0}]}"#,
            "expert 99",
        ),
        (
            "selection_not_spec.json",
            r#"{"format": "moescope-selection", "version": 1}"#,
            "steering",
        ),
    ];
    for (name, body, want) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, body).unwrap();
        h.state_mut().steering.path_field = path.display().to_string();
        h.run();
        h.get_by_label("Load spec").click();
        h.run();
        let error = h
            .state()
            .state
            .last_error()
            .map(str::to_string)
            .expect("an error message");
        assert!(error.contains(name) && error.contains(want), "{error}");
        assert!(
            h.query_by_label_contains(name).is_some(),
            "the error naming {name} is not shown"
        );
        assert!(
            h.state().steering.rows.is_empty(),
            "a bad spec filled the table"
        );
        h.state_mut().state.messages.clear();
    }
    // A missing file too.
    h.state_mut().steering.path_field = dir.path().join("missing.json").display().to_string();
    h.run();
    h.get_by_label("Load spec").click();
    h.run();
    assert!(
        h.state()
            .state
            .last_error()
            .unwrap()
            .contains("missing.json")
    );
    // A good spec round-trips through Save spec / Load spec.
    let good = dir.path().join("good.json");
    {
        let app = h.state_mut();
        app.state.messages.clear();
        app.state.add_cells([(1, 2)]);
        app.steering.path_field = good.display().to_string();
    }
    h.run();
    h.get_by_label("From selection (1)").click();
    h.run();
    h.get_by_label("Save spec").click();
    h.run();
    assert!(h.state().state.last_error().is_none());
    h.state_mut().steering.rows.clear();
    h.run();
    h.get_by_label("Load spec").click();
    h.run();
    assert_eq!(
        h.state().steering.rows.len(),
        1,
        "{:?}",
        h.state().state.messages
    );
    assert_eq!(
        (
            h.state().steering.rows[0].layer,
            h.state().steering.rows[0].expert
        ),
        (1, 2)
    );
}

#[test]
fn the_eval_tab_runs_and_shows_per_subject_accuracy() {
    let mut h = harness_with_model();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("mc.jsonl");
    let mut lines = String::new();
    for i in 0..8 {
        let subject = if i % 2 == 0 { "math" } else { "history" };
        lines.push_str(
            &serde_json::json!({
                "question": format!("Question {i}: which one is right?"),
                "options": ["one", "two", "three", "four"],
                "answer": "B",
                "category": subject,
            })
            .to_string(),
        );
        lines.push('\n');
    }
    std::fs::write(&data, lines).unwrap();
    {
        let app = h.state_mut();
        app.state.ui.tab = Tab::Eval;
        app.eval.data_field = data.display().to_string();
        app.steering
            .rows
            .push(moescope::gui::panels::steering::SteerRow {
                layer: 0,
                expert: 3,
                mode: moescope::gui::panels::steering::SteerMode::ForceOff,
                bias: 0.0,
                force_bias: false,
            });
    }
    h.run();
    assert!(h.query_by_label_contains("1 steered cells").is_some());
    h.get_by_label("Run eval").click();
    h.run_steps(2);
    wait_until(&mut h, "the eval report", |a| {
        a.state
            .eval_output
            .as_ref()
            .is_some_and(|o| o.report.is_some())
    });
    run_after_wake(&mut h);
    let report = h
        .state()
        .state
        .eval_output
        .as_ref()
        .and_then(|o| o.report.clone())
        .expect("report");
    assert_eq!(report.overall.questions, 8);
    for label in ["math", "history", "all", "unsteered", "steered", "delta"] {
        assert!(h.query_by_label(label).is_some(), "{label} missing");
    }
    // A missing file is reported, naming it.
    h.state_mut().eval.data_field = dir.path().join("nope.jsonl").display().to_string();
    h.run();
    h.get_by_label("Run eval").click();
    let deadline = Instant::now() + Duration::from_secs(60);
    while h.state().state.last_error().is_none() && Instant::now() < deadline {
        h.run_steps(1);
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        h.state()
            .state
            .last_error()
            .unwrap_or_default()
            .contains("nope.jsonl")
    );
    run_after_wake(&mut h);
}

/// A finished generate job with a known routing difference (no model needed).
fn synthetic_steering(app: &mut MoeScopeApp) -> Arc<moescope::worker::SteerResult> {
    use moescope::steering::diff::{LayerChange, RoutingDiff};
    let layers = profile().model.moe_layers.clone();
    let n = 8;
    let before: Vec<Vec<f64>> = (0..layers.len()).map(|_| vec![0.25; n]).collect();
    let after: Vec<Vec<f64>> = (0..layers.len())
        .map(|r| {
            (0..n)
                .map(|e| match e {
                    0 => 0.0,
                    1 => 0.25 + 0.25 * (r as f64 + 1.0) / 3.0,
                    _ => 0.25,
                })
                .collect()
        })
        .collect();
    let changes = layers
        .iter()
        .enumerate()
        .map(|(r, &layer)| LayerChange {
            layer,
            tokens: 12,
            changed_share: 0.25 * (r as f64 + 1.0),
            steered_experts: vec![0],
            steered_mass_before: 0.1,
            steered_mass_after: 0.0,
            mass_onto: 0.0,
            mass_off: 0.1,
        })
        .collect();
    let result = Arc::new(moescope::worker::SteerResult {
        prompt_tokens: 6,
        unsteered_ids: vec![1, 2, 3, 4, 5, 6],
        steered_ids: vec![1, 2, 7, 8, 9, 10],
        unsteered_text: " and the judge agreed with the court".into(),
        steered_text: " and the def main(): return 0".into(),
        routing: RoutingDiff {
            layers: layers.clone(),
            num_experts: n,
            tokens: 12,
            before,
            after,
            changes,
        },
        steered_cells: layers.iter().map(|&l| (l, 0)).collect(),
    });
    app.state.steer_output = Some(moescope::gui::state::SteerOutput {
        job: 77,
        prompt: "the court ruled".into(),
        unsteered: String::new(),
        steered: String::new(),
        result: None,
    });
    app.state.handle_event(Event::SteerReady {
        job: 77,
        result: result.clone(),
    });
    app.steering.prompt = "the court ruled".into();
    app.state.ui.tab = Tab::Steering;
    result
}

#[test]
fn routing_difference_heatmap_with_the_wgpu_shader() {
    let Some(renderer) = wgpu_renderer() else {
        return;
    };
    let mut h = Harness::builder()
        .with_size(egui::vec2(1200.0, 760.0))
        .with_pixels_per_point(1.0)
        .renderer(renderer)
        .build_eframe(|cc| app(cc));
    let result = synthetic_steering(h.state_mut());
    h.state_mut().state.ui.show_side_panel = false;
    settle(&mut h);
    assert!(h.state().gpu);
    assert!(
        h.query_by_label_contains("def main").is_some(),
        "steered text not shown"
    );
    assert!(
        h.query_by_label("L1 50%").is_none(),
        "row labels are painted, not widgets"
    );
    let image = h.render().expect("render");
    let delta = result.routing.delta();
    let m = moescope::render::Matrix::from_rows(&delta);
    let style = moescope::render::HeatmapStyle::fit(
        &m.values,
        moescope::render::ColorMap::Diverging,
        moescope::render::ColorScale::Linear,
    );
    let layout = h
        .state()
        .steering
        .last_layout
        .expect("difference heatmap drawn");
    // Unsteered cells (no outline): expert 1 gains, expert 4 is unchanged.
    for (row, col) in [(0, 1), (2, 1), (1, 4)] {
        let c = layout.cell_center(row, col).expect("cell");
        let px = image.get_pixel(c.x as u32, c.y as u32);
        let want = style.color(m.get(row, col).expect("cell"));
        for (got, want) in px.0.iter().zip([want.r(), want.g(), want.b()]) {
            assert!(
                (i32::from(*got) - i32::from(want)).abs() <= 3,
                "cell ({row}, {col}): got {:?}, want {want:?}",
                px.0
            );
        }
    }
    // The steered expert 0 is outlined.
    let r = layout.cell_rect(0, 0).expect("cell");
    let edge = image.get_pixel(r.min.x as u32, r.center().y as u32);
    assert!(
        edge.0[0] > 200 && edge.0[1] < 120,
        "steered cell not outlined: {:?}",
        edge.0
    );
    h.snapshot("steering_tab");
}

#[test]
fn streamed_text_shows_while_the_job_runs() {
    use moescope::worker::Side;
    let mut h = harness();
    {
        let s = &mut h.state_mut().state;
        s.ui.tab = Tab::Steering;
        s.jobs.push(RunningJob {
            id: 9,
            kind: JobKind::Generate,
            done: 3,
            total: 18,
            label: "generating unsteered: 3 / 8 tokens".into(),
        });
        s.steer_output = Some(moescope::gui::state::SteerOutput {
            job: 9,
            prompt: "the court".into(),
            unsteered: String::new(),
            steered: String::new(),
            result: None,
        });
        for piece in [" ruled", " that the", " contract"] {
            s.handle_event(Event::GeneratedText {
                job: 9,
                side: Side::Unsteered,
                text: piece.into(),
            });
        }
        // Text of another job is ignored.
        s.handle_event(Event::GeneratedText {
            job: 8,
            side: Side::Steered,
            text: "stale".into(),
        });
    }
    h.run_steps(3);
    assert!(
        h.query_by_label_contains("ruled that the contract")
            .is_some()
    );
    assert!(
        h.query_by_label("generating...").is_some(),
        "steered side waits"
    );
    assert!(h.query_by_label_contains("stale").is_none());
    assert!(h.query_by_label("Cancel generation").is_some());
    h.state_mut().state.handle_event(Event::GeneratedText {
        job: 9,
        side: Side::Steered,
        text: " void".into(),
    });
    h.run_steps(2);
    assert!(h.query_by_label_contains("void").is_some());
    // Cancelled: the partial texts stay, the job ends.
    h.state_mut()
        .state
        .handle_event(Event::Cancelled { job: 9 });
    h.run();
    assert!(h.state().state.jobs.is_empty());
    assert!(
        h.query_by_label_contains("ruled that the contract")
            .is_some()
    );
    assert!(h.query_by_label("(stopped before the end)").is_some());
}

#[test]
fn the_training_tab_trains_the_clicked_selection_and_profiles_with_the_adapter() {
    let mut h = harness_with_model();
    let layers = profile().model.moe_layers.clone();
    // Click two cells on the heatmap.
    for (row, col) in [(0, 2), (2, 5)] {
        let p = center(&h, row, col);
        click_at(&mut h, p);
    }
    let clicked: Vec<_> = h.state().state.selected.iter().copied().collect();
    assert_eq!(clicked, vec![(layers[0], 2), (layers[2], 5)]);

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("train.jsonl");
    let mut lines = String::new();
    for p in prompts().prompts {
        lines.push_str(&serde_json::json!({"subject": p.subject, "text": p.text}).to_string());
        lines.push('\n');
    }
    std::fs::write(&data, lines).unwrap();
    let out = dir.path().join("adapter");
    {
        let app = h.state_mut();
        app.state.ui.tab = Tab::Training;
        app.training.data_field = data.display().to_string();
        app.training.out_field = out.display().to_string();
        app.training.max_steps = 4;
        app.training.batch_size = 2;
        app.training.max_tokens = 32;
        app.training.lora.rank = 2;
        app.training.lr = 1e-2;
    }
    h.run();
    assert!(
        h.query_by_label_contains("current selection (2 cells)")
            .is_some()
    );
    h.get_by_label("Train").click();
    h.run_steps(2);
    wait_until(&mut h, "the training run", |a| {
        a.state
            .training
            .as_ref()
            .is_some_and(|t| t.summary.is_some())
    });
    run_after_wake(&mut h);
    let t = h.state().state.training.clone().expect("training output");
    assert_eq!(t.steps.len(), 4, "every step reached the loss plot");
    let summary = t.summary.expect("summary");
    assert_eq!(summary.adapted_experts, 2);
    assert!(out.join("adapter_model.safetensors").exists());
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("adapter_config.json")).unwrap()).unwrap();
    let targets: Vec<String> = serde_json::from_value(cfg["target_modules"].clone()).unwrap();
    assert_eq!(targets.len(), 2 * 3);
    assert!(targets.iter().all(
        |t| t.contains(&format!("layers.{}.mlp.experts.2.", layers[0]))
            || t.contains(&format!("layers.{}.mlp.experts.5.", layers[2]))
    ));
    assert!(h.query_by_label_contains("modules (2 experts)").is_some());

    // Profile with the adapter: the model reloads with it merged and the prompts are profiled.
    let generation = h.state().state.profile_generation;
    h.get_by_label("Profile with adapter").click();
    h.run_steps(2);
    wait_until(&mut h, "the profile with the adapter", |a| {
        a.state.adapter.is_some() && a.state.profile_generation > generation
    });
    run_after_wake(&mut h);
    assert_eq!(h.state().state.adapter.as_deref(), Some(out.as_path()));
}

/// A GGUF file typed into the model field loads like a folder, and the summary says how each
/// class of its tensors is stored.
#[test]
fn a_gguf_model_loads_and_its_summary_shows_the_quant_types() {
    let mut h = harness();
    let file = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/gguf/olmoe-q8_0.gguf"
    );
    h.state_mut().model_panel.model_field = file.into();
    h.run();
    h.get_by_label("Load model").click();
    wait_until(&mut h, "the GGUF model", |a| a.state.model.is_some());
    run_after_wake(&mut h);
    assert!(h.query_by_label_contains("routed experts").is_some());
    // Embeddings, attention, routed experts and the output head are all Q8_0.
    assert!(
        h.query_all_by_label("Q8_0").count() >= 3,
        "storage per class shown"
    );
    assert!(h.query_by_label_contains("GGUF Q8_0").is_some());
    assert_eq!(
        h.state().state.ui.recent_models.first().map(String::as_str),
        Some(file)
    );
}

/// The fixture profile as `moescope import` makes one from a serving engine's routing: counts
/// only (no mass, no scores), with where it came from.
fn count_only_profile() -> Arc<RoutingProfile> {
    let mut p = (*profile()).clone();
    for s in &mut p.subjects {
        s.mass = None;
        s.score = None;
    }
    p.signals = vec![RoutingSignal::Count];
    p.source = Some(ProfileSource {
        format: "vllm".into(),
        files: vec!["routing.jsonl".into()],
        records: 12,
        tokens: p.subjects.iter().map(|s| s.tokens).sum(),
        skipped_positions: 3,
        layer_mapping: "3 engine layers = the model's 3 MoE layers".into(),
    });
    p.validate("count-only fixture profile")
        .expect("a valid count-only profile");
    Arc::new(p)
}

/// Opens the heatmap's metric picker unless it is open.
fn open_metric_picker(h: &mut Harness<'_, MoeScopeApp>) {
    if h.query_by_label("count share").is_none() {
        h.get_by_label("Metric").click();
        h.run();
    }
}

#[test]
fn a_count_only_profile_offers_count_metrics_instead_of_mass_and_scores() {
    use egui_kittest::kittest::NodeT;
    use moescope::gui::HeatmapMetric;
    use moescope::gui::panels::selection::RuleKind;

    let mut h = Harness::builder()
        .with_size(egui::vec2(1200.0, 760.0))
        .with_pixels_per_point(1.0)
        .build_eframe(|cc| {
            // Routing mass was the metric of the last session.
            let ui = UiState {
                metric: HeatmapMetric::RoutingMass,
                ..UiState::default()
            };
            let mut app = MoeScopeApp::bare(cc, ui);
            app.state.set_profile(count_only_profile(), None);
            app
        });
    h.ctx.all_styles_mut(|s| s.interaction.tooltip_delay = 0.0);
    settle(&mut h);
    // The heatmap switched to count share, said so, and draws it.
    assert_eq!(h.state().state.ui.metric, HeatmapMetric::CountShare);
    assert!(
        h.state()
            .state
            .messages
            .iter()
            .any(|m| m.text.contains("count share") && m.text.contains("counts only")),
        "{:?}",
        h.state().state.messages
    );
    assert!(h.state().heatmap.last_layout.is_some());
    // The profile summary says what it carries and where it came from.
    assert!(
        h.query_all_by_label_contains("counts only, imported from vllm (1 file)")
            .count()
            >= 1
    );
    assert!(
        h.query_by_label_contains("layer mapping: 3 engine layers")
            .is_some()
    );
    assert!(h.query_by_label_contains("skipped positions: 3").is_some());

    // Routing mass and routing score are listed, disabled, and clicking them changes nothing.
    for name in ["routing mass", "routing score"] {
        open_metric_picker(&mut h);
        let entry = h.get_by_label(name);
        assert!(entry.accesskit_node().is_disabled(), "{name} is selectable");
        entry.hover();
        h.run();
        assert!(
            h.query_by_label_contains("imported routing records which experts were chosen")
                .is_some(),
            "no hover text saying why {name} is off"
        );
        h.get_by_label(name).click();
        h.run();
        assert_eq!(h.state().state.ui.metric, HeatmapMetric::CountShare);
    }

    // DAS is offered on counts, and the heatmap says so.
    open_metric_picker(&mut h);
    h.get_by_label("DAS on counts vs general").click();
    h.run();
    assert_eq!(h.state().state.ui.metric, HeatmapMetric::DasVsGeneral);
    assert!(
        h.query_by_label_contains("DAS on counts: share of the subject's tokens")
            .is_some()
    );
    assert!(
        h.state().heatmap.last_layout.is_some(),
        "DAS on counts drawn"
    );

    // The DAS tab computes on counts, says why, and its selection rule records it.
    h.state_mut().state.ui.tab = Tab::Das;
    h.run();
    let why = h.get_by_label_contains("DAS on counts: share of the domain's tokens");
    let text = why.accesskit_node().value().unwrap_or_default().to_string();
    assert!(
        text.contains("no routing scores (imported from vllm)"),
        "{text}"
    );
    assert!(h.query_by_label("DAS on counts").is_some(), "table header");
    h.get_by_label_contains("Select top-").click();
    h.run();
    match &h.state().state.selection_rule {
        moescope::selection::SelectionRule::Das { signal, .. } => {
            assert_eq!(*signal, RoutingSignal::Count);
        }
        other => panic!("selection made by {other:?}"),
    }
    assert!(!h.state().state.selected.is_empty());

    // The Selection tab falls back from the mass rule to counts.
    h.state_mut().selection.rule = RuleKind::HotMass;
    h.state_mut().state.ui.tab = Tab::Selection;
    h.run();
    assert_eq!(h.state().selection.rule, RuleKind::HotCount);
    assert!(h.query_by_label_contains("DAS on counts top-").is_some());
}
