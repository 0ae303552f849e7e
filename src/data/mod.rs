//! Prompt sets: subject-labelled prompts for profiling (and later training and evaluation).
//!
//! This module owns reading prompts from disk and nothing else (no tokenising, no model):
//!
//! - [`load_prompts`] reads a dataset file, picking the format from the extension:
//!   `.jsonl` / `.json` / `.ndjson` (JSON Lines of objects; a `.json` holding one array of
//!   objects also works), `.csv` / `.tsv` (header row), `.parquet` (row API, uncompressed or
//!   snappy pages), `.txt` (one prompt per line, subject = file stem) or a folder of
//!   `<subject>.txt` files (see [`load_prompt_dir`]).
//! - Column choice (see `layout.rs`): `--subject-column` / `--text-column` win; otherwise the
//!   subject comes from `subject` | `category` | `domain` | `topic` and the text from a
//!   conversation column, else the multiple-choice layouts, else `text` | `prompt` |
//!   `question`.
//! - Conversations (see `chat.rs`): a `messages` column (TRL's conversational layout: a list of
//!   `{"role", "content"}` objects; a Parquet list-of-struct column), or ShareGPT's
//!   `conversations` / `conversation` (`{"from", "value"}`, `human` → `user`, `gpt` →
//!   `assistant`) become a [`Prompt`] with [`Prompt::messages`] set and, as its text, the plain
//!   `"role: content"` lines of [`render_plain`]. Rendering a conversation with a model's chat
//!   template is the model's business (`crate::model::chat_template`), not this module's.
//! - The MMLU-Pro layout (`question`, `options`, `category`) and the
//!   MMLU layout (`question`, `choices`, `subject`) are recognised without flags; their prompt
//!   is the question followed by the lettered options, one per line, exactly as
//!   [`format_multiple_choice`] writes it:
//!
//!   ```text
//!   What is 2 + 3?
//!   A. 4
//!   B. 5
//!   C. 6
//!   ```
//!
//!   (question with trailing whitespace removed, options trimmed, MMLU-Pro's `N/A` padding
//!   and null options dropped, no trailing newline, no "Answer:" cue). Naming a text column
//!   explicitly turns this off: `--text-column question` gives the bare question.
//! - [`dataset_columns`] and [`preview`] let the GUI's data panel show a file before choosing
//!   columns.
//!
//! Every failure is a [`DataError`] naming the file, the problem and, where it applies, the
//! line (JSON Lines, CSV, `.txt`) or row (Parquet, JSON arrays). Empty prompt text, an empty
//! subject, non-UTF-8 bytes and a dataset with zero rows are errors, never skipped silently.

mod chat;
mod csv_table;
mod error;
mod jsonl;
mod layout;
mod parquet_table;
mod prompt_dir;
mod prompts;
mod read;
mod row;
mod table;

#[cfg(test)]
mod tests;

pub use chat::{ChatMessage, render_plain};
pub use error::{DataError, Location};
pub use layout::{count_lettered_options, format_multiple_choice, multiple_choice_options};
pub use prompt_dir::{decode_prompt_line, encode_prompt_line, load_prompt_dir};
pub use prompts::{DataOptions, Prompt, PromptSet};
pub use read::{dataset_columns, load_prompts, preview};
