//! The f32-arithmetic kernels of a pass alone, one thread: S = X V and a user's weighted row
//! sum X_u^T d (the gradient's one pass over the rows) on one 30-row block again and again (in
//! L2; `scores`, `sum`), or both streamed over 30,000 rows of 4096 features (`stream`, the
//! next block fetched on the way unless NOPF is set; PFSPLIT=scores|sum puts all of it in one
//! kernel), from f32 or bf16 rows; F from the environment (F=4096).
//! Run: cargo run --release -p lore-core --example narrow_probe -- [scores|sum|stream] [K] [f32|bf16]
use lore_core::kernels::BlockKernels;
use std::time::Instant;

fn main() {
    let mode = std::env::args().nth(1).unwrap_or_else(|| "stream".into());
    let k: usize = std::env::args()
        .nth(2)
        .map(|a| a.parse().expect("K must be a number"))
        .unwrap_or(5);
    let bf16 = std::env::args().nth(3).is_some_and(|d| d == "bf16");
    let prefetch = std::env::var_os("NOPF").is_none();
    let f: usize = std::env::var("F").map_or(4096, |v| v.parse().expect("F must be a number"));
    let (total_rows, block) = (30_000 * 4096 / f, 30);
    let kernels = BlockKernels::new(f, k);
    let bits: Vec<u16> = (0..total_rows * f)
        .map(|i| 0x3f80u16 + (i % 97) as u16)
        .collect();
    let x: Vec<f32> = bits
        .iter()
        .map(|&b| f32::from_bits((b as u32) << 16))
        .collect();
    let basis: Vec<f32> = (0..f * k).map(|i| ((i % 13) as f32 - 6.0) * 0.01).collect();
    let mut packed = vec![0.0f32; kernels.packed_len()];
    kernels.pack_basis(&basis, &mut packed);
    let stride = kernels.score_stride();
    let mut s = vec![0.0f32; block * stride];
    let d = vec![0.01f32; block];
    let mut g = vec![0.0f32; f];
    let flops = 2.0 * (block * f * k) as f64;
    let sum_flops = 2.0 * (block * f) as f64;
    let bytes = |range: std::ops::Range<usize>| -> &[u8] {
        if !prefetch || range.end > total_rows * f {
            return &[];
        }
        let n = range.len();
        unsafe {
            if bf16 {
                std::slice::from_raw_parts(bits[range].as_ptr() as *const u8, 2 * n)
            } else {
                std::slice::from_raw_parts(x[range].as_ptr() as *const u8, 4 * n)
            }
        }
    };
    let pass = |b: usize, s: &mut [f32], g: &mut [f32], score: bool, gradient: bool| {
        let rows = b * block * f..(b + 1) * block * f;
        let next = (b + 1) * block * f..(b + 2) * block * f;
        let ahead = bytes(next);
        let split = match std::env::var("PFSPLIT").as_deref() {
            Ok("scores") => ahead.len(),
            Ok("sum") => 0,
            _ => ahead.len() / 2,
        };
        let (first, second) = ahead.split_at(split);
        if bf16 {
            if score {
                kernels.scores_bf16(&bits[rows.clone()], &packed, s, first);
            }
            if gradient {
                kernels.weighted_row_sum_bf16(&bits[rows], &d, g, second);
            }
        } else {
            if score {
                kernels.scores(&x[rows.clone()], &packed, s, first);
            }
            if gradient {
                kernels.weighted_row_sum(&x[rows], &d, g, second);
            }
        }
    };
    let start = Instant::now();
    let work = match mode.as_str() {
        "scores" => {
            for _ in 0..20_000 {
                pass(0, &mut s, &mut g, true, false);
            }
            flops * 20_000.0
        }
        "sum" => {
            for _ in 0..20_000 {
                pass(0, &mut s, &mut g, false, true);
            }
            sum_flops * 20_000.0
        }
        _ => {
            for _ in 0..20 {
                for b in 0..total_rows / block {
                    pass(b, &mut s, &mut g, true, true);
                }
            }
            (flops + sum_flops) * (20 * total_rows / block) as f64
        }
    };
    let seconds = start.elapsed().as_secs_f64();
    println!(
        "{mode} K={k} {}: {:.1} GFLOP/s",
        if bf16 { "bf16" } else { "f32" },
        work / seconds / 1e9
    );
    std::hint::black_box((&s, &g));
}
