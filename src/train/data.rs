//! Training text: rows of a dataset turned into token sequences, and the deterministic order
//! they are fed in.
//!
//! Plain datasets train on their text column. A `.txt` file with blank lines is a corpus of
//! documents separated by them (as the demo corpus's `train/*.txt`): one text per document,
//! subject = file stem; without blank lines it is a prompt file (one text per line).
//! Multiple-choice datasets (MMLU / MMLU-Pro layouts) train on the question and its lettered
//! options followed by the answer cue and the correct letter, exactly the text the evaluation
//! scores.
//!
//! Conversational datasets (a `messages` column of `{role, content}` messages, or ShareGPT's
//! `conversations`; see [`crate::data`]) train on each conversation rendered with the model's
//! own chat template ([`ChatTemplate`]; the plain `"role: content"` layout for a model without
//! one), and the loss covers every token of the rendering — system and user turns and the
//! template's markup included, as TRL's SFT trainer does for conversational data when
//! assistant-only loss is off. A rendering cut at `max_tokens` loses its end.
//!
//! Micro-batch `i` of the run is a pure
//! function of (seed, i): epoch `i / batches_per_epoch` is a seeded shuffle, so a resumed run
//! sees the same batches an uninterrupted one would.

use std::path::Path;

use rand::SeedableRng;
use rand::seq::SliceRandom;
use tokenizers::Tokenizer;

use super::{Result, TrainError};
use crate::data::{DataOptions, PromptSet, dataset_columns, load_prompts};
use crate::inference::eval::{ANSWER_CUE, letter, load_items};
use crate::model::ChatTemplate;
use crate::model::lora::mix_seed;

/// Training texts, in file order, each with its subject (the file's name for a dataset
/// without a subject column: training needs no subjects).
pub fn load_texts(path: &Path, opts: &DataOptions) -> Result<PromptSet> {
    let opts = &DataOptions {
        subject_optional: true,
        ..opts.clone()
    };
    if let Some(mut set) = load_documents(path)? {
        if let Some(n) = opts.max_per_subject {
            set.limit_per_subject(n);
        }
        return Ok(set);
    }
    let columns = dataset_columns(path)?;
    let has = |name: &str| columns.iter().any(|c| c.eq_ignore_ascii_case(name));
    let conversation = ["messages", "conversations", "conversation"]
        .iter()
        .any(|c| has(c));
    let multiple_choice = opts.text_column.is_none()
        && !conversation
        && has("question")
        && (has("options") || has("choices"))
        && (has("answer") || has("answer_index"));
    if !multiple_choice {
        return Ok(load_prompts(path, opts)?);
    }
    let items = load_items(path, &[], None).map_err(|e| TrainError::Invalid(e.to_string()))?;
    let mut set = PromptSet {
        prompts: items
            .into_iter()
            .map(|item| {
                let text = format!("{}{ANSWER_CUE} {}", item.prompt, letter(item.answer));
                crate::data::Prompt::plain(item.subject, text)
            })
            .collect(),
        source: path.display().to_string(),
    };
    if let Some(n) = opts.max_per_subject {
        set.limit_per_subject(n);
    }
    Ok(set)
}

/// A `.txt` file holding documents separated by blank lines, one text per document (lines
/// inside a document joined by newlines), subject = file stem. `None` for other files and for
/// a `.txt` without blank lines or that is not UTF-8 (the prompt-file loader reads those and
/// names the offending line).
fn load_documents(path: &Path) -> Result<Option<PromptSet>> {
    let is_txt = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("txt"));
    if !is_txt || !path.is_file() {
        return Ok(None);
    }
    let bytes = std::fs::read(path)
        .map_err(|e| TrainError::Io(format!("{}: cannot read: {e}", path.display())))?;
    let Ok(text) = std::str::from_utf8(&bytes) else {
        return Ok(None);
    };
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let blank = |l: &str| l.trim().is_empty();
    let lines: Vec<&str> = text.lines().collect();
    let first = lines.iter().position(|l| !blank(l));
    let last = lines.iter().rposition(|l| !blank(l));
    let separated = match (first, last) {
        (Some(a), Some(b)) => lines[a..b].iter().any(|l| blank(l)),
        _ => false,
    };
    if !separated {
        return Ok(None);
    }
    let subject = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let prompts = lines
        .split(|l| blank(l))
        .filter(|doc| !doc.is_empty())
        .map(|doc| crate::data::Prompt::plain(subject.clone(), doc.join("\n")))
        .collect();
    Ok(Some(PromptSet {
        prompts,
        source: path.display().to_string(),
    }))
}

