//! The twelve-domain demo corpus (as `scripts/build_demo_corpus.sh` writes it): `train/<d>.txt`
//! training text (documents separated by a blank line), `prompts/<d>.txt` held-out prompts in
//! the bundled prompt format, `SOURCES.tsv` with each source's licence.
//!
//! Training draws **domain-balanced batches**: every step takes the same number of fixed-length
//! chunks from every domain, each at a random offset of that domain's token stream. The offsets
//! come from an RNG seeded by `(seed, step)`, so a batch depends only on the seed and the step
//! number: runs are reproducible and a resumed run sees exactly the batches it would have seen.

use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokenizers::Tokenizer;

use super::{DemoError, Result};

/// One domain's raw training text.
#[derive(Debug, Clone)]
pub struct DomainText {
    pub name: String,
    pub text: String,
}

/// The corpus folder's parts.
#[derive(Debug, Clone)]
pub struct CorpusDir {
    pub root: PathBuf,
}

impl CorpusDir {
    /// Checks that `root` has `train/`, `prompts/` and `SOURCES.tsv`, and that every training
    /// domain has its prompt file.
    pub fn open(root: &Path) -> Result<Self> {
        let c = Self {
            root: root.to_path_buf(),
        };
        for p in [c.train_dir(), c.prompts_dir()] {
            if !p.is_dir() {
                return Err(DemoError::msg(format!(
                    "{}: missing; a demo corpus has train/, prompts/ and SOURCES.tsv \
                     (build one with scripts/build_demo_corpus.sh)",
                    p.display()
                )));
            }
        }
        if !c.sources().is_file() {
            return Err(DemoError::msg(format!(
                "{}: missing",
                c.sources().display()
            )));
        }
        for d in c.domain_names()? {
            let p = c.prompts_dir().join(format!("{d}.txt"));
            if !p.is_file() {
                return Err(DemoError::msg(format!(
                    "{}: missing (domain {d} has training text)",
                    p.display()
                )));
            }
        }
        Ok(c)
    }

    pub fn train_dir(&self) -> PathBuf {
        self.root.join("train")
    }

    pub fn prompts_dir(&self) -> PathBuf {
        self.root.join("prompts")
    }

    pub fn sources(&self) -> PathBuf {
        self.root.join("SOURCES.tsv")
    }

    /// Domain names (the stems of `train/*.txt`), sorted.
    pub fn domain_names(&self) -> Result<Vec<String>> {
        let dir = self.train_dir();
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(|e| DemoError::io(&dir, e))? {
            let path = entry.map_err(|e| DemoError::io(&dir, e))?.path();
            if path.extension().is_some_and(|e| e == "txt")
                && let Some(stem) = path.file_stem().and_then(|s| s.to_str())
                && !stem.starts_with('.')
            {
                names.push(stem.to_string());
            }
        }
        names.sort();
        if names.is_empty() {
            return Err(DemoError::msg(format!(
                "{}: no <domain>.txt files",
                dir.display()
            )));
        }
        Ok(names)
    }

    /// Every domain's training text.
    pub fn read_train(&self) -> Result<Vec<DomainText>> {
        self.domain_names()?
            .into_iter()
            .map(|name| {
                let p = self.train_dir().join(format!("{name}.txt"));
                let text = std::fs::read_to_string(&p).map_err(|e| DemoError::io(&p, e))?;
                if text.trim().is_empty() {
                    return Err(DemoError::msg(format!("{}: empty", p.display())));
                }
                Ok(DomainText { name, text })
            })
            .collect()
    }
}

/// Splits text into documents at blank lines, each keeping its trailing separator, so the
/// pieces concatenate back to the text.
pub fn documents(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    while let Some(pos) = text[start..].find("\n\n") {
        let end = start + pos + 2;
        out.push(&text[start..end]);
        start = end;
    }
    if start < text.len() {
        out.push(&text[start..]);
    }
    out
}

/// The text the tokenizer is trained on: up to `cap_chars` of every domain (whole documents),
/// so large domains do not dominate the vocabulary.
pub fn tokenizer_sample(domains: &[DomainText], cap_chars: usize) -> Vec<String> {
    let mut out = Vec::new();
    for d in domains {
        let mut taken = 0;
        for doc in documents(&d.text) {
            if taken >= cap_chars {
                break;
            }
            taken += doc.len();
            out.push(doc.to_string());
        }
    }
    out
}

