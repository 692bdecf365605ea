"""Same options and seed give bit-identical V and W through Python and through the CLI
(`lore fit`, `lore personalize`; env LORE_BIN is the binary), both methods, with early
stopping and with v_ref="bt"."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import lore
from conftest import planted, read_safetensors, run_lore, write_safetensors


def assert_same_bits(name: str, got: np.ndarray, want: np.ndarray) -> None:
    assert got.dtype == want.dtype == np.float32, name
    assert got.shape == want.shape, f"{name}: shape {got.shape} != {want.shape}"
    assert got.tobytes() == want.tobytes(), f"{name}: max difference {np.max(np.abs(got - want))}"


CASES = [
    pytest.param({"method": "lore", "iterations": 60, "lr": 0.1, "seed": 3}, id="lore"),
    pytest.param(
        {"method": "regularized", "iterations": 60, "lr": 0.1, "seed": 4, "alpha": 2.0, "v_ref": "file"},
        id="regularized-v_ref-file",
    ),
    pytest.param(
        {"method": "lore", "iterations": 200, "lr": 0.2, "seed": 5, "validation_fraction": 0.25,
         "patience": 2, "eval_every": 5},
        id="lore-validation",
    ),
    pytest.param(
        {"method": "regularized", "iterations": 80, "lr": 0.1, "seed": 6, "alpha": 1.0, "v_ref": "bt",
         "validation_fraction": 0.2},
        id="regularized-bt-validation",
    ),
    pytest.param(
        {"method": "lore", "iterations": 40, "lr": 0.1, "seed": 7, "alpha": 0.5, "v_ref": "bt",
         "prune_threshold": 0.05, "logit_scale": 0.05},
        id="lore-bt-prune-scale",
    ),
]


def cli_flags(options: dict[str, Any], v_ref_file: Path) -> list[str]:
    flags = []
    for key, value in options.items():
        if key == "v_ref" and value == "file":
            value = v_ref_file
        flags += [f"--{key.replace('_', '-')}", str(value)]
    return flags


@pytest.mark.parametrize("options", CASES)
@pytest.mark.parametrize("shuffle", [False, True], ids=["sorted", "unsorted"])
def test_fit_matches_the_cli_bit_for_bit(options: dict[str, Any], shuffle: bool, tmp_path: Path) -> None:
    x, user = planted(n_users=10, pairs=12, features=20, rank=4, seed=11, shuffle=shuffle)
    v_ref = np.random.default_rng(1).standard_normal(20).astype(np.float32)
    data, v_ref_file, out = tmp_path / "data.safetensors", tmp_path / "v_ref.safetensors", tmp_path / "cli.safetensors"
    write_safetensors(data, {"x": x, "user": user})
    write_safetensors(v_ref_file, {"v_ref": v_ref})
    run_lore("fit", "--data", data, "--rank", "4", "--out", out, *cli_flags(options, v_ref_file))
    cli, meta = read_safetensors(out)

    kwargs = dict(options)
    if kwargs.get("v_ref") == "file":
        kwargs["v_ref"] = v_ref
    model = lore.fit(x, user, 4, **kwargs)
    assert_same_bits("V", model.V, cli["V"])
    assert_same_bits("W", model.W, cli["W"])
    assert_same_bits("W_logits", model.W_logits, cli["W_logits"])
    assert_same_bits("prior_logits", model.prior_logits, cli["prior_logits"])
    if "v_ref" in options:
        assert_same_bits("v_ref", model.v_ref, cli["v_ref"])
    # The same metadata, but for where the data came from.
    python_meta = {k: v for k, v in model.metadata.items() if k != "data"}
    cli_meta = {k: json.loads(v) for k, v in meta.items() if k != "data"}
    assert python_meta == cli_meta


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"iterations": 80, "lr": 0.2, "seed": 2}, id="plain"),
        pytest.param({"iterations": 120, "seed": 3, "prior_strength": 0.1, "validation_fraction": 0.3}, id="prior-validation"),
    ],
)
def test_personalize_matches_the_cli_bit_for_bit(options: dict[str, Any], tmp_path: Path) -> None:
    x, user = planted(n_users=10, pairs=12, features=20, rank=4, seed=12)
    new_x, new_user = planted(n_users=6, pairs=5, features=20, rank=4, seed=13, shuffle=True)
    data, new, model_file, out = (tmp_path / n for n in ("data.safetensors", "new.safetensors", "model.safetensors", "users.safetensors"))
    write_safetensors(data, {"x": x, "user": user})
    write_safetensors(new, {"x": new_x, "user": new_user})
    run_lore("fit", "--data", data, "--rank", "4", "--iterations", "50", "--lr", "0.1", "--out", model_file)
    flags = [item for k, v in options.items() for item in (f"--{k.replace('_', '-')}", str(v))]
    run_lore("personalize", "--model", model_file, "--data", new, "--out", out, *flags)
    cli, _ = read_safetensors(out)

    users = lore.load(model_file).personalize(new_x, new_user, **options)
    assert_same_bits("W", users.W, cli["W"])
    assert_same_bits("W_logits", users.W_logits, cli["W_logits"])
