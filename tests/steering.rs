//! Steering on the fixture models: masks and forces hold in every family, a bias moves routing
//! mass monotonically, empty steering is bit-identical to none, KV-cached generation matches a
//! full recomputation, eval scores a dataset whose answers are the model's own choices at 100 %
//! (option letters of several tokens in one padded pass, as if each ran alone), and bad specs
//! fail with clear errors naming the file.

mod common;

use common::{fixture, load, moescope};
use std::path::Path;
use std::sync::atomic::AtomicBool;

use moescope::inference::eval::{
    EvalOptions, McItem, best, encode_item, letter, load_items, run_eval, score_batch,
    score_encoded,
};
use moescope::inference::generate::{GenerateOptions, argmax, generate};
use moescope::model::router::{ExpertForce, NoHook};
use moescope::model::{Batch, LoadedModel, Output, RouteCtx, tokenize};
use moescope::steering::diff::{LayerRouting, routing_change, sequence_routing};
use moescope::steering::{ActiveSteering, ExpertSteer, SteerAction, SteeringSpec};

const FAMILIES: [&str; 5] = [
    "olmoe",
    "qwen2_moe",
    "qwen3_moe",
    "mixtral",
    "deepseek_v2_lite",
];

const TEXT: &str =
    "The quick brown fox jumps over the lazy dog while seven wizards quietly judge boxing.";

fn ids(m: &LoadedModel) -> Vec<u32> {
    tokenize::encode(&m.tokenizer, TEXT).unwrap()
}

fn resolve(m: &LoadedModel, spec: &SteeringSpec) -> ActiveSteering {
    spec.resolve(m.model.info()).unwrap()
}

/// Per-expert token counts of one layer.
fn counts(r: &LayerRouting) -> Vec<usize> {
    let mut c = vec![0; r.num_experts];
    for &e in &r.indices {
        c[e as usize] += 1;
    }
    c
}

fn routing(
    m: &mut LoadedModel,
    ids: &[u32],
    s: Option<&ActiveSteering>,
) -> std::collections::BTreeMap<usize, LayerRouting> {
    sequence_routing(m.model.as_mut(), ids, ids.len().min(8), s).unwrap()
}

#[test]
fn masked_expert_receives_zero_tokens_in_every_family() {
    for name in FAMILIES {
        let mut m = load(name);
        let ids = ids(&m);
        let layer = m.model.info().moe_layers[0];
        let plain = routing(&mut m, &ids, None);
        let c = counts(&plain[&layer]);
        let busiest = (0..c.len())
            .max_by_key(|&e| (c[e], usize::MAX - e))
            .unwrap();
        assert!(c[busiest] > 0);
        let spec =
            SteeringSpec::from_cells([(layer, busiest)], SteerAction::Force(ExpertForce::Off));
        let active = resolve(&m, &spec);
        let steered = routing(&mut m, &ids, Some(&active));
        assert_eq!(
            counts(&steered[&layer])[busiest],
            0,
            "{name}: masked expert still routed"
        );
        let change =
            routing_change(&plain, &steered, &resolve(&m, &spec).steered_experts()).unwrap();
        let l = change.iter().find(|c| c.layer == layer).unwrap();
        assert!(l.changed_share > 0.0, "{name}");
        assert!(
            l.steered_mass_after == 0.0 && l.mass_off > 0.0 && l.mass_onto == 0.0,
            "{name}: {l:?}"
        );
    }
}

#[test]
fn forced_expert_is_in_every_chosen_set_in_every_family() {
    for name in FAMILIES {
        let mut m = load(name);
        let ids = ids(&m);
        let info = m.model.info().clone();
        let layer = *info.moe_layers.last().unwrap();
        let plain = routing(&mut m, &ids, None);
        let c = counts(&plain[&layer]);
        let idlest = (0..c.len()).min_by_key(|&e| (c[e], e)).unwrap();
        let spec = SteeringSpec::from_cells([(layer, idlest)], SteerAction::Force(ExpertForce::On));
        let active = resolve(&m, &spec);
        let steered = routing(&mut m, &ids, Some(&active));
        let r = &steered[&layer];
        assert_eq!(r.num_tokens(), ids.len());
        for set in r.indices.chunks(r.top_k) {
            assert!(
                set.contains(&(idlest as u32)),
                "{name}: {set:?} lacks forced {idlest}"
            );
        }
    }
}

