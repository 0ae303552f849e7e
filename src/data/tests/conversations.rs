//! Unit tests for chat records: `messages` and ShareGPT `conversations` in every format, and
//! every malformed conversation, with the file writers and helpers of [`super`].

use super::*;

fn messages(pairs: &[(&str, &str)]) -> Vec<ChatMessage> {
    pairs
        .iter()
        .map(|(r, c)| ChatMessage::new(*r, *c))
        .collect()
}

#[test]
fn jsonl_messages_rows_are_conversations() {
    let dir = tempfile::tempdir().unwrap();
    // UltraChat's layout: a `prompt` beside the `messages`; the conversation wins.
    let path = write(
        dir.path(),
        "chat.jsonl",
        concat!(
            r#"{"prompt": "Hi?", "category": "greet", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello.\nHow can I help?"}]}"#,
            "\n",
            r#"{"prompt": "2+2?", "category": "math", "messages": [{"content": "2+2?", "role": "user"}, {"role": "assistant", "content": "4"}]}"#,
            "\n"
        ),
    );
    let set = load(&path).unwrap();
    assert!(set.has_conversations());
    assert_eq!(set.subjects(), ["greet", "math"]);
    let first = &set.prompts[0];
    assert_eq!(
        first.messages.as_deref().unwrap(),
        messages(&[
            ("system", "Be brief."),
            ("user", "Hi?"),
            ("assistant", "Hello.\nHow can I help?")
        ])
    );
    assert_eq!(
        first.text,
        "system: Be brief.\nuser: Hi?\nassistant: Hello.\nHow can I help?"
    );
    assert_eq!(set.prompts[1].text, "user: 2+2?\nassistant: 4");

    // The same records as one JSON array; naming the text column gives the bare prompt.
    let array = write(
        dir.path(),
        "chat.json",
        format!(
            "[{}]",
            std::fs::read_to_string(&path)
                .unwrap()
                .trim()
                .replace('\n', ",")
        ),
    );
    assert_eq!(
        load(&array).unwrap(),
        PromptSet {
            source: array.display().to_string(),
            ..set.clone()
        }
    );
    let bare = load_prompts(&path, &opts(None, Some("prompt"))).unwrap();
    assert_eq!(pairs(&bare), [("greet", "Hi?"), ("math", "2+2?")]);
    assert!(!bare.has_conversations());

    // A column named with --text-column that holds messages is read as a conversation.
    let dialog = write(
        dir.path(),
        "dialog.jsonl",
        r#"{"topic": "t", "dialog": [{"role": "user", "content": "a"}]}"#,
    );
    let set = load_prompts(&dialog, &opts(None, Some("dialog"))).unwrap();
    assert_eq!(set.prompts[0].messages, Some(messages(&[("user", "a")])));

    // Prompt sets are serialised: a plain prompt has no `messages` key, a conversation keeps it.
    let plain = serde_json::to_value(&bare.prompts[0]).unwrap();
    assert_eq!(
        plain,
        serde_json::json!({"subject": "greet", "text": "Hi?"})
    );
    let chat = load(&path).unwrap();
    let json = serde_json::to_string(&chat).unwrap();
    assert_eq!(serde_json::from_str::<PromptSet>(&json).unwrap(), chat);
}

#[test]
fn sharegpt_conversations_map_their_roles() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "share.jsonl",
        r#"{"subject": "s", "conversations": [{"from": "system", "value": "Sys."}, {"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}, {"from": "tool", "value": "T"}]}"#,
    );
    let set = load(&path).unwrap();
    assert_eq!(
        set.prompts[0].messages.as_deref().unwrap(),
        messages(&[
            ("system", "Sys."),
            ("user", "Q"),
            ("assistant", "A"),
            ("tool", "T")
        ])
    );
    // `conversation` (singular) is recognised too, and so are role/content keys in it.
    let path = write(
        dir.path(),
        "one.jsonl",
        r#"{"subject": "s", "Conversation": [{"role": "user", "content": "x"}]}"#,
    );
    assert_eq!(load(&path).unwrap().prompts[0].text, "user: x");
}

#[test]
fn content_parts_keep_their_text() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "parts.jsonl",
        r#"{"subject": "s", "messages": [{"role": "user", "content": [{"type": "text", "text": "Look "}, {"type": "text", "text": "here."}]}, {"role": "assistant", "content": [{"text": "Done."}]}]}"#,
    );
    let set = load(&path).unwrap();
    assert_eq!(
        set.prompts[0].messages.as_deref().unwrap(),
        messages(&[("user", "Look here."), ("assistant", "Done.")])
    );
}

#[test]
fn csv_messages_are_json_text() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "chat.csv",
        "subject,messages\ns,\"[{\"\"role\"\": \"\"user\"\", \"\"content\"\": \"\"Hi\"\"}]\"\n",
    );
    let set = load(&path).unwrap();
    assert_eq!(set.prompts[0].messages, Some(messages(&[("user", "Hi")])));
}

const CHAT_SCHEMA: &str = "message schema {
    optional group messages (LIST) {
        repeated group list {
            optional group element {
                optional binary role (UTF8);
                optional binary content (UTF8);
            }
        }
    }
    optional binary category (UTF8);
}";