/// Tokenises every text (special tokens as the tokenizer adds them; a conversation rendered
/// with `chat_template` first, see [`ChatTemplate::encode_prompt`]), cut to `max_tokens`;
/// sequences under two tokens (nothing to predict) are dropped.
pub fn tokenise(
    tokenizer: &Tokenizer,
    chat_template: &ChatTemplate,
    texts: &PromptSet,
    max_tokens: usize,
) -> Result<Vec<Vec<u32>>> {
    let mut out = Vec::with_capacity(texts.len());
    for (i, p) in texts.prompts.iter().enumerate() {
        let mut ids = chat_template.encode_prompt(tokenizer, p).map_err(|e| {
            TrainError::Invalid(format!(
                "{}: text {} (subject '{}'): {e}",
                texts.source,
                i + 1,
                p.subject
            ))
        })?;
        ids.truncate(max_tokens);
        if ids.len() >= 2 {
            out.push(ids);
        }
    }
    if out.is_empty() {
        return Err(TrainError::Invalid(format!(
            "{}: no training text (every row is shorter than two tokens)",
            texts.source
        )));
    }
    Ok(out)
}

/// Which sequences make up each micro-batch.
#[derive(Debug, Clone)]
pub struct BatchPlan {
    pub num_sequences: usize,
    pub batch_size: usize,
    pub seed: u64,
}

impl BatchPlan {
    pub fn batches_per_epoch(&self) -> usize {
        self.num_sequences.div_ceil(self.batch_size.max(1))
    }

