//! Sizes checked before any work: the bytes a run will hold against the memory this machine
//! has available, and the thread count against the cores. An absurd flag is refused at once
//! with the flag, its value, what it needs and what there is, instead of aborting out of
//! memory (or hanging) later.

use anyhow::{bail, Result};

/// Bytes of memory available to this process now: Linux's `MemAvailable` (`/proc/meminfo`),
/// lowered to the room left under the cgroup's `memory.max` where one is set; `None` where
/// neither can be read (then no limit is applied, only overflow is refused).
pub fn available_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix("MemAvailable:"))
                .and_then(|rest| rest.trim().strip_suffix("kB"))
                .and_then(|kb| kb.trim().parse::<u64>().ok())
                .map(|kb| kb.saturating_mul(1024))
        });
    let read = |name: &str| -> Option<u64> {
        std::fs::read_to_string(format!("/sys/fs/cgroup/{name}"))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    // cgroup v2: `max` (no limit) does not parse, and is no limit.
    let cgroup =
        read("memory.max").map(|max| max.saturating_sub(read("memory.current").unwrap_or(0)));
    match (meminfo, cgroup) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Refuses a run whose estimate `needed` (`None`: more than 2^64 bytes) exceeds the memory
/// available: `flags` names the flags and values that set the size (`--rank 99999999999`),
/// `what` what the bytes are for.
pub fn ensure_fits(flags: &str, what: &str, needed: Option<u64>) -> Result<()> {
    let Some(needed) = needed else {
        bail!("{flags} is too large: {what} would need more than 2^64 bytes");
    };
    if let Some(available) = available_memory() {
        if needed > available {
            bail!(
                "{flags} needs {} for {what}; {} available",
                human_bytes(needed),
                human_bytes(available)
            );
        }
    }
    Ok(())
}

/// Bytes as people read them: `512 B`, `3.2 MB`, `21 GB`, `3.2 TB` (powers of 1000).
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["kB", "MB", "GB", "TB", "PB", "EB"];
    if bytes < 1000 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64;
    let mut unit = "B";
    for u in UNITS {
        if value < 1000.0 {
            break;
        }
        value /= 1000.0;
        unit = u;
    }
    if value < 10.0 {
        format!("{value:.1} {unit}")
    } else {
        format!("{value:.0} {unit}")
    }
}

/// Bytes of one step's line of a `--trace` file, at most (the trace is held in memory until
/// the run ends).
pub const TRACE_LINE_BYTES: u64 = 160;

/// Threads per core beyond which more threads cannot help (results are the same for any count).
pub const THREADS_PER_CORE: usize = 4;

/// The most worker threads `--threads` may ask for: [`THREADS_PER_CORE`] per available core.
pub fn max_threads() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    cores.saturating_mul(THREADS_PER_CORE)
}

/// Checks `--threads N`: at least 1, at most [`max_threads`].
pub fn check_threads(threads: usize) -> Result<()> {
    if threads == 0 {
        bail!("invalid --threads: 0 (must be at least 1)");
    }
    let most = max_threads();
    if threads > most {
        bail!(
            "invalid --threads: {threads} (at most {most}: {THREADS_PER_CORE} per core of the {} \
             available; more cannot help, results are the same for any count)",
            most / THREADS_PER_CORE
        );
    }
    Ok(())
}

/// A rank the sets cannot carry, as `invalid --ranks: ...`; other errors as they are.
fn ranks_error(e: lore_core::LoreError) -> anyhow::Error {
    match e {
        lore_core::LoreError::InvalidParameter {
            name: "rank",
            reason,
        } => anyhow::anyhow!("invalid --ranks: {reason}"),
        other => other.into(),
    }
}

/// The largest of `ranks` (the one that sets the memory), for messages.
fn largest(ranks: &[usize]) -> usize {
    ranks.iter().copied().max().unwrap_or(0)
}

