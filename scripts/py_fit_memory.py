#!/usr/bin/env python3
"""Peak memory and time of lore.fit from a float32 numpy array: 1000 users x 30 pairs x 4096
features of planted low-rank preferences (by default). Prints the size of x, the peak RSS of
the process before and after the fit, and the fit's time: with a C-contiguous float32 x and
sorted users, the fit reads x in place, so the peak grows by the fit's working memory only,
not by another copy of x.

Usage: python scripts/py_fit_memory.py [--users 1000] [--pairs 30] [--features 4096]
                                       [--rank 8] [--iterations 20] [--threads N]
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np

import lore


def peak_rss() -> int:
    """The process's peak resident set size so far, in bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def planted(users: int, pairs: int, features: int, rank: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """x [users * pairs, features] float32, user [P] sorted: each user's direction is a mix of
    `rank` hidden ones; each pair's sign is drawn from the Bradley-Terry probability. Built in
    place, with no temporary as large as x."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((users * pairs, features), dtype=np.float32)
    basis = rng.standard_normal((features, rank)).astype(np.float32) / np.sqrt(features)
    mixes = rng.dirichlet(np.ones(rank), size=users).astype(np.float32)
    for u in range(users):
        rows = x[u * pairs : (u + 1) * pairs]
        scores = rows @ (basis @ mixes[u]) * 10
        keep = rng.random(pairs) < 1 / (1 + np.exp(-scores))
        rows *= np.where(keep, 1, -1).astype(np.float32)[:, None]
    return x, np.repeat(np.arange(users), pairs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--pairs", type=int, default=30)
    parser.add_argument("--features", type=int, default=4096)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    x, user = planted(args.users, args.pairs, args.features, args.rank, args.seed)
    assert x.dtype == np.float32 and x.flags.c_contiguous
    before = peak_rss()
    started = time.perf_counter()
    model = lore.fit(x, user, args.rank, iterations=args.iterations, lr=0.1, threads=args.threads)
    elapsed = time.perf_counter() - started
    after = peak_rss()

    mb = 1e6
    accuracy = lore.accuracy(model, x, user)["mean"]
    print(f"x: {x.shape[0]} x {x.shape[1]} float32 = {x.nbytes / mb:.1f} MB ({args.users} users x {args.pairs} pairs)")
    print(f"peak RSS before the fit: {before / mb:.1f} MB")
    print(f"peak RSS after the fit:  {after / mb:.1f} MB (+{(after - before) / mb:.1f} MB, {(after - before) / x.nbytes:.1%} of x)")
    print(f"fit: K = {args.rank}, {model.steps} steps in {elapsed:.2f} s ({elapsed / model.steps * 1e3:.1f} ms/step); training accuracy {accuracy:.3f}")


if __name__ == "__main__":
    main()
