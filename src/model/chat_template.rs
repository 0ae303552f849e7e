//! A model's chat template: turning a conversation into the text the model was tuned on, and
//! tokenising a prompt (plain text or conversation) the way the model sees it.
//!
//! Where the template comes from:
//! - an HF folder (or hub snapshot): `chat_template.jinja` beside `tokenizer.json` when there
//!   is one (transformers ≥ 4.43 saves the template there), else `tokenizer_config.json`'s
//!   `chat_template` — a Jinja string, or a list of `{name, template}` of which the one named
//!   `default` is taken. The special tokens (`bos_token`, `eos_token`, `unk_token`,
//!   `pad_token`) come from `tokenizer_config.json`, each a string or an added-token object
//!   `{"content": ...}`;
//! - a GGUF file: its `tokenizer.chat_template` metadata, the special tokens' texts looked up
//!   by their ids (else the HF files beside the GGUF file, as for its tokenizer).
//!
//! Rendering follows transformers' `apply_chat_template` (with MiniJinja): `trim_blocks` and
//! `lstrip_blocks` on, the loop controls (`break`, `continue`), a `raise_exception(message)`
//! function, and Python's string, dict and list methods (`.strip()`, `.startswith()`,
//! `.items()`, …). The context is `messages` (a list of `{role, content}`), the special tokens
//! the model has, `tools` and `documents` as none, and `add_generation_prompt = false` (the
//! conversation is complete: it is trained on or profiled, not continued). Renderings are
//! checked against transformers' own in `tests/chat_templates.rs`. `{% generation %}` blocks (transformers' assistant
//! mask marker) render as their body. There is no `strftime_now`: templates that ask for it
//! (Llama 3) fall back to their fixed date, so a rendering does not depend on the day.
//!
//! A model without a template (the test fixtures, the demo model) gets the plain layout of
//! [`render_plain`]: one `"<role>: <content>"` line per message, joined by newlines;
//! [`ChatTemplate::conversation_note`] says so, for the commands to print once. A template
//! that cannot be read or compiled does not stop the model from loading (plain prompts need
//! none): it is reported when a conversation needs it.
//!
//! Special tokens: a rendered conversation that begins with the BOS token's text is tokenised
//! without adding special tokens (the template wrote them, and a second BOS would be added
//! otherwise); any other text is tokenised as plain prompts are, special tokens as the
//! tokenizer adds them.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use minijinja::syntax::SyntaxConfig;
use minijinja::{Environment, ErrorKind, Value};
use tokenizers::Tokenizer;

use super::error::{ModelError, Result};
use super::gguf;
use crate::data::{ChatMessage, Prompt, render_plain};

/// The name the template is registered under in its environment (and that errors show).
const TEMPLATE_NAME: &str = "chat_template";

/// The special tokens a template may use, as text (`None` when the model has none).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpecialTokens {
    pub bos: Option<String>,
    pub eos: Option<String>,
    pub unk: Option<String>,
    pub pad: Option<String>,
}

impl SpecialTokens {
    /// The tokens named in a `tokenizer_config.json` (a string, or `{"content": ...}`).
    pub fn from_tokenizer_config(config: &serde_json::Value) -> Self {
        let token = |key: &str| match config.get(key)? {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
            _ => None,
        };
        Self {
            bos: token("bos_token"),
            eos: token("eos_token"),
            unk: token("unk_token"),
            pad: token("pad_token"),
        }
    }

    /// The tokens a GGUF file's metadata names by id.
    fn from_gguf(metadata: &BTreeMap<String, gguf::Value>) -> Self {
        let vocab = metadata
            .get("tokenizer.ggml.tokens")
            .and_then(gguf::Value::as_array);
        let token = |key: &str| {
            let id = metadata.get(key)?.as_u64()?;
            let text = vocab?.get(usize::try_from(id).ok()?)?.as_str()?;
            Some(text.to_string())
        };
        Self {
            bos: token("tokenizer.ggml.bos_token_id"),
            eos: token("tokenizer.ggml.eos_token_id"),
            unk: token("tokenizer.ggml.unknown_token_id"),
            pad: token("tokenizer.ggml.padding_token_id"),
        }
    }
}

