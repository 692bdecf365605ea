"""lore.compat, the drop-in for the reference's utils.py: the golden traced runs of the
reference classes replay through compat's classes (from numpy inputs, and from torch inputs
when torch is installed), and a script written for the reference gets the reference's table."""

from __future__ import annotations

import importlib.util
import json
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

import lore.compat as utils

HERE = Path(__file__).resolve().parent
GOLDEN = HERE.parents[2] / "tests" / "fixtures" / "reference"
COMPAT_FIXTURES = HERE / "fixtures" / "compat"

# The Rust tests' tolerances for the golden runs (tests/fixtures/reference/README.md).
PARAM_TOLERANCE = 1e-3
# The acceptance bound on the reference's table, in accuracy points.
TABLE_TOLERANCE_POINTS = 1.5

_TORCH_MISSING = importlib.util.find_spec("torch") is None


def _read_safetensors(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The tensors and the JSON-parsed metadata of a safetensors file (8-byte little-endian
    header length, a JSON header, then the raw little-endian bytes)."""
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + length])
    dtypes = {"F32": "<f4", "F16": "<f2", "I64": "<i8"}
    data = raw[8 + length :]
    tensors = {}
    metadata = {key: json.loads(value) for key, value in header.pop("__metadata__", {}).items()}
    for name, entry in header.items():
        start, end = entry["data_offsets"]
        tensors[name] = (
            np.frombuffer(data[start:end], dtype=dtypes[entry["dtype"]])
            .reshape(entry["shape"])
            .copy()
        )
    return tensors, metadata


def _per_user(x: np.ndarray, user: np.ndarray) -> list[np.ndarray]:
    """The reference's input: one array [n_u, F] per user, in user order."""
    return [x[user == u] for u in range(int(user.max()) + 1)]


def _numpy_inputs(a: np.ndarray) -> Any:
    return a


def _torch_inputs(a: np.ndarray) -> Any:
    import torch

    return torch.from_numpy(a)


def _as_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        return np.asarray(value.detach().cpu().numpy())
    return np.asarray(value)


INPUTS = [
    pytest.param(_numpy_inputs, "numpy", id="numpy"),
    pytest.param(
        _torch_inputs,
        "torch",
        id="torch",
        marks=pytest.mark.skipif(_TORCH_MISSING, reason="torch is not installed"),
    ),
]


def _check_type(value: Any, kind: str) -> None:
    if kind == "torch":
        import torch

        assert isinstance(value, torch.Tensor), type(value)
        assert value.dtype == torch.float32
    else:
        assert isinstance(value, np.ndarray), type(value)
        assert value.dtype == np.float32


def _check_accuracy(W: Any, V: Any, features: list[Any], expected: np.ndarray) -> None:
    accuracies = utils.eval_multiple(W, [V] * len(features), features)
    np.testing.assert_array_equal(np.asarray(accuracies, dtype=np.float32), expected)


@pytest.mark.parametrize("name", ["lore_alpha0", "lore_l2", "lore_paper_lr"])
@pytest.mark.parametrize("convert,kind", INPUTS)
def test_lore_golden_runs_replay(
    name: str, convert: Callable[[np.ndarray], Any], kind: str
) -> None:
    t, meta = _read_safetensors(GOLDEN / f"{name}.safetensors")
    features = [convert(a) for a in _per_user(t["x"], t["user"])]
    n, k = t["W0"].shape
    am = utils.LoRe(
        convert(t["v_ref"]),
        meta["alpha"],
        n,
        t["x"].shape[1],
        k,
        meta["iterations"],
        meta["learning_rate"],
    )
    am.W = convert(t["W0"])
    am.V = convert(t["V0"])
    W, V = am.train(features)
    _check_type(W, kind)
    _check_type(V, kind)
    np.testing.assert_allclose(_as_numpy(W), t["W"], atol=PARAM_TOLERANCE, rtol=0)
    np.testing.assert_allclose(_as_numpy(V), t["V"], atol=PARAM_TOLERANCE, rtol=0)
    np.testing.assert_allclose(_as_numpy(am.V), t["V"], atol=PARAM_TOLERANCE, rtol=0)
    _check_accuracy(W, V, features, t["accuracy"])


@pytest.mark.parametrize("name", ["regularized_warmup", "regularized_paper_lr"])
@pytest.mark.parametrize("convert,kind", INPUTS)
def test_regularized_golden_runs_replay(
    name: str, convert: Callable[[np.ndarray], Any], kind: str
) -> None:
    t, meta = _read_safetensors(GOLDEN / f"{name}.safetensors")
    features = [convert(a) for a in _per_user(t["x"], t["user"])]
    n, k = t["W0"].shape
    am = utils.LoRe_regularized(
        convert(t["v_ref"]),
        meta["alpha"],
        n,
        t["x"].shape[1],
        k,
        meta["iterations"],
        meta["learning_rate"],
    )
    am.W = convert(t["W0"])
    am.V = convert(t["V0"])
    W, V = am.train(features)
    _check_type(W, kind)
    _check_type(V, kind)
    assert am.kept == [int(j) for j in np.flatnonzero(t["kept"])]
    assert len(am.kept) < k  # the fixtures plant columns to prune
    np.testing.assert_allclose(_as_numpy(W), t["W"], atol=PARAM_TOLERANCE, rtol=0)
    np.testing.assert_allclose(_as_numpy(V), t["V"], atol=PARAM_TOLERANCE, rtol=0)
    # The module keeps every trained column, pruned ones included, as the reference's does.
    np.testing.assert_allclose(_as_numpy(am.W), t["W_all_logits"], atol=PARAM_TOLERANCE, rtol=0)
    np.testing.assert_allclose(_as_numpy(am.V), t["V_all"], atol=PARAM_TOLERANCE, rtol=0)
    _check_accuracy(W, V, features, t["accuracy"])


@pytest.mark.parametrize("name", ["personalize", "personalize_paper"])
@pytest.mark.parametrize("convert,kind", INPUTS)
def test_personalize_golden_runs_replay(
    name: str, convert: Callable[[np.ndarray], Any], kind: str
) -> None:
    t, meta = _read_safetensors(GOLDEN / f"{name}.safetensors")
    features = [convert(a) for a in _per_user(t["x"], t["user"])]
    n, k = t["w0"].shape
    fitw = utils.PersonalizeBatch(n, t["x"].shape[1], k, meta["iterations"], meta["learning_rate"])
    fitw.w = [convert(row) for row in t["w0"]]
    W = fitw.train(features, convert(t["V"]))
    assert len(W) == n
    for w in W:
        _check_type(w, kind)
    np.testing.assert_allclose(
        np.stack([_as_numpy(w) for w in W]), t["W"], atol=PARAM_TOLERANCE, rtol=0
    )
    _check_accuracy(W, convert(t["V"]), features, t["accuracy"])


def test_solve_functions_take_the_number_of_features_from_the_data() -> None:
    t, _ = _read_safetensors(GOLDEN / "regularized_warmup.safetensors")
    features = _per_user(t["x"], t["user"])
    np.random.seed(0)
    W, V = utils.solve_regularized_simplex(t["v_ref"], 1.0, features, 3, num_iterations=20)
    assert V.shape[0] == t["x"].shape[1] and W.shape[0] == len(features)
    assert V.shape[1] == W.shape[1] <= 3
    np.testing.assert_allclose(W.sum(axis=1), 1.0, atol=1e-5)
    W, V = utils.solve_regularized(t["v_ref"][:, None], 0.1, features, 2, num_iterations=20)
    assert W.shape == (len(features), 2) and V.shape == (t["x"].shape[1], 2)
    few = utils.learn_multiple_few_shot(features, V, num_iterations=20)
    assert len(few) == len(features) and all(w.shape == (2,) for w in few)


def test_global_numpy_seed_makes_runs_repeatable_and_seed_keyword_too() -> None:
    t, _ = _read_safetensors(GOLDEN / "lore_alpha0.safetensors")
    features = _per_user(t["x"], t["user"])
    runs = []
    for _ in range(2):
        np.random.seed(7)
        runs.append(utils.solve_regularized(t["v_ref"], 0.0, features, 2, num_iterations=10))
    np.testing.assert_array_equal(runs[0][1], runs[1][1])
    a = utils.LoRe(t["v_ref"], 0.0, 8, 32, 2, 10, 0.1, seed=3)
    b = utils.LoRe(t["v_ref"], 0.0, 8, 32, 2, 10, 0.1, seed=3)
    c = utils.LoRe(t["v_ref"], 0.0, 8, 32, 2, 10, 0.1, seed=4)
    np.testing.assert_array_equal(a.V, b.V)
    assert not np.array_equal(a.V, c.V)


@pytest.mark.parametrize("convert,kind", INPUTS)
def test_sample_shots_draws_rows_of_each_user(
    convert: Callable[[np.ndarray], Any], kind: str
) -> None:
    rng = np.random.default_rng(0)
    features = [convert(rng.standard_normal((n, 4)).astype(np.float32)) for n in (5, 9, 2)]
    sampled = utils.sample_shots(features, 3)
    for original, shots in zip(features, sampled):
        _check_type(shots, kind)
        rows = _as_numpy(shots)
        assert rows.shape == (min(3, original.shape[0]), 4)
        source = _as_numpy(original)
        # Distinct rows of the user's own array.
        matches = [int(np.flatnonzero((source == row).all(axis=1))[0]) for row in rows]
        assert len(set(matches)) == len(matches)


def _run_table_driver(arrays: str) -> dict[str, Any]:
    driver = COMPAT_FIXTURES / "make_reference_table.py"
    out = subprocess.run(
        [sys.executable, str(driver), "--utils", "lore.compat", "--arrays", arrays],
        check=True,
        capture_output=True,
        text=True,
    )
    table: dict[str, Any] = json.loads(out.stdout)
    return table


@pytest.mark.parametrize("arrays", ["numpy", "torch"])
def test_reference_script_gets_the_reference_table(arrays: str) -> None:
    if arrays == "torch" and _TORCH_MISSING:
        pytest.skip("torch is not installed")
    reference = json.loads((COMPAT_FIXTURES / "reference_table.json").read_text())
    ours = _run_table_driver(arrays)
    assert ours["population"] == reference["population"]
    assert ours["tables"].keys() == reference["tables"].keys()
    for name, expected in reference["tables"].items():
        got = ours["tables"][name]
        assert got.keys() == expected.keys()
        for column in expected:
            if not column.endswith("_mean"):
                continue
            diff = 100 * np.abs(np.asarray(got[column]) - np.asarray(expected[column]))
            assert diff.max() <= TABLE_TOLERANCE_POINTS, (
                name,
                column,
                got[column],
                expected[column],
            )


def test_a_column_reference_vector_is_one_vector() -> None:
    # The reference's L2 term broadcasts V[:, j] - V_sft to [F, F] when V_sft is [F, 1];
    # lore (and so lore.compat) reads it as the vector it is.
    t, meta = _read_safetensors(GOLDEN / "lore_l2.safetensors")
    features = _per_user(t["x"], t["user"])
    n, k = t["W0"].shape
    results = []
    for v_sft in (t["v_ref"], t["v_ref"][:, None]):
        am = utils.LoRe(v_sft, meta["alpha"], n, t["x"].shape[1], k, 20, meta["learning_rate"])
        am.W, am.V = t["W0"], t["V0"]
        results.append(am.train(features))
    np.testing.assert_array_equal(results[0][1], results[1][1])
    np.testing.assert_array_equal(results[0][0], results[1][0])


def test_run_regularized_and_the_few_shot_curve() -> None:
    t, _ = _read_safetensors(GOLDEN / "regularized_warmup.safetensors")
    users = _per_user(t["x"], t["user"])
    train = [u[: len(u) // 2] for u in users]
    test = [u[len(u) // 2 :] for u in users]
    seen, unseen = slice(0, 6), slice(6, None)
    v_final = t["v_ref"][:, None]
    np.random.seed(0)
    table = utils.run_regularized(
        [0, 2], [1.0], v_final, train[seen], test[seen], train[unseen], test[unseen], 6, 4, "cpu"
    )
    assert len(table) == 8 and all(column.shape == (2,) for column in table)
    assert all(((0 <= column) & (column <= 1)).all() for column in table)
    # K = 0 is the reference direction itself, with weight 1.
    baseline = utils.eval_multiple([np.ones(1)] * 6, [v_final] * 6, train[seen])
    assert table[0][0] == pytest.approx(np.mean(baseline))
    assert table[4][0] == pytest.approx(0.25 * np.std(baseline))
    curve = utils.run_few_shot_vary_shots(
        2, [0.0], [2], [2, 4], train[seen], train[unseen], test[unseen], v_final, 6, 4, "cpu"
    )
    assert len(curve) == 4 and all(len(values) == 2 for values in curve)
    assert all(0 <= value <= 1 for values in curve for value in values)
