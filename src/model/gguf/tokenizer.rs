//! The tokenizer a GGUF file describes in its `tokenizer.ggml.*` metadata, rebuilt as a HF
//! [`tokenizers::Tokenizer`], so that a `.gguf` with no `tokenizer.json` beside it tokenises as
//! llama.cpp and the model's original HF tokenizer do.
//!
//! Two vocabulary kinds are read, the ones nearly every MoE checkpoint uses:
//!
//! - `gpt2`: byte-level BPE. Tokens are byte-level strings (`Ġ` for a space) ranked by
//!   `tokenizer.ggml.merges`; `tokenizer.ggml.pre` names the split regex(es) applied before the
//!   bytes are mapped ([`PRE_TOKENIZERS`] lists the names understood).
//! - `llama`: SentencePiece BPE. `▁` stands for a space and a leading one is added
//!   (`add_space_prefix`), pieces merge by `tokenizer.ggml.scores` (turned into ranked merges
//!   the way HF's SentencePiece converter does), and characters missing from the vocabulary fall
//!   back to `<0xXX>` byte tokens.
//!
//! Control and unknown tokens (`tokenizer.ggml.token_type` 3 and 2) become special added
//! tokens and user-defined ones (4) plain added tokens, so that both are matched whole in text;
//! BOS / EOS are added by a template post-processor when `add_bos_token` / `add_eos_token`
//! (with llama.cpp's defaults) say so. Anything else (`bert`, `t5`, `rwkv`, ..., or a pre-tokenizer
//! name not listed) is refused with an error naming the file, never guessed.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::byte_level::ByteLevel;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::normalizers::{Prepend, Replace, Sequence as NormalizerSequence};
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizerSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::template::{SpecialToken, TemplateProcessing};
use tokenizers::{
    AddedToken, DecoderWrapper, NormalizerWrapper, PreTokenizerWrapper, SplitDelimiterBehavior,
    Tokenizer,
};

use super::file::Value;
use crate::model::error::{ModelError, Result};

/// `tokenizer.ggml.token_type` values (gguf-py's `TokenType`).
const TYPE_UNKNOWN: i64 = 2;
const TYPE_CONTROL: i64 = 3;
const TYPE_USER_DEFINED: i64 = 4;

/// SentencePiece's stand-in for a space.
const SPIECE_SPACE: &str = "\u{2581}";

const SUPPORTED_MODELS: &str = "gpt2 (byte-level BPE), llama (SentencePiece)";

// The split regexes of the pre-tokenizers. Where llama.cpp rewrote a model's regex for its own
// regex engine (case-insensitive groups spelt out, `\p{Lu}` classes replaced by lookaheads), the
// model's original regex from its tokenizer.json is used: the HF tokenizer is the reference both
// aim at, and fancy-regex reads it as written.

/// GPT-2's regex (HF's ByteLevel pre-tokenizer).
const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const JAIS2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s{512}(?!\S)|\s{256}(?!\S)|\s{128}(?!\S)|\s{64}(?!\S)|\s{32}(?!\S)|\s{16}(?!\S)|\s{8}(?!\S)|\s{4}(?!\S)|\s{1,2}(?!\S)|\s{1}";
const QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN35: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const SEED_CODER: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+|\s+(?!\S)|\s+";
const MINICPM5: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}+| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const UFAKZEKA: &str =
    r"[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const EXAONE_MOE: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?(?:\p{L}\p{M}*(?: \p{L}\p{M}*)*)+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]?|\s*[\r\n]|\s+(?!\S)|\s+";
const BAILINGMOE: &str = r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+";
const GPT4O: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const TEKKEN: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const TINY_AYA_DIGITS: &str = r"\d{1,3}(?=(?:\d{3})*\b)";
const DEEPSEEK3_CJK: &str = "[\u{4E00}-\u{9FA5}\u{3040}-\u{309F}\u{30A0}-\u{30FF}]+";
const DEEPSEEK3_WORDS: &str = r##"[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"##;
/// DeepSeek-LLM's cased letters (written as code points: several of them have canonical
/// equivalents, e.g. the Kelvin and Ohm signs, that an editor could silently normalise).
const DEEPSEEK_LLM_LETTERS: &str = "\\s?[A-Za-z\u{B5}\u{C0}-\u{D6}\u{D8}-\u{F6}\u{F8}-\u{1BA}\
    \u{1BC}-\u{1BF}\u{1C4}-\u{293}\u{295}-\u{2AF}\u{370}-\u{373}\u{376}\u{377}\u{37B}-\u{37D}\
    \u{37F}\u{386}\u{388}-\u{38A}\u{38C}\u{38E}-\u{3A1}\u{3A3}-\u{3F5}\u{3F7}-\u{481}\
    \u{48A}-\u{52F}\u{531}-\u{556}\u{10A0}-\u{10C5}\u{13A0}-\u{13F5}\u{13F8}-\u{13FD}\
    \u{1C90}-\u{1CBA}\u{1CBD}-\u{1CBF}\u{1D00}-\u{1D2B}\u{1D6B}-\u{1D77}\u{1D79}-\u{1D9A}\
    \u{1E00}-\u{1F15}\u{1F18}-\u{1F1D}\u{1F20}-\u{1F45}\u{1F48}-\u{1F4D}\u{1F50}-\u{1F57}\
    \u{1F59}\u{1F5B}\u{1F5D}\u{1F5F}-\u{1F7D}\u{1F80}-\u{1FB4}\u{1FB6}-\u{1FBC}\u{1FBE}\
    \u{1FC2}-\u{1FC4}\u{1FC6}-\u{1FCC}\u{1FD0}-\u{1FD3}\u{1FD6}-\u{1FDB}\u{1FE0}-\u{1FEC}\
    \u{1FF2}-\u{1FF4}\u{1FF6}-\u{1FFC}\u{2102}\u{2107}\u{210A}-\u{2113}\u{2115}\
    \u{2119}-\u{211D}\u{2124}\u{2126}\u{2128}\u{212A}-\u{212D}\u{212F}-\u{2134}\u{2139}\
    \u{213C}-\u{213F}\u{2145}-\u{2149}\u{214E}\u{2183}\u{2184}\u{2C00}-\u{2C7B}\
    \u{2C7E}-\u{2CE4}\u{2CEB}-\u{2CEE}\u{2CF2}\u{2CF3}\u{A640}-\u{A66D}\u{A680}-\u{A69B}\
    \u{A722}-\u{A76F}\u{A771}-\u{A787}\u{A78B}-\u{A78E}\u{AB70}-\u{ABBF}\u{FB00}-\u{FB06}\
    \u{FB13}-\u{FB17}\u{FF21}-\u{FF3A}\u{FF41}-\u{FF5A}\u{10400}-\u{1044F}\u{104B0}-\u{104D3}\
    \u{104D8}-\u{104FB}\u{10C80}-\u{10CB2}\u{10CC0}-\u{10CF2}\u{118A0}-\u{118DF}\
    \u{1E900}-\u{1E943}]+";
