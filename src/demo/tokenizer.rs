//! The demo's tokenizer: byte-level BPE (GPT-2 style pre-tokenisation, byte fallback through the
//! 256-symbol byte alphabet, so any UTF-8 text encodes and decodes exactly), trained with the
//! `tokenizers` crate and saved as a standard `tokenizer.json`.
//!
//! Ids 0 and 1 are the special tokens [`super::EOT`] (document separator) and [`super::PAD`].
//! No post-processor adds tokens: `encode(text, true)` gives exactly the text's tokens.

use std::path::Path;

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::TrainerWrapper;
use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::processors::byte_level::ByteLevel as ByteLevelProcessor;
use tokenizers::{AddedToken, Tokenizer};

use super::{DemoError, EOT, PAD, Result};

/// Trains a byte-level BPE tokenizer with `vocab_size` entries (specials and the 256 byte
/// symbols included) on `texts`.
pub fn train_bpe<I, S>(texts: I, vocab_size: usize) -> Result<Tokenizer>
where
    I: Iterator<Item = S> + Send,
    S: AsRef<str> + Send,
{
    if vocab_size < 258 + 2 {
        return Err(DemoError::msg(format!(
            "tokenizer vocabulary of {vocab_size} is too small (needs the 256 bytes, 2 specials and some merges)"
        )));
    }
    let mut tokenizer = Tokenizer::new(BPE::default());
    tokenizer.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
    tokenizer.with_decoder(Some(ByteLevelDecoder::new(false, true, true)));
    tokenizer.with_post_processor(Some(ByteLevelProcessor::new(false, true, true)));
    let specials = vec![AddedToken::from(EOT, true), AddedToken::from(PAD, true)];
    let trainer = BpeTrainerBuilder::new()
        .vocab_size(vocab_size)
        .min_frequency(2)
        .show_progress(false)
        .special_tokens(specials.clone())
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build();
    let mut trainer = TrainerWrapper::BpeTrainer(trainer);
    tokenizer
        .train(&mut trainer, texts)
        .map_err(|e| DemoError::msg(format!("tokenizer training failed: {e}")))?;
    tokenizer
        .add_special_tokens(specials)
        .map_err(|e| DemoError::msg(format!("cannot add the special tokens: {e}")))?;
    check_specials(&tokenizer)?;
    Ok(tokenizer)
}

/// Checks that the special tokens have the ids the demo relies on.
pub fn check_specials(tokenizer: &Tokenizer) -> Result<()> {
    for (tok, id) in [(EOT, 0u32), (PAD, 1u32)] {
        if tokenizer.token_to_id(tok) != Some(id) {
            return Err(DemoError::msg(format!(
                "tokenizer: special token {tok} should have id {id}, has {:?}",
                tokenizer.token_to_id(tok)
            )));
        }
    }
    Ok(())
}

/// Saves `tokenizer` as `path` (a standard `tokenizer.json`), atomically.
pub fn save(tokenizer: &Tokenizer, path: &Path) -> Result<()> {
    let json = tokenizer
        .to_string(true)
        .map_err(|e| DemoError::msg(format!("cannot serialise the tokenizer: {e}")))?;
    crate::io::write_atomic(path, json.as_bytes()).map_err(|e| DemoError::io(path, e))
}

/// Loads a `tokenizer.json`.
pub fn load(path: &Path) -> Result<Tokenizer> {
    let t = Tokenizer::from_file(path)
        .map_err(|e| DemoError::msg(format!("{}: cannot load tokenizer: {e}", path.display())))?;
    check_specials(&t)?;
    Ok(t)
}

/// Token ids of `text` (no special tokens added).
pub fn encode(tokenizer: &Tokenizer, text: &str) -> Result<Vec<u32>> {
    tokenizer
        .encode(text, false)
        .map(|e| e.get_ids().to_vec())
        .map_err(|e| DemoError::msg(format!("cannot tokenise: {e}")))
}

/// Token ids of many texts (in parallel where the crate parallelises).
pub fn encode_many(tokenizer: &Tokenizer, texts: Vec<String>) -> Result<Vec<Vec<u32>>> {
    let encs = tokenizer
        .encode_batch(texts, false)
        .map_err(|e| DemoError::msg(format!("cannot tokenise: {e}")))?;
    Ok(encs.into_iter().map(|e| e.get_ids().to_vec()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny_corpus() -> Vec<String> {
        let mut v = Vec::new();
        for i in 0..50 {
            v.push(format!(
                "In the beginning God created the heaven and the earth, verse {i}. \
                 fn main() {{ let x = {i}; println!(\"{{x}}\"); }}\n    def f(y):\n        return y * {i}\n"
            ));
        }
        v
    }

    #[test]
    fn trained_tokenizer_round_trips_text_and_reloads() {
        let tok = train_bpe(tiny_corpus().into_iter(), 400).unwrap();
        assert!(tok.get_vocab_size(true) <= 400);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        save(&tok, &path).unwrap();
        let back = load(&path).unwrap();
        for text in [
            "In the beginning God created the heaven",
            "fn main() {\n    let s = \"héllo — ünïcode ✓\";\n}\n",
            "  leading spaces,\ttabs\r\nand CRLF",
        ] {
            let ids = encode(&back, text).unwrap();
            assert!(!ids.is_empty());
            assert!(
                !ids.contains(&0) && !ids.contains(&1),
                "no specials in plain text"
            );
            assert_eq!(back.decode(&ids, false).unwrap(), text);
        }
        // Merges were learnt: a frequent word is one token or a few, not one per byte.
        assert!(encode(&back, " beginning").unwrap().len() <= 3);
        // The special token is one token.
        assert_eq!(back.encode(EOT, false).unwrap().get_ids(), &[0]);
        // Training is deterministic.
        let again = train_bpe(tiny_corpus().into_iter(), 400).unwrap();
        assert_eq!(
            again.to_string(false).unwrap(),
            tok.to_string(false).unwrap()
        );
    }
}