/// One domain's training tokens, one stream.
#[derive(Debug, Clone)]
pub struct DomainTokens {
    pub name: String,
    pub ids: Vec<u32>,
}

/// The tokenised corpus.
#[derive(Debug, Clone)]
pub struct TokenCorpus {
    pub domains: Vec<DomainTokens>,
}

impl TokenCorpus {
    /// Tokenises every domain (documents encoded separately and concatenated).
    pub fn tokenise(domains: &[DomainText], tokenizer: &Tokenizer) -> Result<Self> {
        let mut out = Vec::with_capacity(domains.len());
        for d in domains {
            let docs: Vec<String> = documents(&d.text).into_iter().map(str::to_string).collect();
            let ids: Vec<u32> = super::tokenizer::encode_many(tokenizer, docs)?.concat();
            out.push(DomainTokens {
                name: d.name.clone(),
                ids,
            });
        }
        Ok(Self { domains: out })
    }

    pub fn total_tokens(&self) -> usize {
        self.domains.iter().map(|d| d.ids.len()).sum()
    }

    /// Checks every domain has enough tokens for chunks of `len + 1`.
    pub fn check_len(&self, len: usize) -> Result<()> {
        for d in &self.domains {
            if d.ids.len() < len + 2 {
                return Err(DemoError::msg(format!(
                    "domain {} has {} tokens, fewer than one training chunk of {}",
                    d.name,
                    d.ids.len(),
                    len + 1
                )));
            }
        }
        Ok(())
    }

    /// The batch of training step `step`: `per_domain` chunks of `len + 1` tokens from every
    /// domain (domain-major order). Returns `(inputs, targets)`, each `[domains·per_domain, len]`
    /// row-major, targets shifted by one.
    pub fn batch(
        &self,
        seed: u64,
        step: u64,
        per_domain: usize,
        len: usize,
    ) -> (Vec<u32>, Vec<u32>) {
        let mut rng = step_rng(seed, step);
        let rows = self.domains.len() * per_domain;
        let mut inputs = Vec::with_capacity(rows * len);
        let mut targets = Vec::with_capacity(rows * len);
        for d in &self.domains {
            for _ in 0..per_domain {
                let start = rng.random_range(0..d.ids.len() - len);
                let chunk = &d.ids[start..start + len + 1];
                inputs.extend_from_slice(&chunk[..len]);
                targets.extend_from_slice(&chunk[1..]);
            }
        }
        (inputs, targets)
    }
}

/// The RNG of one training step: a function of the seed and the step only.
pub fn step_rng(seed: u64, step: u64) -> StdRng {
    StdRng::seed_from_u64(
        seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ step.wrapping_mul(0xD1B5_4A32_D192_ED03),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_concatenate_back() {
        let t = "a b\n\nc\n\n\nd";
        let docs = documents(t);
        assert_eq!(docs, vec!["a b\n\n", "c\n\n", "\nd"]);
        assert_eq!(docs.concat(), t);
    }

    #[test]
    fn batches_are_balanced_and_depend_only_on_seed_and_step() {
        let c = TokenCorpus {
            domains: vec![
                DomainTokens {
                    name: "a".into(),
                    ids: (0..100).collect(),
                },
                DomainTokens {
                    name: "b".into(),
                    ids: (1000..1050).collect(),
                },
            ],
        };
        let (x, y) = c.batch(7, 3, 2, 8);
        assert_eq!(x.len(), 4 * 8);
        assert!(x[..16].iter().all(|&i| i < 100) && x[16..].iter().all(|&i| i >= 1000));
        for r in 0..4 {
            assert_eq!(&x[r * 8 + 1..r * 8 + 8], &y[r * 8..r * 8 + 7]);
        }
        assert_eq!(c.batch(7, 3, 2, 8), (x.clone(), y));
        assert_ne!(c.batch(7, 4, 2, 8).0, x);
        assert_ne!(c.batch(8, 3, 2, 8).0, x);
    }
}