const DEEPSEEK_LLM_PUNCT: &str =
    "\\s?[!-/:-~\u{FF01}-\u{FF0F}\u{FF1A}-\u{FF5E}\u{2018}-\u{201F}\u{3000}-\u{3002}]+";
const DEEPSEEK_CJK: &str = "[\u{4E00}-\u{9FA5}\u{800}-\u{4E00}\u{AC00}-\u{D7FF}]+";
const BLOOM: &str = " ?[^(\\s|.,!?\u{2026}\u{3002}\u{FF0C}\u{3001}\u{964}\u{6D4}\u{60C})]+";

/// One pre-tokenizer: the `tokenizer.ggml.pre` names llama.cpp gives it, the regexes it splits
/// text with in turn (each keeping the matches and the text between them as pieces, as llama.cpp's
/// `unicode_regex_split` and HF's `Split { behavior: Isolated }` both do), and the vocabulary
/// settings llama.cpp ties to it.
pub struct PreTokenizerSpec {
    pub names: &'static [&'static str],
    pub splits: &'static [&'static str],
    /// Words that are whole tokens skip the merges (`ignore_merges`).
    pub ignore_merges: bool,
    /// BOS is added unless `tokenizer.ggml.add_bos_token` says otherwise.
    pub add_bos: bool,
}

const fn spec(names: &'static [&'static str], splits: &'static [&'static str]) -> PreTokenizerSpec {
    PreTokenizerSpec {
        names,
        splits,
        ignore_merges: false,
        add_bos: false,
    }
}

/// The pre-tokenizers understood, after llama.cpp's `llama_vocab::impl::load` (names) and
/// `llm_tokenizer_bpe` (regexes). `default` (and a missing name) is GPT-2's regex, as in HF's
/// ByteLevel pre-tokenizer.
pub const PRE_TOKENIZERS: &[PreTokenizerSpec] = &[
    spec(
        &[
            "default",
            "gpt2",
            "gpt-2",
            "phi-2",
            "mpt",
            "olmo",
            "jais",
            "trillion",
            "granite-docling",
            "exaone4",
            "gigachat",
            "a.x-4.0",
            "mellum",
            "jina-es",
            "jina-de",
            "jina-v2-es",
            "jina-v2-de",
            "modern-bert",
        ],
        &[GPT2],
    ),
    PreTokenizerSpec {
        names: &[
            "llama3",
            "llama-v3",
            "llama-bpe",
            "falcon3",
            "falcon-h1",
            "pixtral",
            "midm-2.0",
            "lfm2",
            "jina-v5-nano",
        ],
        splits: &[LLAMA3],
        ignore_merges: true,
        add_bos: true,
    },
    spec(&["dbrx", "smaug-bpe", "glm4", "chatglm-bpe"], &[LLAMA3]),
    spec(&["jais-2"], &[JAIS2]),
    spec(
        &[
            "qwen2",
            "deepseek-r1-qwen",
            "kormo",
            "f2llmv2",
            "megrez",
            "stablelm2",
            "hunyuan",
            "solar-open",
            "grok-2",
        ],
        &[QWEN2],
    ),
    spec(&["qwen35"], &[QWEN35]),
    spec(
        &["deepseek-v3", "hunyuan-dense", "joyai-llm", "hy_v4"],
        &[r"\p{N}{1,3}", DEEPSEEK3_CJK, DEEPSEEK3_WORDS],
    ),
    spec(
        &["deepseek-llm"],
        &[
            r"[\r\n]",
            DEEPSEEK_LLM_LETTERS,
            DEEPSEEK_LLM_PUNCT,
            r"\s+$",
            DEEPSEEK_CJK,
            r"\p{N}+",
        ],
    ),
    spec(
        &["deepseek-coder"],
        &[
            r"[\r\n]",
            r"\s?\p{L}+",
            r"\s?\p{P}+",
            DEEPSEEK_CJK,
            r"\p{N}",
        ],
    ),
    spec(
        &["falcon"],
        &[r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"[0-9][0-9][0-9]"],
    ),
    spec(
        &[
            "starcoder",
            "refact",
            "command-r",
            "smollm",
            "codeshell",
            "exaone",
            "minerva-7b",
            "mellum2",
        ],
        &[r"\p{N}", GPT2],
    ),
    spec(
        &["gpt-4o", "llama4", "kanana2", "talkie", "minimax-m2"],
        &[GPT4O],
    ),
    PreTokenizerSpec {
        names: &["tekken"],
        splits: &[TEKKEN],
        ignore_merges: true,
        add_bos: true,
    },
    spec(&["tiny_aya", "cohere2moe"], &[TINY_AYA_DIGITS, GPT4O]),
    spec(&["seed-coder"], &[SEED_CODER]),
    PreTokenizerSpec {
        names: &["minicpm5"],
        splits: &[r"\p{N}{1,3}", MINICPM5],
        ignore_merges: true,
        add_bos: false,
    },
    spec(&["ufakzeka"], &[UFAKZEKA]),
    spec(&["exaone-moe"], &[EXAONE_MOE]),
    spec(&["bailingmoe", "bailingmoe2", "llada-moe"], &[BAILINGMOE]),
    spec(&["poro-chat", "bloom", "gpt3-finnish"], &[BLOOM]),
    spec(&["viking"], &[BLOOM, r"\p{N}"]),
];

