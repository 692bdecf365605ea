//! The mixed-precision (`--precision bf16`) kernels alone, one thread, 4096 features: S = X V
//! on one 30-row block again and again (so it stays in L2; `scores`), or streamed over 30,000
//! rows with each 30-row user's weighted row sum (the gradient's pass over the rows; `stream`,
//! the next block fetched on the way unless NOPF is set), as GFLOP/s.
//! Run: cargo run --release -p lore-core --example mixed_probe -- [scores|stream] [K]
use lore_core::kernels::BlockKernels;
use std::time::Instant;

fn main() {
    let mode = std::env::args().nth(1).unwrap_or_else(|| "stream".into());
    let prefetch = std::env::var_os("NOPF").is_none();
    let k: usize = std::env::args()
        .nth(2)
        .map(|a| a.parse().expect("K must be a number"))
        .unwrap_or(25);
    let (f, total_rows) = (4096, 30_000);
    let block: usize = std::env::var("BLOCK")
        .map(|b| b.parse().unwrap())
        .unwrap_or(30);
    let Some(kernels) = BlockKernels::mixed_bf16(f, k) else {
        println!("this CPU has no AVX512-BF16 (or K is beyond 64)");
        return;
    };
    // bf16 values near 1 (the bit patterns of 1.0 and up); their size does not matter here.
    let x: Vec<u16> = (0..total_rows * f)
        .map(|i| 0x3f80u16 + (i % 97) as u16)
        .collect();
    let basis: Vec<f32> = (0..f * k).map(|i| ((i % 13) as f32 - 6.0) * 0.01).collect();
    let mut packed = vec![0.0f32; kernels.packed_len()];
    kernels.pack_basis(&basis, &mut packed);
    let stride = kernels.score_stride();
    let mut s = vec![0.0f32; block * stride];
    // The gradient's pass over the rows: each 30-row user's weighted row sum, in f32.
    let sums = kernels.gradient_kernels();
    let d = vec![0.01f32; block];
    let mut g = vec![0.0f32; f];
    let flops = 2.0 * (block * f * k) as f64;
    let sum_flops = 2.0 * (block * f) as f64;
    let first = &x[..block * f];
    let start = Instant::now();
    let work = match mode.as_str() {
        "scores" => {
            for _ in 0..20_000 {
                kernels.scores_mixed(first, &packed, &mut s, &[]);
            }
            flops * 20_000.0
        }
        _ => {
            for _ in 0..20 {
                let blocks: Vec<&[u16]> = x.chunks_exact(block * f).collect();
                for (b, rows) in blocks.iter().enumerate() {
                    // The next block's rows, fetched on the way (half in each kernel).
                    let next: &[u16] = match blocks.get(b + 1) {
                        Some(next) if prefetch => next,
                        _ => &[],
                    };
                    let next = unsafe {
                        std::slice::from_raw_parts(next.as_ptr() as *const u8, 2 * next.len())
                    };
                    let (first, second) = next.split_at(next.len() / 2);
                    kernels.scores_mixed(rows, &packed, &mut s, first);
                    let per_user = second.len().div_ceil(block / 30);
                    for (u, user) in rows.chunks(30 * f).enumerate() {
                        let ahead = second.get(u * per_user..).unwrap_or(&[]);
                        let ahead = &ahead[..per_user.min(ahead.len())];
                        sums.weighted_row_sum_bf16(user, &d[..user.len() / f], &mut g, ahead);
                    }
                }
            }
            (flops + sum_flops) * (20 * total_rows / block) as f64
        }
    };
    let seconds = start.elapsed().as_secs_f64();
    println!("{mode} K={k}: {:.1} GFLOP/s", work / seconds / 1e9);
    std::hint::black_box((&s, &g));
}
