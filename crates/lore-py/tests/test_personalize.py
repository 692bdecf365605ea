"""Model.personalize: new users' weights with the basis fixed, as `lore personalize` fits
them: options, the prior, early stopping, and errors."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pytest

import lore
from conftest import planted

X, USER = planted(n_users=10, pairs=12, features=16, rank=3, seed=51)
NEW_X, NEW_USER = planted(n_users=5, pairs=6, features=16, rank=3, seed=52)
MODEL = lore.fit(X, USER, 3, iterations=80, lr=0.1)


def test_personalize_fits_new_users() -> None:
    users = MODEL.personalize(NEW_X, NEW_USER, iterations=100)
    assert users.W.shape == (5, 3) and users.W.dtype == np.float32
    np.testing.assert_allclose(users.W.sum(axis=1), 1, rtol=1e-5)
    np.testing.assert_allclose(users.W, np.exp(users.W_logits) / np.exp(users.W_logits).sum(1, keepdims=True), rtol=1e-5)
    assert users.metadata["iterations"] == 100 and users.metadata["kind"] == "users"
    assert users.user_ids is None
    again = MODEL.personalize(NEW_X, NEW_USER, iterations=100)
    assert again.W.tobytes() == users.W.tobytes()
    other_seed = MODEL.personalize(NEW_X, NEW_USER, iterations=100, seed=1)
    assert other_seed.W.tobytes() != users.W.tobytes()


def test_init_sets_the_start() -> None:
    init = np.zeros((5, 3), np.float32)
    one_step = MODEL.personalize(NEW_X, NEW_USER, iterations=1, lr=1e-9, init=init)
    np.testing.assert_allclose(one_step.W, 1 / 3, atol=1e-6)


def test_a_strong_prior_keeps_users_at_the_population_mix() -> None:
    users = MODEL.personalize(NEW_X, NEW_USER, iterations=100, prior_strength=1e6)
    population = np.exp(MODEL.prior_logits) / np.exp(MODEL.prior_logits).sum()
    np.testing.assert_allclose(users.W, np.tile(population, (5, 1)), atol=1e-3)
    assert users.metadata["prior_strength"] == 1e6


def test_early_stopping_is_recorded() -> None:
    users = MODEL.personalize(NEW_X, NEW_USER, iterations=300, validation_fraction=0.3, patience=2, eval_every=5)
    stopping = users.metadata["early_stopping"]
    assert stopping["validation_fraction"] == 0.3 and stopping["patience"] == 2
    assert stopping["validation_pairs"] == 5 * 2  # round(0.3 * 6) of each user's 6 pairs


def test_user_ids_are_recorded() -> None:
    ids = ["a", "b", "c", "d", "e"]
    assert MODEL.personalize(NEW_X, NEW_USER, iterations=5, user_ids=ids).user_ids == ids


BAD: list[tuple[str, Callable[[], Any], type[Exception], str]] = [
    ("F", lambda: MODEL.personalize(NEW_X[:, :8], NEW_USER), ValueError, "F = 16"),
    ("init shape", lambda: MODEL.personalize(NEW_X, NEW_USER, init=np.zeros((5, 2))), ValueError, "K = 3"),
    ("iterations", lambda: MODEL.personalize(NEW_X, NEW_USER, iterations=0), ValueError, "iterations"),
    ("prior", lambda: MODEL.personalize(NEW_X, NEW_USER, prior_strength=-1.0), ValueError, "prior strength"),
    ("user", lambda: MODEL.personalize(NEW_X, NEW_USER[:-2]), ValueError, "P = 30"),
    ("ids", lambda: MODEL.personalize(NEW_X, NEW_USER, user_ids=["a", "a", "b", "c", "d"]), ValueError, "more than once"),
]


@pytest.mark.parametrize("call, kind, words", [pytest.param(*b[1:], id=b[0]) for b in BAD])
def test_errors_are_one_line(call: Callable[[], Any], kind: type[Exception], words: str) -> None:
    with pytest.raises(kind) as error:
        call()
    assert words in str(error.value)
    assert "\n" not in str(error.value)
