//! Unit tests for `data`: every format and every error, on files generated in a temp dir
//! (Parquet with the crate's low-level writer) plus the pyarrow-made fixtures in
//! `tests/fixtures/data/`; chat records are [`conversations`]'s.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use parquet::basic::Compression;
use parquet::data_type::{ByteArray, ByteArrayType};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;

use super::layout::parse_list_literal;
use super::*;

fn write(dir: &Path, name: &str, bytes: impl AsRef<[u8]>) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("write test file");
    path
}

fn load(path: &Path) -> Result<PromptSet, DataError> {
    load_prompts(path, &DataOptions::default())
}

fn opts(subject: Option<&str>, text: Option<&str>) -> DataOptions {
    DataOptions {
        subject_column: subject.map(String::from),
        text_column: text.map(String::from),
        max_per_subject: None,
        subject_optional: false,
    }
}

fn pairs(set: &PromptSet) -> Vec<(&str, &str)> {
    set.prompts
        .iter()
        .map(|p| (p.subject.as_str(), p.text.as_str()))
        .collect()
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/data")
        .join(name)
}

/// A Parquet column for [`write_parquet`], matching a field of the schema in order.
enum Col<'a> {
    /// `optional binary` (nullable strings, or arbitrary bytes).
    Bytes(Vec<Option<&'a [u8]>>),
    /// `optional group (LIST) { repeated group list { optional binary element } }`, as
    /// pyarrow writes `list<string>`.
    Lists(Vec<Option<Vec<&'a str>>>),
    /// One string field of `optional group (LIST) { repeated group list { optional group
    /// element { optional binary <field> … } } }`, as pyarrow writes `list<struct<…>>` (a chat
    /// `messages` column): per row a list (or null), per struct the field (or null).
    StructField(Vec<Option<Vec<Option<&'a str>>>>),
}

/// Values and definition / repetition levels of a list column whose rows are null, empty, or
/// lists of (possibly null) strings: a null row is level 0, an empty one 1, a null item
/// `value_def - 1` and a present one `value_def` (3 for `list<string>`, 4 for a struct field).
fn list_levels(
    lists: &[Option<Vec<Option<&str>>>],
    value_def: i16,
) -> (Vec<ByteArray>, Vec<i16>, Option<Vec<i16>>) {
    let (mut values, mut def, mut rep) = (Vec::new(), Vec::new(), Vec::new());
    for list in lists {
        match list {
            None => {
                def.push(0);
                rep.push(0);
            }
            Some(items) if items.is_empty() => {
                def.push(1);
                rep.push(0);
            }
            Some(items) => {
                for (i, item) in items.iter().enumerate() {
                    match item {
                        Some(v) => {
                            values.push(ByteArray::from(*v));
                            def.push(value_def);
                        }
                        None => def.push(value_def - 1),
                    }
                    rep.push(i16::from(i > 0));
                }
            }
        }
    }
    (values, def, Some(rep))
}

fn write_parquet(path: &Path, schema: &str, columns: Vec<Col<'_>>, codec: Compression) {
    let schema = Arc::new(parse_message_type(schema).expect("schema"));
    let props = Arc::new(WriterProperties::builder().set_compression(codec).build());
    let file = std::fs::File::create(path).expect("create");
    let mut writer = SerializedFileWriter::new(file, schema, props).expect("writer");
    let mut group = writer.next_row_group().expect("row group");
    for col in columns {
        let mut cw = group.next_column().expect("column").expect("more columns");
        let (values, def, rep) = match col {
            Col::Bytes(cells) => {
                let values: Vec<ByteArray> = cells.iter().flatten().map(|b| (*b).into()).collect();
                let def: Vec<i16> = cells.iter().map(|c| i16::from(c.is_some())).collect();
                (values, def, None)
            }
            Col::Lists(lists) => {
                let lists: Vec<Option<Vec<Option<&str>>>> = lists
                    .into_iter()
                    .map(|l| l.map(|items| items.into_iter().map(Some).collect()))
                    .collect();
                list_levels(&lists, 3)
            }
            Col::StructField(lists) => list_levels(&lists, 4),
        };
        cw.typed::<ByteArrayType>()
            .write_batch(&values, Some(&def), rep.as_deref())
            .expect("write batch");
        cw.close().expect("close column");
    }
    group.close().expect("close row group");
    writer.close().expect("close file");
}

const PRO_SCHEMA: &str = "message schema {
    optional binary question (UTF8);
    optional group options (LIST) {
        repeated group list {
            optional binary element (UTF8);
        }
    }
    optional binary category (UTF8);
}";

// ---------------------------------------------------------------------------------------------
// Formats

#[test]
fn jsonl_default_columns_in_file_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "p.jsonl",
        "{\"subject\":\"math\",\"text\":\"1+1\"}\n\n{\"subject\":\"law\",\"text\":\"tort\",\"id\":3}\r\n{\"subject\":\"math\",\"text\":\"2+2\"}",
    );
    let set = load(&path).unwrap();
    assert_eq!(
        pairs(&set),
        [("math", "1+1"), ("law", "tort"), ("math", "2+2")]
    );
    assert_eq!(set.subjects(), ["math", "law"]);
    assert_eq!(
        set.counts(),
        [("math".to_string(), 2), ("law".to_string(), 1)]
    );
    assert_eq!(set.source, path.display().to_string());
    assert_eq!(set.prompts_for("math").count(), 2);
}

