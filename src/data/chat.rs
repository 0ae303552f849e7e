//! Conversations: the chat records of fine-tuning datasets (TRL's and HF datasets'
//! "conversational" layout) read from one cell, and their plain rendering.
//!
//! A conversation cell is a list of messages, each an object with a `role` and a `content`
//! (`{"role": "user", "content": "Hi"}`), or ShareGPT's `from` and `value` (`{"from": "human",
//! "value": "Hi"}`, roles mapped `human` → `user`, `gpt` → `assistant`, `system` → `system`;
//! other names kept as they are). JSON Lines and JSON arrays hold it as an array of objects,
//! Parquet as a list-of-struct column, CSV as the array written as JSON text.
//!
//! A `content` is text, or a list of parts as multimodal datasets write it: `{"type": "text",
//! "text": ...}` parts are joined with nothing between them (as multimodal chat templates
//! concatenate them); any other part (an image, audio) is refused, since only text can be
//! tokenised. Anything else (not a list, an empty list, a message without a role or content, a
//! number as content) is a [`DataError::BadConversation`] naming the file, the line or row, the
//! column and the message.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::error::{DataError, Location};
use super::jsonl::cell_from_json;
use super::row::Cell;

/// Column names recognised as holding a conversation, in priority order (matched like the
/// other default names: exactly first, then case-insensitively).
pub(crate) const CONVERSATION_DEFAULTS: [&str; 3] = ["messages", "conversations", "conversation"];

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant`, or whatever role name the dataset uses.
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// The plain layout of a conversation: one `"<role>: <content>"` line per message, joined by
/// newlines (a multi-line content keeps its newlines). It is a conversation's display text, and
/// what a model without a chat template is given.
pub fn render_plain(messages: &[ChatMessage]) -> String {
    messages
        .iter()
        .map(|m| format!("{}: {}", m.role, m.content))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The messages of a conversation cell (see the module docs for what is accepted).
pub(crate) fn conversation(
    path: &Path,
    location: Location,
    column: &str,
    cell: &Cell,
) -> Result<Vec<ChatMessage>, DataError> {
    let bad = |problem: String| DataError::BadConversation {
        path: path.to_path_buf(),
        location,
        column: column.to_string(),
        problem,
    };
    let parsed;
    let items = match cell {
        Cell::List(items) => items,
        Cell::Text(text) if text.trim_start().starts_with('[') => {
            let value: serde_json::Value = serde_json::from_str(text)
                .map_err(|e| bad(format!("the text is not a JSON list of messages: {e}")))?;
            parsed = cell_from_json(&value);
            match &parsed {
                Cell::List(items) => items,
                other => return Err(bad(not_a_list(other))),
            }
        }
        other => return Err(bad(not_a_list(other))),
    };
    if items.is_empty() {
        return Err(bad("empty conversation (the list holds no messages)".into()));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| message(i + 1, item).map_err(&bad))
        .collect()
}

fn not_a_list(cell: &Cell) -> String {
    format!(
        "holds {}, expected a list of messages like [{{\"role\": \"user\", \"content\": \"...\"}}]",
        cell.kind()
    )
}

/// Message `n` (1-based) of a conversation.
fn message(n: usize, item: &Cell) -> Result<ChatMessage, String> {
    let Cell::Map(fields) = item else {
        return Err(format!(
            "message {n} is {}, expected an object with `role` and `content`",
            item.kind()
        ));
    };
    let keys = || {
        let names: Vec<String> = fields.iter().map(|(k, _)| format!("`{k}`")).collect();
        if names.is_empty() {
            "none".to_string()
        } else {
            names.join(", ")
        }
    };
    let (role, from_sharegpt) = match (item.field("role"), item.field("from")) {
        (Some(role), _) => (role, false),
        (None, Some(from)) => (from, true),
        (None, None) => {
            return Err(format!(
                "message {n} has no `role` (nor ShareGPT's `from`); its keys: {}",
                keys()
            ));
        }
    };
    let role = match role {
        Cell::Text(r) if !r.trim().is_empty() => r.trim(),
        other => {
            return Err(format!(
                "message {n}: the role holds {}, expected a name such as \"user\"",
                other.kind()
            ));
        }
    };
    let role = if from_sharegpt {
        sharegpt_role(role)
    } else {
        role.to_string()
    };
    let content = match (item.field("content"), item.field("value")) {
        (Some(content), _) => content,
        (None, Some(value)) => value,
        (None, None) => {
            return Err(format!(
                "message {n} ({role}) has no `content` (nor ShareGPT's `value`); its keys: {}",
                keys()
            ));
        }
    };
    let content = content_text(n, &role, content)?;
    Ok(ChatMessage { role, content })
}

/// ShareGPT's speaker names as chat roles.
fn sharegpt_role(from: &str) -> String {
    match from {
        "human" => "user",
        "gpt" => "assistant",
        "system" => "system",
        other => other,
    }
    .to_string()
}

/// A message's content as text: a string, or the text parts of a list of parts.
fn content_text(n: usize, role: &str, content: &Cell) -> Result<String, String> {
    let expected = "expected text or a list of {\"type\": \"text\", \"text\": ...} parts";
    let parts = match content {
        Cell::Text(text) => return Ok(text.clone()),
        Cell::List(parts) => parts,
        other => {
            return Err(format!(
                "message {n} ({role}): the content holds {}, {expected}",
                other.kind()
            ));
        }
    };
    let mut text = String::new();
    for (j, part) in parts.iter().enumerate() {
        let at = || format!("message {n} ({role}): content part {}", j + 1);
        if !matches!(part, Cell::Map(_)) {
            return Err(format!("{} is {}, {expected}", at(), part.kind()));
        }
        match part.field("type") {
            None | Some(Cell::Null) => {}
            Some(Cell::Text(t)) if t == "text" => {}
            Some(other) => {
                let kind = match other {
                    Cell::Text(t) => format!("`{t}`"),
                    other => other.kind(),
                };
                return Err(format!(
                    "{} is of type {kind}; only text parts ({{\"type\": \"text\", \"text\": ...}}) \
                     can be tokenised",
                    at()
                ));
            }
        }
        match part.field("text") {
            Some(Cell::Text(t)) => text.push_str(t),
            Some(other) => {
                return Err(format!(
                    "{}: `text` holds {}, expected text",
                    at(),
                    other.kind()
                ));
            }
            None => return Err(format!("{} has no `text`", at())),
        }
    }
    Ok(text)
}
