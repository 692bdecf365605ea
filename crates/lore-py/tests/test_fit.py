"""lore.fit: inputs (dtypes, layouts, orders), options, errors (ValueError / OSError with a
one-line message), and the zero-copy read of a C-contiguous float32 x with sorted users."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

import lore
from conftest import planted, read_safetensors, run_lore, write_safetensors

X, USER = planted(n_users=8, pairs=10, features=12, rank=3, seed=31)


def fit(x: Any = X, user: Any = USER, rank: int | None = 3, **options: Any) -> lore.Model:
    options.setdefault("iterations", 30)
    options.setdefault("lr", 0.1)
    return lore.fit(x, user, rank, **options)


def same(a: lore.Model, b: lore.Model) -> bool:
    return a.V.tobytes() == b.V.tobytes() and a.W.tobytes() == b.W.tobytes()


def test_a_fit_is_reproducible_and_seeded() -> None:
    a, b, c = fit(seed=1), fit(seed=1), fit(seed=2)
    assert same(a, b)
    assert not same(a, c)
    assert a.V.dtype == np.float32 and a.V.shape == (12, 3) and a.W.shape == (8, 3)
    np.testing.assert_allclose(a.W.sum(axis=1), 1, rtol=1e-5)
    assert a.steps == 30 and a.method == "lore" and a.metadata["seed"] == 1


def test_layouts_and_orders_give_the_same_model() -> None:
    base = fit()
    assert same(base, fit(np.asfortranarray(X)))  # copied once into rows
    wide = np.zeros((X.shape[0], 24), np.float32)
    wide[:, ::2] = X
    assert same(base, fit(wide[:, ::2]))  # strided view
    assert same(base, fit(X.astype(np.float64)))  # converted to float32
    assert same(base, fit(X.tolist(), USER.tolist()))  # any array-like
    assert same(base, fit(user=USER.astype(np.int32)))
    # Users interleaved, each user's rows in their order: grouped by user, stably.
    user = USER[np.random.default_rng(0).permutation(len(X))]
    x = np.empty_like(X)
    for u in range(8):
        x[user == u] = X[USER == u]
    assert same(base, fit(x, user))
    assert not same(base, fit(X[::-1].copy(), USER[::-1].copy()))  # other order within users


def test_float16_rows_fit_as_the_cli_fits_an_f16_file(tmp_path: Path) -> None:
    x16 = X.astype(np.float16)
    data, out = tmp_path / "data.safetensors", tmp_path / "model.safetensors"
    write_safetensors(data, {"x": x16, "user": USER})
    run_lore("fit", "--data", data, "--rank", "3", "--iterations", "30", "--lr", "0.1", "--out", out)
    cli, _ = read_safetensors(out)
    model = fit(x16)
    assert model.V.tobytes() == cli["V"].tobytes()
    assert model.W.tobytes() == cli["W"].tobytes()


def test_init_from_a_file_or_arrays(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    w0 = rng.standard_normal((8, 3)).astype(np.float32)
    v0 = rng.standard_normal((12, 3)).astype(np.float32)
    path = tmp_path / "init.safetensors"
    write_safetensors(path, {"W0": w0, "V0": v0})
    from_file = fit(rank=None, init=path)
    from_arrays = fit(rank=None, init={"W0": w0, "V0": v0})
    assert same(from_file, from_arrays)
    assert not same(from_file, fit())
    assert from_file.metadata["init"] == str(path)


def test_trace_lines_are_the_cli_s(tmp_path: Path) -> None:
    data, out = tmp_path / "data.safetensors", tmp_path / "model.safetensors"
    write_safetensors(data, {"x": X, "user": USER})
    cli_trace, py_trace = tmp_path / "cli.jsonl", tmp_path / "py.jsonl"
    run_lore("fit", "--data", data, "--rank", "3", "--iterations", "30", "--lr", "0.1",
             "--method", "regularized", "--out", out, "--trace", cli_trace)
    fit(method="regularized", trace=py_trace)
    assert py_trace.read_text() == cli_trace.read_text()
    assert len(py_trace.read_text().splitlines()) == 30


def test_user_ids_are_recorded() -> None:
    ids = [f"user-{i}" for i in range(8)]
    model = fit(user_ids=ids)
    assert model.user_ids == ids and model.metadata["user_ids"] == ids
    assert fit().user_ids is None


BAD: list[tuple[str, Callable[[], Any], type[Exception], str]] = [
    ("3-D x", lambda: fit(X[:, None, :]), ValueError, "2-D"),
    ("short user", lambda: fit(user=USER[:-1]), ValueError, "P = 80"),
    ("text x", lambda: fit(np.array([["a"] * 12] * 80)), ValueError, "real numbers"),
    ("float user", lambda: fit(user=USER.astype(float)), ValueError, "integer"),
    ("negative user", lambda: fit(user=np.where(USER == 7, -1, USER)), ValueError, "negative"),
    ("empty user", lambda: fit(user=np.where(USER == 3, 4, USER)), ValueError, "user 3 has no rows"),
    ("rank > F", lambda: fit(rank=13), ValueError, "exceeds the 12 features"),
    ("no rank", lambda: fit(rank=None), ValueError, "rank is required"),
    ("rank 0", lambda: fit(rank=0), ValueError, "rank"),
    ("rank -1", lambda: fit(rank=-1), ValueError, "invalid rank: -1"),
    ("iterations -5", lambda: fit(iterations=-5), ValueError, "invalid iterations: -5"),
    ("bad method", lambda: fit(method="nope"), ValueError, "unknown method"),
    ("bad precision", lambda: fit(precision="f8"), ValueError, "unknown precision"),
    ("alpha without v_ref", lambda: fit(alpha=1.0), ValueError, "v_ref"),
    ("v_ref length", lambda: fit(alpha=1.0, v_ref=np.ones(5)), ValueError, "F = 5"),
    ("NaN v_ref", lambda: fit(alpha=1.0, v_ref=np.full(12, np.nan)), ValueError, "finite"),
    ("negative lr", lambda: fit(lr=-1.0), ValueError, "learning rate"),
    ("fraction", lambda: fit(validation_fraction=1.5), ValueError, "validation_fraction"),
    ("patience alone", lambda: fit(patience=3), ValueError, "validation_fraction"),
    ("init K", lambda: fit(rank=None, init={"W0": np.zeros((8, 2)), "V0": np.zeros((12, 3))}), ValueError, "K = 2"),
    ("init N", lambda: fit(rank=None, init={"W0": np.zeros((7, 3)), "V0": np.zeros((12, 3))}), ValueError, "N = 7"),
    ("init rank", lambda: fit(rank=2, init={"W0": np.zeros((8, 3)), "V0": np.zeros((12, 3))}), ValueError, "rank 2"),
    ("init keys", lambda: fit(rank=None, init={"W0": np.zeros((8, 3))}), ValueError, "V0"),
    ("threads 0", lambda: fit(threads=0), ValueError, "threads"),
    ("user_ids", lambda: fit(user_ids=["a"]), ValueError, "user_ids"),
    ("missing init", lambda: fit(rank=None, init="/nonexistent/init.safetensors"), OSError, "/nonexistent/init.safetensors"),
    ("missing v_ref", lambda: fit(alpha=1.0, v_ref="/nonexistent/v.safetensors"), OSError, "/nonexistent/v.safetensors"),
    ("missing model", lambda: lore.load("/nonexistent/model.safetensors"), OSError, "/nonexistent/model.safetensors"),
    ("missing users", lambda: lore.load_users("/nonexistent/users.safetensors"), OSError, "/nonexistent"),
    ("trace dir", lambda: fit(trace="/nonexistent/dir/trace.jsonl"), OSError, "/nonexistent/dir"),
]


@pytest.mark.parametrize("call, kind, words", [pytest.param(*b[1:], id=b[0]) for b in BAD])
def test_errors_are_one_line(call: Callable[[], Any], kind: type[Exception], words: str) -> None:
    with pytest.raises(kind) as error:
        call()
    message = str(error.value)
    assert words in message
    assert "\n" not in message


def test_a_non_finite_value_is_reported_at_its_row() -> None:
    order = np.random.default_rng(1).permutation(len(X))
    x, user = X[order].copy(), USER[order].copy()
    x[17, 5] = np.inf
    with pytest.raises(ValueError, match="row 17, column 5 is inf"):
        fit(x, user)


ZERO_COPY = textwrap.dedent(
    """
    import json, resource, sys, time
    import numpy as np
    import lore

    pairs, features, users = 50_000, 1024, 500
    shuffle = sys.argv[1] == "unsorted"
    rng = np.random.default_rng(0)
    x = rng.standard_normal((pairs, features), dtype=np.float32)
    user = np.repeat(np.arange(users), pairs // users)
    if shuffle:
        user = user[rng.permutation(pairs)]
    # Warm up lore's allocations on a small fit, then measure the big one.
    lore.fit(x[:1000], np.repeat(np.arange(10), 100), 2, iterations=1)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    lore.fit(x, user, 4, iterations=2, lr=0.1)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"x": x.nbytes, "before": before, "after": after}))
    """
)


def peak_growth(order: str) -> tuple[int, int]:
    done = subprocess.run([sys.executable, "-c", ZERO_COPY, order], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    return report["after"] - report["before"], report["x"]


def test_sorted_float32_rows_are_not_copied() -> None:
    growth, size = peak_growth("sorted")
    assert growth < 0.25 * size, f"peak RSS grew by {growth / 1e6:.0f} MB for x of {size / 1e6:.0f} MB"
    # The measurement sees a copy: unsorted users make one (grouped by user).
    growth, size = peak_growth("unsorted")
    assert growth > 0.75 * size, f"peak RSS grew by only {growth / 1e6:.0f} MB with a copy"