#[test]
fn json_array_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "p.json",
        r#"[{"topic": "bio", "prompt": "cells"}, {"topic": "chem", "prompt": "atoms"}]"#,
    );
    assert_eq!(
        pairs(&load(&path).unwrap()),
        [("bio", "cells"), ("chem", "atoms")]
    );
}

#[test]
fn default_names_in_priority_order_and_case_insensitive() {
    let dir = tempfile::tempdir().unwrap();
    // `subject` beats `domain`; `text` beats `question`; `Category`/`Prompt` match any case.
    let path = write(
        dir.path(),
        "a.jsonl",
        r#"{"domain":"d","subject":"s","question":"q","text":"t"}"#,
    );
    assert_eq!(pairs(&load(&path).unwrap()), [("s", "t")]);
    let path = write(dir.path(), "b.jsonl", r#"{"Category":"c","Prompt":"p"}"#);
    assert_eq!(pairs(&load(&path).unwrap()), [("c", "p")]);
    // Numbers are accepted as subject labels.
    let path = write(dir.path(), "c.jsonl", r#"{"domain":7,"question":"q"}"#);
    assert_eq!(pairs(&load(&path).unwrap()), [("7", "q")]);
}

#[test]
fn explicit_columns_win() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "p.jsonl",
        r#"{"subject":"s","text":"t","label":"L","body":"B"}"#,
    );
    let set = load_prompts(&path, &opts(Some("label"), Some("body"))).unwrap();
    assert_eq!(pairs(&set), [("L", "B")]);
    // Case-insensitive when it picks exactly one column.
    let set = load_prompts(&path, &opts(Some("LABEL"), None)).unwrap();
    assert_eq!(pairs(&set), [("L", "t")]);
}

#[test]
fn mmlu_pro_layout_from_jsonl() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "pro.jsonl",
        concat!(
            r#"{"question_id":1,"question":"What is 2 + 3?  ","options":["4"," 5 ","6","N/A"],"answer":"B","answer_index":1,"cot_content":"","category":"math","src":"x"}"#,
            "\n",
            r#"{"question_id":2,"question":"Line one\nline two","options":["yes",null,"no"],"answer":"A","answer_index":0,"cot_content":"","category":"law","src":"x"}"#,
        ),
    );
    let set = load(&path).unwrap();
    assert_eq!(
        pairs(&set),
        [
            ("math", "What is 2 + 3?\nA. 4\nB. 5\nC. 6"),
            ("law", "Line one\nline two\nA. yes\nB. no"),
        ]
    );
    // Naming the text column turns the layout off.
    let set = load_prompts(&path, &opts(None, Some("question"))).unwrap();
    assert_eq!(set.prompts[0].text, "What is 2 + 3?  ");
    assert_eq!(set.prompts[0].subject, "math");
}