#[test]
fn parquet_list_of_struct_messages() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chat.parquet");
    write_parquet(
        &path,
        CHAT_SCHEMA,
        vec![
            Col::StructField(vec![
                Some(vec![Some("system"), Some("user"), Some("assistant")]),
                Some(vec![Some("user"), Some("assistant")]),
            ]),
            Col::StructField(vec![
                Some(vec![Some("Be brief."), Some("Hi?"), Some("Hello.")]),
                Some(vec![Some("2+2?"), Some("4")]),
            ]),
            Col::Bytes(vec![Some(b"greet"), Some(b"math")]),
        ],
        Compression::SNAPPY,
    );
    let set = load(&path).unwrap();
    assert_eq!(set.subjects(), ["greet", "math"]);
    assert_eq!(
        set.prompts[0].messages.as_deref().unwrap(),
        messages(&[
            ("system", "Be brief."),
            ("user", "Hi?"),
            ("assistant", "Hello.")
        ])
    );
    assert_eq!(set.prompts[1].text, "user: 2+2?\nassistant: 4");
    // The preview shows a conversation as JSON.
    let rows = preview(&path, 1).unwrap();
    let shown: serde_json::Value = serde_json::from_str(&rows[0][0].1).unwrap();
    assert_eq!(
        shown[1],
        serde_json::json!({"role": "user", "content": "Hi?"})
    );

    // A message whose content is null, an empty conversation and a null cell name their row.
    for (list, problem, row) in [
        (
            vec![
                Some(vec![Some("user")]),
                Some(vec![Some("user"), Some("assistant")]),
            ],
            "message 2 (assistant): the content holds nothing (null)",
            2,
        ),
        (
            vec![Some(vec![Some("user")]), Some(vec![])],
            "empty conversation",
            2,
        ),
        (vec![None, Some(vec![])], "holds nothing (null)", 1),
    ] {
        let contents: Vec<Option<Vec<Option<&str>>>> = list
            .iter()
            .map(|roles| {
                roles.as_ref().map(|roles| {
                    (0..roles.len())
                        .map(|i| (i == 0).then_some("text"))
                        .collect()
                })
            })
            .collect();
        let bad = dir.path().join("bad.parquet");
        write_parquet(
            &bad,
            CHAT_SCHEMA,
            vec![
                Col::StructField(list.clone()),
                Col::StructField(contents),
                Col::Bytes(vec![Some(b"a"), Some(b"b")]),
            ],
            Compression::UNCOMPRESSED,
        );
        let err = load_err(&bad, &DataOptions::default());
        assert!(
            matches!(err, DataError::BadConversation { location: Location::Row(r), .. } if r == row),
            "{err:?}"
        );
        assert!(err.to_string().contains(problem), "{err}");
    }
}

#[test]
fn bad_conversations_name_the_line_and_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let good = r#"{"subject": "s", "messages": [{"role": "user", "content": "ok"}]}"#;
    for (record, problem) in [
        (
            r#"{"subject": "s", "messages": "Hi there"}"#,
            "holds text, expected a list of messages",
        ),
        (
            r#"{"subject": "s", "messages": {"role": "user", "content": "x"}}"#,
            "holds the object",
        ),
        (r#"{"subject": "s", "messages": []}"#, "empty conversation"),
        (
            r#"{"subject": "s", "messages": ["hi"]}"#,
            "message 1 is text, expected an object with `role` and `content`",
        ),
        (
            r#"{"subject": "s", "messages": [{"role": "user", "content": "a"}, {"content": "b"}]}"#,
            "message 2 has no `role` (nor ShareGPT's `from`); its keys: `content`",
        ),
        (
            r#"{"subject": "s", "messages": [{"role": "user"}]}"#,
            "message 1 (user) has no `content` (nor ShareGPT's `value`)",
        ),
        (
            r#"{"subject": "s", "messages": [{"role": 3, "content": "a"}]}"#,
            "message 1: the role holds the non-text value 3",
        ),
        (
            r#"{"subject": "s", "messages": [{"role": "user", "content": 42}]}"#,
            "message 1 (user): the content holds the non-text value 42, expected text or a list",
        ),
        (
            r#"{"subject": "s", "messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image", "url": "x.png"}]}]}"#,
            "message 1 (user): content part 2 is of type `image`; only text parts",
        ),
        (
            r#"{"subject": "s", "messages": [{"role": "user", "content": ["a"]}]}"#,
            "content part 1 is text, expected text or a list",
        ),
        (
            r#"{"subject": "s", "messages": [{"role": "user", "content": [{"type": "text"}]}]}"#,
            "content part 1 has no `text`",
        ),
    ] {
        let path = write(dir.path(), "bad.jsonl", format!("{good}\n\n{record}\n"));
        let err = load_err(&path, &DataOptions::default());
        assert!(
            matches!(err, DataError::BadConversation { location: Location::Line(3), ref column, .. } if column == "messages"),
            "{record}: {err:?}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains("line 3: column `messages`: ") && msg.contains(problem),
            "{record}: {msg}"
        );
    }

    // A conversation of empty messages is an empty prompt.
    let path = write(
        dir.path(),
        "blank.jsonl",
        r#"{"subject": "s", "messages": [{"role": "user", "content": " "}]}"#,
    );
    let err = load_err(&path, &DataOptions::default());
    assert!(
        matches!(
            err,
            DataError::EmptyText {
                location: Location::Line(1),
                ..
            }
        ),
        "{err:?}"
    );

    // JSON text in a CSV cell that does not parse names the line.
    let path = write(dir.path(), "bad.csv", "subject,messages\ns,\"[{oops\"\n");
    let err = load_err(&path, &DataOptions::default());
    assert!(
        err.to_string()
            .contains("line 2: column `messages`: the text is not a JSON list of messages"),
        "{err}"
    );
}