#[test]
fn mass_on_a_boosted_expert_grows_monotonically_with_the_bias() {
    for name in ["olmoe", "qwen3_moe"] {
        let mut m = load(name);
        let ids = ids(&m);
        let layer = m.model.info().moe_layers[0];
        let plain = routing(&mut m, &ids, None);
        let c = counts(&plain[&layer]);
        let idlest = (0..c.len()).min_by_key(|&e| (c[e], e)).unwrap();
        let mut last = -1.0;
        let mut masses = Vec::new();
        for bias in [0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0] {
            let spec = SteeringSpec::from_cells([(layer, idlest)], SteerAction::Bias(bias));
            let a = resolve(&m, &spec);
            let steered = routing(&mut m, &ids, Some(&a));
            let steered_map = std::collections::BTreeMap::from([(layer, vec![idlest])]);
            let ch = routing_change(&plain, &steered, &steered_map).unwrap();
            let mass = ch
                .iter()
                .find(|c| c.layer == layer)
                .unwrap()
                .steered_mass_after;
            assert!(
                mass >= last,
                "{name}: mass fell from {last} to {mass} at bias {bias}"
            );
            last = mass;
            masses.push(mass);
        }
        assert!(masses[6] > masses[0] + 0.3, "{name}: {masses:?}");
    }
}

#[test]
fn empty_steering_is_bit_identical_to_none() {
    let mut m = load("olmoe");
    let ids = ids(&m);
    let layer = m.model.info().moe_layers[1];
    let empty = resolve(&m, &SteeringSpec::default());
    let mut zero_strength = SteeringSpec::from_cells([(layer, 3)], SteerAction::Bias(5.0));
    zero_strength.strength = 0.0;
    let zero_strength = resolve(&m, &zero_strength);
    let zero_bias = resolve(
        &m,
        &SteeringSpec::from_cells([(layer, 3)], SteerAction::Bias(0.0)),
    );
    let cancel = AtomicBool::new(false);
    for opts in [
        GenerateOptions {
            max_new_tokens: 12,
            ..Default::default()
        },
        GenerateOptions {
            max_new_tokens: 12,
            temperature: 0.9,
            top_p: 0.95,
            seed: 42,
            stop_ids: vec![],
        },
    ] {
        let run = |m: &mut LoadedModel, s: Option<&ActiveSteering>| {
            generate(m.model.as_mut(), &ids, s, &opts, None, &cancel, &mut |_| {}).unwrap()
        };
        let none = run(&mut m, None);
        assert_eq!(none.len(), 12);
        for s in [&empty, &zero_strength, &zero_bias] {
            assert_eq!(run(&mut m, Some(s)), none);
        }
        // And a real bias does change the sampled text (the test can tell them apart).
        let strong = resolve(
            &m,
            &SteeringSpec::from_cells(
                m.model.info().moe_layers.iter().map(|&l| (l, 0)),
                SteerAction::Force(ExpertForce::Off),
            ),
        );
        assert_ne!(run(&mut m, Some(&strong)), none);
    }
    // Routing weights too, bit for bit.
    let plain = routing(&mut m, &ids, None);
    let steered = routing(&mut m, &ids, Some(&empty));
    for (l, r) in &plain {
        assert_eq!(r.indices, steered[l].indices);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&r.weights), bits(&steered[l].weights));
    }
}