#[test]
fn mmlu_pro_prefers_category_over_other_subject_names() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "pro.jsonl",
        r#"{"question":"q","options":["a"],"topic":"t","category":"c"}"#,
    );
    assert_eq!(pairs(&load(&path).unwrap()), [("c", "q\nA. a")]);
}

#[test]
fn mmlu_layout_from_jsonl() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "mmlu.jsonl",
        r#"{"question":"Pick one","subject":"anatomy","choices":["w","x","y","z"],"answer":2}"#,
    );
    assert_eq!(
        pairs(&load(&path).unwrap()),
        [("anatomy", "Pick one\nA. w\nB. x\nC. y\nD. z")]
    );
}

#[test]
fn format_multiple_choice_exact() {
    let opts = ["a".to_string(), "b".to_string()];
    assert_eq!(format_multiple_choice("Q?\n", &opts), "Q?\nA. a\nB. b");
    assert_eq!(format_multiple_choice("Q?", &[]), "Q?");
    let ten: Vec<String> = (0..10).map(|i| i.to_string()).collect();
    assert!(format_multiple_choice("Q", &ten).ends_with("\nI. 8\nJ. 9"));
}

#[test]
fn csv_with_bom_quotes_and_multiline_fields() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "p.csv",
        "\u{feff}subject,text\nmath,\"a, b\"\n\nlaw,\"two\nlines\"\nmath,\"say \"\"hi\"\"\"\n",
    );
    let set = load(&path).unwrap();
    assert_eq!(
        pairs(&set),
        [
            ("math", "a, b"),
            ("law", "two\nlines"),
            ("math", "say \"hi\"")
        ]
    );
    assert_eq!(dataset_columns(&path).unwrap(), ["subject", "text"]);
}

#[test]
fn tsv_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "p.tsv", "domain\tprompt\nx\thello world\n");
    assert_eq!(pairs(&load(&path).unwrap()), [("x", "hello world")]);
}

#[test]
fn csv_mmlu_pro_options_as_list_literals() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "pro.csv",
        concat!(
            "question,options,category\n",
            "Q1,\"[\"\"a\"\", \"\"b\"\"]\",x\n", // JSON array
            "Q2,\"[\"\"it's\"\", 'b\\'c', 'N/A']\",y\n", // pandas-style Python list
            "Q3,\"['c' 'd'\n 'e']\",z\n",        // NumPy array repr, wrapped
        ),
    );
    let set = load(&path).unwrap();
    assert_eq!(
        pairs(&set),
        [
            ("x", "Q1\nA. a\nB. b"),
            ("y", "Q2\nA. it's\nB. b'c"),
            ("z", "Q3\nA. c\nB. d\nC. e"),
        ]
    );
}

