//! Frame-time benchmark of the explorer (see BENCHMARKS.md): the whole app on synthetic
//! profiles of three real models' shapes ([`SHAPES`], 8 subjects each), heatmap tab, the
//! pointer moving over a different cell every frame so the tooltip is rebuilt each time.
//! Measures the UI thread's CPU time per frame (egui logic, layout, heatmap widget,
//! tessellation) through egui_kittest, with the wgpu heatmap callback when an adapter exists
//! (the app's normal path) and with the CPU painter fallback.
//!
//! The two largest shapes are count-only profiles, as `moescope import` makes from a serving
//! engine's routing: no routing mass or scores, an import source set.
//!
//! `cargo run --release --example bench_frame -- [frames]`

use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use egui_kittest::Harness;
use egui_kittest::kittest::Queryable;
use moescope::gui::{MoeScopeApp, UiState};
use moescope::model::router::ScoreFn;
use moescope::profile::{
    ProfileModel, ProfileSource, RoutingProfile, RoutingSignal, SubjectProfile,
};
use rand::{Rng, SeedableRng};

/// A model shape to measure the heatmap at.
struct Shape {
    /// The model the shape is taken from.
    model: &'static str,
    architecture: &'static str,
    /// Decoder layers.
    layers: usize,
    /// Decoder layers with routed experts (the heatmap's rows).
    moe_layers: Range<usize>,
    experts: usize,
    top_k: usize,
    /// Routing counts only (imported routing), instead of counts, mass and scores.
    count_only: bool,
}

const SHAPES: [Shape; 3] = [
    Shape {
        model: "Qwen3-30B-A3B",
        architecture: "Qwen3MoeForCausalLM",
        layers: 48,
        moe_layers: 0..48,
        experts: 128,
        top_k: 8,
        count_only: false,
    },
    Shape {
        model: "DeepSeek-V3",
        architecture: "DeepseekV3ForCausalLM",
        layers: 61,
        moe_layers: 3..61,
        experts: 256,
        top_k: 8,
        count_only: true,
    },
    Shape {
        model: "Qwen3-235B-A22B",
        architecture: "Qwen3MoeForCausalLM",
        layers: 94,
        moe_layers: 0..94,
        experts: 128,
        top_k: 8,
        count_only: true,
    },
];

const SUBJECTS: usize = 8;
const TOKENS_PER_SUBJECT: u64 = 20_000;

impl Shape {
    /// `61x256`: decoder layers × routed experts.
    fn name(&self) -> String {
        format!("{}x{}", self.layers, self.experts)
    }

    /// Random counts averaging `top_k` choices per token, with mass and scores unless
    /// count-only.
    fn synthetic_profile(&self) -> RoutingProfile {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let rows = self.moe_layers.len();
        let signals: &[RoutingSignal] = if self.count_only {
            &[RoutingSignal::Count]
        } else {
            &RoutingSignal::ALL
        };
        let mean_count = TOKENS_PER_SUBJECT * self.top_k as u64 / self.experts as u64;
        let subjects = (0..SUBJECTS)
            .map(|s| {
                let mut p = SubjectProfile::empty_with(
                    &format!("subject_{s}"),
                    rows,
                    self.experts,
                    signals,
                );
                p.sequences = 100;
                p.tokens = TOKENS_PER_SUBJECT;
                for l in 0..rows {
                    for e in 0..self.experts {
                        let c: u64 = rng.random_range(0..2 * mean_count);
                        p.count[l][e] = c;
                        if let Some(mass) = p.mass.as_mut() {
                            mass[l][e] = c as f64 * rng.random_range(0.05..0.3);
                        }
                        if let Some(score) = p.score.as_mut() {
                            score[l][e] = c as f64 * 0.01 + rng.random_range(0.0..10.0);
                        }
                    }
                }
                p
            })
            .collect();
        let mut profile = RoutingProfile::new(
            ProfileModel {
                attention_kinds: Vec::new(),
                id: format!("synthetic-{}", self.model),
                architecture: self.architecture.into(),
                moe_layers: self.moe_layers.clone().collect(),
                num_experts: self.experts,
                top_k: self.top_k,
                score_fn: ScoreFn::Softmax,
                layout: None,
            },
            subjects,
        );
        if self.count_only {
            profile.source = Some(ProfileSource {
                format: "vllm".into(),
                files: vec!["routing.jsonl".into()],
                records: (SUBJECTS * 100) as u64,
                tokens: SUBJECTS as u64 * TOKENS_PER_SUBJECT,
                skipped_positions: 0,
                layer_mapping: format!(
                    "{} engine layers = the model's MoE layers",
                    self.moe_layers.len()
                ),
            });
        }
        profile
    }
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
    for shape in &SHAPES {
        let profile = Arc::new(shape.synthetic_profile());
        for wgpu in [true, false] {
            let Some(h) = harness(&profile, wgpu) else {
                println!("wgpu: no adapter, skipped");
                continue;
            };
            let (median, p95, gpu) = measure(h, frames);
            println!(
                "{{\"model\": \"{}\", \"heatmap\": \"{}\", \"rows\": {}, \"signals\": \"{}\", \"path\": \"{}\", \"frames\": {frames}, \"median_ms\": {median:.3}, \"p95_ms\": {p95:.3}}}",
                shape.model,
                shape.name(),
                profile.num_layers(),
                profile.signals_caption(),
                if gpu { "wgpu callback" } else { "cpu painter" }
            );
        }
    }
}
