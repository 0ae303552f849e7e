//! A prompt set in memory: subject-labelled prompts in file order, and the options a dataset
//! is read with.

use serde::{Deserialize, Serialize};

use super::chat::{ChatMessage, render_plain};

/// One prompt and the subject it belongs to: plain text, or a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prompt {
    pub subject: String,
    /// The prompt's text; for a conversation its plain rendering ([`render_plain`]), for
    /// display. A model is given a conversation rendered with its own chat template
    /// (`crate::model::chat_template`), not this text.
    pub text: String,
    /// The messages, when the row is a conversation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages: Option<Vec<ChatMessage>>,
}

impl Prompt {
    /// A plain-text prompt.
    pub fn plain(subject: impl Into<String>, text: impl Into<String>) -> Self {
        Self {
            subject: subject.into(),
            text: text.into(),
            messages: None,
        }
    }

    /// A conversation; its text is the plain rendering of the messages.
    pub fn conversation(subject: impl Into<String>, messages: Vec<ChatMessage>) -> Self {
        Self {
            subject: subject.into(),
            text: render_plain(&messages),
            messages: Some(messages),
        }
    }
}

/// Prompts in file order, with where they came from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromptSet {
    pub prompts: Vec<Prompt>,
    /// The file or folder the prompts were read from, as the user gave it.
    pub source: String,
}

impl PromptSet {
    /// Number of prompts.
    pub fn len(&self) -> usize {
        self.prompts.len()
    }

    /// True when there are no prompts.
    pub fn is_empty(&self) -> bool {
        self.prompts.is_empty()
    }

    /// Whether any prompt is a conversation (and so is rendered with a chat template).
    pub fn has_conversations(&self) -> bool {
        self.prompts.iter().any(|p| p.messages.is_some())
    }

    /// Subject names in first-seen order.
    pub fn subjects(&self) -> Vec<String> {
        self.counts().into_iter().map(|(s, _)| s).collect()
    }

    /// Prompts per subject, subjects in first-seen order.
    pub fn counts(&self) -> Vec<(String, usize)> {
        let mut counts: Vec<(String, usize)> = Vec::new();
        for p in &self.prompts {
            match counts.iter_mut().find(|(s, _)| *s == p.subject) {
                Some((_, n)) => *n += 1,
                None => counts.push((p.subject.clone(), 1)),
            }
        }
        counts
    }

    /// The prompts of one subject, in order.
    pub fn prompts_for<'a>(&'a self, subject: &'a str) -> impl Iterator<Item = &'a Prompt> + 'a {
        self.prompts.iter().filter(move |p| p.subject == subject)
    }

    /// Keeps the first `n` prompts of each subject, preserving the overall order.
    pub fn limit_per_subject(&mut self, n: usize) {
        let mut kept: Vec<(String, usize)> = Vec::new();
        self.prompts
            .retain(|p| match kept.iter_mut().find(|(s, _)| *s == p.subject) {
                Some((_, k)) if *k >= n => false,
                Some((_, k)) => {
                    *k += 1;
                    true
                }
                None => {
                    kept.push((p.subject.clone(), 1));
                    n > 0
                }
            });
    }
}

/// How to read a dataset: column overrides (the CLI's `--subject-column`, `--text-column`)
/// and a per-subject cap (`--max-per-subject`, must be at least 1).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataOptions {
    pub subject_column: Option<String>,
    /// A file without a subject column is read with every row under one subject, the file's
    /// name (training text needs no subjects); otherwise that is an error.
    #[serde(default)]
    pub subject_optional: bool,
    pub text_column: Option<String>,
    pub max_per_subject: Option<usize>,
}