/// The spec for a `tokenizer.ggml.pre` name.
pub fn pre_tokenizer_spec(name: &str) -> Option<&'static PreTokenizerSpec> {
    PRE_TOKENIZERS.iter().find(|s| s.names.contains(&name))
}

/// Reads typed metadata, naming the file and key in every error.
struct Meta<'a> {
    metadata: &'a BTreeMap<String, Value>,
    file: &'a Path,
}

impl Meta<'_> {
    fn err(&self, msg: impl std::fmt::Display) -> ModelError {
        ModelError::msg(format!("{}: {msg}", self.file.display()))
    }

    fn string(&self, key: &str) -> Result<Option<&str>> {
        match self.metadata.get(key) {
            None => Ok(None),
            Some(v) => v.as_str().map(Some).ok_or_else(|| {
                self.err(format_args!(
                    "{key} should be a string, found {}",
                    v.describe()
                ))
            }),
        }
    }

    fn bool(&self, key: &str) -> Result<Option<bool>> {
        match self.metadata.get(key) {
            None => Ok(None),
            // Some writers store flags as integers.
            Some(v) => v
                .as_bool()
                .or_else(|| v.as_u64().filter(|&x| x <= 1).map(|x| x == 1))
                .map(Some)
                .ok_or_else(|| {
                    self.err(format_args!(
                        "{key} should be a boolean, found {}",
                        v.describe()
                    ))
                }),
        }
    }

    fn array(&self, key: &str) -> Result<Option<&[Value]>> {
        match self.metadata.get(key) {
            None => Ok(None),
            Some(v) => v.as_array().map(Some).ok_or_else(|| {
                self.err(format_args!(
                    "{key} should be an array, found {}",
                    v.describe()
                ))
            }),
        }
    }

    /// A per-token array (`token_type`, `scores`): at least `n` items, each read by `read`.
    fn per_token<T>(
        &self,
        key: &str,
        n: usize,
        what: &str,
        read: impl Fn(&Value) -> Option<T>,
    ) -> Result<Option<Vec<T>>> {
        let Some(items) = self.array(key)? else {
            return Ok(None);
        };
        if items.len() < n {
            return Err(self.err(format_args!(
                "{key} has {} items for {n} tokens",
                items.len()
            )));
        }
        items[..n]
            .iter()
            .enumerate()
            .map(|(i, v)| {
                read(v).ok_or_else(|| {
                    self.err(format_args!(
                        "{key} item {i} should be {what}, found {}",
                        v.describe()
                    ))
                })
            })
            .collect::<Result<Vec<T>>>()
            .map(Some)
    }

    /// A special token id: the key's value when it names a token, else `default`. Like
    /// llama.cpp, an id outside the vocabulary is ignored rather than an error.
    fn token_id(&self, key: &str, n: usize, default: Option<u32>) -> Option<u32> {
        self.metadata
            .get(key)
            .and_then(Value::as_u64)
            .filter(|&id| id < n as u64)
            .map(|id| id as u32)
            .or(default.filter(|&id| (id as usize) < n))
    }
}

enum Kind {
    /// Byte-level BPE.
    Gpt2,
    /// SentencePiece BPE with byte fallback.
    Llama,
}

/// The tokenizer a GGUF file describes in its `tokenizer.ggml.*` keys.
pub fn tokenizer_from_metadata(
    metadata: &BTreeMap<String, Value>,
    file: &Path,
) -> Result<Tokenizer> {
    let m = Meta { metadata, file };
    let hint = "put the model's tokenizer.json beside the .gguf file";
    let model = m.string("tokenizer.ggml.model")?.ok_or_else(|| {
        m.err(format_args!(
            "no tokenizer.ggml.model in the GGUF metadata, so the file describes no tokenizer; \
             {hint}"
        ))
    })?;
    let kind = match model {
        "gpt2" => Kind::Gpt2,
        "llama" => Kind::Llama,
        other => {
            return Err(m.err(format_args!(
                "tokenizer.ggml.model {other:?} is not supported (supported: {SUPPORTED_MODELS}); \
                 {hint}"
            )));
        }
    };

    // The vocabulary, in id order.
    let items = m.array("tokenizer.ggml.tokens")?.ok_or_else(|| {
        m.err(format_args!(
            "no tokenizer.ggml.tokens (the vocabulary) in the GGUF metadata; {hint}"
        ))
    })?;
    if items.is_empty() || u32::try_from(items.len()).is_err() {
        return Err(m.err(format_args!(
            "tokenizer.ggml.tokens has {} tokens",
            items.len()
        )));
    }
    let n = items.len();
    let mut tokens = Vec::with_capacity(n);
    let mut vocab = Vocab::default();
    for (i, v) in items.iter().enumerate() {
        let Some(text) = v.as_str() else {
            return Err(m.err(format_args!(
                "tokenizer.ggml.tokens item {i} should be a string, found {}",
                v.describe()
            )));
        };
        // llama.cpp's name for an empty token.
        let text = if text.is_empty() {
            format!("[EMPTY_{i}]")
        } else {
            text.to_owned()
        };
        if let Some(first) = vocab.insert(text.clone(), i as u32) {
            return Err(m.err(format_args!(
                "tokenizer.ggml.tokens has {text:?} twice, as tokens {first} and {i}"
            )));
        }
        tokens.push(text);
    }
    let types = m
        .per_token("tokenizer.ggml.token_type", n, "an integer", Value::as_i64)?
        .unwrap_or_else(|| vec![1; n]);

    // Special tokens, with llama.cpp's defaults for a SentencePiece vocabulary.
    let (bos_default, eos_default, unk_default) = match kind {
        Kind::Llama => (Some(1), Some(2), Some(0)),
        Kind::Gpt2 => (None, None, None),
    };
    let bos = m.token_id("tokenizer.ggml.bos_token_id", n, bos_default);
    let eos = m.token_id("tokenizer.ggml.eos_token_id", n, eos_default);
    let unk = m.token_id("tokenizer.ggml.unknown_token_id", n, unk_default);

    let (mut tokenizer, add_bos_default) = match kind {
        Kind::Gpt2 => gpt2(&m, vocab)?,
        Kind::Llama => (llama(&m, &tokens, vocab, unk)?, true),
    };

    // Control and unknown tokens are special; user-defined ones are matched whole but are text.
    // GGUF stores both as the text they stand for (llama.cpp's converter decodes them), so they
    // are matched against the raw input, not the normalised one.
    let added = |special: bool, wanted: &[i64]| -> Vec<AddedToken> {
        tokens
            .iter()
            .zip(&types)
            .filter(|(_, t)| wanted.contains(t))
            .map(|(text, _)| AddedToken::from(text.clone(), special).normalized(false))
            .collect()
    };
    tokenizer
        .add_special_tokens(added(true, &[TYPE_CONTROL, TYPE_UNKNOWN]))
        .and_then(|_| tokenizer.add_tokens(added(false, &[TYPE_USER_DEFINED])))
        .map_err(|e| m.err(format_args!("cannot add the special tokens: {e}")))?;

    let add_bos = m
        .bool("tokenizer.ggml.add_bos_token")?
        .unwrap_or(add_bos_default);
    let add_eos = m.bool("tokenizer.ggml.add_eos_token")?.unwrap_or(false);
    let special = |add: bool, id: Option<u32>, what: &str| -> Result<Option<(u32, &str)>> {
        match (add, id) {
            (false, _) => Ok(None),
            (true, Some(id)) => Ok(Some((id, tokens[id as usize].as_str()))),
            (true, None) => Err(m.err(format_args!(
                "tokenizer.ggml.add_{what}_token is true, but tokenizer.ggml.{what}_token_id is \
                 not set (or not a token of the vocabulary)"
            ))),
        }
    };
    let bos = special(add_bos, bos, "bos")?;
    let eos = special(add_eos, eos, "eos")?;
    if bos.is_some() || eos.is_some() {
        tokenizer.with_post_processor(Some(template(bos, eos).map_err(|e| m.err(e))?));
    }
    Ok(tokenizer)
}

