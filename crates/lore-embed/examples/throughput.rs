//! Embedding throughput of a model on a pairs file, for each batching strategy.
//!
//! cargo run --release -p lore-embed --example throughput -- MODEL INPUT [LIMIT] [BATCH_SIZES]
//! e.g. ... -- minilm ../shared/data/polis/pairs.jsonl.gz 0 16,32,64
//!
//! Runs with `prefer_batch_parallelism()` (CANDLE_NUM_THREADS=1) unless LORE_CANDLE_THREADS is
//! set, to compare with candle's own thread pool.

use std::time::Instant;

use lore_embed::{
    embed_pairs, prefer_batch_parallelism, read_pairs, resolve_model, EmbedOptions, Model, Progress,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(model), Some(input)) = (args.first(), args.get(1)) else {
        return Err("usage: throughput MODEL INPUT [LIMIT] [BATCH_SIZES]".into());
    };
    let limit = args.get(2).and_then(|l| l.parse().ok()).filter(|&l| l > 0);
    let sizes: Vec<usize> = args
        .get(3)
        .map(|s| s.split(',').filter_map(|b| b.parse().ok()).collect())
        .unwrap_or_else(|| vec![32]);
    if std::env::var_os("LORE_CANDLE_THREADS").is_none() {
        prefer_batch_parallelism();
    }
    let started = Instant::now();
    let model = Model::load(resolve_model(model)?)?;
    println!("load: {:.2?}", started.elapsed());
    let started = Instant::now();
    let records = read_pairs(input, limit)?;
    println!("read {} pairs: {:.2?}", records.len(), started.elapsed());
    for &batch_size in &sizes {
        for parallel_batches in [true, false] {
            let options = EmbedOptions {
                batch_size,
                parallel_batches,
            };
            let started = Instant::now();
            let out = embed_pairs(
                model.embedder(),
                &records,
                &options,
                &|_: Progress| {},
                None,
            )?;
            let s = &out.stats;
            println!(
                "batch {batch_size:>3} parallel_batches {parallel_batches:<5}: {} texts ({} tokens) in {:.2} s model time = {:.1} texts/s; {:.2?} total",
                s.n_texts,
                s.n_tokens,
                s.embed_seconds,
                s.n_texts as f64 / s.embed_seconds,
                started.elapsed()
            );
        }
    }
    Ok(())
}
