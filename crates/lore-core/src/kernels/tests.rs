use super::*;

fn pseudo_random(n: usize, seed: u32) -> Vec<f32> {
    let mut state = seed.wrapping_mul(2654435761).wrapping_add(1);
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            (state % 2001) as f32 / 1000.0 - 1.0
        })
        .collect()
}

#[test]
fn scores_match_scalar_reference() {
    let (rows, f, k) = (7, 13, 5);
    let x = pseudo_random(rows * f, 1);
    let v = pseudo_random(f * k, 2);
    let mut s = vec![f32::NAN; rows * k];
    portable::scores(&x, f, &v, k, &mut s);
    for r in 0..rows {
        for j in 0..k {
            let expect: f64 = (0..f)
                .map(|i| x[r * f + i] as f64 * v[i * k + j] as f64)
                .sum();
            assert!((s[r * k + j] as f64 - expect).abs() < 1e-5);
        }
    }
}

#[test]
fn gradient_matches_scalar_reference() {
    let (rows, f, k) = (6, 11, 3);
    let x = pseudo_random(rows * f, 3);
    let r = pseudo_random(rows * k, 4);
    let mut g = vec![0.5f32; f * k];
    portable::accumulate_gradient(&x, f, &r, k, &mut g);
    for i in 0..f {
        for j in 0..k {
            let expect: f64 = 0.5
                + (0..rows)
                    .map(|t| x[t * f + i] as f64 * r[t * k + j] as f64)
                    .sum::<f64>();
            assert!((g[i * k + j] as f64 - expect).abs() < 1e-5);
        }
    }
}

