"""Files are interchangeable with the CLI's both ways: lore.load / lore.load_users read what
`lore fit` / `lore personalize` write, and `lore eval` / `lore personalize` read what
Model.save / Users.save write."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import lore
from conftest import planted, read_safetensors, run_lore, write_safetensors


@pytest.fixture
def data(tmp_path: Path) -> tuple[np.ndarray, np.ndarray, Path]:
    x, user = planted(n_users=8, pairs=10, features=16, rank=3, seed=21)
    path = tmp_path / "data.safetensors"
    write_safetensors(path, {"x": x, "user": user}, {"user_ids": [f"u{i}" for i in range(8)]})
    return x, user, path


def test_load_reads_a_cli_model(data: tuple[np.ndarray, np.ndarray, Path], tmp_path: Path) -> None:
    x, user, path = data
    out = tmp_path / "model.safetensors"
    run_lore("fit", "--data", path, "--rank", "3", "--method", "regularized", "--iterations", "40",
             "--lr", "0.1", "--seed", "9", "--out", out)
    tensors, meta = read_safetensors(out)
    model = lore.load(out)
    np.testing.assert_array_equal(model.V, tensors["V"])
    np.testing.assert_array_equal(model.W, tensors["W"])
    np.testing.assert_array_equal(model.W_logits, tensors["W_logits"])
    np.testing.assert_array_equal(model.prior_logits, tensors["prior_logits"])
    assert model.v_ref is None
    assert model.method == "regularized"
    assert model.rank == tensors["V"].shape[1]
    assert model.kept == json.loads(meta["kept_columns"])
    assert model.steps == 40
    assert model.user_ids == [f"u{i}" for i in range(8)]
    assert model.metadata["seed"] == 9
    assert model.metadata["data"] == str(path)
    # Saved back unchanged, byte for byte.
    copy = tmp_path / "copy.safetensors"
    model.save(copy)
    assert copy.read_bytes() == out.read_bytes()


def test_cli_reads_a_python_model(data: tuple[np.ndarray, np.ndarray, Path], tmp_path: Path) -> None:
    x, user, path = data
    model = lore.fit(x, user, 3, iterations=60, lr=0.1, user_ids=[f"u{i}" for i in range(8)])
    saved = tmp_path / "model.safetensors"
    model.save(saved)
    report = json.loads(run_lore("eval", "--model", saved, "--data", path, "--json").stdout)
    ours = lore.accuracy(model, x, user)
    np.testing.assert_allclose(report["per_user"], ours["per_user"], rtol=0, atol=1e-7)
    assert report["mean"] == pytest.approx(ours["mean"], abs=1e-12)

    # lore personalize with the Python model, then lore.load_users of its output.
    new_x, new_user = planted(n_users=4, pairs=6, features=16, rank=3, seed=22)
    new = tmp_path / "new.safetensors"
    write_safetensors(new, {"x": new_x, "user": new_user})
    out = tmp_path / "users.safetensors"
    run_lore("personalize", "--model", saved, "--data", new, "--out", out, "--iterations", "30")
    users = lore.load_users(out)
    ours_users = lore.load(saved).personalize(new_x, new_user, iterations=30)
    assert users.W.tobytes() == ours_users.W.tobytes()
    assert users.metadata["model"] == str(saved)


def test_cli_reads_python_users(data: tuple[np.ndarray, np.ndarray, Path], tmp_path: Path) -> None:
    x, user, path = data
    model = lore.fit(x, user, 3, iterations=60, lr=0.1)
    saved = tmp_path / "model.safetensors"
    model.save(saved)
    users = lore.load(saved).personalize(x, user, iterations=40, user_ids=[f"u{i}" for i in range(8)])
    users_file = tmp_path / "users.safetensors"
    users.save(users_file)
    report = json.loads(
        run_lore("eval", "--model", saved, "--users", users_file, "--data", path, "--json").stdout
    )
    ours = lore.accuracy(model, x, user, users)
    np.testing.assert_allclose(report["per_user"], ours["per_user"], rtol=0, atol=1e-7)
    back = lore.load_users(users_file)
    assert back.W.tobytes() == users.W.tobytes()
    assert back.user_ids == [f"u{i}" for i in range(8)]
    assert back.metadata["kind"] == "users"


def test_a_model_file_reads_as_users(data: tuple[np.ndarray, np.ndarray, Path], tmp_path: Path) -> None:
    x, user, _ = data
    model = lore.fit(x, user, 2, iterations=20)
    saved = tmp_path / "model.safetensors"
    model.save(saved)
    assert lore.load_users(saved).W.tobytes() == model.W.tobytes()


def test_rewards_are_c_e_v_w(data: tuple[np.ndarray, np.ndarray, Path]) -> None:
    x, user, _ = data
    model = lore.fit(x, user, 3, iterations=30, lr=0.1)
    e = x[:5]
    want = model.logit_scale * (e.astype(np.float64) @ model.V.astype(np.float64) @ model.W[0].astype(np.float64))
    got = model.rewards(e, model.W[0])
    assert got.dtype == np.float32 and got.shape == (5,)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    per_row = model.rewards(e, model.W[:5])
    want_rows = model.logit_scale * np.einsum("nf,fk,nk->n", e.astype(np.float64), model.V.astype(np.float64), model.W[:5].astype(np.float64))
    np.testing.assert_allclose(per_row, want_rows, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="K = 3"):
        model.rewards(e, np.ones(4, np.float32))
