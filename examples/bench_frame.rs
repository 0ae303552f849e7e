//! Frame-time benchmark of the explorer (see BENCHMARKS.md): the whole app on a synthetic
//! 48-layer × 128-expert profile (Qwen3-30B-A3B's shape, 8 subjects), heatmap tab, the pointer
//! moving over a different cell every frame so the tooltip is rebuilt each time. Measures the
//! UI thread's CPU time per frame (egui logic, layout, heatmap widget, tessellation) through
//! egui_kittest, with the wgpu heatmap callback when an adapter exists (the app's normal path)
//! and with the CPU painter fallback.
//!
//! `cargo run --release --example bench_frame -- [frames]`

use std::sync::Arc;
use std::time::Instant;

use egui_kittest::Harness;
use egui_kittest::kittest::Queryable;
use moescope::gui::{MoeScopeApp, UiState};
use moescope::model::router::ScoreFn;
use moescope::profile::{ProfileModel, RoutingProfile, SubjectProfile};
use rand::{Rng, SeedableRng};

const LAYERS: usize = 48;
const EXPERTS: usize = 128;
const TOP_K: usize = 8;

fn synthetic_profile() -> RoutingProfile {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let subjects = (0..8)
        .map(|s| {
            let mut p = SubjectProfile::empty(&format!("subject_{s}"), LAYERS, EXPERTS);
            p.sequences = 100;
            p.tokens = 20_000;
            for l in 0..LAYERS {
                for e in 0..EXPERTS {
                    let c: u64 = rng.random_range(0..4000);
                    p.count[l][e] = c;
                    p.mass[l][e] = c as f64 * rng.random_range(0.05..0.3);
                    p.score[l][e] = c as f64 * 0.01 + rng.random_range(0.0..10.0);
                }
            }
            p
        })
        .collect();
    RoutingProfile::new(
        ProfileModel {
            attention_kinds: Vec::new(),
            id: "synthetic-48x128".into(),
            architecture: "Qwen3MoeForCausalLM".into(),
            moe_layers: (0..LAYERS).collect(),
            num_experts: EXPERTS,
            top_k: TOP_K,
            score_fn: ScoreFn::Softmax,
            layout: None,
        },
        subjects,
    )
}

fn measure(mut h: Harness<'_, MoeScopeApp>, frames: usize) -> (f64, f64, bool) {
    h.run();
    let gpu = h.state().gpu;
    let layout = h.state().heatmap.last_layout.expect("heatmap drawn");
    let mut times = Vec::with_capacity(frames);
    for i in 0..frames {
        let row = (i * 7) % layout.visible.1;
        let col = (i * 13) % layout.visible.0;
        let p = layout
            .cell_center(layout.first.1 + row, layout.first.0 + col)
            .expect("visible cell");
        h.hover_at(p);
        let t = Instant::now();
        h.step();
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    assert!(
        h.query_by_label_contains("rank in layer").is_some(),
        "the hover tooltip is shown"
    );
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let p95 = times[times.len() * 95 / 100];
    (median, p95, gpu)
}

fn harness(profile: &Arc<RoutingProfile>, wgpu: bool) -> Option<Harness<'static, MoeScopeApp>> {
    let mut builder = Harness::builder()
        .with_size(egui::vec2(1440.0, 900.0))
        .with_pixels_per_point(1.0)
        .with_accessibility_check(false);
    if wgpu {
        let renderer = std::panic::catch_unwind(egui_kittest::wgpu::WgpuTestRenderer::new).ok()?;
        builder = builder.renderer(renderer);
    }
    let profile = profile.clone();
    Some(builder.build_eframe(move |cc| {
        // Tooltips at once and while moving, so every measured frame builds one.
        cc.egui_ctx.all_styles_mut(|s| {
            s.interaction.tooltip_delay = 0.0;
            s.interaction.show_tooltips_only_when_still = false;
        });
        let mut app = MoeScopeApp::bare(cc, UiState::default());
        app.state.set_profile(profile, None);
        app
    }))
}

fn main() {
    let frames: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let profile = Arc::new(synthetic_profile());
    for wgpu in [true, false] {
        let Some(h) = harness(&profile, wgpu) else {
            println!("wgpu: no adapter, skipped");
            continue;
        };
        let (median, p95, gpu) = measure(h, frames);
        println!(
            "{{\"heatmap\": \"{LAYERS}x{EXPERTS}\", \"path\": \"{}\", \"frames\": {frames}, \"median_ms\": {median:.3}, \"p95_ms\": {p95:.3}}}",
            if gpu { "wgpu callback" } else { "cpu painter" }
        );
    }
}