#[test]
fn kv_cached_greedy_generation_matches_full_recomputation() {
    for name in ["olmoe", "mixtral", "deepseek_v2_lite"] {
        let mut m = load(name);
        let prompt = ids(&m);
        let cancel = AtomicBool::new(false);
        let mut streamed = Vec::new();
        let opts = GenerateOptions {
            max_new_tokens: 6,
            ..Default::default()
        };
        let out = generate(
            m.model.as_mut(),
            &prompt,
            None,
            &opts,
            None,
            &cancel,
            &mut |t| streamed.push(t),
        )
        .unwrap();
        assert_eq!(out, streamed);
        let mut seq = prompt.clone();
        for _ in 0..6 {
            let batch = Batch::from_sequences(std::slice::from_ref(&seq), &m.device).unwrap();
            let mut hook = NoHook;
            let mut ctx = RouteCtx::new(&mut hook);
            let logits = m
                .model
                .forward(&batch, Output::LastLogits, &mut ctx)
                .unwrap()
                .unwrap();
            seq.push(argmax(
                &logits.squeeze(0).unwrap().to_vec1::<f32>().unwrap(),
            ));
        }
        assert_eq!(&seq[prompt.len()..], out.as_slice(), "{name}");
    }
}

/// Writes an MMLU-Pro-layout JSONL whose answers are what `pick` says.
fn write_dataset(path: &Path, answers: &[usize]) {
    let mut lines = String::new();
    for (i, &a) in answers.iter().enumerate() {
        let subject = if i % 2 == 0 { "math" } else { "history" };
        let options: Vec<String> = (0..4 + i % 3)
            .map(|j| format!("option {j} of {i}"))
            .collect();
        let row = serde_json::json!({
            "question": format!("Question number {i}: which one is right?"),
            "options": options,
            "answer": letter(a).to_string(),
            "answer_index": a,
            "category": subject,
        });
        lines.push_str(&row.to_string());
        lines.push('\n');
    }
    std::fs::write(path, lines).unwrap();
}

#[test]
fn eval_scores_the_models_own_answers_at_100_percent() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mc.jsonl");
    let mut m = load("olmoe");
    let n = 8;
    // First pass: placeholder answers, to get the prompts as eval builds them.
    write_dataset(&path, &vec![0; n]);
    let items: Vec<McItem> = load_items(&path, &[], None).unwrap();
    assert_eq!(items.len(), n);
    assert_eq!(items[1].num_options, 5);
    assert!(
        items[0].prompt.ends_with("\nD. option 3 of 0"),
        "{}",
        items[0].prompt
    );
    let max_pos = m.model.info().max_position_embeddings;
    let layers = m.model.info().moe_layers.clone();
    let mask = resolve(
        &m,
        &SteeringSpec::from_cells(
            layers.iter().flat_map(|&l| [(l, 0), (l, 1)]),
            SteerAction::Force(ExpertForce::Off),
        ),
    );
    let own = |m: &mut LoadedModel, s: Option<&ActiveSteering>| -> Vec<usize> {
        items
            .iter()
            .map(|it| {
                let enc = encode_item(&m.tokenizer, it, max_pos).unwrap();
                best(&score_encoded(m.model.as_mut(), &enc, s.map(|s| &s.steering)).unwrap())
            })
            .collect()
    };
    let plain_answers = own(&mut m, None);
    let steered_answers = own(&mut m, Some(&mask));
    let cancel = AtomicBool::new(false);
    let opts = EvalOptions::default();

    write_dataset(&path, &plain_answers);
    let items = load_items(&path, &[], None).unwrap();
    let r = run_eval(
        m.model.as_mut(),
        &m.tokenizer,
        &items,
        Some(&mask),
        &opts,
        &cancel,
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(r.overall.unsteered.value, 1.0);
    assert_eq!(
        (r.overall.unsteered.ci_low, r.overall.unsteered.ci_high),
        (1.0, 1.0)
    );
    assert_eq!(r.subjects.len(), 2);
    assert_eq!(r.subjects[0].subject, "math");
    assert_eq!(r.subjects[0].questions, 4);
    let agree = plain_answers
        .iter()
        .zip(&steered_answers)
        .filter(|(a, b)| a == b)
        .count();
    assert!((r.overall.steered.unwrap().value - agree as f64 / n as f64).abs() < 1e-12);

    write_dataset(&path, &steered_answers);
    let items = load_items(&path, &["history".to_string()], Some(2)).unwrap();
    assert_eq!(items.len(), 2);
    let r = run_eval(
        m.model.as_mut(),
        &m.tokenizer,
        &items,
        Some(&mask),
        &opts,
        &cancel,
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(r.overall.steered.unwrap().value, 1.0);
}

/// Questions batched into one padded pass score as they do one at a time, steered or not (on
/// the demo model, whose BPE vocabulary has the option letters as single tokens).
#[test]
fn batched_eval_scores_match_one_question_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mc.jsonl");
    write_dataset(&path, &[0; 9]);
    let items = load_items(&path, &[], None).unwrap();
    let opts = moescope::model::LoadOptions {
        model: concat!(env!("CARGO_MANIFEST_DIR"), "/assets/demo").to_string(),
        device: moescope::model::device::DeviceChoice::Cpu,
        ..Default::default()
    };
    let mut m = moescope::model::load_model(&opts, None).unwrap();
    let max_pos = m.model.info().max_position_embeddings;
    let encoded: Vec<_> = items
        .iter()
        .map(|it| encode_item(&m.tokenizer, it, max_pos).unwrap())
        .collect();
    let lens: std::collections::BTreeSet<usize> = encoded.iter().map(|e| e.context.len()).collect();
    assert!(lens.len() > 1, "prompts of different lengths pad the batch");
    assert!(
        encoded
            .iter()
            .all(|e| e.options.iter().all(|o| o.len() == 1)),
        "single-token letters take the batched path"
    );
    let layers = m.model.info().moe_layers.clone();
    let boost = resolve(
        &m,
        &SteeringSpec::from_cells(layers.iter().map(|&l| (l, 3)), SteerAction::Bias(2.0)),
    );
    for s in [None, Some(&boost.steering)] {
        let batched = score_batch(m.model.as_mut(), &encoded, s).unwrap();
        for (enc, b) in encoded.iter().zip(&batched) {
            let alone = score_encoded(m.model.as_mut(), enc, s).unwrap();
            assert_eq!(alone.len(), b.len());
            for (x, y) in alone.iter().zip(b) {
                assert!((x - y).abs() < 1e-4, "batched {y} vs alone {x}");
            }
        }
    }
}