/// How a model turns conversations into text: its Jinja chat template, or the plain layout
/// when it has none.
#[derive(Clone, Default)]
pub struct ChatTemplate {
    state: State,
    tokens: SpecialTokens,
}

#[derive(Clone, Default)]
enum State {
    /// No template: conversations are rendered in the plain layout.
    #[default]
    Missing,
    Ready {
        env: Arc<Environment<'static>>,
        /// Where the template was read from.
        origin: String,
    },
    /// A template that cannot be used, and why.
    Unusable { origin: String, reason: String },
}

impl fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("ChatTemplate");
        match &self.state {
            State::Missing => d.field("template", &"none (plain layout)"),
            State::Ready { origin, .. } => d.field("template", origin),
            State::Unusable { origin, reason } => {
                d.field("template", origin).field("unusable", reason)
            }
        };
        d.field("tokens", &self.tokens).finish()
    }
}

impl ChatTemplate {
    /// No template: conversations are rendered in the plain layout.
    pub fn none() -> Self {
        Self::default()
    }

    /// Compiles a Jinja template; `origin` names where it came from in errors.
    pub fn compile(source: &str, tokens: SpecialTokens, origin: impl Into<String>) -> Result<Self> {
        let origin = origin.into();
        let env = environment(source).map_err(|e| {
            ModelError::msg(format!(
                "{origin}: the chat template cannot be compiled: {e}"
            ))
        })?;
        Ok(Self {
            state: State::Ready {
                env: Arc::new(env),
                origin,
            },
            tokens,
        })
    }

    /// [`ChatTemplate::compile`], keeping a failure to report when a conversation needs the
    /// template.
    fn compile_or_keep_error(source: &str, tokens: SpecialTokens, origin: String) -> Self {
        match Self::compile(source, tokens.clone(), origin.clone()) {
            Ok(t) => t,
            Err(e) => Self::unusable(origin, e.to_string(), tokens),
        }
    }

    fn unusable(origin: String, reason: String, tokens: SpecialTokens) -> Self {
        Self {
            state: State::Unusable { origin, reason },
            tokens,
        }
    }

    /// The template of the HF files beside `tokenizer_json`: `chat_template.jinja`, else
    /// `tokenizer_config.json`'s `chat_template`; none when neither is there.
    pub fn beside_tokenizer(tokenizer_json: &Path) -> Self {
        let dir = tokenizer_json.parent().unwrap_or(Path::new("."));
        let config_path = dir.join("tokenizer_config.json");
        let jinja_path = dir.join("chat_template.jinja");
        let config = match read_json(&config_path) {
            Ok(c) => c,
            Err(reason) => {
                return Self::unusable(
                    config_path.display().to_string(),
                    reason,
                    SpecialTokens::default(),
                );
            }
        };
        let tokens = config
            .as_ref()
            .map(SpecialTokens::from_tokenizer_config)
            .unwrap_or_default();
        if jinja_path.is_file() {
            let origin = jinja_path.display().to_string();
            return match std::fs::read_to_string(&jinja_path) {
                Ok(source) => Self::compile_or_keep_error(&source, tokens, origin),
                Err(e) => Self::unusable(origin, format!("cannot read: {e}"), tokens),
            };
        }
        let Some(value) = config
            .as_ref()
            .and_then(|c| c.get("chat_template"))
            .filter(|v| !v.is_null())
        else {
            return Self {
                state: State::Missing,
                tokens,
            };
        };
        let origin = format!("{} (chat_template)", config_path.display());
        match template_in_config(value) {
            Ok(source) => Self::compile_or_keep_error(source, tokens, origin),
            Err(reason) => Self::unusable(origin, reason, tokens),
        }
    }

