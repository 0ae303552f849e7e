//! Plain text to token ids, the way the model's tokenizer is configured to (its post-processor
//! adds the special tokens, such as BOS, that the model was trained with). Conversations go
//! through [`super::chat_template`] first.

use tokenizers::Tokenizer;

use super::error::{ModelError, Result};

/// Tokenises `text` as the model's tokenizer is configured to (special tokens included).
pub fn encode(tokenizer: &Tokenizer, text: &str) -> Result<Vec<u32>> {
    let enc = tokenizer
        .encode(text, true)
        .map_err(|e| ModelError::msg(format!("cannot tokenise: {e}")))?;
    Ok(enc.get_ids().to_vec())
}
