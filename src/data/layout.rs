//! Which columns hold the subject and the text, and how a row becomes a prompt.
//!
//! Subject: `--subject-column` if given, else the first of `subject`, `category`, `domain`,
//! `topic` present (`category` first for the MMLU-Pro layout). Text: `--text-column` if given
//! (used as it is; a cell holding a list of message objects is read as a conversation), else a
//! conversation column — `messages`, `conversations`, `conversation` (see `chat.rs`) —, else
//! the multiple-choice layouts — `question` + `options` (MMLU-Pro) or `question` + `choices`
//! (MMLU) — formatted by [`format_multiple_choice`], else the first of `text`, `prompt`,
//! `question`. A conversation column wins over text columns beside it (UltraChat and No Robots
//! carry both `prompt` and `messages`; the conversation is the training example). Default names
//! match case-insensitively (an exact match wins); names given with a flag must match exactly,
//! or case-insensitively if that picks one column.

use std::path::Path;

use super::chat::{self, CONVERSATION_DEFAULTS};
use super::error::{DataError, Location};
use super::row::{Cell, RawRow};
use super::{DataOptions, Prompt};

const SUBJECT_DEFAULTS: [&str; 4] = ["subject", "category", "domain", "topic"];
const MMLU_PRO_SUBJECT_DEFAULTS: [&str; 4] = ["category", "subject", "domain", "topic"];
const TEXT_DEFAULTS: [&str; 3] = ["text", "prompt", "question"];

/// MMLU-Pro pads some option lists with this placeholder; its own evaluation drops it.
const PLACEHOLDER_OPTION: &str = "N/A";

/// Formats a multiple-choice item as one prompt: the question (trailing whitespace removed),
/// then one line per option, lettered from `A`: `"{question}\nA. {option}\nB. {option}…"`.
/// Options are trimmed; no trailing newline and no "Answer:" cue is added. Callers pass at most
/// 26 options.
pub fn format_multiple_choice(question: &str, options: &[String]) -> String {
    let mut out = question.trim_end().to_string();
    for (letter, option) in (b'A'..=b'Z').zip(options) {
        out.push('\n');
        out.push(letter as char);
        out.push_str(". ");
        out.push_str(option.trim());
    }
    out
}

/// Where a prompt's text comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TextPlan {
    /// One column, used as it is.
    Column(String),
    /// A question column and a list-of-options column, formatted by
    /// [`format_multiple_choice`].
    MultipleChoice { question: String, options: String },
    /// A column holding each row's conversation (a list of messages).
    Conversation(String),
}

/// Where a row's subject comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SubjectPlan {
    /// A column.
    Column(String),
    /// No subject column (allowed where subjects are optional): every row gets this label,
    /// the file's name.
    Fixed(String),
}

/// The resolved column choice for one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    pub subject: SubjectPlan,
    pub text: TextPlan,
}

/// Finds a column by name: exact match first, then a case-insensitive one.
fn find_default<'a>(columns: &'a [String], name: &str) -> Option<&'a String> {
    columns
        .iter()
        .find(|c| *c == name)
        .or_else(|| columns.iter().find(|c| c.eq_ignore_ascii_case(name)))
}

/// Finds a column named with a flag: exact, or case-insensitive if exactly one column matches.
fn find_named(
    path: &Path,
    columns: &[String],
    name: &str,
    flag: &'static str,
) -> Result<String, DataError> {
    if let Some(c) = columns.iter().find(|c| *c == name) {
        return Ok(c.clone());
    }
    let folded: Vec<&String> = columns
        .iter()
        .filter(|c| c.eq_ignore_ascii_case(name))
        .collect();
    match folded.as_slice() {
        [only] => Ok((*only).clone()),
        _ => Err(DataError::MissingColumn {
            path: path.to_path_buf(),
            column: name.to_string(),
            flag,
            available: columns.to_vec(),
        }),
    }
}