#[test]
fn list_literal_parser() {
    let s = |v: &[&str]| Some(v.iter().map(|x| Some(x.to_string())).collect::<Vec<_>>());
    assert_eq!(parse_list_literal(r#"["a", 1]"#), s(&["a", "1"]));
    assert_eq!(
        parse_list_literal(r#"['a\'b', "c\"d"]"#),
        s(&["a'b", "c\"d"])
    );
    assert_eq!(
        parse_list_literal(r"['x\ny', '\u00e9\x41']"),
        s(&["x\ny", "éA"])
    );
    assert_eq!(parse_list_literal("[]"), s(&[]));
    assert_eq!(parse_list_literal("[null]"), Some(vec![None]));
    assert_eq!(parse_list_literal("a, b"), None);
    assert_eq!(parse_list_literal("[a, b]"), None);
    assert_eq!(parse_list_literal("['unterminated]"), None);
}

#[test]
fn parquet_low_level_mmlu_pro_snappy() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pro.parquet");
    write_parquet(
        &path,
        PRO_SCHEMA,
        vec![
            Col::Bytes(vec![Some(b"Q1"), Some(b"Q2"), Some(b"Q3")]),
            Col::Lists(vec![
                Some(vec!["a", "b"]),
                Some(vec![]),
                Some(vec!["c", "N/A"]),
            ]),
            Col::Bytes(vec![Some(b"x"), Some(b"y"), Some(b"x")]),
        ],
        Compression::SNAPPY,
    );
    let set = load(&path).unwrap();
    assert_eq!(
        pairs(&set),
        [("x", "Q1\nA. a\nB. b"), ("y", "Q2"), ("x", "Q3\nA. c")]
    );
    assert_eq!(
        dataset_columns(&path).unwrap(),
        ["question", "options", "category"]
    );
    let rows = preview(&path, 2).unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(
        rows[0],
        [
            ("question".to_string(), "Q1".to_string()),
            ("options".to_string(), r#"["a","b"]"#.to_string()),
            ("category".to_string(), "x".to_string()),
        ]
    );
}

#[test]
fn parquet_plain_columns_uncompressed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.parquet");
    write_parquet(
        &path,
        "message m { optional binary subject (UTF8); optional binary text; }",
        vec![
            Col::Bytes(vec![Some(b"s1"), Some(b"s2")]),
            // `text` has no STRING annotation: read as bytes, accepted when UTF-8.
            Col::Bytes(vec![Some("héllo".as_bytes()), Some(b"world")]),
        ],
        Compression::UNCOMPRESSED,
    );
    assert_eq!(
        pairs(&load(&path).unwrap()),
        [("s1", "héllo"), ("s2", "world")]
    );
}

#[test]
fn parquet_fixture_mmlu_pro_from_pyarrow() {
    let path = fixture("mmlu_pro_sample.parquet");
    assert_eq!(
        dataset_columns(&path).unwrap(),
        [
            "question_id",
            "question",
            "options",
            "answer",
            "answer_index",
            "cot_content",
            "category",
            "src"
        ]
    );
    let set = load(&path).unwrap();
    // Two row groups (4 + 2 rows), read across the boundary in order.
    assert_eq!(set.len(), 6);
    assert_eq!(set.subjects(), ["math", "physics", "law"]);
    assert_eq!(
        set.prompts[2].text,
        "A contract signed under duress is usually\nA. void\nB. voidable\nC. valid"
    );
    assert_eq!(
        set.prompts[4].text,
        "What is the unit of force?\nChoose one.\nA. joule\nB. newton\nC. watt"
    );
    assert_eq!(set.prompts[5].subject, "math");
    let rows = preview(&path, 1).unwrap();
    assert_eq!(rows[0][0], ("question_id".to_string(), "0".to_string()));
    assert_eq!(
        rows[0][2],
        ("options".to_string(), r#"["4","5","6","7"]"#.to_string())
    );
}

#[test]
fn parquet_fixture_mmlu_from_pyarrow() {
    let set = load(&fixture("mmlu_sample.parquet")).unwrap();
    assert_eq!(set.subjects(), ["college_mathematics", "anatomy"]);
    assert_eq!(
        set.prompts[1].text,
        "Which organ pumps blood?\nA. lung\nB. liver\nC. heart\nD. kidney"
    );
}

#[test]
fn prompt_dir_sorted_with_escapes() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "zoo.txt", "lion\r\ntiger\r\n");
    write(
        dir.path(),
        "code.txt",
        "\u{feff}fn main() {\\n    x\\n}\nC:\\\\dir and \\t kept",
    );
    write(dir.path(), "README.md", "not prompts");
    write(dir.path(), ".hidden.txt", "ignored");
    std::fs::create_dir(dir.path().join("sub.txt")).unwrap();
    let set = load_prompt_dir(dir.path()).unwrap();
    assert_eq!(
        pairs(&set),
        [
            ("code", "fn main() {\n    x\n}"),
            ("code", "C:\\dir and \\t kept"),
            ("zoo", "lion"),
            ("zoo", "tiger"),
        ]
    );
    // load_prompts accepts the folder too, and a single .txt file.
    assert_eq!(load(dir.path()).unwrap().prompts, set.prompts);
    let one = load(&dir.path().join("zoo.txt")).unwrap();
    assert_eq!(pairs(&one), [("zoo", "lion"), ("zoo", "tiger")]);
    assert_eq!(dataset_columns(dir.path()).unwrap(), ["subject", "text"]);
    assert_eq!(
        preview(dir.path(), 1).unwrap(),
        [vec![
            ("subject".to_string(), "code".to_string()),
            ("text".to_string(), "fn main() {\n    x\n}".to_string()),
        ]]
    );
}

#[test]
fn prompt_line_encoding_round_trips() {
    for text in [
        "plain",
        "two\nlines",
        "back\\slash",
        "literal \\n (backslash-n)",
        "\\\\n",
        "ends with \\",
        "tab\tand é",
    ] {
        let line = encode_prompt_line(text);
        assert!(!line.contains('\n'));
        assert_eq!(decode_prompt_line(&line), text, "line {line:?}");
    }
    assert_eq!(decode_prompt_line(r"a\nb\\c\d\"), "a\nb\\c\\d\\");
    assert_eq!(encode_prompt_line("a\r\nb\r"), r"a\nb");
}

#[test]
fn limit_per_subject_keeps_first_n_in_order() {
    let p = |s: &str, t: &str| Prompt::plain(s, t);
    let mut set = PromptSet {
        prompts: vec![
            p("a", "1"),
            p("b", "1"),
            p("a", "2"),
            p("a", "3"),
            p("b", "2"),
            p("c", "1"),
        ],
        source: "mem".into(),
    };
    let mut two = set.clone();
    two.limit_per_subject(2);
    assert_eq!(
        pairs(&two),
        [("a", "1"), ("b", "1"), ("a", "2"), ("b", "2"), ("c", "1")]
    );
    set.limit_per_subject(0);
    assert!(set.is_empty());
}

#[test]
fn max_per_subject_option() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "p.csv",
        "subject,text\na,1\nb,1\na,2\na,3\nb,2\n",
    );
    let o = DataOptions {
        max_per_subject: Some(1),
        ..DataOptions::default()
    };
    let set = load_prompts(&path, &o).unwrap();
    assert_eq!(pairs(&set), [("a", "1"), ("b", "1")]);
}

#[test]
fn preview_and_columns_of_jsonl() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "p.jsonl",
        "{\"subject\":\"a\",\"text\":\"x\",\"n\":1.5}\n{\"subject\":\"b\",\"text\":null,\"tags\":[\"t\"]}\n{\"extra\":true}\n",
    );
    assert_eq!(
        dataset_columns(&path).unwrap(),
        ["subject", "text", "n", "tags", "extra"]
    );
    let rows = preview(&path, 2).unwrap();
    let s = |a: &str, b: &str| (a.to_string(), b.to_string());
    assert_eq!(
        rows,
        [
            vec![
                s("subject", "a"),
                s("text", "x"),
                s("n", "1.5"),
                s("tags", "")
            ],
            vec![
                s("subject", "b"),
                s("text", ""),
                s("n", ""),
                s("tags", r#"["t"]"#)
            ],
        ]
    );
    assert!(preview(&path, 0).unwrap().is_empty());
}

