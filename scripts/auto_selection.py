#!/usr/bin/env python3
"""Does `lore auto` ever lose to one shared reward? A simulated benchmark of its selection.

For each seed, simulates a population at the scale of a small real dataset (about 220 seen and
220 unseen users, 20-60 pairs each, 384-d features), runs `lore auto` with its default
(corrected) selection and, on the same split:
  - BT: `lore auto --ranks 1`, one shared Bradley-Terry reward, early-stopped the same way;
  - with --naive: `lore auto --selection best`, the uncorrected choice of the best stand-in;
  - with --baseline BIN: another build's `lore auto` (for example the one before this change);
  - for populations with personal structure, each fixed rank in --fixed-ranks
    (`lore auto --ranks K --alpha-scales 0 --selection fixed`), whose best is the gain a
    perfect choice of rank would get.
It prints one line per population and a summary against the goals: where there is no personal
structure, auto within 0.3 points of BT in at least 19 of 20 populations and never 1 point
below; where there is weak structure, at least half of the best fixed rank's gain on average.

    python3 scripts/auto_selection.py --lore target/release/lore --populations 20
    python3 scripts/auto_selection.py --kinds flat --populations 3 --json out.json

Every number is an unseen-test accuracy (the users the search never saw), mean over users.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

# The populations: no personal structure (every user one reward plus noise), and weak personal
# structure (users mix 2 rewards, Dirichlet(0.3) weights, noise keeping BT near 0.72).
KINDS = {
    "flat": ["--rewards", "1", "--score-noise", "2.0"],
    "weak": ["--rewards", "2", "--dirichlet-alpha", "0.3", "--score-noise", "1.1"],
}
SCALE = [
    "--features", "384", "--seen-users", "220", "--unseen-users", "220",
    "--seen-pairs", "15-45", "--unseen-pairs", "10-30", "--test-pairs", "10-30",
]


def unseen_test(lore, splits, out, extra, threads):
    """Runs `lore auto` and returns (unseen test accuracy, chosen rank, seconds)."""
    started = time.monotonic()
    args = [lore, "auto", "--splits", splits, "--out", out, "--force", "--json", "-q"]
    if threads:
        args += ["--threads", str(threads)]
    done = subprocess.run(args + extra, check=True, capture_output=True, text=True)
    seconds = time.monotonic() - started
    results = json.loads(done.stdout)
    return results["rows"][0]["unseen_test"]["mean"], results["chosen"]["rank"], seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lore", default="target/release/lore", help="the lore binary")
    parser.add_argument("--populations", type=int, default=20, help="seeds per kind")
    parser.add_argument("--first-seed", type=int, default=1)
    parser.add_argument("--kinds", default="flat,weak", help="comma-separated: flat, weak")
    parser.add_argument("--fixed-ranks", default="2,4,8",
                        help="fixed ranks whose best is the weak populations' reachable gain")
    parser.add_argument("--naive", action="store_true",
                        help="also run the uncorrected selection (--selection best)")
    parser.add_argument("--baseline", help="another lore binary whose `auto` to compare")
    parser.add_argument("--threads", type=int, default=0, help="--threads of every run (0: lore's)")
    parser.add_argument("--json", help="write every population's figures here")
    args = parser.parse_args()

    records = []
    with tempfile.TemporaryDirectory(prefix="auto-selection-") as tmp:
        for kind in args.kinds.split(","):
            print(f"## {kind}: {' '.join(KINDS[kind])}")
            header = f"{'seed':>4} {'BT':>6} {'auto':>6} {'K':>3} {'auto-BT':>8}"
            if args.naive:
                header += f" {'naive':>6} {'K':>3}"
            if args.baseline:
                header += f" {'before':>6} {'K':>3}"
            if kind != "flat":
                header += f" {'best fixed':>10} {'K':>3}"
            print(header, flush=True)
            for seed in range(args.first_seed, args.first_seed + args.populations):
                splits = os.path.join(tmp, f"{kind}-{seed}")
                subprocess.run(
                    [args.lore, "simulate", *SCALE, *KINDS[kind], "--seed", str(seed),
                     "--out", splits, "--force", "-q"],
                    check=True, capture_output=True)
                out = os.path.join(tmp, "run")
                bt, _, _ = unseen_test(args.lore, splits, out, ["--ranks", "1"], args.threads)
                auto, k, seconds = unseen_test(args.lore, splits, out, [], args.threads)
                record = {"kind": kind, "seed": seed, "bt": bt, "auto": auto, "auto_rank": k,
                          "auto_seconds": seconds}
                line = f"{seed:>4} {bt:6.3f} {auto:6.3f} {k:>3} {100 * (auto - bt):+8.1f}"
                if args.naive:
                    naive, naive_k, _ = unseen_test(args.lore, splits, out,
                                                    ["--selection", "best"], args.threads)
                    record.update(naive=naive, naive_rank=naive_k)
                    line += f" {naive:6.3f} {naive_k:>3}"
                if args.baseline:
                    before, before_k, _ = unseen_test(args.baseline, splits, out, [], args.threads)
                    record.update(before=before, before_rank=before_k)
                    line += f" {before:6.3f} {before_k:>3}"
                if kind != "flat":
                    fixed = {}
                    for rank in args.fixed_ranks.split(","):
                        fixed[int(rank)], _, _ = unseen_test(
                            args.lore, splits, out,
                            ["--ranks", rank, "--alpha-scales", "0", "--selection", "fixed"],
                            args.threads)
                    best_k = max(fixed, key=fixed.get)
                    record.update(fixed=fixed, best_fixed=fixed[best_k], best_fixed_rank=best_k)
                    line += f" {fixed[best_k]:10.3f} {best_k:>3}"
                records.append(record)
                print(line, flush=True)

    print()
    ok = True
    for kind in args.kinds.split(","):
        rows = [r for r in records if r["kind"] == kind]
        if not rows:
            continue
        diffs = [r["auto"] - r["bt"] for r in rows]
        bt_mean = statistics.mean(r["bt"] for r in rows)
        print(f"{kind}: {len(rows)} populations, BT unseen test {bt_mean:.3f} on average, "
              f"auto - BT: mean {100 * statistics.mean(diffs):+.2f}, "
              f"worst {100 * min(diffs):+.2f} points")
        if args.naive:
            naive = [r["naive"] - r["bt"] for r in rows]
            print(f"  uncorrected selection - BT: mean {100 * statistics.mean(naive):+.2f}, "
                  f"worst {100 * min(naive):+.2f} points, "
                  f"{sum(d < -0.003 for d in naive)} of {len(rows)} more than 0.3 below")
        if args.baseline:
            before = [r["before"] - r["bt"] for r in rows]
            print(f"  baseline's auto - BT: mean {100 * statistics.mean(before):+.2f}, "
                  f"worst {100 * min(before):+.2f} points, "
                  f"{sum(d < -0.003 for d in before)} of {len(rows)} more than 0.3 below")
        if kind == "flat":
            within = sum(d >= -0.003 for d in diffs)
            met = within >= len(rows) - len(rows) // 20 and min(diffs) >= -0.01
            print(f"  within 0.3 points of BT or above: {within} of {len(rows)}; "
                  f"never 1 point below: {min(diffs) >= -0.01} -> {'met' if met else 'MISSED'}")
        else:
            gain = statistics.mean(r["best_fixed"] - r["bt"] for r in rows)
            got = statistics.mean(diffs)
            share = got / gain if gain > 0 else float("nan")
            met = gain > 0 and share >= 0.5
            print(f"  best fixed rank - BT: {100 * gain:+.2f} points on average; auto gets "
                  f"{100 * got:+.2f}, {share:.0%} of it -> {'met' if met else 'MISSED'}")
        ok &= met
    if args.json:
        with open(args.json, "w") as f:
            json.dump(records, f, indent=1)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
