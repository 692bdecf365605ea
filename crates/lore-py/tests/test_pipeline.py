"""lore.split, lore.sweep and lore.auto give what the CLI writes (split.json, results.json and the
other files) for the same options, on a small population simulated by `lore simulate`."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

import lore


def lore_bin() -> str:
    path = os.environ.get("LORE_BIN")
    if not path:
        pytest.skip("LORE_BIN is not set (scripts/test-python sets it to the debug `lore`)")
    return path


def cli(*args: str | os.PathLike[str]) -> None:
    subprocess.run([lore_bin(), "-q", *map(str, args)], check=True, stdout=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def population(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A split folder of 30 seen and 10 unseen users (F = 16, true rank 3), with
    population.safetensors (all rows) to split again."""
    out = tmp_path_factory.mktemp("pipeline") / "population"
    cli("simulate", "--seen-users", 30, "--unseen-users", 10, "--features", 16,
        "--rewards", 3, "--prompts", 60, "--seed", 1, "--out", out)
    return out


def read_json(path: Path) -> object:
    return json.loads(path.read_text())


SETS = ["seen_train", "seen_test", "unseen_train", "unseen_test"]


@pytest.mark.parametrize("options", [
    {},
    {"unseen_fraction": 0.25, "train_fraction": 0.6, "shots": 3, "seed": 7, "max_train_rows": 5},
    {"by_prompt": True, "shots": 2, "min_rows": 3},
])
def test_split_equals_the_cli(population: Path, tmp_path: Path, options: dict) -> None:
    data = population / "population.safetensors"
    flags: list[str] = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        flags += [flag] if value is True else [flag, str(value)]
    cli("split", "--data", data, "--out", tmp_path / "cli", *flags)
    got = lore.split(data, tmp_path / "py", **options)
    assert got == read_json(tmp_path / "cli" / "split.json")
    assert got == read_json(tmp_path / "py" / "split.json")
    for name in [f"{s}.safetensors" for s in SETS] + ["v_ref.safetensors"]:
        assert (tmp_path / "py" / name).read_bytes() == (tmp_path / "cli" / name).read_bytes(), name


def test_split_refuses_like_the_cli(population: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unseen"):
        lore.split(population / "population.safetensors", tmp_path / "a", unseen_fraction=1.5)
    with pytest.raises(OSError, match="missing.safetensors"):
        lore.split(tmp_path / "missing.safetensors", tmp_path / "b")
    assert not (tmp_path / "b").exists(), "a failed split leaves no folder behind"


SWEEP = {"ranks": [0, 1, 2], "seeds": [0, 1], "iterations": 40, "personalize_iterations": 15}


@pytest.mark.parametrize("extra", [
    {},
    {"method": "regularized", "alphas": [0.0, 1.0], "prune_threshold": 0.01},
    {"v_ref": "bt", "ranks": [1, 2], "alphas": [0.0, 0.001], "lr": 0.2},
])
def test_sweep_equals_the_cli(population: Path, tmp_path: Path, extra: dict) -> None:
    options = {**SWEEP, **extra}
    flags: list[str] = []
    for key, value in options.items():
        text = ",".join(map(str, value)) if isinstance(value, list) else str(value)
        flags += ["--" + key.replace("_", "-"), text]
    cli("sweep", "--splits", population, "--out", tmp_path / "cli", *flags)
    got = lore.sweep(population, out=tmp_path / "py", threads=1, **options)
    expected = read_json(tmp_path / "cli" / "results.json")
    assert got == expected
    assert read_json(tmp_path / "py" / "results.json") == expected
    for name in ["results.json", "results.csv"]:
        assert (tmp_path / "py" / name).read_bytes() == (tmp_path / "cli" / name).read_bytes()
    # Without `out` nothing is written and the numbers are the same.
    assert lore.sweep(population, **options) == expected


def test_sweep_errors_are_one_line(population: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown method `bogus`"):
        lore.sweep(population, method="bogus")
    with pytest.raises((OSError, ValueError), match="nowhere") as missing:
        lore.sweep(tmp_path / "nowhere", ranks=[1])
    assert "\n" not in str(missing.value)
    with pytest.raises(ValueError, match="threads"):
        lore.sweep(population, ranks=[1], threads=0)
    with pytest.raises(ValueError, match="K >= 1"):
        lore.sweep(population, ranks=[0], v_ref="bt")


def test_auto_equals_the_cli(population: Path, tmp_path: Path) -> None:
    options = {"ranks": [1, 2], "iterations": 60, "personalize_iterations": 15,
               "prior_strengths": [0.01, 1.0], "seed": 3}
    flags: list[str] = []
    for key, value in options.items():
        text = ",".join(map(str, value)) if isinstance(value, list) else str(value)
        flags += ["--" + key.replace("_", "-"), text]
    cli("auto", "--splits", population, "--out", tmp_path / "cli", *flags)
    got = lore.auto(population, out=tmp_path / "py", **options)
    expected = read_json(tmp_path / "cli" / "results.json")
    assert got == expected
    assert set(got) >= {"rows", "chosen", "candidates", "holdout", "selection"}
    for name in ["results.json", "results.csv", "candidates.csv", "model.safetensors",
                 "unseen_users.safetensors", "v_ref_bt.safetensors"]:
        assert (tmp_path / "py" / name).read_bytes() == (tmp_path / "cli" / name).read_bytes(), name


def test_out_is_an_output_folder(population: Path, tmp_path: Path) -> None:
    """`out` follows the CLI's rules: a foreign non-empty folder is refused unless forced."""
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    options = {"ranks": [1], "seeds": [0], "iterations": 5, "personalize_iterations": 2}
    with pytest.raises((OSError, ValueError)) as refused:
        lore.sweep(population, out=foreign, **options)
    assert "\n" not in str(refused.value)
    assert (foreign / "notes.txt").read_text() == "mine"
    lore.sweep(population, out=foreign, force=True, **options)
    assert (foreign / "results.json").is_file()
    assert not (foreign / "notes.txt").exists()


INTERRUPT = """
import json, os, signal, sys, threading, time
import lore

what, splits, out = sys.argv[1], sys.argv[2], sys.argv[3]
sent = []

def interrupt():
    sent.append(time.perf_counter())
    os.kill(os.getpid(), signal.SIGINT)

threading.Timer(0.5, interrupt).start()
try:
    if what == "sweep":
        lore.sweep(splits, ranks=[2], seeds=[0], iterations=10**8, out=out)
    else:
        lore.auto(splits, ranks=[2], iterations=10**8, patience=10**8, out=out)
    print(json.dumps({"raised": None}))
except KeyboardInterrupt:
    print(json.dumps({"raised": "KeyboardInterrupt", "after": time.perf_counter() - sent[0]}))
"""


@pytest.mark.parametrize("what", ["sweep", "auto"])
def test_ctrl_c_raises_keyboard_interrupt_and_writes_nothing(
    population: Path, tmp_path: Path, what: str
) -> None:
    import sys

    done = subprocess.run([sys.executable, "-c", INTERRUPT, what, str(population),
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["raised"] == "KeyboardInterrupt"
    assert report["after"] < 2.0, f"KeyboardInterrupt {report['after']:.2f} s after SIGINT"
    assert not list(tmp_path.iterdir()), "an interrupted run left files"