// ---------------------------------------------------------------------------------------------
// Errors

/// Loads `path`, expecting an error whose message names the file.
fn load_err(path: &Path, o: &DataOptions) -> DataError {
    let err = load_prompts(path, o).expect_err("should fail");
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        err.to_string().contains(&name),
        "message does not name {name}: {err}"
    );
    err
}

#[test]
fn missing_and_unreadable_files() {
    let dir = tempfile::tempdir().unwrap();
    let err = load_err(&dir.path().join("nope.jsonl"), &DataOptions::default());
    assert!(matches!(err, DataError::NotFound { .. }), "{err:?}");
    assert!(err.to_string().contains("no such file"));
    // A path through a regular file: an I/O error that is not "not found".
    let file = write(dir.path(), "file.jsonl", "{}");
    let err = load_err(&file.join("x.jsonl"), &DataOptions::default());
    assert!(matches!(err, DataError::Io { .. }), "{err:?}");
    assert!(matches!(
        load_prompt_dir(&dir.path().join("missing")),
        Err(DataError::NotFound { .. })
    ));
}

#[test]
fn unknown_extension() {
    let dir = tempfile::tempdir().unwrap();
    let err = load_err(&write(dir.path(), "d.xlsx", "x"), &DataOptions::default());
    assert!(matches!(err, DataError::UnknownFormat { ref extension, .. } if extension == "xlsx"));
    assert!(err.to_string().contains("`.xlsx`"), "{err}");
    let err = load_err(&write(dir.path(), "noext", "x"), &DataOptions::default());
    assert!(err.to_string().contains("(no extension)"), "{err}");
    assert!(dataset_columns(&dir.path().join("d.xlsx")).is_err());
}