/// Picks the subject and text columns for a file with these columns.
pub(crate) fn resolve(
    path: &Path,
    columns: &[String],
    opts: &DataOptions,
) -> Result<Plan, DataError> {
    let conversation = match &opts.text_column {
        None => CONVERSATION_DEFAULTS
            .iter()
            .find_map(|d| find_default(columns, d)),
        Some(_) => None,
    };
    let question = find_default(columns, "question");
    let multiple_choice = match (&opts.text_column, question, conversation) {
        (None, Some(q), None) => find_default(columns, "options")
            .map(|o| (q, o, true))
            .or_else(|| find_default(columns, "choices").map(|o| (q, o, false))),
        _ => None,
    };
    let is_mmlu_pro = matches!(multiple_choice, Some((_, _, true)));

    let subject = match &opts.subject_column {
        Some(name) => SubjectPlan::Column(find_named(path, columns, name, "--subject-column")?),
        None => {
            let defaults = if is_mmlu_pro {
                MMLU_PRO_SUBJECT_DEFAULTS
            } else {
                SUBJECT_DEFAULTS
            };
            match defaults.iter().find_map(|d| find_default(columns, d)) {
                Some(c) => SubjectPlan::Column(c.clone()),
                None if opts.subject_optional => SubjectPlan::Fixed(
                    path.file_stem()
                        .map_or_else(|| "all".into(), |s| s.to_string_lossy().into_owned()),
                ),
                None => {
                    return Err(DataError::NoSubjectColumn {
                        path: path.to_path_buf(),
                        available: columns.to_vec(),
                    });
                }
            }
        }
    };

    let text = match (&opts.text_column, conversation, multiple_choice) {
        (Some(name), _, _) => TextPlan::Column(find_named(path, columns, name, "--text-column")?),
        (None, Some(c), _) => TextPlan::Conversation(c.clone()),
        (None, None, Some((q, o, _))) => TextPlan::MultipleChoice {
            question: q.clone(),
            options: o.clone(),
        },
        (None, None, None) => TEXT_DEFAULTS
            .iter()
            .find_map(|d| find_default(columns, d))
            .map(|c| TextPlan::Column(c.clone()))
            .ok_or_else(|| DataError::NoTextColumn {
                path: path.to_path_buf(),
                available: columns.to_vec(),
            })?,
    };
    Ok(Plan { subject, text })
}

impl Plan {
    /// The columns a row must carry, in the order [`Plan::to_prompt`] reads them.
    pub(crate) fn columns(&self) -> Vec<&str> {
        let mut out: Vec<&str> = match &self.subject {
            SubjectPlan::Column(c) => vec![c],
            SubjectPlan::Fixed(_) => Vec::new(),
        };
        match &self.text {
            TextPlan::Column(t) | TextPlan::Conversation(t) => out.push(t),
            TextPlan::MultipleChoice { question, options } => {
                out.extend([question.as_str(), options.as_str()]);
            }
        }
        out
    }

    /// Builds the prompt of one row (cells in [`Plan::columns`] order).
    pub(crate) fn to_prompt(&self, path: &Path, row: &RawRow) -> Result<Prompt, DataError> {
        let location = row.location;
        let (subject, first_text) = match &self.subject {
            SubjectPlan::Fixed(label) => (label.clone(), 0),
            SubjectPlan::Column(column) => {
                let first = row.cells.first().unwrap_or(&Cell::Null);
                match scalar(path, location, column, first, "a subject label")? {
                    Some(s) if !s.trim().is_empty() => (s.trim().to_string(), 1),
                    _ => {
                        return Err(DataError::EmptySubject {
                            path: path.to_path_buf(),
                            location,
                            column: column.clone(),
                        });
                    }
                }
            }
        };
        let cell = |i: usize| row.cells.get(first_text + i - 1).unwrap_or(&Cell::Null);

        let (text, text_column) = match &self.text {
            TextPlan::Conversation(column) => {
                return conversation_prompt(path, location, column, cell(1), subject);
            }
            TextPlan::Column(column) if holds_messages(cell(1)) => {
                return conversation_prompt(path, location, column, cell(1), subject);
            }
            TextPlan::Column(column) => (
                scalar(path, location, column, cell(1), "prompt text")?.unwrap_or_default(),
                column,
            ),
            TextPlan::MultipleChoice { question, options } => {
                let q =
                    scalar(path, location, question, cell(1), "question text")?.unwrap_or_default();
                if q.trim().is_empty() {
                    (q, question)
                } else {
                    let opts = option_list(path, location, options, cell(2))?;
                    (format_multiple_choice(&q, &opts), question)
                }
            }
        };
        if text.trim().is_empty() {
            return Err(DataError::EmptyText {
                path: path.to_path_buf(),
                location,
                column: Some(text_column.clone()),
            });
        }
        Ok(Prompt::plain(subject, text))
    }
}

/// Whether a cell is a non-empty list of objects: a conversation, even in a column named as
/// text.
fn holds_messages(cell: &Cell) -> bool {
    matches!(cell, Cell::List(items)
        if !items.is_empty() && items.iter().all(|i| matches!(i, Cell::Map(_))))
}

/// The prompt of a conversation cell; a conversation whose every message is empty is an empty
/// prompt.
fn conversation_prompt(
    path: &Path,
    location: Location,
    column: &str,
    cell: &Cell,
    subject: String,
) -> Result<Prompt, DataError> {
    let messages = chat::conversation(path, location, column, cell)?;
    if messages.iter().all(|m| m.content.trim().is_empty()) {
        return Err(DataError::EmptyText {
            path: path.to_path_buf(),
            location,
            column: Some(column.to_string()),
        });
    }
    Ok(Prompt::conversation(subject, messages))
}

