"""Reward functions for TRL (``GRPOTrainer(reward_funcs=...)``) from lore models.

TRL calls a custom reward function as ``f(prompts, completions, **kwargs) -> list[float]``, with
every column of the dataset as a keyword argument (one list per batch). The functions here read
each sample's user from the ``user_id`` column and score the completion with that user's reward
r_u(text) = c * e(text) . V w_u, in the model's Bradley-Terry logit units:

- :func:`reward_function` scores in this process (a model file, its users, its embedder);
- :func:`server_reward_function` asks a ``lore serve`` instance (``POST /v1/rewards``).

Prompts and completions may be strings (standard format) or lists of ``{role, content}``
messages (conversational format); a completion is rendered after its prompt exactly as
``lore embed`` renders a side.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np
import numpy.typing as npt

from . import _lore

__all__ = [
    "PathLike",
    "RewardFunction",
    "SERVER_MAX_ITEMS",
    "UsersLike",
    "reward_function",
    "server_reward_function",
]

RewardFunction = Callable[..., list[float]]
"""TRL's custom reward function: ``(prompts, completions, **kwargs) -> list[float]``."""

PathLike = Union[str, "os.PathLike[str]"]
"""A file or folder path."""

UsersLike = Union[_lore.Users, PathLike]
"""A :class:`lore.Users` or the path of a users file."""

#: The most items ``lore serve`` takes in one request (more are sent in several requests).
SERVER_MAX_ITEMS = 4096

#: The identity fields that decide which features an embedder makes (the name and folder may
#: differ between machines).
_IDENTITY_KEYS = ("architecture", "pooling", "normalized", "max_length", "dim", "text_format")


def _population_weights(model: _lore.Model) -> npt.NDArray[np.float32]:
    """softmax(model.prior_logits): the weights of a user the model does not know."""
    logits = np.asarray(model.prior_logits, dtype=np.float64)
    e = np.exp(logits - logits.max())
    weights: npt.NDArray[np.float32] = (e / e.sum()).astype(np.float32)
    return weights


def _known_users(
    model: _lore.Model, users: UsersLike | Sequence[UsersLike] | None
) -> dict[str, npt.NDArray[np.float32]]:
    """User id -> weights [K]: the model's own users (when named), then each users file in
    order (later files win), as ``lore serve --users`` reads them."""
    known: dict[str, npt.NDArray[np.float32]] = {}
    if model.user_ids is not None:
        for uid, row in zip(model.user_ids, np.asarray(model.W, dtype=np.float32)):
            known[uid] = row
    if users is None:
        return known
    many: list[UsersLike]
    if isinstance(users, (_lore.Users, str, os.PathLike)):
        many = [users]
    else:
        many = list(users)
    rank = np.asarray(model.W).shape[1]
    for item in many:
        loaded = item if isinstance(item, _lore.Users) else _lore.load_users(item)
        weights = np.asarray(loaded.W, dtype=np.float32)
        if loaded.user_ids is None:
            raise ValueError(
                "a users file that does not name its users (metadata `user_ids`) cannot be "
                "matched to the `user_id` column"
            )
        if weights.shape[1] != rank:
            raise ValueError(
                f"the users have K = {weights.shape[1]} weights but the model has K = {rank}"
            )
        for uid, row in zip(loaded.user_ids, weights):
            known[uid] = row
    return known


def _embedder_for(
    model: _lore.Model, embedder: _lore.Embedder | PathLike | None
) -> _lore.Embedder:
    """The embedder given (an Embedder, ``"minilm"`` or a folder), else the one the model
    records (metadata ``embedder``): its folder when it exists, else its name, at the recorded
    maximum length. Refuses one whose features differ from the model's."""
    recorded = model.metadata.get("embedder")
    if isinstance(recorded, str):
        recorded = json.loads(recorded)
    if embedder is None:
        if not recorded:
            raise ValueError(
                "the model does not record how its features were made (metadata `embedder`): "
                "give embedder= (\"minilm\", a model folder or a lore.Embedder)"
            )
        source = recorded["model_path"] if Path(recorded["model_path"]).is_dir() else recorded["name"]
        embedder = _lore.Embedder(source, max_length=recorded.get("max_length"))
    elif not isinstance(embedder, _lore.Embedder):
        embedder = _lore.Embedder(embedder)
    features = int(np.asarray(model.V).shape[0])
    if embedder.features != features:
        raise ValueError(
            f"the embedder makes F = {embedder.features} features but the model has F = {features}"
        )
    if recorded:
        for key in _IDENTITY_KEYS:
            if key in recorded and embedder.info.get(key) != recorded[key]:
                raise ValueError(
                    f"the embedder makes other features than the model was fitted on ({key}: "
                    f"{embedder.info.get(key)!r}, the model's embedder has {recorded[key]!r})"
                )
    return embedder