    /// The template of a GGUF file's metadata (`tokenizer.chat_template`); `None` when the
    /// metadata has none.
    pub fn from_gguf_metadata(
        metadata: &BTreeMap<String, gguf::Value>,
        file: &Path,
    ) -> Option<Self> {
        let key = "tokenizer.chat_template";
        let tokens = SpecialTokens::from_gguf(metadata);
        let origin = format!("{} ({key})", file.display());
        Some(match metadata.get(key)? {
            gguf::Value::String(source) => Self::compile_or_keep_error(source, tokens, origin),
            other => Self::unusable(
                origin,
                format!("expected a string, found {}", other.describe()),
                tokens,
            ),
        })
    }

    /// Whether the model has a template of its own (usable or not).
    pub fn has_template(&self) -> bool {
        !matches!(self.state, State::Missing)
    }

    /// The special tokens the template is given.
    pub fn special_tokens(&self) -> &SpecialTokens {
        &self.tokens
    }

    /// One line saying how conversations reach the model, for a command to print once when
    /// its data holds conversations.
    pub fn conversation_note(&self) -> String {
        match &self.state {
            State::Missing => "note: the model has no chat template (no chat_template.jinja, no \
                 chat_template in tokenizer_config.json); conversations are given to it as plain \
                 \"role: content\" lines, one per message"
                .to_string(),
            State::Ready { origin, .. } => {
                format!("conversations are rendered with the chat template of {origin}")
            }
            State::Unusable { origin, reason } => format!(
                "note: the chat template of {origin} cannot be used ({reason}); conversations \
                 cannot be rendered"
            ),
        }
    }

    /// The text of a conversation: the template rendered with `add_generation_prompt = false`,
    /// or the plain layout when the model has no template.
    pub fn render(&self, messages: &[ChatMessage]) -> Result<String> {
        let (env, origin) = match &self.state {
            State::Missing => return Ok(render_plain(messages)),
            State::Unusable { origin, reason } => {
                return Err(ModelError::msg(format!(
                    "{origin}: the chat template cannot be used: {reason}"
                )));
            }
            State::Ready { env, origin } => (env, origin),
        };
        let fail = |e: minijinja::Error| {
            ModelError::msg(format!("{origin}: the chat template failed: {e}"))
        };
        let template = env.get_template(TEMPLATE_NAME).map_err(fail)?;
        let messages: Vec<Value> = messages
            .iter()
            .map(|m| {
                let message: BTreeMap<&'static str, Value> = BTreeMap::from([
                    ("role", Value::from(m.role.as_str())),
                    ("content", Value::from(m.content.as_str())),
                ]);
                Value::from(message)
            })
            .collect();
        // transformers passes `tools` and `documents` as None when there are none (so
        // `tools is not none` is false, as it would not be for an undefined name).
        let mut context: BTreeMap<&'static str, Value> = BTreeMap::from([
            ("messages", Value::from(messages)),
            ("add_generation_prompt", Value::from(false)),
            ("tools", Value::from(())),
            ("documents", Value::from(())),
        ]);
        let tokens = [
            ("bos_token", &self.tokens.bos),
            ("eos_token", &self.tokens.eos),
            ("unk_token", &self.tokens.unk),
            ("pad_token", &self.tokens.pad),
        ];
        for (name, token) in tokens {
            if let Some(t) = token {
                context.insert(name, Value::from(t.as_str()));
            }
        }
        template.render(Value::from(context)).map_err(fail)
    }

    /// Tokenises a prompt as the model sees it: plain text as it is, a conversation rendered by
    /// [`ChatTemplate::render`] (without adding special tokens when the rendering already
    /// begins with the BOS token).
    pub fn encode_prompt(&self, tokenizer: &Tokenizer, prompt: &Prompt) -> Result<Vec<u32>> {
        let Some(messages) = &prompt.messages else {
            return super::tokenize::encode(tokenizer, &prompt.text);
        };
        let text = self.render(messages)?;
        if text.trim().is_empty() {
            return Err(ModelError::msg(
                "the chat template rendered the conversation as empty text",
            ));
        }
        let add_special_tokens = !self.starts_with_bos(&text);
        let enc = tokenizer
            .encode(text, add_special_tokens)
            .map_err(|e| ModelError::msg(format!("cannot tokenise: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Whether `text` begins with the BOS token's text.
    fn starts_with_bos(&self, text: &str) -> bool {
        self.tokens
            .bos
            .as_deref()
            .is_some_and(|bos| !bos.is_empty() && text.starts_with(bos))
    }
}

/// A MiniJinja environment set up as transformers sets up Jinja for chat templates, holding
/// `source` as [`TEMPLATE_NAME`].
fn environment(source: &str) -> std::result::Result<Environment<'static>, minijinja::Error> {
    let mut env = Environment::new();
    env.set_syntax(
        SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()?,
    );
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", raise_exception);
    env.add_template_owned(TEMPLATE_NAME, without_generation_tags(source))?;
    Ok(env)
}

/// The template's `raise_exception(message)`: fails the rendering with the message.
fn raise_exception(message: String) -> std::result::Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
}

/// `source` with transformers' `{% generation %}` … `{% endgeneration %}` tags turned into
/// `{% if true %}` … `{% endif %}` (the block renders as its body; whitespace control kept).
fn without_generation_tags(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(start) = rest.find("{%") {
        let Some(len) = rest[start..].find("%}") else {
            break;
        };
        let tag = &rest[start..start + len + 2];
        let inner = &tag[2..tag.len() - 2];
        let core = inner.trim_matches(|c: char| c == '-' || c == '+' || c.is_whitespace());
        let replacement = match core {
            "generation" => Some("if true"),
            "endgeneration" => Some("endif"),
            _ => None,
        };
        out.push_str(&rest[..start]);
        match replacement {
            Some(r) => out.push_str(&tag.replacen(core, r, 1)),
            None => out.push_str(tag),
        }
        rest = &rest[start + tag.len()..];
    }
    out.push_str(rest);
    out
}

/// A JSON file, `None` when it does not exist; errors as text.
fn read_json(path: &Path) -> std::result::Result<Option<serde_json::Value>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read: {e}")),
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| format!("not valid JSON: {e}"))
}

