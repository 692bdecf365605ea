#!/usr/bin/env python3
"""lore.compat against the reference: the same LoRe_regularized fit and PersonalizeBatch run,
from the same initial parameters on the same data, through the reference's utils.py (PyTorch)
and through lore.compat, timed side by side in one process.

Needs a Python with torch, numpy and lore importable, and a folder holding the reference's
utils.py (facebookresearch/LoRe at commit 6f93990); torch is only needed here, never by lore:

    PYTHONPATH=crates/lore-py/python python scripts/compat_speed.py --reference /tmp/refutils

Both sides run the same number of optimizer steps: --personalize-iterations (500, as the
reference's run() does) and --iterations for the fit (20 by default: the reference's fit costs
seconds per step at this size, and its run() uses 1000 or 20000 steps); the times include
everything each side's train() does (the reference packs its inputs, lore.compat concatenates
the per-user arrays). The final parameters of the two sides are compared as a check.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import os
import sys
import time
from typing import Any, Callable

import numpy as np


def timed(label: str, work: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """The best wall time of ``repeats`` calls of ``work`` (prints each), and its last result."""
    best = float("inf")
    result = None
    for _ in range(repeats):
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            result = work()
        seconds = time.perf_counter() - start
        best = min(best, seconds)
        print(f"  {label}: {seconds:.3f} s", flush=True)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--reference", required=True, help="folder holding the reference's utils.py"
    )
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--pairs", type=int, default=30, help="pairs per user")
    parser.add_argument("--features", type=int, default=4096)
    parser.add_argument("--rank", type=int, default=25)
    parser.add_argument(
        "--iterations",
        type=int,
        default=20,
        help="LoRe_regularized steps (the reference's run: 1000+)",
    )
    parser.add_argument(
        "--personalize-iterations",
        type=int,
        default=500,
        help="PersonalizeBatch steps (500, as the reference's run)",
    )
    parser.add_argument(
        "--reference-repeats", type=int, default=1, help="reference runs (the best is kept)"
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="lore.compat runs (the best is kept)"
    )
    args = parser.parse_args()

    import torch

    sys.path.insert(0, args.reference)
    reference = importlib.import_module("utils")
    compat = importlib.import_module("lore.compat")

    n, p, f, k, steps = args.users, args.pairs, args.features, args.rank, args.iterations
    p_steps = args.personalize_iterations
    rng = np.random.default_rng(0)
    features = [rng.standard_normal((p, f), dtype=np.float32) for _ in range(n)]
    v_ref = rng.standard_normal((f, 1), dtype=np.float32)
    tensors = [torch.from_numpy(x) for x in features]
    print(
        f"data: {n} users x {p} pairs x {f} features, rank {k}; "
        f"torch {torch.__version__} with {torch.get_num_threads()} threads, "
        f"{os.cpu_count()} CPUs",
        flush=True,
    )

    # LoRe_regularized, alpha 1 (the cosine pull is on from 20% of the steps), lr 0.5.
    print(f"LoRe_regularized.train, {steps} steps", flush=True)
    torch.manual_seed(0)
    ref_model = reference.LoRe_regularized(torch.from_numpy(v_ref), 1.0, n, f, k, steps, 0.5)
    W0 = ref_model.W.detach().clone()
    V0 = ref_model.V.detach().clone()

    def reference_fit() -> Any:
        with torch.no_grad():
            ref_model.W.copy_(W0)
            ref_model.V.copy_(V0)
        return ref_model.train(tensors)

    def compat_fit() -> Any:
        ours = compat.LoRe_regularized(v_ref, 1.0, n, f, k, steps, 0.5)
        ours.W = W0.numpy()
        ours.V = V0.numpy()
        return ours.train(features)

    ref_seconds, (ref_W, ref_V) = timed("reference", reference_fit, args.reference_repeats)
    lore_seconds, (lore_W, lore_V) = timed("lore.compat", compat_fit, args.repeats)
    fit_ratio = ref_seconds / lore_seconds
    fit_diff = max(
        float(np.abs(ref_W.detach().numpy() - lore_W).max()),
        float(np.abs(ref_V.detach().numpy() - lore_V).max()),
    )

    # PersonalizeBatch, lr 0.1, with the fitted basis fixed.
    print(f"PersonalizeBatch.train, {p_steps} steps", flush=True)
    basis = lore_V
    torch.manual_seed(1)
    ref_batch = reference.PersonalizeBatch(n, f, basis.shape[1], p_steps, 0.1)
    w0 = [w.detach().clone() for w in ref_batch.w]

    def reference_personalize() -> Any:
        with torch.no_grad():
            for w, start in zip(ref_batch.w, w0):
                w.copy_(start)
        ref_batch.optimizer = torch.optim.Adam(ref_batch.parameters(), lr=0.1)
        return ref_batch.train(tensors, torch.from_numpy(basis))

    def compat_personalize() -> Any:
        ours = compat.PersonalizeBatch(n, f, basis.shape[1], p_steps, 0.1)
        ours.w = [w.numpy() for w in w0]
        return ours.train(features, basis)

    ref_p_seconds, ref_w = timed("reference", reference_personalize, args.reference_repeats)
    lore_p_seconds, lore_w = timed("lore.compat", compat_personalize, args.repeats)
    personalize_ratio = ref_p_seconds / lore_p_seconds
    personalize_diff = float(
        np.abs(np.stack([w.numpy() for w in ref_w]) - np.stack(lore_w)).max()
    )

    print()
    print("| run | reference (s) | lore.compat (s) | speed-up | max abs diff |")
    print("|---|---|---|---|---|")
    print(
        f"| LoRe_regularized.train, {steps} steps | {ref_seconds:.3f} | {lore_seconds:.3f} "
        f"| {fit_ratio:.1f}x | {fit_diff:.1e} |"
    )
    print(
        f"| PersonalizeBatch.train, {p_steps} steps | {ref_p_seconds:.3f} | {lore_p_seconds:.3f} "
        f"| {personalize_ratio:.1f}x | {personalize_diff:.1e} |"
    )


if __name__ == "__main__":
    main()
