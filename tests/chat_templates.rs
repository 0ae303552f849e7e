//! MoEScope's chat-template rendering against transformers' `apply_chat_template`
//! (tests/fixtures/make_chat_templates.py): the same templates and conversations must give the
//! same text, character for character, and a template that raises must fail with its message.

use std::path::Path;

use moescope::data::ChatMessage;
use moescope::model::chat_template::{ChatTemplate, SpecialTokens};
use serde_json::Value;

fn fixture() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/chat_templates/chat_templates.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

#[test]
fn renderings_equal_transformers_apply_chat_template() {
    let fixture = fixture();
    let cases = fixture["cases"].as_array().unwrap();
    assert!(cases.len() >= 20, "{} cases", cases.len());
    let mut raising = 0;
    for case in cases {
        let label = format!(
            "{} / {}",
            case["template_name"].as_str().unwrap(),
            case["conversation_name"].as_str().unwrap()
        );
        let template = ChatTemplate::compile(
            case["template"].as_str().unwrap(),
            SpecialTokens::from_tokenizer_config(&case["special_tokens"]),
            label.clone(),
        )
        .unwrap_or_else(|e| panic!("{label}: {e}"));
        let messages: Vec<ChatMessage> = case["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| ChatMessage::new(m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
            .collect();
        let rendered = template.render(&messages);
        match (case.get("rendered"), case.get("error")) {
            (Some(want), _) => {
                let got = rendered.unwrap_or_else(|e| panic!("{label}: {e}"));
                assert_eq!(got, want.as_str().unwrap(), "{label}");
            }
            (None, Some(message)) => {
                raising += 1;
                let err = rendered
                    .expect_err(&format!("{label}: transformers raised, MoEScope rendered"))
                    .to_string();
                assert!(
                    err.contains(message.as_str().unwrap()),
                    "{label}: {err} (transformers: {message})"
                );
            }
            (None, None) => panic!("{label}: neither a rendering nor an error"),
        }
    }
    assert!(raising >= 1, "the fixture should hold a raising template");
}