/// The byte-level BPE of a `gpt2` vocabulary, and whether its pre-tokenizer adds BOS by default.
fn gpt2(m: &Meta, vocab: Vocab) -> Result<(Tokenizer, bool)> {
    let pre = m.string("tokenizer.ggml.pre")?.unwrap_or("default");
    let pre = if pre.is_empty() { "default" } else { pre };
    let Some(spec) = pre_tokenizer_spec(pre) else {
        let names: Vec<&str> = PRE_TOKENIZERS
            .iter()
            .flat_map(|s| s.names)
            .copied()
            .collect();
        return Err(m.err(format_args!(
            "tokenizer.ggml.pre {pre:?} names a pre-tokenizer MoEScope does not know (known: \
             {}); put the model's tokenizer.json beside the .gguf file",
            names.join(", ")
        )));
    };
    let items = m.array("tokenizer.ggml.merges")?.ok_or_else(|| {
        m.err(
            "tokenizer.ggml.model is \"gpt2\" (byte-level BPE) but there is no \
             tokenizer.ggml.merges; put the model's tokenizer.json beside the .gguf file",
        )
    })?;
    let mut merges = Vec::with_capacity(items.len());
    for (i, v) in items.iter().enumerate() {
        let Some(merge) = v.as_str() else {
            return Err(m.err(format_args!(
                "tokenizer.ggml.merges item {i} should be a string, found {}",
                v.describe()
            )));
        };
        // "left right", split at the first space after the first byte, as llama.cpp does.
        if let Some(at) = merge.bytes().skip(1).position(|b| b == b' ') {
            let (left, right) = (&merge[..at + 1], &merge[at + 2..]);
            merges.push((left.to_owned(), right.to_owned()));
        }
    }
    let merges = usable_merges(merges, &vocab);
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .ignore_merges(spec.ignore_merges)
        .build()
        .map_err(|e| m.err(format_args!("cannot build the BPE model: {e}")))?;
    let mut tokenizer = Tokenizer::new(bpe);
    tokenizer.with_pre_tokenizer(Some(pre_tokenizer(spec).map_err(|e| m.err(e))?));
    tokenizer.with_decoder(Some(ByteLevel::default()));
    Ok((tokenizer, spec.add_bos))
}