#[test]
fn malformed_json_names_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "bad.jsonl",
        "{\"subject\":\"a\",\"text\":\"x\"}\n\n{\"subject\": \"a\", text}\n",
    );
    let err = load_err(&path, &DataOptions::default());
    assert!(
        matches!(
            err,
            DataError::MalformedJson {
                location: Location::Line(3),
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("line 3: malformed JSON"), "{err}");
    let path = write(dir.path(), "arr.jsonl", "{\"subject\":\"a\"}\n[1, 2]\n");
    let err = load_err(&path, &DataOptions::default());
    assert!(err.to_string().contains("line 2"), "{err}");
    assert!(err.to_string().contains("found an array"), "{err}");
    let path = write(dir.path(), "obj.json", "{\n  \"data\": [1]\n}\n");
    let err = load_err(&path, &DataOptions::default());
    assert!(err.to_string().contains("one JSON document"), "{err}");
    let path = write(dir.path(), "arr.json", "[\n{\"text\": 1},\n oops]");
    let err = load_err(&path, &DataOptions::default());
    assert!(
        matches!(
            err,
            DataError::MalformedJson {
                location: Location::Line(3),
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn malformed_csv_names_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "bad.csv", "subject,text\na,x\nb,y,z\n");
    let err = load_err(&path, &DataOptions::default());
    assert!(
        matches!(
            err,
            DataError::MalformedCsv {
                location: Location::Line(3),
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("3 fields where the header has 2"));
}

#[test]
fn malformed_parquet() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "junk.parquet", "definitely not parquet");
    let err = load_err(&path, &DataOptions::default());
    assert!(matches!(err, DataError::MalformedParquet { .. }), "{err:?}");
}

#[test]
fn missing_named_column_lists_available() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "p.csv", "subject,text\na,x\n");
    let err = load_err(&path, &opts(Some("label"), None));
    let msg = err.to_string();
    assert!(matches!(
        err,
        DataError::MissingColumn {
            flag: "--subject-column",
            ..
        }
    ));
    assert!(
        msg.contains("no column named `label`") && msg.contains("`subject`, `text`"),
        "{msg}"
    );
    let err = load_err(&path, &opts(None, Some("body")));
    assert!(matches!(
        err,
        DataError::MissingColumn {
            flag: "--text-column",
            ..
        }
    ));
    // Also for prompt folders (virtual columns subject/text).
    write(dir.path(), "math.txt", "1+1\n");
    let err = load_prompts(dir.path(), &opts(Some("category"), None)).unwrap_err();
    assert!(matches!(err, DataError::MissingColumn { .. }), "{err:?}");
}

#[test]
fn no_subject_or_text_column() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "p.jsonl", r#"{"label":"a","text":"x"}"#);
    let err = load_err(&path, &DataOptions::default());
    let msg = err.to_string();
    assert!(matches!(err, DataError::NoSubjectColumn { .. }));
    assert!(
        msg.contains("--subject-column") && msg.contains("`label`, `text`"),
        "{msg}"
    );
    let path = write(dir.path(), "q.jsonl", r#"{"subject":"a","body":"x"}"#);
    let err = load_err(&path, &DataOptions::default());
    assert!(matches!(err, DataError::NoTextColumn { .. }));
    assert!(err.to_string().contains("--text-column"));
}

#[test]
fn empty_text_names_the_row() {
    let dir = tempfile::tempdir().unwrap();
    for (name, body, line) in [
        (
            "ws.jsonl",
            "{\"subject\":\"a\",\"text\":\"x\"}\n{\"subject\":\"a\",\"text\":\" \\n \"}\n",
            2,
        ),
        ("null.jsonl", "{\"subject\":\"a\",\"text\":null}\n", 1),
        (
            "absent.jsonl",
            "{\"subject\":\"a\",\"text\":\"x\"}\n{\"subject\":\"b\"}\n",
            2,
        ),
        ("empty.csv", "subject,text\na,x\nb,\n", 3),
        (
            "q.jsonl",
            "{\"category\":\"a\",\"question\":\"\",\"options\":[\"x\"]}\n",
            1,
        ),
    ] {
        let path = write(dir.path(), name, body);
        let err = load_err(&path, &DataOptions::default());
        assert!(
            matches!(err, DataError::EmptyText { location: Location::Line(l), .. } if l == line),
            "{name}: {err:?}"
        );
        assert!(err.to_string().contains("empty prompt text"), "{err}");
    }
    let path = dir.path().join("null.parquet");
    write_parquet(
        &path,
        "message m { optional binary subject (UTF8); optional binary text (UTF8); }",
        vec![
            Col::Bytes(vec![Some(b"a"), Some(b"b")]),
            Col::Bytes(vec![Some(b"x"), None]),
        ],
        Compression::SNAPPY,
    );
    let err = load_err(&path, &DataOptions::default());
    assert!(
        matches!(
            err,
            DataError::EmptyText {
                location: Location::Row(2),
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("row 2, column `text`"), "{err}");
}

#[test]
fn blank_line_in_prompt_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "math.txt", "1+1\n\n2+2\n");
    let err = load_prompt_dir(dir.path()).unwrap_err();
    assert!(
        matches!(err, DataError::EmptyText { ref path, location: Location::Line(2), .. } if *path == file),
        "{err:?}"
    );
    assert!(err.to_string().contains("math.txt: line 2"), "{err}");
}

#[test]
fn empty_subject_names_the_row() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "p.csv", "subject,text\na,x\n  ,y\n");
    let err = load_err(&path, &DataOptions::default());
    assert!(
        matches!(err, DataError::EmptySubject { location: Location::Line(3), ref column, .. } if column == "subject"),
        "{err:?}"
    );
}

