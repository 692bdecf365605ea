//! Fetching the rows a caller reads next into L2 while a kernel computes.

/// Fetches the rows a caller reads next into L2, spread evenly over a kernel's steps, so
/// that memory streams while the kernel computes rather than between kernels.
///
/// Holds the addresses of a byte slice but never reads through them: a prefetch is a hint
/// that cannot fault, so it needs no unsafe contract (and the addresses need not stay valid).
pub(super) struct Prefetch {
    /// The next line to fetch, how far the fetches should have come, and the end.
    at: *const u8,
    due: *const u8,
    end: *const u8,
    /// Bytes to fetch per step.
    rate: usize,
}

impl Prefetch {
    /// `ahead` spread over `steps` calls of [`Self::step`].
    pub(super) fn new(ahead: &[u8], steps: usize) -> Self {
        let at = ahead.as_ptr();
        Self {
            at,
            due: at,
            end: at.wrapping_add(ahead.len()),
            rate: ahead.len().div_ceil(steps.max(1)),
        }
    }

    /// Fetches the lines now due (none once all are asked for).
    #[inline(always)]
    pub(super) fn step(&mut self) {
        self.due = self.due.wrapping_add(self.rate);
        while self.at < self.due && self.at < self.end {
            // SAFETY: `prefetcht1` only hints the cache and never faults, whatever the address
            // (here always within the slice given to `new`); SSE is baseline on x86_64.
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T1 }>(
                    self.at as *const i8,
                );
            }
            self.at = self.at.wrapping_add(64);
        }
    }
}
