//! Cheap checks that training stays finite, and the hints of [`LoreError::Diverged`].
//!
//! A step checks its loss (one scalar) and its parameters with [`all_finite`], a sum of
//! `v * 0` that is 0 for finite values and NaN as soon as one is NaN or infinite: no
//! allocation, one multiply-add per value (the parameters are far fewer than the data).

use crate::data::Preferences;
use crate::error::LoreError;

/// Lanes of the sum in [`all_finite`] (so that it vectorizes).
const LANES: usize = 16;

/// Whether every value is finite: v * 0 is 0 for a finite v and NaN for NaN or +-inf, so the
/// sum is 0 exactly when all are finite (it cannot overflow, unlike a plain sum).
#[inline]
pub(crate) fn all_finite(values: &[f32]) -> bool {
    let mut lanes = [0.0f32; LANES];
    let mut chunks = values.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (l, &v) in lanes.iter_mut().zip(chunk) {
            *l += v * 0.0;
        }
    }
    let tail = chunks.remainder().iter().fold(0.0f32, |a, &v| a + v * 0.0);
    lanes.iter().sum::<f32>() + tail == 0.0
}

/// The first non-finite value and its index (for the error message; not on the hot path).
pub(crate) fn first_non_finite(values: &[f32]) -> Option<(usize, f32)> {
    values
        .iter()
        .position(|v| !v.is_finite())
        .map(|i| (i, values[i]))
}

/// "V[row, col] became NaN" for the first non-finite value of a row-major [rows x `cols`] matrix.
pub(crate) fn describe_matrix(name: &str, values: &[f32], cols: usize) -> String {
    match first_non_finite(values) {
        Some((i, v)) => format!("{name}[{}, {}] became {v}", i / cols, i % cols),
        None => format!("{name} became non-finite"),
    }
}

/// A number as a person would write it: plainly from 1e-4 to 1e6, else with an exponent
/// (`1e300`, not 301 digits).
pub(crate) fn number(value: f64) -> String {
    if value == 0.0 || (1e-4..1e6).contains(&value.abs()) {
        value.to_string()
    } else {
        format!("{value:e}")
    }
}

/// The hint when an update made a value non-finite.
pub(crate) fn learning_rate_hint(learning_rate: f64) -> String {
    format!("lower the learning rate (now {})", number(learning_rate))
}

/// The hint when the loss is already non-finite before any update: the scores c x . V w
/// overflow f32, from feature values (or a logit scale) too large.
pub(crate) fn scale_hint(data: &Preferences, logit_scale: f64) -> String {
    let mut scratch = Vec::new();
    let (mut largest, mut row) = (0.0f32, 0);
    let f = data.n_features().max(1);
    // One block of rows at a time, so that half-precision data is widened piecewise.
    let block = (1usize << 16) / f + 1;
    let mut start = 0;
    while start < data.n_rows() {
        let end = (start + block).min(data.n_rows());
        let x = data.rows_f32(start..end, &mut scratch);
        for (i, &v) in x.iter().enumerate() {
            if v.abs() > largest {
                largest = v.abs();
                row = start + i / f;
            }
        }
        start = end;
    }
    format!(
        "the scores c x . V w overflow f32: the largest feature magnitude is {largest:e} \
         (row {row}) and the logit scale c is {}; scale the features down",
        number(logit_scale)
    )
}

