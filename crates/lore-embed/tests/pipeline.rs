//! The pipeline on the tiny Llama reward model: dedup, batching, ids, progress, cancelling.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use lore_embed::{
    embed_pairs, EmbedError, EmbedOptions, Embedder, Location, PairRecord, Progress, RewardModel,
    Text,
};

fn model() -> RewardModel {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-llama-rm");
    RewardModel::load(&dir).unwrap_or_else(|e| panic!("fixture: {e}"))
}

fn record(line: usize, user: &str, prompt: &str, chosen: &str, rejected: &str) -> PairRecord {
    PairRecord {
        user_id: user.into(),
        prompt: Text::from(prompt),
        chosen: Text::from(chosen),
        rejected: Text::from(rejected),
        prompt_id: None,
        pair_id: None,
        split: None,
        at: Location::Line(line),
    }
}

fn records() -> Vec<PairRecord> {
    let p = "What principles should an AI chatbot follow?";
    let a = "The AI should be as helpful to the user as possible.";
    let b = "Banning bottled water would hurt an already struggling economy.";
    let c = "Be honest.";
    vec![
        record(1, "zoe", p, a, b),
        record(2, "adam", p, b, c),
        record(3, "zoe", p, c, a),
        record(4, "bob", "Other prompt", a, b),
        record(5, "adam", p, a, b),
    ]
}

fn no_progress(_: Progress) {}

#[test]
fn rows_are_differences_of_distinct_texts() {
    let model = model();
    let records = records();
    let out = embed_pairs(
        &model,
        &records,
        &EmbedOptions::default(),
        &no_progress,
        None,
    )
    .unwrap();
    assert_eq!(out.n_pairs(), 5);
    assert_eq!(out.dim, 64);
    // Three responses to p, two to the other prompt.
    assert_eq!(out.stats.n_texts, 5);
    assert_eq!(out.stats.n_sides, 10);
    assert_eq!(out.user_ids, ["zoe", "adam", "bob"], "first-seen order");
    assert_eq!(out.user, [0, 1, 0, 2, 1]);
    assert_eq!(out.chosen[0], out.chosen[4]);
    assert!(out.prompt.is_none() && out.pair_ids.is_none() && out.split.is_none());

    let x = out.differences();
    let (chosen, rejected) = (out.chosen_rows(), out.rejected_rows());
    for (row, r) in records.iter().enumerate() {
        let c = model.render(&r.prompt, &r.chosen).unwrap();
        let j = model.render(&r.prompt, &r.rejected).unwrap();
        let v = model.embed(&[&c, &j]).unwrap();
        for (f, (c, j)) in v[0].iter().zip(&v[1]).enumerate() {
            let i = row * 64 + f;
            assert!((chosen[i] - c).abs() < 1e-5);
            assert!((rejected[i] - j).abs() < 1e-5);
            assert!((x[i] - (c - j)).abs() < 1e-5);
        }
    }
}

#[test]
fn batching_and_threads_do_not_change_features() {
    let model = model();
    let records = records();
    let reference = embed_pairs(
        &model,
        &records,
        &EmbedOptions {
            batch_size: 1,
            parallel_batches: false,
        },
        &no_progress,
        None,
    )
    .unwrap();
    for options in [
        EmbedOptions {
            batch_size: 2,
            parallel_batches: true,
        },
        EmbedOptions {
            batch_size: 64,
            parallel_batches: false,
        },
    ] {
        let out = embed_pairs(&model, &records, &options, &no_progress, None).unwrap();
        let d = out
            .differences()
            .iter()
            .zip(reference.differences())
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(d < 1e-5, "{options:?}: {d}");
    }
}

#[test]
fn pass_through_ids() {
    let model = model();
    let mut records = records();
    for (i, r) in records.iter_mut().enumerate() {
        r.prompt_id = Some(if i == 3 { "q2" } else { "q1" }.into());
        r.pair_id = Some(format!("pair-{i}"));
        r.split = Some(if i % 2 == 0 { "train" } else { "test" }.into());
    }
    let out = embed_pairs(
        &model,
        &records,
        &EmbedOptions::default(),
        &no_progress,
        None,
    )
    .unwrap();
    assert_eq!(out.prompt.as_deref(), Some(&[0, 0, 0, 1, 0][..]));
    assert_eq!(
        out.prompt_ids.as_deref(),
        Some(&["q1".to_string(), "q2".to_string()][..])
    );
    assert_eq!(out.pair_ids.as_ref().unwrap()[4], "pair-4");
    assert_eq!(out.split.as_ref().unwrap()[1], "test");

    records[2].split = None;
    let err = embed_pairs(
        &model,
        &records,
        &EmbedOptions::default(),
        &no_progress,
        None,
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "column `split` is set at line 1 but missing at line 3 (give it for every pair or for none)"
    );
}

#[test]
fn progress_reaches_the_total() {
    let model = model();
    let seen = Mutex::new(Vec::new());
    let progress = |p: Progress| seen.lock().unwrap().push(p);
    embed_pairs(
        &model,
        &records(),
        &EmbedOptions {
            batch_size: 2,
            parallel_batches: true,
        },
        &progress,
        None,
    )
    .unwrap();
    let seen = seen.into_inner().unwrap();
    assert_eq!(seen.first(), Some(&Progress { done: 0, total: 5 }));
    assert_eq!(seen.iter().map(|p| p.done).max(), Some(5));
    assert_eq!(seen.len(), 1 + 3, "one call per batch of 2 out of 5 texts");
}

#[test]
fn cancel_stops_the_run() {
    let model = model();
    let cancel = AtomicBool::new(false);
    let calls = AtomicUsize::new(0);
    let progress = |_: Progress| {
        if calls.fetch_add(1, Ordering::Relaxed) == 1 {
            cancel.store(true, Ordering::Relaxed);
        }
    };
    let options = EmbedOptions {
        batch_size: 1,
        parallel_batches: false,
    };
    let err = embed_pairs(&model, &records(), &options, &progress, Some(&cancel)).unwrap_err();
    assert!(matches!(err, EmbedError::Interrupted));
}

#[test]
fn empty_input_and_zero_batch_are_errors() {
    let model = model();
    let err = embed_pairs(&model, &[], &EmbedOptions::default(), &no_progress, None).unwrap_err();
    assert_eq!(err.to_string(), "no pairs to embed");
    let options = EmbedOptions {
        batch_size: 0,
        parallel_batches: true,
    };
    assert!(embed_pairs(&model, &records(), &options, &no_progress, None).is_err());
}