/// The template in a `chat_template` value: a string, or the `default` of a list of
/// `{name, template}`.
fn template_in_config(value: &serde_json::Value) -> std::result::Result<&str, String> {
    match value {
        serde_json::Value::String(s) => Ok(s),
        serde_json::Value::Array(items) => {
            let templates: Vec<(&str, &str)> = items
                .iter()
                .filter_map(|item| {
                    Some((item.get("name")?.as_str()?, item.get("template")?.as_str()?))
                })
                .collect();
            templates
                .iter()
                .find(|(name, _)| *name == "default")
                .map(|(_, t)| *t)
                .ok_or_else(|| {
                    let names: Vec<String> =
                        templates.iter().map(|(n, _)| format!("`{n}`")).collect();
                    format!(
                        "lists templates {} but none named `default`",
                        if names.is_empty() {
                            "(none readable)".to_string()
                        } else {
                            names.join(", ")
                        }
                    )
                })
        }
        other => Err(format!(
            "expected a string or a list of {{\"name\", \"template\"}}, found {other}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Qwen2.5's ChatML template, as its tokenizer_config.json has it (tool branches left out).
    const CHATML: &str = "{%- if messages[0]['role'] == 'system' %}\n    {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n{%- else %}\n    {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}\n{%- endif %}\n{%- for message in messages %}\n    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) or (message.role == \"assistant\") %}\n        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n    {%- endif %}\n{%- endfor %}\n{%- if add_generation_prompt %}\n    {{- '<|im_start|>assistant\\n' }}\n{%- endif %}\n";

    fn conversation() -> Vec<ChatMessage> {
        vec![
            ChatMessage::new("system", "Be brief."),
            ChatMessage::new("user", "What is 2 + 3?"),
            ChatMessage::new("assistant", "5"),
        ]
    }

    fn tokens(bos: Option<&str>, eos: Option<&str>) -> SpecialTokens {
        SpecialTokens {
            bos: bos.map(String::from),
            eos: eos.map(String::from),
            ..SpecialTokens::default()
        }
    }

    #[test]
    fn a_chatml_template_renders_exactly() {
        let t = ChatTemplate::compile(CHATML, tokens(None, Some("<|im_end|>")), "qwen").unwrap();
        assert_eq!(
            t.render(&conversation()).unwrap(),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n5<|im_end|>\n"
        );
        // Without a system message the template adds its own.
        let text = t.render(&conversation()[1..]).unwrap();
        assert!(
            text.starts_with("<|im_start|>system\nYou are Qwen"),
            "{text}"
        );
    }

    #[test]
    fn python_methods_tokens_loop_controls_and_generation_blocks() {
        // Trimmed contents, a BOS from the context, `break`, a `{% generation %}` block.
        let source = "{{ bos_token }}{% for m in messages %}{% if m.content.startswith('STOP') %}{% break %}{% endif %}[{{ m.role.upper() }}] {% if m.role == 'assistant' %}{% generation %}{{ m.content.strip() }}{{ eos_token }}{% endgeneration %}{% else %}{{ m.content.strip() }}\n{% endif %}{% endfor %}";
        let t = ChatTemplate::compile(source, tokens(Some("<s>"), Some("</s>")), "t").unwrap();
        let messages = vec![
            ChatMessage::new("user", "  hi  "),
            ChatMessage::new("assistant", " hello "),
            ChatMessage::new("user", "STOP here"),
        ];
        assert_eq!(
            t.render(&messages).unwrap(),
            "<s>[USER] hi\n[ASSISTANT] hello</s>"
        );
    }

    #[test]
    fn raise_exception_fails_with_the_templates_message() {
        let source = "{% if messages[0].role != 'user' %}{{ raise_exception('Conversations must start with a user message') }}{% endif %}ok";
        let t = ChatTemplate::compile(source, SpecialTokens::default(), "strict").unwrap();
        let err = t.render(&conversation()).unwrap_err().to_string();
        assert!(
            err.contains("strict") && err.contains("Conversations must start with a user message"),
            "{err}"
        );
        assert_eq!(t.render(&conversation()[1..]).unwrap(), "ok");
    }

    #[test]
    fn without_a_template_conversations_take_the_plain_layout() {
        let t = ChatTemplate::none();
        assert!(!t.has_template());
        assert_eq!(
            t.render(&conversation()).unwrap(),
            "system: Be brief.\nuser: What is 2 + 3?\nassistant: 5"
        );
        assert!(t.conversation_note().contains("no chat template"));
    }

    #[test]
    fn templates_are_found_beside_the_tokenizer() {
        let dir = tempfile::tempdir().unwrap();
        let tokenizer = dir.path().join("tokenizer.json");
        let config = dir.path().join("tokenizer_config.json");
        let source = "{% for m in messages %}{{ bos_token }}{{ m.content }}{% endfor %}";
        let one = [ChatMessage::new("user", "x")];

        // Nothing there: no template.
        assert!(!ChatTemplate::beside_tokenizer(&tokenizer).has_template());

        // A string, with an added-token object as the BOS.
        let json = serde_json::json!({
            "bos_token": {"__type": "AddedToken", "content": "<s>"},
            "eos_token": "</s>",
            "chat_template": source,
        });
        std::fs::write(&config, json.to_string()).unwrap();
        let t = ChatTemplate::beside_tokenizer(&tokenizer);
        assert_eq!(t.special_tokens(), &tokens(Some("<s>"), Some("</s>")));
        assert_eq!(t.render(&one).unwrap(), "<s>x");

        // A list of named templates: the default one.
        let json = serde_json::json!({
            "bos_token": "<s>",
            "chat_template": [
                {"name": "tool_use", "template": "tools"},
                {"name": "default", "template": source},
            ],
        });
        std::fs::write(&config, json.to_string()).unwrap();
        assert_eq!(
            ChatTemplate::beside_tokenizer(&tokenizer)
                .render(&one)
                .unwrap(),
            "<s>x"
        );

        // chat_template.jinja wins over the config's template.
        std::fs::write(
            dir.path().join("chat_template.jinja"),
            "J{{ messages|length }}\n",
        )
        .unwrap();
        assert_eq!(
            ChatTemplate::beside_tokenizer(&tokenizer)
                .render(&one)
                .unwrap(),
            "J1"
        );
        std::fs::remove_file(dir.path().join("chat_template.jinja")).unwrap();

        // Named templates without a default, and a template that does not compile: the model
        // loads, a conversation is refused with the reason.
        let json = serde_json::json!({"chat_template": [{"name": "tool_use", "template": "t"}]});
        std::fs::write(&config, json.to_string()).unwrap();
        let err = ChatTemplate::beside_tokenizer(&tokenizer)
            .render(&one)
            .unwrap_err()
            .to_string();
        assert!(err.contains("none named `default`"), "{err}");
        std::fs::write(&config, r#"{"chat_template": "{% for m in messages %}"}"#).unwrap();
        let t = ChatTemplate::beside_tokenizer(&tokenizer);
        assert!(t.has_template());
        let err = t.render(&one).unwrap_err().to_string();
        assert!(err.contains("cannot be compiled"), "{err}");
        assert!(t.conversation_note().contains("cannot be used"));
    }

    #[test]
    fn a_rendering_that_begins_with_bos_gets_no_second_one() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/models/mixtral/tokenizer.json");
        let tokenizer = Tokenizer::from_file(&path).unwrap();
        let bos = tokenizer.token_to_id("<s>").unwrap();
        let prompt = Prompt::conversation("s", vec![ChatMessage::new("user", "hello")]);
        let count_bos = |ids: &[u32]| ids.iter().filter(|&&i| i == bos).count();
        for source in [
            "{{ bos_token }}{{ messages[0].content }}",
            "{{ messages[0].content }}",
        ] {
            let t = ChatTemplate::compile(source, tokens(Some("<s>"), None), "t").unwrap();
            let ids = t.encode_prompt(&tokenizer, &prompt).unwrap();
            assert_eq!((ids[0], count_bos(&ids)), (bos, 1), "{source}: {ids:?}");
            // Plain prompts are tokenised as they always were.
            assert_eq!(
                t.encode_prompt(&tokenizer, &Prompt::plain("s", "hello"))
                    .unwrap(),
                super::super::tokenize::encode(&tokenizer, "hello").unwrap()
            );
        }
    }

    #[test]
    fn gguf_metadata_gives_the_template_and_the_token_texts() {
        let text = |s: &str| gguf::Value::String(s.to_string());
        let mut metadata = BTreeMap::from([
            (
                "tokenizer.ggml.tokens".to_string(),
                gguf::Value::Array(vec![text("<unk>"), text("<s>"), text("</s>")]),
            ),
            (
                "tokenizer.ggml.bos_token_id".to_string(),
                gguf::Value::U32(1),
            ),
            (
                "tokenizer.ggml.eos_token_id".to_string(),
                gguf::Value::U32(2),
            ),
        ]);
        let file = Path::new("model.gguf");
        assert!(ChatTemplate::from_gguf_metadata(&metadata, file).is_none());
        metadata.insert(
            "tokenizer.chat_template".to_string(),
            text("{{ bos_token }}{{ messages[0].content }}{{ eos_token }}"),
        );
        let t = ChatTemplate::from_gguf_metadata(&metadata, file).unwrap();
        assert_eq!(t.special_tokens(), &tokens(Some("<s>"), Some("</s>")));
        assert_eq!(
            t.render(&[ChatMessage::new("user", "x")]).unwrap(),
            "<s>x</s>"
        );
        assert!(
            t.conversation_note()
                .contains("model.gguf (tokenizer.chat_template)")
        );
    }

    #[test]
    fn generation_tags_keep_their_whitespace_control() {
        assert_eq!(
            without_generation_tags("a{%- generation -%}b{%- endgeneration %}c{% if x %}"),
            "a{%- if true -%}b{%- endif %}c{% if x %}"
        );
    }
}