/// Option letters of several tokens are scored in one padded pass, each option's
/// log-probability as if its sequence ran alone.
#[test]
fn multi_token_letters_score_in_one_pass_as_if_alone() {
    for family in ["olmoe", "deepseek_v2_lite"] {
        let mut m = load(family);
        let context = ids(&m)[..9].to_vec();
        let options: Vec<Vec<u32>> = vec![vec![5, 9], vec![7], vec![3, 4, 8]];
        let enc = moescope::inference::eval::Encoded {
            context: context.clone(),
            options: options.clone(),
            truncated: false,
        };
        let scores = score_encoded(m.model.as_mut(), &enc, None).unwrap();
        for (o, got) in options.iter().zip(&scores) {
            let seq = [context.as_slice(), o].concat();
            let batch =
                Batch::from_sequences(std::slice::from_ref(&seq), m.model.device()).unwrap();
            let mut hook = NoHook;
            let logits = m
                .model
                .forward(&batch, Output::AllLogits, &mut RouteCtx::new(&mut hook))
                .unwrap()
                .unwrap()
                .squeeze(0)
                .unwrap();
            let alone: f64 = o
                .iter()
                .enumerate()
                .map(|(j, &t)| {
                    let row: Vec<f32> = logits
                        .get(context.len() - 1 + j)
                        .unwrap()
                        .to_vec1()
                        .unwrap();
                    let max = row.iter().cloned().fold(f32::MIN, f32::max) as f64;
                    let lse = row
                        .iter()
                        .map(|&z| (z as f64 - max).exp())
                        .sum::<f64>()
                        .ln()
                        + max;
                    row[t as usize] as f64 - lse
                })
                .sum();
            assert!(
                (alone - got).abs() < 1e-4,
                "{family}: {got} vs alone {alone}"
            );
        }
    }
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn bad_specs_give_clear_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixture("olmoe").display().to_string();
    let cases: [(&str, &str, &[&str]); 6] = [
        (
            "unknown_layer.json",
            r#"{"format":"moescope-steering","version":1,"experts":[{"layer":5,"expert":1,"bias":1}]}"#,
            &["layer 5 is not an MoE layer", "MoE layers: [0, 1, 2]"],
        ),
        (
            "expert_range.json",
            r#"{"format":"moescope-steering","version":1,"experts":[{"layer":1,"expert":8,"bias":1}]}"#,
            &["expert 8 is out of range", "8 experts per layer"],
        ),
        (
            "nan.json",
            r#"{"format":"moescope-steering","version":1,"experts":[{"layer":1,"expert":2,"bias":NaN}]}"#,
            &["not valid JSON"],
        ),
        (
            "inf.json",
            r#"{"format":"moescope-steering","version":1,"experts":[{"layer":1,"expert":2,"bias":1e39}]}"#,
            &["bias is not a finite number"],
        ),
        (
            "wrong_format.json",
            r#"{"format":"moescope-selection","version":1}"#,
            &["format is 'moescope-selection'"],
        ),
        (
            "typo.json",
            r#"{"format":"moescope-steering","version":1,"experts":[{"layer":1,"expert":2,"bais":1}]}"#,
            &["bais"],
        ),
    ];
    for (file, text, wants) in cases {
        let path = dir.path().join(file);
        std::fs::write(&path, text).unwrap();
        let p = path.display().to_string();
        let o = moescope(&["generate", "-m", &model, "-p", "hello", "--steer", &p]);
        assert!(!o.status.success(), "{file}");
        let err = stderr(&o);
        assert!(err.contains(file), "{file}: {err}");
        for w in wants {
            assert!(err.contains(w), "{file}: wanted {w:?} in {err}");
        }
        assert!(!err.contains("panicked"), "{err}");
    }
    let o = moescope(&[
        "steer",
        "-m",
        &model,
        "-p",
        "hello",
        "--steer",
        "/nonexistent/s.json",
    ]);
    assert!(!o.status.success() && stderr(&o).contains("/nonexistent/s.json"));
}