#[test]
fn non_utf8_names_the_line_or_row() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "p.jsonl",
        b"{\"subject\":\"a\",\"text\":\"x\"}\n{\"subject\":\"a\",\"text\":\"\xff\"}\n",
    );
    let err = load_err(&path, &DataOptions::default());
    assert!(
        matches!(
            err,
            DataError::NonUtf8 {
                location: Location::Line(2),
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("not valid UTF-8"));

    let path = write(dir.path(), "p.csv", b"subject,text\na,x\nb,caf\xe9\n");
    let err = load_err(&path, &DataOptions::default());
    assert!(
        matches!(err, DataError::NonUtf8 { location: Location::Line(3), column: Some(ref c), .. } if c == "text"),
        "{err:?}"
    );

    let txt_dir = dir.path().join("prompts");
    std::fs::create_dir(&txt_dir).unwrap();
    write(&txt_dir, "a.txt", b"ok\n\xc3\x28\n");
    let err = load_prompt_dir(&txt_dir).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::NonUtf8 {
                location: Location::Line(2),
                ..
            }
        ),
        "{err:?}"
    );

    let path = write(
        dir.path(),
        "arr.json",
        b"[{\"text\":\"a\"},\n{\"text\":\"\xff\"}]",
    );
    let err = load_err(&path, &DataOptions::default());
    assert!(
        matches!(
            err,
            DataError::NonUtf8 {
                location: Location::Line(2),
                ..
            }
        ),
        "{err:?}"
    );

    // Parquet: a STRING-annotated column with bad bytes, and an unannotated one.
    for (name, schema) in [
        (
            "utf8.parquet",
            "message m { optional binary subject (UTF8); optional binary text (UTF8); }",
        ),
        (
            "bytes.parquet",
            "message m { optional binary subject (UTF8); optional binary text; }",
        ),
    ] {
        let path = dir.path().join(name);
        write_parquet(
            &path,
            schema,
            vec![
                Col::Bytes(vec![Some(b"a"), Some(b"b"), Some(b"c")]),
                Col::Bytes(vec![Some(b"x"), Some(b"y"), Some(b"\xff\xfe")]),
            ],
            Compression::UNCOMPRESSED,
        );
        let err = load_err(&path, &DataOptions::default());
        assert!(
            matches!(
                err,
                DataError::NonUtf8 {
                    location: Location::Row(3),
                    ..
                }
            ),
            "{name}: {err:?}"
        );
    }
}