/// The splits of `spec` followed by the byte-to-character mapping.
pub fn pre_tokenizer(spec: &PreTokenizerSpec) -> std::result::Result<PreTokenizerWrapper, String> {
    let mut steps = Vec::with_capacity(spec.splits.len() + 1);
    for regex in spec.splits {
        let split = Split::new(
            SplitPattern::Regex((*regex).to_owned()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|e| format!("the split regex {regex:?} does not compile: {e}"))?;
        steps.push(PreTokenizerWrapper::Split(split));
    }
    steps.push(PreTokenizerWrapper::ByteLevel(ByteLevel::new(
        false, true, false,
    )));
    Ok(PreTokenizerWrapper::Sequence(PreTokenizerSequence::new(
        steps,
    )))
}

/// The SentencePiece BPE of a `llama` vocabulary.
fn llama(m: &Meta, tokens: &[String], vocab: Vocab, unk: Option<u32>) -> Result<Tokenizer> {
    let n = tokens.len();
    let merges = match m.array("tokenizer.ggml.merges")? {
        // The original tokenizer's merges, when the converter kept them.
        Some(items) => items
            .iter()
            .filter_map(Value::as_str)
            .filter_map(|s| s.split_once(' '))
            .map(|(l, r)| (l.to_owned(), r.to_owned()))
            .collect(),
        None => {
            let scores = m
                .per_token("tokenizer.ggml.scores", n, "a number", |v| {
                    v.as_f64().map(|x| x as f32)
                })?
                .unwrap_or_else(|| vec![0.0; n]);
            merges_from_scores(tokens, &scores, &vocab)
        }
    };
    let merges = usable_merges(merges, &vocab);
    let mut builder = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .byte_fallback(true)
        .fuse_unk(true);
    if let Some(unk) = unk {
        builder = builder.unk_token(tokens[unk as usize].clone());
    }
    let bpe = builder
        .build()
        .map_err(|e| m.err(format_args!("cannot build the BPE model: {e}")))?;
    let add_space_prefix = m.bool("tokenizer.ggml.add_space_prefix")?.unwrap_or(true);

    let replace = |from: &str, to: &str| {
        Replace::new(from, to).map_err(|e| m.err(format_args!("cannot build a normalizer: {e}")))
    };
    let mut normalizers = Vec::new();
    if add_space_prefix {
        normalizers.push(NormalizerWrapper::Prepend(Prepend::new(
            SPIECE_SPACE.to_owned(),
        )));
    }
    normalizers.push(NormalizerWrapper::Replace(replace(" ", SPIECE_SPACE)?));
    let mut decoders = vec![
        DecoderWrapper::Replace(replace(SPIECE_SPACE, " ")?),
        DecoderWrapper::ByteFallback(ByteFallback::new()),
        DecoderWrapper::Fuse(Fuse::new()),
    ];
    if add_space_prefix {
        decoders.push(DecoderWrapper::Strip(Strip::new(' ', 1, 0)));
    }

    let mut tokenizer = Tokenizer::new(bpe);
    tokenizer
        .with_normalizer(Some(NormalizerSequence::new(normalizers)))
        .map_err(|e| m.err(format_args!("cannot set the normalizer: {e}")))?;
    tokenizer.with_decoder(Some(DecoderSequence::new(decoders)));
    Ok(tokenizer)
}

/// Ranked merges from SentencePiece scores, as HF's converter derives them
/// (`transformers.convert_slow_tokenizer.generate_merges`): every split of every piece into two
/// pieces of the vocabulary is a merge; the splits of one piece are listed by the ids of their
/// halves, then all are stably sorted by the merged piece's score, the left half's length and
/// the right half's length, each highest first.
fn merges_from_scores(tokens: &[String], scores: &[f32], vocab: &Vocab) -> Vec<(String, String)> {
    // (score, left length, right length, left id, right id); lengths in characters.
    let mut ranked: Vec<(f32, usize, usize, u32, u32)> = Vec::new();
    for (piece, &score) in tokens.iter().zip(scores) {
        let start = ranked.len();
        for (n, (at, _)) in piece.char_indices().enumerate().skip(1) {
            let (left, right) = piece.split_at(at);
            if let (Some(&l), Some(&r)) = (vocab.get(left), vocab.get(right)) {
                ranked.push((score, n, right.chars().count(), l, r));
            }
        }
        ranked[start..].sort_by_key(|&(_, _, _, l, r)| (l, r));
    }
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(b.1.cmp(&a.1)).then(b.2.cmp(&a.2)));
    ranked
        .into_iter()
        .map(|(_, _, _, l, r)| (tokens[l as usize].clone(), tokens[r as usize].clone()))
        .collect()
}

/// The merges whose halves and result are all tokens, first rank of each kept, in rank order.
/// The BPE builder refuses a merge of tokens it lacks, and panics on one whose result is longer
/// than every token, so bad metadata must not reach it.
fn usable_merges(merges: Vec<(String, String)>, vocab: &Vocab) -> Vec<(String, String)> {
    let mut seen = HashSet::new();
    merges
        .into_iter()
        .filter(|(l, r)| {
            vocab.contains_key(l)
                && vocab.contains_key(r)
                && vocab.contains_key(&format!("{l}{r}"))
                && seen.insert((l.clone(), r.clone()))
        })
        .collect()
}

/// `BOS $A EOS` (each only when given), and for pairs `BOS $A EOS BOS $B EOS`, as HF's
/// Llama tokenizer builds it.
fn template(
    bos: Option<(u32, &str)>,
    eos: Option<(u32, &str)>,
) -> std::result::Result<TemplateProcessing, String> {
    let mut specials = Vec::new();
    let mut single = Vec::new();
    let mut pair = Vec::new();
    if let Some((id, text)) = bos {
        specials.push(special_token("BOS", id, text)?);
        single.push("BOS".to_owned());
    }
    single.push("$A:0".to_owned());
    if let Some((id, text)) = eos {
        specials.push(special_token("EOS", id, text)?);
        single.push("EOS".to_owned());
    }
    pair.extend(single.iter().cloned());
    if bos.is_some() {
        pair.push("BOS:1".to_owned());
    }
    pair.push("$B:1".to_owned());
    if eos.is_some() {
        pair.push("EOS:1".to_owned());
    }
    TemplateProcessing::builder()
        .try_single(single.join(" "))?
        .try_pair(pair.join(" "))?
        .special_tokens(specials)
        .build()
        .map_err(|e| format!("cannot build the BOS/EOS template: {e}"))
}

