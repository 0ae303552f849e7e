//! MoEScope's side of the routing-capture benchmark (see `bench/run.sh` and BENCHMARKS.md):
//! loads a model for routing only, runs `iters` batches of `batch × seq` random token ids
//! through it with a profile recorder attached, and prints one JSON line with tokens/s and the
//! process's peak RSS.
//!
//! `cargo run --release --example bench_routing -- MODEL_DIR [batch] [seq] [iters] [warmup]
//! [dtype]` (dtype: the checkpoint's own, memory-mapped, by default; `f32` / `bf16` / `f16`
//! for a converted copy in memory).

use std::time::Instant;

use moescope::inference::profiling::profile_model;
use moescope::model::device::DeviceChoice;
use moescope::model::{Batch, LoadOptions, Output, RouteCtx, load_model};
use moescope::profile::ProfileRecorder;
use rand::{Rng, SeedableRng};

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, d: usize| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(d);
    let model_dir = args
        .first()
        .cloned()
        .unwrap_or_else(|| "/tmp/bench-olmoe".into());
    let (batch, seq, iters, warmup) = (arg(1, 4), arg(2, 128), arg(3, 10), arg(4, 2));
    let dtype = match args.get(5) {
        Some(d) => Some(moescope::model::parse_dtype(d).map_err(anyhow::Error::msg)?),
        None => None,
    };
    let opts = LoadOptions {
        model: model_dir,
        dtype,
        device: DeviceChoice::Cpu,
        routing_only: true,
        ..Default::default()
    };
    let mut loaded = load_model(&opts, None)?;
    let info = loaded.model.info().clone();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let seqs: Vec<Vec<u32>> = (0..batch)
        .map(|_| {
            (0..seq)
                .map(|_| rng.random_range(0..info.vocab_size as u32))
                .collect()
        })
        .collect();
    let input = Batch::from_sequences(&seqs, &loaded.device)?;
    let mut recorder = ProfileRecorder::new(profile_model(&info), &["bench".to_string()], false);
    let subjects = vec![0; batch];
    let mut run = |recorder: &mut ProfileRecorder| -> anyhow::Result<()> {
        recorder.begin_batch(&subjects, &seqs, &[]);
        loaded
            .model
            .forward(&input, Output::RoutingOnly, &mut RouteCtx::new(recorder))?;
        Ok(())
    };
    for _ in 0..warmup {
        run(&mut recorder)?;
    }
    let start = Instant::now();
    for _ in 0..iters {
        run(&mut recorder)?;
    }
    let secs = start.elapsed().as_secs_f64();
    let profile = recorder.finish();
    let chosen: u64 = profile.subjects[0].count[0].iter().sum();
    assert_eq!(chosen, ((warmup + iters) * batch * seq * info.top_k) as u64);
    println!(
        "{}",
        serde_json::json!({
            "impl": "moescope (candle, routing only)",
            "weights": loaded.plan.describe(),
            "tokens_per_sec": (batch * seq * iters) as f64 / secs,
            "peak_rss_mib": peak_rss_mib(),
            "iters": iters,
        })
    );
    Ok(())
}