    /// Sequence indices of global micro-batch `index` (epochs follow each other).
    pub fn micro_batch(&self, index: u64) -> Vec<usize> {
        let per_epoch = self.batches_per_epoch().max(1) as u64;
        let epoch = index / per_epoch;
        let pos = (index % per_epoch) as usize;
        let mut order: Vec<usize> = (0..self.num_sequences).collect();
        let mut rng = rand::rngs::StdRng::seed_from_u64(mix_seed(self.seed, epoch));
        order.shuffle(&mut rng);
        let start = pos * self.batch_size;
        order[start..(start + self.batch_size).min(self.num_sequences)].to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_text_file_with_blank_lines_is_a_corpus_of_documents() {
        let dir = tempfile::tempdir().unwrap();
        let corpus = dir.path().join("law.txt");
        std::fs::write(
            &corpus,
            "\u{feff}Q one\r\nAnswer: A\r\n\r\n\n  \nQ two\nAnswer: B\n\n",
        )
        .unwrap();
        let set = load_texts(&corpus, &DataOptions::default()).unwrap();
        let texts: Vec<_> = set.prompts.iter().map(|p| p.text.as_str()).collect();
        assert_eq!(texts, ["Q one\nAnswer: A", "Q two\nAnswer: B"]);
        assert!(set.prompts.iter().all(|p| p.subject == "law"));
        let capped = DataOptions {
            max_per_subject: Some(1),
            ..DataOptions::default()
        };
        assert_eq!(load_texts(&corpus, &capped).unwrap().len(), 1);

        // Without blank lines a .txt is a prompt file: one text per line.
        let prompts = dir.path().join("math.txt");
        std::fs::write(&prompts, "1+1\n2+2\n").unwrap();
        let set = load_texts(&prompts, &DataOptions::default()).unwrap();
        assert_eq!(set.len(), 2);
        assert_eq!(set.prompts[1].text, "2+2");
    }

    #[test]
    fn every_epoch_visits_every_sequence_once_in_a_seeded_order() {
        let plan = BatchPlan {
            num_sequences: 10,
            batch_size: 4,
            seed: 5,
        };
        assert_eq!(plan.batches_per_epoch(), 3);
        for epoch in 0..2u64 {
            let mut seen: Vec<usize> = (0..3)
                .flat_map(|b| plan.micro_batch(epoch * 3 + b))
                .collect();
            assert_eq!(plan.micro_batch(epoch * 3 + 2).len(), 2);
            seen.sort();
            assert_eq!(seen, (0..10).collect::<Vec<_>>());
        }
        assert_eq!(plan.micro_batch(4), plan.micro_batch(4));
        assert_ne!(
            plan.micro_batch(0),
            plan.micro_batch(3),
            "epochs are reshuffled"
        );
    }

    #[test]
    fn conversations_train_under_their_subject_or_the_file_name() {
        let dir = tempfile::tempdir().unwrap();
        let chat = dir.path().join("support.jsonl");
        std::fs::write(
            &chat,
            concat!(
                r#"{"messages": [{"role": "user", "content": "Reset my password"}, {"role": "assistant", "content": "Use the link."}]}"#,
                "\n",
                r#"{"messages": [{"role": "user", "content": "Thanks"}, {"role": "assistant", "content": "Glad to help."}]}"#,
                "\n"
            ),
        )
        .unwrap();
        let set = load_texts(&chat, &DataOptions::default()).unwrap();
        assert_eq!(set.len(), 2);
        assert!(set.has_conversations());
        assert!(set.prompts.iter().all(|p| p.subject == "support"));
        let err = crate::data::load_prompts(&chat, &DataOptions::default()).unwrap_err();
        assert!(err.to_string().contains("--subject-column"), "{err}");

        let labelled = dir.path().join("labelled.jsonl");
        std::fs::write(
            &labelled,
            r#"{"category": "billing", "conversations": [{"from": "human", "value": "Refund?"}, {"from": "gpt", "value": "Done."}]}"#,
        )
        .unwrap();
        let set = load_texts(&labelled, &DataOptions::default()).unwrap();
        assert_eq!(set.subjects(), ["billing"]);
        assert_eq!(set.prompts[0].text, "user: Refund?\nassistant: Done.");
    }

    #[test]
    fn a_conversation_is_tokenised_as_its_rendering() {
        let tokenizer = Tokenizer::from_file(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/models/olmoe/tokenizer.json"),
        )
        .unwrap();
        let encode = |text: &str| crate::model::tokenize::encode(&tokenizer, text).unwrap();
        let chatml = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";
        let template = ChatTemplate::compile(chatml, Default::default(), "chatml").unwrap();
        let conversation = vec![
            crate::data::ChatMessage::new("user", "Hi"),
            crate::data::ChatMessage::new("assistant", "Hello there"),
        ];
        let set = PromptSet {
            prompts: vec![
                crate::data::Prompt::conversation("chat", conversation),
                crate::data::Prompt::plain("chat", "The court held."),
            ],
            source: "mem".into(),
        };
        let seqs = tokenise(&tokenizer, &template, &set, 1000).unwrap();
        assert_eq!(
            seqs[0],
            encode(
                "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello there<|im_end|>\n"
            )
        );
        assert_eq!(seqs[1], encode("The court held."));

        // Without a template: the plain layout.
        let seqs = tokenise(&tokenizer, &ChatTemplate::none(), &set, 1000).unwrap();
        assert_eq!(seqs[0], encode("user: Hi\nassistant: Hello there"));

        // A template that refuses the conversation names the text.
        let strict = ChatTemplate::compile(
            "{{ raise_exception('System message required') }}",
            Default::default(),
            "strict",
        )
        .unwrap();
        let err = tokenise(&tokenizer, &strict, &set, 1000)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("mem: text 1 (subject 'chat')") && err.contains("System message required"),
            "{err}"
        );
    }

    #[test]
    fn text_only_datasets_train_under_the_file_name() {
        let dir = tempfile::tempdir().unwrap();
        let jsonl = dir.path().join("law.jsonl");
        std::fs::write(
            &jsonl,
            "{\"text\": \"The court held.\"}\n{\"text\": \"Appeal allowed.\"}\n",
        )
        .unwrap();
        let csv = dir.path().join("notes.csv");
        std::fs::write(&csv, "text\nfirst line\nsecond line\n").unwrap();
        for (path, subject) in [(&jsonl, "law"), (&csv, "notes")] {
            let set = load_texts(path, &DataOptions::default()).unwrap();
            assert_eq!(set.len(), 2, "{}", path.display());
            assert!(set.prompts.iter().all(|p| p.subject == subject));
        }
        // Profiles still need subjects: the same file is an error there, naming the fix.
        let err = crate::data::load_prompts(&jsonl, &DataOptions::default()).unwrap_err();
        assert!(err.to_string().contains("--subject-column"), "{err}");
    }
}