/// The mixed-precision kernels against f64 sums of the bf16-rounded operands, over ranks
/// that run padded and split layouts and shapes with row, feature and pair remainders.
#[test]
fn mixed_kernels_match_rounded_products() {
    let round = |v: f32| half::bf16::from_f32(v).to_f32();
    for k in [1, 5, 16, 17, 24, 25, 30, 33, 40, 41, 48, 50, 57, 64] {
        for (rows, f) in [(1, 2), (3, 8), (11, 40), (30, 70), (7, 37), (30, 96)] {
            let Some(kernels) = BlockKernels::mixed_bf16(f, k) else {
                eprintln!("skipping: no AVX512-BF16 on this CPU");
                return;
            };
            let x = pseudo_random(rows * f, k as u32 * 17 + rows as u32);
            let v = pseudo_random(f * k, 3 + k as u32);
            let mut bits = vec![0u16; x.len()];
            kernels.narrow_rows(&x, &mut bits);
            let expect_bits: Vec<u16> = x
                .iter()
                .map(|&v| half::bf16::from_f32(v).to_bits())
                .collect();
            assert_eq!(bits, expect_bits, "K={k} rows={rows} F={f}: rounding");
            let mut packed = vec![f32::NAN; kernels.packed_len()];
            kernels.pack_basis(&v, &mut packed);
            let stride = kernels.score_stride();
            let mut s = vec![f32::NAN; rows * stride];
            kernels.scores_mixed(&bits, &packed, &mut s, &[]);
            for r in 0..rows {
                for j in 0..k {
                    let want: f64 = (0..f)
                        .map(|i| round(x[r * f + i]) as f64 * round(v[i * k + j]) as f64)
                        .sum();
                    let got = s[r * stride + j] as f64;
                    assert!(
                        (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                        "{:?} K={k} rows={rows} F={f} S[{r},{j}] {got} vs {want}",
                        kernels.layout()
                    );
                }
            }
            // G is summed by the f32 kernels of the shape.
            assert_eq!(
                kernels.gradient_kernels(),
                BlockKernels::with_isa(Isa::Avx512, f, k)
            );
        }
    }
}

/// The layout follows the rank: transposed for small K, split where padding to whole
/// 512-bit vectors wastes much, padded otherwise.
#[test]
fn layout_follows_rank() {
    let f = 64;
    if Isa::Avx512.is_available() && has_avx512vl() {
        let split = |k| BlockKernels::with_isa(Isa::Avx512, f, k).layout();
        assert_eq!(split(5), Layout::Narrow);
        assert_eq!(split(16), Layout::Wide { stride: 16 });
        assert_eq!(
            split(25),
            Layout::Split {
                stride: 32,
                wide: 24
            }
        );
        assert_eq!(split(30), Layout::Wide { stride: 32 });
        assert_eq!(
            split(50),
            Layout::Split {
                stride: 64,
                wide: 48
            }
        );
        assert_eq!(
            BlockKernels::padded(Isa::Avx512, f, 25).layout(),
            Layout::Wide { stride: 32 }
        );
    }
    assert!(split_pays(25) && split_pays(17) && !split_pays(30) && !split_pays(16));
    if BlockKernels::mixed_bf16(f, 25).is_some() {
        let mixed = |f, k| BlockKernels::mixed_bf16(f, k).unwrap().layout();
        assert_eq!(
            mixed(f, 25),
            Layout::PairedBf16 {
                stride: 32,
                wide: 24
            }
        );
        assert_eq!(
            mixed(f, 24),
            Layout::PairedBf16 {
                stride: 32,
                wide: 24
            }
        );
        assert_eq!(
            mixed(f, 30),
            Layout::PairedBf16 {
                stride: 32,
                wide: 32
            }
        );
        assert_eq!(mixed(f, 5), Layout::NarrowBf16);
        // Odd F: no transposed pairs, so K = 5 and 25 run padded.
        assert_eq!(
            mixed(63, 5),
            Layout::PairedBf16 {
                stride: 16,
                wide: 16
            }
        );
        assert_eq!(
            mixed(63, 25),
            Layout::PairedBf16 {
                stride: 32,
                wide: 32
            }
        );
        assert!(BlockKernels::mixed_bf16(f, 65).is_none());
    }
    let kernels = BlockKernels::with_isa(Isa::Portable, f, 25);
    assert_eq!(kernels.layout(), Layout::Wide { stride: 25 });
}

/// Every instruction set and layout against the scalar loops, over ranks that exercise
/// each compiled variant and shapes with row and feature remainders.
#[test]
fn simd_kernels_match_scalar_loops() {
    for isa in [Isa::Avx512, Isa::Avx2, Isa::Portable] {
        if !isa.is_available() {
            eprintln!("skipping {isa:?}: not available on this CPU");
            continue;
        }
        for k in [
            1, 2, 3, 5, 8, 9, 16, 17, 20, 24, 25, 32, 33, 40, 48, 50, 56, 57, 64, 65,
        ] {
            // Longer rows for small K: several panels of the narrow scores, and more rows
            // than their groups hold.
            let long: &[(usize, usize, bool)] = match k {
                1 | 2 => &[(9, 3100, false)],
                3..=8 => &[(45, 1300, false)],
                _ => &[],
            };
            for &(rows, f, padded) in [
                (1, 1, false),
                (3, 7, false),
                (11, 40, false),
                (23, 70, false),
                (30, 37, false),
                (30, 37, true),
            ]
            .iter()
            .chain(long)
            {
                let kernels = if padded {
                    BlockKernels::padded(isa, f, k)
                } else {
                    BlockKernels::with_isa(isa, f, k)
                };
                let x = pseudo_random(rows * f, k as u32 * 31 + rows as u32);
                let v = pseudo_random(f * k, 7 + k as u32);
                let mut expect_s = vec![0.0; rows * k];
                portable::scores(&x, f, &v, k, &mut expect_s);
                let mut packed = vec![f32::NAN; kernels.packed_len()];
                kernels.pack_basis(&v, &mut packed);
                let stride = kernels.score_stride();
                let mut s = vec![f32::NAN; rows * stride];
                // The rows themselves as the ones "read next": prefetching only hints.
                let x_bytes: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
                kernels.scores(&x, &packed, &mut s, &x_bytes);
                for r in 0..rows {
                    for j in 0..k {
                        let (got, want) = (s[r * stride + j], expect_s[r * k + j]);
                        assert!(
                            (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                            "{isa:?} K={k} rows={rows} F={f} S[{r},{j}] {got} vs {want}"
                        );
                    }
                }
                // bf16 rows streamed: the same scores, bit for bit, as from the rows
                // widened first.
                let bits: Vec<u16> = x.iter().map(|v| (v.to_bits() >> 16) as u16).collect();
                let wide: Vec<f32> = bits
                    .iter()
                    .map(|&b| f32::from_bits((b as u32) << 16))
                    .collect();
                if kernels.streams_bf16() {
                    let mut s_wide = vec![f32::NAN; rows * stride];
                    kernels.scores(&wide, &packed, &mut s_wide, &[]);
                    let mut s_bf16 = vec![f32::NAN; rows * stride];
                    kernels.scores_bf16(&bits, &packed, &mut s_bf16, &[]);
                    assert_eq!(
                        s_bf16.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                        s_wide.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                        "{isa:?} K={k} rows={rows} F={f}"
                    );
                }
                // Residuals with zero padding, as the pass writes them.
                let r_plain = pseudo_random(rows * k, 99 + k as u32);
                let mut r_padded = vec![0.0; rows * stride];
                for t in 0..rows {
                    r_padded[t * stride..t * stride + k]
                        .copy_from_slice(&r_plain[t * k..(t + 1) * k]);
                }
                let start = pseudo_random(f * k, 5);
                let mut expect_g = start.clone();
                portable::accumulate_gradient(&x, f, &r_plain, k, &mut expect_g);
                let mut g_packed = vec![0.0; kernels.packed_len()];
                kernels.pack_basis(&start, &mut g_packed);
                kernels.accumulate_gradient(&x, &r_padded, &mut g_packed);
                if k == 1 {
                    // A user's weighted row sum (it does not depend on K), from f32 rows
                    // and from bf16 rows: the same bits as from the rows widened first.
                    let d = pseudo_random(rows, 41 + rows as u32);
                    let mut sum = vec![f32::NAN; f];
                    kernels.weighted_row_sum(&x, &d, &mut sum, &x_bytes);
                    for j in 0..f {
                        let want: f64 = (0..rows).map(|i| d[i] as f64 * x[i * f + j] as f64).sum();
                        assert!(
                            (sum[j] as f64 - want).abs() <= 1e-4 * (1.0 + want.abs()),
                            "{isa:?} rows={rows} F={f} sum[{j}] {} vs {want}",
                            sum[j]
                        );
                    }
                    let (mut from_wide, mut from_bits) = (vec![f32::NAN; f], vec![0.0; f]);
                    kernels.weighted_row_sum(&wide, &d, &mut from_wide, &[]);
                    kernels.weighted_row_sum_bf16(&bits, &d, &mut from_bits, &[]);
                    assert_eq!(
                        from_bits.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                        from_wide.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                        "{isa:?} rows={rows} F={f}: bf16 row sum"
                    );
                }
                let mut g = vec![f32::NAN; f * k];
                kernels.unpack_gradient(&g_packed, &mut g);
                for (i, (&got, &want)) in g.iter().zip(&expect_g).enumerate() {
                    assert!(
                        (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                        "{isa:?} K={k} rows={rows} F={f} G[{i}] {got} vs {want}"
                    );
                }
            }
        }
    }
}

/// The fused pass over a user's rows (each row's score, its derivative, and the weighted row
/// sum) against f64 loops, for f32 and bf16 rows on every instruction set this CPU runs, with
/// feature remainders; and the sums equal [`BlockKernels::weighted_row_sum`]'s bits for the
/// same derivatives.
#[test]
fn score_and_sum_matches_reference() {
    for isa in [Isa::Avx512, Isa::Avx2, Isa::Portable] {
        for (rows, f) in [(1, 3), (5, 16), (7, 37), (30, 130), (4, 256)] {
            let kernels = BlockKernels::with_isa(isa, f, 3);
            let x = pseudo_random(rows * f, 7 + f as u32);
            let v = pseudo_random(f, 11);
            let bits: Vec<u16> = x
                .iter()
                .map(|&v| half::bf16::from_f32(v).to_bits())
                .collect();
            let widened: Vec<f32> = bits
                .iter()
                .map(|&b| f32::from_bits((b as u32) << 16))
                .collect();
            for bf16 in [false, true] {
                let rows_f32 = if bf16 { &widened } else { &x };
                let mut seen = Vec::new();
                let mut derivative = |s: f32| {
                    seen.push(s);
                    0.5 - s
                };
                let (mut d, mut out) = (vec![f32::NAN; rows], vec![f32::NAN; f]);
                if bf16 {
                    kernels.score_and_sum_bf16(&bits, &v, &mut d, &mut out, &mut derivative, &[]);
                } else {
                    kernels.score_and_sum(&x, &v, &mut d, &mut out, &mut derivative, &[]);
                }
                for r in 0..rows {
                    let want: f64 = (0..f)
                        .map(|i| rows_f32[r * f + i] as f64 * v[i] as f64)
                        .sum();
                    assert!(
                        (seen[r] as f64 - want).abs() < 1e-4,
                        "{isa:?} F={f} bf16={bf16}: score"
                    );
                    assert_eq!(d[r], 0.5 - seen[r]);
                }
                for i in 0..f {
                    let want: f64 = (0..rows)
                        .map(|r| d[r] as f64 * rows_f32[r * f + i] as f64)
                        .sum();
                    assert!(
                        (out[i] as f64 - want).abs() < 1e-4,
                        "{isa:?} F={f} bf16={bf16}: sum"
                    );
                }
                let mut again = vec![f32::NAN; f];
                if bf16 {
                    kernels.weighted_row_sum_bf16(&bits, &d, &mut again, &[]);
                } else {
                    kernels.weighted_row_sum(&x, &d, &mut again, &[]);
                }
                if isa != Isa::Portable {
                    assert_eq!(out, again, "{isa:?} F={f} bf16={bf16}: the row sums' bits");
                }
            }
        }
    }
}

/// The group products with V (V w and V^T g for 1 to 8 users) against f64 loops, and the
/// same bits from the SIMD and portable loops.
#[test]
fn group_products_match_reference() {
    for (f, k) in [(5, 1), (16, 3), (37, 25), (130, 8)] {
        let basis = pseudo_random(f * k, 3);
        let mut panels = Vec::new();
        group::pack_panels(&basis, f, k, &mut panels);
        for users in 1..=group::MAX_GROUP {
            let weights = pseudo_random(users * k, 5 + users as u32);
            let sums = pseudo_random(users * f, 9 + users as u32);
            let mut results = Vec::new();
            for isa in [Isa::Avx512, Isa::Portable] {
                let kernels = BlockKernels::with_isa(isa, f, k);
                let mut directions = vec![f32::NAN; users * f];
                kernels.combine_group(&panels, &weights, &mut directions);
                let mut projections = vec![f32::NAN; users * k];
                let mut partial = vec![f32::NAN; users * k * group::LANE];
                kernels.project_group(&panels, &sums, &mut projections, &mut partial);
                for b in 0..users {
                    for i in 0..f {
                        let want: f64 = (0..k)
                            .map(|t| basis[i * k + t] as f64 * weights[b * k + t] as f64)
                            .sum();
                        assert!((directions[b * f + i] as f64 - want).abs() < 1e-4);
                    }
                    for t in 0..k {
                        let want: f64 = (0..f)
                            .map(|i| basis[i * k + t] as f64 * sums[b * f + i] as f64)
                            .sum();
                        assert!((projections[b * k + t] as f64 - want).abs() < 1e-4);
                    }
                }
                results.push((directions, projections));
            }
            assert_eq!(
                results[0], results[1],
                "F={f} K={k} users={users}: ISA-independent bits"
            );
        }
    }
}