fn special_token(key: &str, id: u32, text: &str) -> std::result::Result<SpecialToken, String> {
    SpecialToken::new(key.to_owned(), vec![id], vec![text.to_owned()])
        .map_err(|e| format!("cannot build the special token {text:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use tokenizers::{OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer};

    use super::*;
    use crate::model::gguf::file::{GgufFile, GgufModel, write_for_tests};

    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
    }

    fn strings<S: AsRef<str>>(items: impl IntoIterator<Item = S>) -> Value {
        Value::Array(
            items
                .into_iter()
                .map(|s| Value::String(s.as_ref().to_owned()))
                .collect(),
        )
    }

    /// The `tokenizer.ggml.*` keys llama.cpp's converter (`_set_vocab_gpt2` and `SpecialVocab`)
    /// writes for a byte-level BPE tokenizer.json and its tokenizer_config.json.
    fn gpt2_metadata(model_dir: &Path, pre: &str) -> Vec<(&'static str, Value)> {
        let read = |name: &str| -> serde_json::Value {
            serde_json::from_str(&std::fs::read_to_string(model_dir.join(name)).unwrap()).unwrap()
        };
        let json = read("tokenizer.json");
        let config = read("tokenizer_config.json");
        let vocab = json["model"]["vocab"].as_object().unwrap();
        let mut tokens = vec![String::new(); vocab.len()];
        for (text, id) in vocab {
            tokens[id.as_u64().unwrap() as usize] = text.clone();
        }
        let mut types = vec![1i32; tokens.len()];
        for added in json["added_tokens"].as_array().unwrap() {
            let id = added["id"].as_u64().unwrap() as usize;
            types[id] = if added["special"].as_bool().unwrap() {
                3
            } else {
                4
            };
        }
        let merges: Vec<String> = json["model"]["merges"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| match m {
                serde_json::Value::String(s) => s.clone(),
                pair => format!(
                    "{} {}",
                    pair[0].as_str().unwrap(),
                    pair[1].as_str().unwrap()
                ),
            })
            .collect();
        let mut meta = vec![
            ("tokenizer.ggml.model", Value::String("gpt2".into())),
            ("tokenizer.ggml.pre", Value::String(pre.into())),
            ("tokenizer.ggml.tokens", strings(&tokens)),
            (
                "tokenizer.ggml.token_type",
                Value::Array(types.into_iter().map(Value::I32).collect()),
            ),
            ("tokenizer.ggml.merges", strings(&merges)),
        ];
        let id_of = |key: &str| {
            config[key]
                .as_str()
                .and_then(|t| tokens.iter().position(|x| x == t))
                .map(|id| Value::U32(id as u32))
        };
        for (key, meta_key) in [
            ("bos_token", "tokenizer.ggml.bos_token_id"),
            ("eos_token", "tokenizer.ggml.eos_token_id"),
            ("pad_token", "tokenizer.ggml.padding_token_id"),
        ] {
            if let Some(id) = id_of(key) {
                meta.push((meta_key, id));
            }
        }
        // The converter reads add_bos / add_eos off a TemplateProcessing post-processor.
        let post = &json["post_processor"];
        if post["type"] == "TemplateProcessing" {
            let single = post["single"].as_array().unwrap();
            let is_special =
                |p: Option<&serde_json::Value>| p.is_some_and(|p| p["SpecialToken"].is_object());
            meta.push((
                "tokenizer.ggml.add_bos_token",
                Value::Bool(is_special(single.first())),
            ));
            meta.push((
                "tokenizer.ggml.add_eos_token",
                Value::Bool(is_special(single.last())),
            ));
        }
        meta
    }

    /// Writes `meta` as a GGUF file and builds the tokenizer from what the reader reads back.
    fn via_gguf(meta: &[(&str, Value)]) -> Result<Tokenizer> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tok.gguf");
        std::fs::write(&path, write_for_tests(meta, &[])).unwrap();
        let file = GgufFile::open(&path).unwrap();
        tokenizer_from_metadata(&file.metadata, &path)
    }

    const TEXTS: &[&str] = &[
        "Hello world",
        "The quick brown fox jumps over the lazy dog.",
        "line one\nline two\n\n  indented\tand tabbed  ",
        "Numbers: 1234567 + 89 = 1234656; pi is 3.14159!",
        "It's what they'd said, isn't it? (yes) [no] {maybe} <tag> a->b && c||d",
        "naïve café – 東京 🙂 Ünïcödé",
        "   leading spaces and trailing   ",
        "",
    ];

    fn assert_same(gguf: &Tokenizer, hf: &Tokenizer, text: &str) {
        for add_special in [false, true] {
            let want = hf.encode(text, add_special).unwrap();
            let got = gguf.encode(text, add_special).unwrap();
            assert_eq!(
                got.get_ids(),
                want.get_ids(),
                "{text:?} (add_special {add_special}): {:?} vs {:?}",
                got.get_tokens(),
                want.get_tokens()
            );
            for skip in [false, true] {
                assert_eq!(
                    gguf.decode(got.get_ids(), skip).unwrap(),
                    hf.decode(want.get_ids(), skip).unwrap(),
                    "decoding {text:?}"
                );
            }
        }
    }

    #[test]
    fn byte_level_fixture_round_trips_through_gguf_metadata() {
        // qwen3_moe: no BOS; mixtral: the same vocabulary with a `<s>` BOS template.
        for (name, bos) in [("qwen3_moe", None), ("mixtral", Some(1u32))] {
            let dir = fixtures().join("models").join(name);
            let hf = Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
            let gguf = via_gguf(&gpt2_metadata(&dir, "default")).unwrap();
            assert_eq!(gguf.get_vocab_size(true), hf.get_vocab_size(true));
            let mut texts = TEXTS.to_vec();
            texts.extend(["<|endoftext|>Hello<s> world</s><|pad|>", "a<|endoftext|>b"]);
            for text in texts {
                assert_same(&gguf, &hf, text);
            }
            // The special tokens are whole tokens, and decode back.
            let ids = gguf.encode("x<|endoftext|>y</s>", false).unwrap();
            assert!(ids.get_ids().contains(&0) && ids.get_ids().contains(&2));
            let text = "naïve café – 東京\n  ok";
            let ids = gguf.encode(text, true).unwrap();
            assert_eq!(ids.get_ids().first() == Some(&1), bos.is_some());
            assert_eq!(gguf.decode(ids.get_ids(), true).unwrap(), text);
        }
    }

    #[test]
    fn the_round_trip_notices_a_wrong_vocabulary() {
        // The comparison above is sharp: metadata that misses the special tokens' types, or
        // ranks the merges differently, tokenises some of the texts differently.
        let dir = fixtures().join("models/qwen3_moe");
        let hf = Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
        let differs = |meta: &[(&str, Value)]| {
            let gguf = via_gguf(meta).unwrap();
            TEXTS.iter().chain(&["a<|endoftext|>b"]).any(|t| {
                gguf.encode(*t, false).unwrap().get_ids() != hf.encode(*t, false).unwrap().get_ids()
            })
        };
        let meta = gpt2_metadata(&dir, "default");
        assert!(!differs(&meta));
        let untyped: Vec<_> = meta
            .iter()
            .filter(|(k, _)| *k != "tokenizer.ggml.token_type")
            .cloned()
            .collect();
        assert!(differs(&untyped));
        let reranked: Vec<_> = meta
            .iter()
            .map(|(k, v)| match (*k, v) {
                ("tokenizer.ggml.merges", Value::Array(m)) => {
                    (*k, Value::Array(m.iter().rev().cloned().collect()))
                }
                _ => (*k, v.clone()),
            })
            .collect();
        assert!(differs(&reranked));
    }

    /// Files converted by llama.cpp from the fixtures, when present: the tokenizer read from the
    /// GGUF matches the fixture's tokenizer.json.
    #[test]
    fn converted_fixture_files_match_their_tokenizer_json() {
        let Ok(entries) = std::fs::read_dir(fixtures().join("gguf")) else {
            return;
        };
        let mut checked = 0;
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "gguf") {
                continue;
            }
            let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
            // `<model>-<type>[-split-0000N-of-0000M]`; model directories use underscores.
            let Some((name, _)) = stem.split_once('-') else {
                continue;
            };
            let json = fixtures().join("models").join(name).join("tokenizer.json");
            if !json.is_file() {
                continue;
            }
            let Ok(model) = GgufModel::open(&path) else {
                continue;
            };
            let gguf =
                tokenizer_from_metadata(model.metadata(), &path).unwrap_or_else(|e| panic!("{e}"));
            let hf = Tokenizer::from_file(&json).unwrap();
            // The fixture's own regex is GPT-2's; a converter that names another pre-tokenizer
            // (its hash of the fixture is nobody's) can only be held to text every regex splits
            // alike.
            let pre = model
                .metadata()
                .get("tokenizer.ggml.pre")
                .and_then(Value::as_str)
                .unwrap_or("default");
            let texts: &[&str] = if pre_tokenizer_spec(pre).is_some_and(|s| s.splits == [GPT2]) {
                TEXTS
            } else {
                &[
                    "Hello world",
                    "The quick brown fox jumps over the lazy dog.",
                ]
            };
            for text in texts {
                assert_same(&gguf, &hf, text);
            }
            checked += 1;
        }
        eprintln!("{checked} converted GGUF files checked");
    }

    /// The pieces `name`'s pre-tokenizer cuts `text` into, as substrings of `text`.
    fn pieces(name: &str, text: &str) -> Vec<String> {
        let pre = pre_tokenizer(pre_tokenizer_spec(name).unwrap()).unwrap();
        let mut s = PreTokenizedString::from(text);
        pre.pre_tokenize(&mut s).unwrap();
        s.get_splits(OffsetReferential::Original, OffsetType::Byte)
            .into_iter()
            .map(|(_, (a, b), _)| text[a..b].to_owned())
            .collect()
    }

    #[test]
    fn every_pre_tokenizer_compiles_and_covers_its_input() {
        let text = "Hello WORLD, it's 12345 東京の日本語 ÀÉÎ naïve\r\n\n  x\t{\"k\": [1]}  ";
        for spec in PRE_TOKENIZERS {
            let name = spec.names[0];
            assert_eq!(pieces(name, text).concat(), text, "{name}");
        }
        assert!(pre_tokenizer_spec("no-such-thing").is_none());
    }

    #[test]
    fn pre_tokenizers_split_as_their_models_do() {
        let p = |name, text| pieces(name, text);
        assert_eq!(p("default", "hi 12345!"), ["hi", " 12345", "!"]);
        assert_eq!(p("llama-bpe", "hi 12345!"), ["hi", " ", "123", "45", "!"]);
        assert_eq!(p("qwen2", "12345"), ["1", "2", "3", "4", "5"]);
        assert_eq!(p("qwen2", "(hello"), ["(hello"]);
        assert_eq!(p("default", "(hello"), ["(", "hello"]);
        assert_eq!(p("gpt-4o", "HelloWorld"), ["Hello", "World"]);
        assert_eq!(p("tekken", "HelloWorld"), ["Hello", "World"]);
        assert_eq!(
            p("deepseek-v3", "東京abc 1234"),
            ["東京", "abc", " ", "123", "4"]
        );
        assert_eq!(
            p("deepseek-llm", "Hello, 世界!"),
            ["Hello", ",", " ", "世界", "!"]
        );
        // The Kelvin sign is one of DeepSeek-LLM's letters, as in its tokenizer.json.
        assert_eq!(p("deepseek-llm", "5\u{212A}"), ["5", "\u{212A}"]);
        assert_eq!(p("starcoder", "x=42"), ["x", "=", "4", "2"]);
    }

    /// A small SentencePiece vocabulary: `<unk>`, `<s>`, `</s>`, the 256 byte tokens, then
    /// pieces whose scores make "▁hello" and "▁world" in a known order of merges.
    fn spm_metadata(extra: &[(&'static str, Value)]) -> Vec<(&'static str, Value)> {
        let mut tokens: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
        let mut types = vec![2, 3, 3];
        let mut scores = vec![0.0f32; 3];
        for b in 0..=255u8 {
            tokens.push(format!("<0x{b:02X}>"));
            types.push(6);
            scores.push(0.0);
        }
        let pieces: &[(&str, f32)] = &[
            ("▁", -1.0), // 259
            ("h", -10.0),
            ("e", -10.0),
            ("l", -10.0),
            ("o", -10.0),
            ("w", -10.0),
            ("r", -10.0),
            ("d", -10.0), // 266
            ("he", -3.0),
            ("ll", -3.5),
            ("▁he", -4.0), // 269
            ("llo", -4.5),
            ("▁hello", -5.0), // 271
            ("▁w", -6.0),
            ("or", -6.5),
            ("▁wor", -7.0),
            ("ld", -7.5),     // 275
            ("▁world", -8.0), // 276
        ];
        for &(piece, score) in pieces {
            tokens.push(piece.into());
            types.push(1);
            scores.push(score);
        }
        let mut meta = vec![
            ("tokenizer.ggml.model", Value::String("llama".into())),
            ("tokenizer.ggml.tokens", strings(&tokens)),
            (
                "tokenizer.ggml.scores",
                Value::Array(scores.into_iter().map(Value::F32).collect()),
            ),
            (
                "tokenizer.ggml.token_type",
                Value::Array(types.into_iter().map(Value::I32).collect()),
            ),
            ("tokenizer.ggml.bos_token_id", Value::U32(1)),
            ("tokenizer.ggml.eos_token_id", Value::U32(2)),
            ("tokenizer.ggml.unknown_token_id", Value::U32(0)),
        ];
        meta.extend(extra.iter().cloned());
        meta
    }

    #[test]
    fn sentencepiece_vocabulary_merges_by_score_and_falls_back_to_bytes() {
        let tok = via_gguf(&spm_metadata(&[])).unwrap();
        let ids = |text: &str| tok.encode(text, true).unwrap().get_ids().to_vec();
        // BOS by default, a leading "▁", the highest-scoring merges first.
        assert_eq!(ids("hello world"), [1, 271, 276]);
        assert_eq!(ids("held"), [1, 269, 275]);
        assert_eq!(ids("hello  world"), [1, 271, 259, 276]);
        // "\n", "x" and "日" (E6 97 A5) are not pieces: their bytes are.
        let byte = |b: u32| 3 + b;
        assert_eq!(ids("x"), [1, 259, byte(0x78)]);
        assert_eq!(
            ids("hello\n日"),
            [1, 271, byte(0x0A), byte(0xE6), byte(0x97), byte(0xA5)]
        );
        // Control tokens are matched whole; the text after one gets its own leading "▁".
        assert_eq!(ids("hello</s>world"), [1, 271, 2, 276]);
        assert_eq!(
            tok.decode(&ids("hello\n日 world"), true).unwrap(),
            "hello\n日 world"
        );

        let tok = via_gguf(&spm_metadata(&[
            ("tokenizer.ggml.add_bos_token", Value::Bool(false)),
            ("tokenizer.ggml.add_eos_token", Value::Bool(true)),
            ("tokenizer.ggml.add_space_prefix", Value::Bool(false)),
        ]))
        .unwrap();
        let ids = tok.encode("hello world", true).unwrap().get_ids().to_vec();
        // No "▁" before "hello": it merges no further than "he" + "llo".
        assert_eq!(ids, [267, 270, 276, 2]);
        assert_eq!(tok.decode(&ids, true).unwrap(), "hello world");
    }

    #[test]
    fn merges_from_scores_follow_hf_ordering() {
        let tokens: Vec<String> = ["a", "b", "c", "ab", "bc", "abc"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let vocab: Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let merges = merges_from_scores(&tokens, &[0.0, 0.0, 0.0, -2.0, -1.0, -3.0], &vocab);
        let pair = |a: &str, b: &str| (a.to_owned(), b.to_owned());
        assert_eq!(
            merges,
            [
                pair("b", "c"),
                pair("a", "b"),
                // Equal scores: the longer left half first.
                pair("ab", "c"),
                pair("a", "bc"),
            ]
        );
        // All scores equal: lengths decide, then vocabulary order.
        let merges = merges_from_scores(&tokens, &[0.0; 6], &vocab);
        assert_eq!(
            merges,
            [
                pair("ab", "c"),
                pair("a", "bc"),
                pair("a", "b"),
                pair("b", "c"),
            ]
        );
    }

    #[test]
    fn bad_metadata_is_a_named_error() {
        let err = |meta: &[(&'static str, Value)]| {
            let path = Path::new("/models/broken.gguf");
            let map: BTreeMap<String, Value> = meta
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect();
            let Err(e) = tokenizer_from_metadata(&map, path) else {
                panic!("no error for {meta:?}");
            };
            let e = e.to_string();
            assert!(e.starts_with("/models/broken.gguf: "), "{e}");
            e
        };
        let model = |name: &str| ("tokenizer.ggml.model", Value::String(name.into()));
        let tokens = ("tokenizer.ggml.tokens", strings(["a", "b", "ab"]));
        let merges = ("tokenizer.ggml.merges", strings(["a b"]));

        let e = err(&[]);
        assert!(e.contains("no tokenizer.ggml.model"), "{e}");
        let e = err(&[model("rwkv"), tokens.clone()]);
        assert!(
            e.contains("\"rwkv\" is not supported")
                && e.contains("gpt2")
                && e.contains("tokenizer.json"),
            "{e}"
        );
        let e = err(&[model("gpt2")]);
        assert!(e.contains("no tokenizer.ggml.tokens"), "{e}");
        let e = err(&[model("gpt2"), tokens.clone()]);
        assert!(e.contains("no tokenizer.ggml.merges"), "{e}");
        let e = err(&[
            model("gpt2"),
            tokens.clone(),
            merges.clone(),
            ("tokenizer.ggml.pre", Value::String("chameleon".into())),
        ]);
        assert!(e.contains("\"chameleon\"") && e.contains("qwen2"), "{e}");
        let e = err(&[
            model("gpt2"),
            ("tokenizer.ggml.tokens", Value::Array(vec![Value::U32(7)])),
        ]);
        assert!(
            e.contains("tokenizer.ggml.tokens item 0 should be a string"),
            "{e}"
        );
        let e = err(&[
            model("gpt2"),
            ("tokenizer.ggml.tokens", strings(["a", "a"])),
        ]);
        assert!(e.contains("twice"), "{e}");
        let e = err(&[
            model("gpt2"),
            tokens.clone(),
            merges.clone(),
            (
                "tokenizer.ggml.token_type",
                Value::Array(vec![Value::I32(1)]),
            ),
        ]);
        assert!(e.contains("token_type has 1 items for 3 tokens"), "{e}");
        let e = err(&[
            model("gpt2"),
            tokens.clone(),
            merges.clone(),
            ("tokenizer.ggml.add_bos_token", Value::Bool(true)),
        ]);
        assert!(e.contains("bos_token_id is not set"), "{e}");
        let e = err(&[model("llama"), ("tokenizer.ggml.model", Value::U8(1))]);
        assert!(e.contains("tokenizer.ggml.model should be a string"), "{e}");

        // A merge of tokens the vocabulary lacks is dropped, not a failure.
        let map: BTreeMap<String, Value> = [
            model("gpt2"),
            tokens,
            ("tokenizer.ggml.merges", strings(["a b", "x y", "nospace"])),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let tok = tokenizer_from_metadata(&map, Path::new("ok.gguf")).unwrap();
        assert_eq!(tok.encode("ab", false).unwrap().get_ids(), [2]);
        // So is one whose result is not a token (and longer than every token).
        let map: BTreeMap<String, Value> = [
            model("gpt2"),
            ("tokenizer.ggml.tokens", strings(["a", "b"])),
            ("tokenizer.ggml.merges", strings(["a b"])),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let tok = tokenizer_from_metadata(&map, Path::new("ok.gguf")).unwrap();
        assert_eq!(tok.encode("ab", false).unwrap().get_ids(), [0, 1]);
    }
}