def _user_column(kwargs: dict[str, Any], n: int) -> list[Any]:
    """The batch's ``user_id`` column (None for every sample when the dataset has none)."""
    column = kwargs.get("user_id")
    if column is None:
        return [None] * n
    if isinstance(column, (str, int)):
        column = [column] * n
    column = list(column)
    if len(column) != n:
        raise ValueError(f"user_id has {len(column)} values for {n} completions")
    return column


def _user_key(user: Any) -> str | None:
    """A user id as the files name users: a string (integers as their decimal text)."""
    if user is None:
        return None
    if isinstance(user, (np.integer, int)) and not isinstance(user, bool):
        return str(int(user))
    return str(user)


def reward_function(
    model: _lore.Model | PathLike,
    users: UsersLike | Sequence[UsersLike] | None = None,
    embedder: _lore.Embedder | PathLike | None = None,
) -> RewardFunction:
    """A TRL reward function scoring each completion with its user's lore reward, in process.

    ``model``: a :class:`lore.Model` or the path of a model file. ``users``: None, a
    :class:`lore.Users`, a users file's path, or a list of them (later ones win over earlier
    ones and over the model's own users), as ``lore serve --model M --users U...`` reads them.
    ``embedder``: a :class:`lore.Embedder`, ``"minilm"`` or a model folder; None (default):
    the embedder the model records (metadata ``embedder``). A different one is refused.

    The returned function takes ``(prompts, completions, **kwargs)`` and reads each sample's
    user from ``kwargs["user_id"]``; users the model and the users files do not name (and
    samples without a user) get the population's weights, softmax(``model.prior_logits``).
    It returns one float per completion: ``model.rewards(e(prompt, completion), w_user)``.
    """
    loaded = model if isinstance(model, _lore.Model) else _lore.load(model)
    known = _known_users(loaded, users)
    population = _population_weights(loaded)
    encoder = _embedder_for(loaded, embedder)

    def lore_reward(
        prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any
    ) -> list[float]:
        """Each completion's reward for its sample's user (``user_id`` column)."""
        prompts, completions = list(prompts), list(completions)
        if len(prompts) != len(completions):
            raise ValueError(
                f"{len(prompts)} prompts for {len(completions)} completions (one prompt each)"
            )
        if not completions:
            return []
        user_ids = _user_column(kwargs, len(completions))
        weights = np.stack(
            [known.get(key, population) if (key := _user_key(u)) is not None else population
             for u in user_ids]
        )
        features = encoder.embed_responses(prompts, completions)
        return [float(r) for r in loaded.rewards(features, weights)]

    return lore_reward


def server_reward_function(
    url: str,
    api_key: str | None = None,
    timeout: float = 60.0,
) -> RewardFunction:
    """A TRL reward function asking a ``lore serve`` instance for the rewards.

    ``url``: the server (``http://127.0.0.1:8080``) or its ``/v1/rewards`` route. ``api_key``:
    sent as ``Authorization: Bearer KEY`` (None: ``$LORE_API_KEY`` when set). ``timeout``:
    seconds per request. Each completion is sent as ``{"user_id", "prompt", "response"}`` (no
    ``user_id`` for a sample without one: the server's population weights), in requests of at
    most :data:`SERVER_MAX_ITEMS` items. An HTTP error raises OSError with the server's one-line
    message.
    """
    base = url.rstrip("/")
    endpoint = base if base.endswith("/v1/rewards") else base + "/v1/rewards"
    key = api_key if api_key is not None else os.environ.get("LORE_API_KEY")
    headers = {"content-type": "application/json"}
    if key:
        headers["authorization"] = f"Bearer {key}"

    def post(items: list[dict[str, Any]]) -> list[float]:
        body = json.dumps({"items": items}).encode()
        request = urllib.request.Request(endpoint, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                answer = json.loads(response.read())
        except urllib.error.HTTPError as e:
            detail = e.read().decode("utf-8", "replace")
            try:
                detail = json.loads(detail)["error"]
            except (ValueError, KeyError, TypeError):
                pass
            raise OSError(f"{endpoint}: HTTP {e.code}: {detail}") from None
        return [float(r) for r in answer["rewards"]]

    def lore_server_reward(
        prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any
    ) -> list[float]:
        """Each completion's reward for its sample's user, from the server."""
        prompts, completions = list(prompts), list(completions)
        if len(prompts) != len(completions):
            raise ValueError(
                f"{len(prompts)} prompts for {len(completions)} completions (one prompt each)"
            )
        items: list[dict[str, Any]] = []
        for prompt, completion, user in zip(prompts, completions,
                                            _user_column(kwargs, len(completions))):
            item: dict[str, Any] = {"prompt": prompt, "response": completion}
            key = _user_key(user)
            if key is not None:
                item["user_id"] = key
            items.append(item)
        rewards: list[float] = []
        for start in range(0, len(items), SERVER_MAX_ITEMS):
            rewards += post(items[start:start + SERVER_MAX_ITEMS])
        return rewards

    return lore_server_reward
