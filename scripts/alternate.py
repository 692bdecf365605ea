#!/usr/bin/env python3
"""Runs benchmark commands in alternation, round after round, so that a noisy host slows them
alike, and prints each one's median of medians and lowest minimum (read from the
"median X  min Y" line that `lore bench` prints), and the median of its steps as multiples of
the memory floor where the command prints them ("the step is X.XXx it").

Usage: scripts/alternate.py ROUNDS 'label|ENV=value ...|command' ...
Example: scripts/alternate.py 3 'f32||lore bench --rank 5 --no-peak' \
    'bf16||lore bench --rank 5 --dtype bf16 --no-peak'
"""
import os
import re
import statistics
import subprocess
import sys


def main() -> None:
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    rounds = int(sys.argv[1])
    configs = [arg.split("|", 2) for arg in sys.argv[2:]]
    results = {label: [] for label, _, _ in configs}
    for _ in range(rounds):
        for label, assignments, command in configs:
            env = dict(os.environ)
            for assignment in assignments.split():
                key, value = assignment.split("=", 1)
                env[key] = value
            out = subprocess.run(command, shell=True, env=env, capture_output=True, text=True)
            found = re.search(r"median ([\d.]+)\s+min ([\d.]+)", out.stdout)
            if not found:
                sys.exit(f"{label}: no 'median .. min ..' line in the output of: {command}")
            floor = re.search(r"the step is ([\d.]+)x it", out.stdout)
            results[label].append(
                (float(found.group(1)), float(found.group(2)), floor and float(floor.group(1)))
            )
    for label, runs in results.items():
        medians = [median for median, _, _ in runs]
        lowest = min(minimum for _, minimum, _ in runs)
        listed = " ".join(f"{m:.1f}" for m in medians)
        floors = [floor for _, _, floor in runs if floor is not None]
        of_floor = f"  x floor {statistics.median(floors):.2f}" if floors else ""
        print(
            f"{label:30s} median of medians {statistics.median(medians):6.2f}"
            f"  lowest min {lowest:6.2f}  medians {listed}{of_floor}"
        )


if __name__ == "__main__":
    main()