/// Refuses a sweep on `sets` whose ranks exceed F or whose runs exceed the memory available.
pub fn check_sweep(
    sets: &lore_experiment::ExperimentSets,
    params: &lore_experiment::CheckedSweepParams,
) -> Result<()> {
    let needed = lore_experiment::sweep_memory(sets, params).map_err(ranks_error)?;
    let p = params.params();
    ensure_fits(
        &format!("--ranks {}", largest(&p.ranks)),
        &format!(
            "a fit of the {} seen users and the personalization of the {} unseen users, with \
             the runs of {} seeds kept",
            sets.seen_train().n_users(),
            sets.unseen_train().n_users(),
            p.seeds.len()
        ),
        needed,
    )
}

/// Refuses a few-shot curve on `sets` whose ranks exceed F or whose runs and trials exceed the
/// memory available.
pub fn check_shots(
    sets: &lore_experiment::ExperimentSets,
    params: &lore_experiment::CheckedShotsParams,
) -> Result<()> {
    let needed = lore_experiment::shots_memory(sets, params).map_err(ranks_error)?;
    let p = params.params();
    ensure_fits(
        &format!("--ranks {} --trials {}", largest(&p.ranks), p.trials),
        &format!(
            "the fit, the personalizations and the evaluations of {} unseen users per trial",
            sets.unseen_train().n_users()
        ),
        needed,
    )
}

/// Refuses a search on `sets` whose ranks exceed F or whose fits exceed the memory available.
pub fn check_auto(
    sets: &lore_experiment::ExperimentSets,
    params: &lore_experiment::CheckedAutoParams,
) -> Result<()> {
    let needed = lore_experiment::auto_memory(sets, params).map_err(ranks_error)?;
    ensure_fits(
        &format!("--ranks {}", largest(&params.params().ranks)),
        &format!(
            "the candidates' fits of the {} seen users and their best states",
            sets.seen_train().n_users()
        ),
        needed,
    )
}

/// Refuses a simulation whose responses (`synthetic`, when built in) and population exceed the
/// memory available; `dims` are the responses' M prompts, R responses, F and J.
pub fn check_simulate(
    population: &lore_experiment::PopulationParams,
    synthetic: Option<&lore_experiment::SyntheticParams>,
    [m, r, f, j]: [usize; 4],
) -> Result<()> {
    let (seen, unseen) = (population.n_seen_users, population.n_unseen_users);
    if seen
        .checked_add(unseen)
        .is_none_or(|n| n > u32::MAX as usize)
    {
        bail!(
            "invalid --seen-users {seen} --unseen-users {unseen}: at most {} users in all (the \
             files number users in u32)",
            u32::MAX
        );
    }
    let responses = match synthetic {
        Some(s) => {
            if s.n_prompts > u32::MAX as usize {
                bail!("invalid --prompts: {} (at most {})", s.n_prompts, u32::MAX);
            }
            lore_experiment::synthetic_memory(s)
        }
        None => Some(0),
    };
    let needed = lore_experiment::simulate_memory(population, m, r, f, j)?
        .zip(responses)
        .and_then(|(a, b)| a.checked_add(b));
    let users = format!(
        "--seen-users {} --unseen-users {}",
        population.n_seen_users, population.n_unseen_users
    );
    let flags = match synthetic {
        Some(_) => format!("{users} --features {f} --rewards {j} --prompts {m} --per-prompt {r}"),
        None => users,
    };
    ensure_fits(&flags, "the responses and the population's pairs", needed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_read_as_people_write_them() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(3_200_000), "3.2 MB");
        assert_eq!(human_bytes(21_000_000_000), "21 GB");
        assert_eq!(human_bytes(3_200_000_000_000), "3.2 TB");
        assert_eq!(human_bytes(u64::MAX), "18 EB");
    }

    #[test]
    fn overflow_and_absurd_sizes_are_refused() {
        let err = ensure_fits("--rank 1", "V", None).unwrap_err().to_string();
        assert!(err.contains("more than 2^64 bytes"), "{err}");
        if available_memory().is_some() {
            let err = ensure_fits("--rank 99999999999", "V", Some(u64::MAX))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("--rank 99999999999 needs 18 EB for V;"),
                "{err}"
            );
        }
        assert!(ensure_fits("--rank 2", "V", Some(1024)).is_ok());
        assert!(check_threads(0).is_err());
        assert!(check_threads(1).is_ok());
        assert!(check_threads(max_threads() + 1).is_err());
    }
}
