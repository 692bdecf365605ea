"""The golden traced runs of the reference implementation (tests/fixtures/reference) replay
through lore.fit and Model.personalize within the README's tolerances: traced losses 1e-4
relative, final parameters 1e-3 absolute, accuracy and kept columns exactly. From numpy, and
from torch tensors when torch is installed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

import lore
from conftest import golden, write_safetensors

LORE_RUNS = ["lore_alpha0.safetensors", "lore_l2.safetensors", "lore_paper_lr.safetensors"]
REGULARIZED_RUNS = ["regularized_warmup.safetensors", "regularized_paper_lr.safetensors"]
PERSONALIZE_RUNS = ["personalize.safetensors", "personalize_paper.safetensors"]


def numpy_input(a: np.ndarray) -> Any:
    return a


def torch_input(a: np.ndarray) -> Any:
    torch = pytest.importorskip("torch", reason="torch is not installed: the torch inputs are not tested")
    return torch.from_numpy(a)


INPUTS = [pytest.param(numpy_input, id="numpy"), pytest.param(torch_input, id="torch")]


def assert_trace(name: str, got: list[float], want: np.ndarray) -> None:
    assert len(got) == len(want), f"{name}: trace length"
    want64 = want.astype(np.float64)
    tol = 1e-4 * np.maximum(np.abs(want64), 1e-6)
    bad = np.abs(np.asarray(got) - want64) > tol
    assert not bad.any(), f"{name}: step {int(np.argmax(bad))}: got {got[int(np.argmax(bad))]}, want {want64[bad][0]}"


def assert_close(name: str, got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape, f"{name}: shape {got.shape} != {want.shape}"
    worst = float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64))))
    assert worst <= 1e-3, f"{name}: max abs error {worst}"


def read_trace(path: Path) -> list[dict[str, float]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("run", LORE_RUNS)
@pytest.mark.parametrize("to_input", INPUTS)
def test_lore_runs_replay(run: str, to_input: Callable[[np.ndarray], Any], tmp_path: Path) -> None:
    t, meta = golden(run)
    trace = tmp_path / "trace.jsonl"
    model = lore.fit(
        to_input(t["x"]),
        to_input(t["user"]),
        method="lore",
        init={"W0": to_input(t["W0"]), "V0": to_input(t["V0"])},
        v_ref=to_input(t["v_ref"]),
        lr=meta["learning_rate"],
        iterations=meta["iterations"],
        alpha=meta["alpha"],
        trace=trace,
    )
    steps = read_trace(trace)
    assert_trace("nll", [s["nll"] for s in steps], t["nll"])
    assert_trace("reg", [s["reg"] for s in steps], t["reg"])
    assert_close("V", model.V, t["V"])
    assert_close("W", model.W, t["W"])
    assert model.kept == list(range(t["V0"].shape[1]))
    accuracy = lore.accuracy(model, t["x"], t["user"])
    np.testing.assert_array_equal(accuracy["per_user"], t["accuracy"])


@pytest.mark.parametrize("run", REGULARIZED_RUNS)
@pytest.mark.parametrize("to_input", INPUTS)
def test_regularized_runs_replay(
    run: str, to_input: Callable[[np.ndarray], Any], tmp_path: Path
) -> None:
    t, meta = golden(run)
    trace = tmp_path / "trace.jsonl"
    model = lore.fit(
        to_input(t["x"]),
        to_input(t["user"]),
        method="regularized",
        init={"W0": to_input(t["W0"]), "V0": to_input(t["V0"])},
        v_ref=to_input(t["v_ref"]),
        lr=meta["learning_rate"],
        iterations=meta["iterations"],
        alpha=meta["alpha"],
        trace=trace,
    )
    steps = read_trace(trace)
    assert_trace("nll_w", [s["nll_w"] for s in steps], t["nll_w"])
    assert_trace("nll_v", [s["nll_v"] for s in steps], t["nll_v"])
    assert_trace("reg", [s["reg"] for s in steps], t["reg"])
    assert_trace("alpha_at_step", [s["alpha"] for s in steps], t["alpha_at_step"])
    assert model.kept == [j for j, k in enumerate(t["kept"]) if k]
    assert_close("V", model.V, t["V"])
    assert_close("W", model.W, t["W"])
    accuracy = lore.accuracy(model, t["x"], t["user"])
    np.testing.assert_array_equal(accuracy["per_user"], t["accuracy"])


@pytest.mark.parametrize("run", PERSONALIZE_RUNS)
@pytest.mark.parametrize("to_input", INPUTS)
def test_personalize_runs_replay(
    run: str, to_input: Callable[[np.ndarray], Any], tmp_path: Path
) -> None:
    t, meta = golden(run)
    k = t["V"].shape[1]
    # A model file holding the fixed basis (and one user, as every model file has).
    path = tmp_path / "basis.safetensors"
    write_safetensors(path, {"V": t["V"], "W": np.full((1, k), 1 / k, np.float32)})
    model = lore.load(path)
    users = model.personalize(
        to_input(t["x"]),
        to_input(t["user"]),
        init=to_input(t["w0"]),
        iterations=meta["iterations"],
        lr=meta["learning_rate"],
    )
    assert_close("W", users.W, t["W"])
    accuracy = lore.accuracy(model, t["x"], t["user"], users)
    np.testing.assert_array_equal(accuracy["per_user"], t["accuracy"])