#[test]
fn zero_rows() {
    let dir = tempfile::tempdir().unwrap();
    for (name, body) in [
        ("e.jsonl", "\n\n"),
        ("e.json", "[]"),
        ("e.csv", "subject,text\n"),
        ("blank.csv", ""),
        ("e.txt", ""),
    ] {
        let path = write(dir.path(), name, body);
        let err = load_err(&path, &DataOptions::default());
        assert!(matches!(err, DataError::Empty { .. }), "{name}: {err:?}");
        assert!(err.to_string().contains("zero rows"), "{err}");
    }
    let path = dir.path().join("e.parquet");
    write_parquet(
        &path,
        "message m { optional binary subject (UTF8); optional binary text (UTF8); }",
        vec![Col::Bytes(vec![]), Col::Bytes(vec![])],
        Compression::SNAPPY,
    );
    let err = load_err(&path, &DataOptions::default());
    assert!(matches!(err, DataError::Empty { .. }), "{err:?}");

    let empty_dir = dir.path().join("none");
    std::fs::create_dir(&empty_dir).unwrap();
    write(&empty_dir, "notes.md", "x");
    let err = load_prompt_dir(&empty_dir).unwrap_err();
    assert!(matches!(err, DataError::NoPromptFiles { .. }), "{err:?}");
    assert!(err.to_string().contains("<subject>.txt"));
}

#[test]
fn max_per_subject_zero_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "p.csv", "subject,text\na,x\n");
    let o = DataOptions {
        max_per_subject: Some(0),
        ..DataOptions::default()
    };
    let err = load_err(&path, &o);
    assert!(matches!(err, DataError::ZeroMaxPerSubject { .. }));
    assert!(
        err.to_string()
            .contains("--max-per-subject must be at least 1")
    );
}

#[test]
fn unsupported_parquet_codec_is_named() {
    let path = fixture("mmlu_pro_sample_zstd.parquet");
    // The schema is metadata only: listing columns works.
    assert_eq!(dataset_columns(&path).unwrap().len(), 8);
    let err = load_err(&path, &DataOptions::default());
    assert!(
        matches!(err, DataError::UnsupportedCompression { ref codec, .. } if codec == "ZSTD"),
        "{err:?}"
    );
    assert!(err.to_string().contains("compressed with ZSTD"), "{err}");
    assert!(preview(&path, 1).is_err());
}

#[test]
fn wrong_cell_types() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "p.jsonl", r#"{"subject":"a","text":["x","y"]}"#);
    let err = load_err(&path, &DataOptions::default());
    assert!(matches!(err, DataError::WrongType { .. }), "{err:?}");
    assert!(err.to_string().contains("holds a list of 2 items"), "{err}");

    let path = write(
        dir.path(),
        "p.csv",
        "question,options,category\nQ,not a list,c\n",
    );
    let err = load_err(&path, &DataOptions::default());
    assert!(
        matches!(err, DataError::WrongType { location: Location::Line(2), ref column, .. } if column == "options"),
        "{err:?}"
    );

    let path = write(
        dir.path(),
        "n.jsonl",
        r#"{"question":"Q","options":5,"category":"c"}"#,
    );
    let err = load_err(&path, &DataOptions::default());
    assert!(matches!(err, DataError::WrongType { .. }), "{err:?}");
}

#[test]
fn too_many_options() {
    let dir = tempfile::tempdir().unwrap();
    let options: Vec<String> = (0..27).map(|i| format!("\"o{i}\"")).collect();
    let body = format!(
        "{{\"question\":\"Q\",\"options\":[{}],\"category\":\"c\"}}",
        options.join(",")
    );
    let path = write(dir.path(), "p.jsonl", body);
    let err = load_err(&path, &DataOptions::default());
    assert!(
        matches!(err, DataError::TooManyOptions { count: 27, .. }),
        "{err:?}"
    );
}

mod conversations;
