//! The public `moescope::data` API as the CLI and GUI use it, on the committed fixtures in
//! `tests/fixtures/data/` (made by `make_data.py`) and on a generated prompt folder.

use std::path::{Path, PathBuf};

use moescope::data::{
    DataError, DataOptions, dataset_columns, encode_prompt_line, load_prompt_dir, load_prompts,
    preview,
};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/data")
        .join(name)
}

#[test]
fn mmlu_pro_parquet_needs_no_flags() {
    let path = fixture("mmlu_pro_sample.parquet");
    let set = load_prompts(&path, &DataOptions::default()).expect("load");
    assert_eq!(set.subjects(), ["math", "physics", "law"]);
    assert_eq!(
        set.prompts[0].text,
        "What is 2 + 3?\nA. 4\nB. 5\nC. 6\nD. 7"
    );

    let capped = load_prompts(
        &path,
        &DataOptions {
            max_per_subject: Some(1),
            ..DataOptions::default()
        },
    )
    .expect("load");
    assert_eq!(
        capped.counts(),
        [
            ("math".to_string(), 1),
            ("physics".to_string(), 1),
            ("law".to_string(), 1)
        ]
    );

    let columns = dataset_columns(&path).expect("columns");
    assert!(columns.contains(&"category".to_string()));
    let rows = preview(&path, 3).expect("preview");
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0].len(), columns.len());
}

#[test]
fn errors_name_the_file_and_the_fix() {
    let path = fixture("mmlu_pro_sample.parquet");
    let err = load_prompts(
        &path,
        &DataOptions {
            subject_column: Some("domain".into()),
            ..DataOptions::default()
        },
    )
    .expect_err("no such column");
    let msg = err.to_string();
    assert!(matches!(err, DataError::MissingColumn { .. }));
    assert!(msg.contains("mmlu_pro_sample.parquet"), "{msg}");
    assert!(msg.contains("`category`"), "{msg}");

    let err = load_prompts(
        &fixture("mmlu_pro_sample_zstd.parquet"),
        &DataOptions::default(),
    )
    .expect_err("zstd");
    assert!(err.to_string().contains("ZSTD"), "{err}");
}

#[test]
fn prompt_folder_round_trips_multiline_prompts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let prompts = ["fn main() {\n    println!(\"\\n\");\n}", "plain"];
    let body: Vec<String> = prompts.iter().map(|p| encode_prompt_line(p)).collect();
    std::fs::write(dir.path().join("code.txt"), body.join("\n")).expect("write");
    std::fs::write(dir.path().join("art.txt"), "paint\n").expect("write");
    let set = load_prompt_dir(dir.path()).expect("load");
    assert_eq!(set.subjects(), ["art", "code"]);
    let code: Vec<&str> = set.prompts_for("code").map(|p| p.text.as_str()).collect();
    assert_eq!(code, prompts);
}