#[test]
fn cli_generate_steer_eval_and_steer_spec() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixture("olmoe").display().to_string();
    let spec = dir.path().join("spec.json");
    let specp = spec.display().to_string();
    let o = moescope(&[
        "steer-spec",
        "--cells",
        "0:1,2;1:3",
        "--bias",
        "4",
        "--out",
        &specp,
        "--model",
        &model,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let loaded = SteeringSpec::load(&spec).unwrap();
    assert_eq!(loaded.experts.len(), 3);
    assert_eq!(
        loaded.experts[2],
        ExpertSteer {
            layer: 1,
            expert: 3,
            bias: Some(4.0),
            force: None
        }
    );

    let o = moescope(&[
        "generate",
        "-m",
        &model,
        "-p",
        "hello world",
        "--max-new-tokens",
        "5",
        "--no-stop",
        "--temperature",
        "0.7",
        "--top-p",
        "0.9",
        "--seed",
        "1",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("hello world"));

    let o = moescope(&[
        "steer",
        "-m",
        &model,
        "-p",
        "hello world",
        "--steer",
        &specp,
        "--max-new-tokens",
        "6",
        "--no-stop",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["routing_change"].as_array().unwrap().len(), 3);
    assert!(v["routing_change"][0]["mass_onto"].as_f64().unwrap() > 0.0);
    assert_eq!(v["unsteered"]["ids"].as_array().unwrap().len(), 6);

    let data =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/data/mmlu_pro_sample.parquet");
    let o = moescope(&[
        "eval",
        "-m",
        &model,
        "--data",
        &data.display().to_string(),
        "--steer",
        &specp,
        "--json",
        "--subjects",
        "math,physics",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let subjects = v["report"]["subjects"].as_array().unwrap();
    assert_eq!(subjects.len(), 2);
    assert!(subjects[0]["steered"]["ci_low"].is_number());
    let o = moescope(&[
        "eval",
        "-m",
        &model,
        "--data",
        &data.display().to_string(),
        "--subjects",
        "nope",
    ]);
    assert!(
        !o.status.success() && stderr(&o).contains("no questions for subjects"),
        "{}",
        stderr(&o)
    );
}