/// A cell as text: `None` for null, an object as JSON, an error for a list.
fn scalar(
    path: &Path,
    location: Location,
    column: &str,
    cell: &Cell,
    expected: &'static str,
) -> Result<Option<String>, DataError> {
    match cell {
        Cell::Null => Ok(None),
        Cell::Text(s) | Cell::Other(s) => Ok(Some(s.clone())),
        Cell::Map(_) => Ok(Some(cell.render())),
        Cell::List(_) => Err(DataError::WrongType {
            path: path.to_path_buf(),
            location,
            column: column.to_string(),
            expected,
            found: cell.kind(),
        }),
    }
}

/// The options of a multiple-choice row, placeholders (`N/A`, null) dropped. A text cell (CSV)
/// is parsed as a JSON array or a Python/NumPy list literal.
fn option_list(
    path: &Path,
    location: Location,
    column: &str,
    cell: &Cell,
) -> Result<Vec<String>, DataError> {
    let wrong = || DataError::WrongType {
        path: path.to_path_buf(),
        location,
        column: column.to_string(),
        expected: "a list of answer options (e.g. [\"first\", \"second\"])",
        found: cell.kind(),
    };
    let items: Vec<Option<String>> = match cell {
        Cell::List(items) => items
            .iter()
            .map(|item| match item {
                Cell::Null => Ok(None),
                Cell::Text(s) | Cell::Other(s) => Ok(Some(s.clone())),
                Cell::Map(_) => Ok(Some(item.render())),
                Cell::List(_) => Err(wrong()),
            })
            .collect::<Result<_, _>>()?,
        Cell::Text(s) => parse_list_literal(s).ok_or_else(wrong)?,
        Cell::Null | Cell::Other(_) | Cell::Map(_) => return Err(wrong()),
    };
    let options = without_placeholders(items);
    if options.len() > 26 {
        return Err(DataError::TooManyOptions {
            path: path.to_path_buf(),
            location,
            column: column.to_string(),
            count: options.len(),
        });
    }
    Ok(options)
}

/// The options of a multiple-choice item, placeholders (`N/A`, null) dropped.
fn without_placeholders(items: Vec<Option<String>>) -> Vec<String> {
    items
        .into_iter()
        .flatten()
        .filter(|o| o.trim() != PLACEHOLDER_OPTION)
        .collect()
}

/// The options of a multiple-choice item written as text (a JSON array, or a Python / NumPy
/// list literal), placeholders (`N/A`, null) dropped exactly as prompt building drops them;
/// `None` when the text is not a list.
pub fn multiple_choice_options(text: &str) -> Option<Vec<String>> {
    parse_list_literal(text).map(without_placeholders)
}

/// The number of options in a prompt [`format_multiple_choice`] wrote: consecutive `\nA. `,
/// `\nB. `, … lines.
pub fn count_lettered_options(prompt: &str) -> usize {
    (b'A'..=b'Z')
        .take_while(|&letter| prompt.contains(&format!("\n{}. ", letter as char)))
        .count()
}

/// Parses a list written as text: a JSON array (strings, numbers, nulls), or a Python list
/// literal of quoted strings as pandas writes list columns (`['a', "b's"]`), also without
/// commas as NumPy prints arrays (`['a' 'b']`).
pub(crate) fn parse_list_literal(s: &str) -> Option<Vec<Option<String>>> {
    let s = s.trim();
    if !(s.starts_with('[') && s.ends_with(']')) {
        return None;
    }
    if let Ok(values) = serde_json::from_str::<Vec<serde_json::Value>>(s) {
        return values
            .into_iter()
            .map(|v| match v {
                serde_json::Value::Null => Some(None),
                serde_json::Value::String(s) => Some(Some(s)),
                serde_json::Value::Number(n) => Some(Some(n.to_string())),
                serde_json::Value::Bool(b) => Some(Some(b.to_string())),
                _ => None,
            })
            .collect();
    }
    parse_python_list(&s[1..s.len() - 1])
}

fn parse_python_list(inner: &str) -> Option<Vec<Option<String>>> {
    let mut items = Vec::new();
    let mut chars = inner.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let Some(quote) = chars.next() else {
            return Some(items);
        };
        if quote != '\'' && quote != '"' {
            return None;
        }
        let mut item = String::new();
        loop {
            match chars.next()? {
                c if c == quote => break,
                '\\' => match chars.next()? {
                    'n' => item.push('\n'),
                    't' => item.push('\t'),
                    'r' => item.push('\r'),
                    '0' => item.push('\0'),
                    'x' => item.push(hex_char(&mut chars, 2)?),
                    'u' => item.push(hex_char(&mut chars, 4)?),
                    'U' => item.push(hex_char(&mut chars, 8)?),
                    '\n' => {}
                    c @ ('\\' | '\'' | '"') => item.push(c),
                    other => {
                        item.push('\\');
                        item.push(other);
                    }
                },
                c => item.push(c),
            }
        }
        items.push(Some(item));
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
}

fn hex_char(chars: &mut impl Iterator<Item = char>, digits: usize) -> Option<char> {
    let hex: String = chars.take(digits).collect();
    if hex.len() != digits {
        return None;
    }
    char::from_u32(u32::from_str_radix(&hex, 16).ok()?)
}
