//! Working-memory estimates of a fit and a personalization, in checked arithmetic: callers
//! compare them with what the machine holds and refuse absurd sizes before anything is
//! allocated, instead of aborting out of memory (or overflowing a length) halfway through.
//!
//! The estimates are upper bounds of what the run itself allocates, besides its data (which
//! the caller already holds or maps): every copy of V [F x K] and W [N x K] (start, current,
//! Adam moments, packed and per-chunk gradients, the best state, the result) and the score
//! buffers of the rows.

use crate::error::{LoreError, Result};

/// Bytes of one f32.
const F32_BYTES: u64 = 4;
/// Copies of a [N x K] user table a fit holds at once (start, current, two Adam moments, the
/// gathered and softmaxed copies of early stopping, the best state, the result's three).
const FIT_USER_COPIES: u64 = 12;
/// Copies of the [F x K] basis a fit holds at once (start, current, gradient, two Adam
/// moments, best state, result's two, one spare).
const FIT_BASIS_COPIES: u64 = 9;
/// Padded [F x K] buffers of a fit: the packed basis, the reduced gradient and one gradient
/// per chunk of rows (at most 16 chunks).
const FIT_PADDED_COPIES: u64 = 18;
/// Per-feature scratch of a fit: the users' row sums of up to 16 chunks of 16 users.
const FIT_FEATURE_SCRATCH: u64 = 256;
/// Copies of a [N x K] user table personalization holds (logits, two Adam moments, gathered,
/// best, the result's three).
const PERSONALIZE_USER_COPIES: u64 = 8;
/// SIMD width the kernels pad a row of K scores to (the widest, AVX-512's 16 lanes).
const PAD_LANES: u64 = 16;

/// The bytes a fit of rank `rank` on `n_users` users, `n_rows` rows and `n_features` features
/// holds besides its data (an upper estimate); `None` when the count overflows u64.
///
/// ```
/// let bytes = lore_core::fit_memory(1000, 30_000, 4096, 25).unwrap();
/// assert!(bytes < 64 << 20); // the paper's PRISM size needs well under 64 MiB
/// assert!(lore_core::fit_memory(1, 1, usize::MAX, usize::MAX).is_none());
/// ```
pub fn fit_memory(n_users: usize, n_rows: usize, n_features: usize, rank: usize) -> Option<u64> {
    let (n, p, f, k) = (
        n_users as u64,
        n_rows as u64,
        n_features as u64,
        rank as u64,
    );
    let padded = k.checked_next_multiple_of(PAD_LANES)?;
    let values = [
        n.checked_mul(k)?.checked_mul(FIT_USER_COPIES)?,
        f.checked_mul(k)?.checked_mul(FIT_BASIS_COPIES)?,
        f.checked_mul(padded)?.checked_mul(FIT_PADDED_COPIES)?,
        // The rows' scores (padded) and each user's scores and residuals.
        p.checked_mul(padded)?.checked_mul(2)?,
        p.checked_mul(2)?,
        f.checked_mul(FIT_FEATURE_SCRATCH)?,
    ]
    .into_iter()
    .try_fold(0u64, u64::checked_add)?;
    values.checked_mul(F32_BYTES)
}

/// The bytes personalization with a basis of rank `rank` on `n_users` users, `n_rows` rows
/// and `n_features` features holds besides its data and basis (an upper estimate): Z = X V
/// of the rows and the users' weights with their Adam moments; `None` when the count
/// overflows u64.
pub fn personalize_memory(
    n_users: usize,
    n_rows: usize,
    n_features: usize,
    rank: usize,
) -> Option<u64> {
    let (n, p, f, k) = (
        n_users as u64,
        n_rows as u64,
        n_features as u64,
        rank as u64,
    );
    let padded = k.checked_next_multiple_of(PAD_LANES)?;
    let values = [
        n.checked_mul(k)?.checked_mul(PERSONALIZE_USER_COPIES)?,
        p.checked_mul(padded)?.checked_mul(2)?,
        f.checked_mul(padded)?.checked_mul(2)?,
        f.checked_mul(FIT_FEATURE_SCRATCH)?,
    ]
    .into_iter()
    .try_fold(0u64, u64::checked_add)?;
    values.checked_mul(F32_BYTES)
}

/// Refuses a rank the data cannot carry, before anything is allocated: K must be at most F
/// (V [F x K] has rank at most F, so a larger K is no longer a low-rank model, only a larger
/// one), and the fit's working memory must be countable ([`fit_memory`]).
pub fn check_fit_size(n_users: usize, n_rows: usize, n_features: usize, rank: usize) -> Result<()> {
    if rank > n_features {
        return Err(LoreError::InvalidParameter {
            name: "rank",
            reason: format!(
                "{rank} exceeds the {n_features} features (the basis V [F x K] has rank at most \
                 F: use K <= {n_features})"
            ),
        });
    }
    if fit_memory(n_users, n_rows, n_features, rank).is_none() {
        return Err(LoreError::InvalidParameter {
            name: "rank",
            reason: format!(
                "{rank} is too large: a fit on {n_users} users and {n_features} features would \
                 need more than 2^64 bytes"
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimates_grow_with_every_size_and_overflow_to_none() {
        let base = fit_memory(10, 100, 32, 4).unwrap();
        assert!(fit_memory(20, 100, 32, 4).unwrap() > base);
        assert!(fit_memory(10, 200, 32, 4).unwrap() > base);
        assert!(fit_memory(10, 100, 64, 4).unwrap() > base);
        assert!(fit_memory(10, 100, 32, 8).unwrap() > base);
        for huge in [usize::MAX, 1 << 63, 1 << 62, 1 << 61, 1 << 60] {
            assert!(fit_memory(1000, 30_000, huge, huge).is_none(), "{huge}");
            assert!(personalize_memory(huge, huge, 4096, 25).is_none(), "{huge}");
        }
        // The rank of V [F x K] (4 x 20 000 000 asked 8.3 GB for nothing).
        let err = check_fit_size(10, 100, 4, 20_000_000).unwrap_err();
        assert!(err.to_string().contains("exceeds the 4 features"), "{err}");
        assert!(check_fit_size(10, 100, 4, 4).is_ok());
        assert!(check_fit_size(usize::MAX, 100, 4, 4).is_err());
    }
}