/// A [`LoreError::Diverged`].
pub(crate) fn diverged(step: usize, iterations: usize, what: String, hint: String) -> LoreError {
    LoreError::Diverged {
        step,
        iterations,
        what,
        hint,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ops::ControlFlow;

    use crate::data::FeatureRows;
    use crate::fit::{fit, fit_bradley_terry, FitOptions};
    use crate::model::RewardBasis;
    use crate::params::{FitParams, Method, PersonalizeParams};
    use crate::personalize::{personalize, PersonalizeOptions};

    /// Three users of four rows each in F = 3, features scaled by `scale`.
    fn rows(scale: f32) -> (Vec<f32>, Vec<u32>) {
        let mut x = Vec::new();
        let mut users = Vec::new();
        for u in 0..3u32 {
            for i in 0..4 {
                let i = i as f32;
                x.extend([1.0 + i, 0.5 - 0.3 * i, (u as f32) - i].map(|v| v * scale));
                users.push(u);
            }
        }
        (x, users)
    }

    fn expect_diverged(result: crate::Result<impl std::fmt::Debug>, what: &str, hint: &str) {
        match result {
            Err(err @ LoreError::Diverged { .. }) => {
                let text = err.to_string();
                assert!(text.starts_with("training diverged at step "), "{text}");
                assert!(text.contains(what), "{text}");
                assert!(text.contains(hint), "{text}");
            }
            other => panic!("expected divergence, got {other:?}"),
        }
    }

    fn fit_with(method: Method, lr: f64, scale: f32) -> crate::Result<usize> {
        let (x, users) = rows(scale);
        let data = Preferences::from_sorted_users(FeatureRows::F32(&x), 3, &users)?;
        let params = FitParams::new(method, 2)
            .iterations(20)
            .learning_rate(lr)
            .check()?;
        let outcome = fit(&params, &data, &FitOptions::default(), |_| {
            ControlFlow::Continue(())
        })?;
        Ok(outcome.model.steps)
    }

    #[test]
    fn a_huge_learning_rate_stops_every_fit_at_its_first_step() {
        for method in [Method::Lore, Method::Regularized] {
            assert_eq!(fit_with(method, 0.1, 1.0).unwrap(), 20);
            expect_diverged(
                fit_with(method, 1e300, 1.0),
                "at step 1 of 20",
                "lower the learning rate (now 1e300)",
            );
        }
        let (x, users) = rows(1.0);
        let data = Preferences::from_sorted_users(FeatureRows::F32(&x), 3, &users).unwrap();
        let params = FitParams::new(Method::Lore, 3)
            .learning_rate(1e300)
            .iterations(5)
            .check()
            .unwrap();
        let bt = fit_bradley_terry(&params, &data, None, |_| ControlFlow::Continue(()));
        expect_diverged(bt.map(|_| ()), "became", "lower the learning rate");
    }

    #[test]
    fn huge_features_are_named_not_trained_into_nan() {
        for method in [Method::Lore, Method::Regularized] {
            expect_diverged(
                fit_with(method, 0.1, 7e37),
                "at step 1 of 20",
                "scale the features down",
            );
        }
    }

    fn personalize_with(
        params: PersonalizeParams,
        scale: f32,
        prior: Option<&[f32]>,
    ) -> crate::Result<()> {
        let (x, users) = rows(scale);
        let data = Preferences::from_sorted_users(FeatureRows::F32(&x), 3, &users)?;
        let basis = RewardBasis::new(3, 2, vec![1.0, 0.0, 0.0, 1.0, 0.5, -0.5], 0.01)?;
        let options = PersonalizeOptions {
            prior_logits: prior,
            init_logits: None,
            validation: None,
        };
        let params = params.iterations(120).check()?;
        personalize(&params, &basis, &data, &options, |_| {
            ControlFlow::Continue(())
        })
        .map(|_| ())
    }

    #[test]
    fn personalization_stops_when_it_diverges() {
        personalize_with(PersonalizeParams::default(), 1.0, None).unwrap();
        expect_diverged(
            personalize_with(PersonalizeParams::default().learning_rate(1e300), 1.0, None),
            "user 0's logits became",
            "lower the learning rate (now 1e300)",
        );
        expect_diverged(
            personalize_with(
                PersonalizeParams::default().prior_strength(1e308),
                1.0,
                Some(&[0.5, -0.5]),
            ),
            "at step 1 of 120: the loss became",
            "lower the prior strength (now 1e308)",
        );
        expect_diverged(
            personalize_with(PersonalizeParams::default(), -7e37, None),
            "at step 1 of 120",
            "the largest feature magnitude is",
        );
    }

    #[test]
    fn finiteness_is_exact_and_does_not_overflow() {
        assert!(all_finite(&[]));
        assert!(all_finite(&[f32::MAX; 40]));
        assert!(all_finite(&[-0.0, 1.0, f32::MIN_POSITIVE]));
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            for at in [0, 15, 16, 33, 39] {
                let mut v = vec![1.0f32; 40];
                v[at] = bad;
                assert!(!all_finite(&v), "{bad} at {at}");
                assert_eq!(first_non_finite(&v).map(|(i, _)| i), Some(at));
            }
        }
        assert_eq!(number(1e300), "1e300");
        assert_eq!(number(1e-300), "1e-300");
        assert_eq!(number(0.01), "0.01");
        assert_eq!(number(0.0), "0");
        assert_eq!(
            describe_matrix("V", &[1.0, 2.0, 3.0, f32::NAN], 2),
            "V[1, 1] became NaN"
        );
    }
}
