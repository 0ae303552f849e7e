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
use moescope::model::{LoadOptions, load_model};
use moescope::profiling::{ProfileOptions, run_profile};
use moescope::routing::RoutingProfile;
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
            prompts.push(Prompt {
                subject: subject.into(),
                text: format!("{words} {i}"),
            });
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
    h.run();
    h
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
    h.run();
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
    h.run();
    assert!(h.state().gpu, "the wgpu renderer was not registered");
    let p = center(&h, 2, 3);
    click_at(&mut h, p);
    h.hover_at(egui::pos2(5.0, 5.0));
    h.run();
    let image = h.render().expect("render");
    // Cell centres drawn by the shader match the CPU colour map (unselected cells).
    let profile = profile();
    let m = moescope::gui::heatmap_panel::metric_matrix(
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
