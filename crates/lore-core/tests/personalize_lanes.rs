//! Personalization (users in SIMD lanes, padded rows masked) against a plain f64 loop per
//! user: uneven row counts, a partial last group, and the prior.

use std::ops::ControlFlow;

use lore_core::{
    personalize, FeatureRows, PersonalizeOptions, PersonalizeParams, Preferences, RewardBasis,
};

fn noise(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9e3779b97f4a7c15) | 1;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        })
        .collect()
}

/// The reference PersonalizeBatch for one user in f64: Adam on mean softplus(-c x.V w) plus
/// lambda |W - mean|^2, torch's Adam formulas.
#[allow(clippy::too_many_arguments)]
fn reference_user(
    x: &[f32],
    basis: &[f32],
    f: usize,
    k: usize,
    c: f64,
    init: &[f32],
    prior: Option<(&[f32], f64)>,
    lr: f64,
    steps: usize,
) -> Vec<f64> {
    let n = x.len() / f;
    let z: Vec<f64> = (0..n * k)
        .map(|t| {
            let (i, j) = (t / k, t % k);
            (0..f)
                .map(|q| x[i * f + q] as f64 * basis[q * k + j] as f64)
                .sum()
        })
        .collect();
    let mut logits: Vec<f64> = init.iter().map(|&v| v as f64).collect();
    let (mut m, mut v) = (vec![0.0f64; k], vec![0.0f64; k]);
    for t in 1..=steps {
        let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = logits.iter().map(|l| (l - max).exp()).collect();
        let sum: f64 = e.iter().sum();
        let w: Vec<f64> = e.iter().map(|e| e / sum).collect();
        let mut g = vec![0.0f64; k];
        for i in 0..n {
            let s: f64 = (0..k).map(|j| z[i * k + j] * w[j]).sum::<f64>() * c;
            let d = -1.0 / (1.0 + s.exp());
            for j in 0..k {
                g[j] += d * c * z[i * k + j] / n as f64;
            }
        }
        let wg: f64 = w.iter().zip(&g).map(|(a, b)| a * b).sum();
        for j in 0..k {
            g[j] = w[j] * (g[j] - wg);
            if let Some((mean, strength)) = prior {
                g[j] += 2.0 * strength * (logits[j] - mean[j] as f64);
            }
        }
        let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8f64);
        for j in 0..k {
            m[j] = b1 * m[j] + (1.0 - b1) * g[j];
            v[j] = b2 * v[j] + (1.0 - b2) * g[j] * g[j];
            let denom = v[j].sqrt() / (1.0 - b2.powi(t as i32)).sqrt() + eps;
            logits[j] -= lr / (1.0 - b1.powi(t as i32)) * m[j] / denom;
        }
    }
    logits
}

#[test]
fn lanes_match_a_plain_loop_per_user() {
    let (f, k, c) = (24, 5, 0.01);
    // 37 users (two full groups of 16 and one of 5) with 1 to 23 rows each.
    let counts: Vec<usize> = (0..37).map(|u| 1 + (u * 7) % 23).collect();
    let n_rows: usize = counts.iter().sum();
    let x: Vec<f32> = noise(n_rows * f, 1).iter().map(|v| v * 30.0).collect();
    let basis_values: Vec<f32> = noise(f * k, 2).iter().map(|v| v * 20.0).collect();
    let basis = RewardBasis::new(f, k, basis_values.clone(), c).unwrap();
    let mut offsets = vec![0];
    for &n in &counts {
        offsets.push(offsets.last().unwrap() + n);
    }
    let data = Preferences::new(FeatureRows::F32(&x), f, offsets.clone()).unwrap();
    let init = noise(37 * k, 3);
    let prior_mean = noise(k, 4);
    for (strength, steps) in [(0.0, 60), (0.5, 35)] {
        let params = PersonalizeParams::default()
            .iterations(steps)
            .prior_strength(strength)
            .check()
            .unwrap();
        let options = PersonalizeOptions {
            init_logits: Some(&init),
            prior_logits: Some(&prior_mean),
            validation: None,
        };
        let mut losses = Vec::new();
        let users = personalize(&params, &basis, &data, &options, |step| {
            losses.push(step.loss);
            ControlFlow::Continue(())
        })
        .unwrap()
        .users;
        assert_eq!(losses.len(), steps);
        // The first loss: every user's mean NLL at the start, plus the prior's penalty.
        let mut first = 0.0f64;
        for u in 0..37 {
            let w0 = &init[u * k..(u + 1) * k];
            let max = w0.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let e: Vec<f64> = w0.iter().map(|&l| (l as f64 - max).exp()).collect();
            let total: f64 = e.iter().sum();
            let direction =
                basis.direction(&e.iter().map(|v| (v / total) as f32).collect::<Vec<_>>());
            let rows = &x[offsets[u] * f..offsets[u + 1] * f];
            let nll: f64 = rows
                .chunks_exact(f)
                .map(|row| {
                    let s: f64 = row
                        .iter()
                        .zip(&direction)
                        .map(|(&a, b)| a as f64 * b)
                        .sum::<f64>()
                        * c;
                    (1.0 + (-s).exp()).ln()
                })
                .sum::<f64>()
                / counts[u] as f64;
            let penalty: f64 = w0
                .iter()
                .zip(&prior_mean)
                .map(|(&a, &b)| ((a - b) as f64).powi(2))
                .sum::<f64>()
                * strength;
            first += nll + penalty;
        }
        assert!(
            (losses[0] - first).abs() < 1e-4 * first,
            "{} vs {first}",
            losses[0]
        );
        for u in 0..37 {
            let rows = &x[offsets[u] * f..offsets[u + 1] * f];
            let prior = (strength > 0.0).then_some((prior_mean.as_slice(), strength));
            let expected = reference_user(
                rows,
                &basis_values,
                f,
                k,
                c,
                &init[u * k..(u + 1) * k],
                prior,
                0.1,
                steps,
            );
            for (j, (&got, want)) in users.logits()[u * k..(u + 1) * k]
                .iter()
                .zip(&expected)
                .enumerate()
            {
                assert!(
                    (got as f64 - want).abs() < 2e-3 * want.abs().max(1.0),
                    "user {u} ({} rows), logit {j}, prior {strength}: {got} vs {want}",
                    counts[u]
                );
            }
        }
    }
}
