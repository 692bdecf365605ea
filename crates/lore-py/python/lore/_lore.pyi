"""Type stubs of the extension module ``lore._lore`` (checked by mypy's stubtest in the tests)."""

import os
from typing import Any, Literal, Mapping, Sequence, TypedDict, Union, final

import numpy as np
import numpy.typing as npt
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "__version__",
    # --- core (helper pycore): fit, Model, Users, load, load_users, accuracy ---
    "Model",
    "Users",
    "fit",
    "load",
    "load_users",
    "accuracy",
    # --- end core ---
    # --- extras (helper pyextras): split, sweep, auto, Embedder ---
    "split",
    "sweep",
    "auto",
    "Embedder",
    # --- end extras ---
]

__version__: str

# --- core (helper pycore) ---

_Path = str | os.PathLike[str]

class _Accuracy(TypedDict):
    """What ``lore.accuracy`` returns."""

    mean: float
    std: float
    per_user: NDArray[np.float32]

@final
class Model:
    """A fitted LoRe model: the basis V [F, K], the fitted users' weights W [N, K], their
    prior, the reference head and the run's settings; what ``lore fit`` writes to a model
    file (``lore.load`` reads one, ``.save`` writes one)."""

    @property
    def V(self) -> NDArray[np.float32]:
        """The basis V [F, K]."""
    @property
    def W(self) -> NDArray[np.float32]:
        """The fitted users' weights softmax(W_logits) [N, K]."""
    @property
    def W_logits(self) -> NDArray[np.float32]:
        """The fitted users' logits [N, K]."""
    @property
    def prior_logits(self) -> NDArray[np.float32]:
        """The prior mean of new users' logits [K] (log of the users' mean weights)."""
    @property
    def v_ref(self) -> NDArray[np.float32] | None:
        """The reference head the basis was pulled toward [F], or None."""
    @property
    def logit_scale(self) -> float:
        """c in P(chosen > rejected) = sigmoid(c * x . V w)."""
    @property
    def method(self) -> str:
        """The training method (``lore`` or ``regularized``; empty when unrecorded)."""
    @property
    def rank(self) -> int:
        """The number of basis columns K kept."""
    @property
    def kept(self) -> list[int]:
        """Indices of the kept columns among the fitted ones."""
    @property
    def user_ids(self) -> list[str] | None:
        """The fitted users' names, or None."""
    @property
    def metadata(self) -> dict[str, Any]:
        """The model file's metadata, values parsed from JSON (``data`` is ``"(arrays)"``
        for a model fitted from arrays)."""
    @property
    def steps(self) -> int:
        """Optimizer steps run (fewer than ``iterations`` after early stopping)."""
    def save(self, path: _Path) -> None:
        """Writes the model file (as ``lore fit --out``) atomically."""
    def rewards(self, features: ArrayLike, weights: ArrayLike) -> NDArray[np.float32]:
        """Rewards r = c * e . V w of ``features`` [n, F] for ``weights`` [K] (one user) or
        [n, K] (one per row), as float32 [n] (computed in float64)."""
    def personalize(
        self,
        x: ArrayLike,
        user: ArrayLike,
        *,
        iterations: int | None = None,
        lr: float | None = None,
        prior_strength: float | None = None,
        seed: int | None = None,
        init: ArrayLike | None = None,
        validation_fraction: float | None = None,
        patience: int | None = None,
        eval_every: int | None = None,
        user_ids: list[str] | None = None,
        threads: int | None = None,
        progress: bool = False,
    ) -> Users:
        """Fits new users' weights on pairs ``x`` [P, F] of users ``user`` [P] (0..N-1)
        with the basis fixed, as ``lore personalize`` does; ``init`` [N, K] starting logits.
        None means the library's default (as the CLI's). Releases the GIL; Ctrl-C raises
        KeyboardInterrupt."""

@final
class Users:
    """Users' weights fitted with a model's basis: what ``lore personalize`` writes."""

    @property
    def W(self) -> NDArray[np.float32]:
        """The users' weights softmax(W_logits) [N, K]."""
    @property
    def W_logits(self) -> NDArray[np.float32]:
        """The users' logits [N, K]."""
    @property
    def user_ids(self) -> list[str] | None:
        """The users' names, or None."""
    @property
    def metadata(self) -> dict[str, Any]:
        """The users file's metadata, values parsed from JSON."""
    def save(self, path: _Path) -> None:
        """Writes the users file (as ``lore personalize --out``) atomically."""

def fit(
    x: ArrayLike,
    user: ArrayLike,
    rank: int | None = None,
    *,
    method: Literal["lore", "regularized"] | None = None,
    lr: float | None = None,
    iterations: int | None = None,
    alpha: float | None = None,
    v_ref: ArrayLike | _Path | Literal["bt"] | None = None,
    seed: int | None = None,
    init: _Path | Mapping[str, ArrayLike] | None = None,
    precision: Literal["f32", "bf16"] | None = None,
    validation_fraction: float | None = None,
    patience: int | None = None,
    eval_every: int | None = None,
    prune_threshold: float | None = None,
    logit_scale: float | None = None,
    trace: _Path | None = None,
    threads: int | None = None,
    progress: bool = False,
    user_ids: list[str] | None = None,
) -> Model:
    """Fits a LoRe model (shared basis V [F, K], per-user weights W [N, K]) on pairs ``x``
    [P, F] (float32 or float16; C-contiguous with sorted ``user`` is read without a copy)
    of users ``user`` [P] (0..N-1), exactly as ``lore fit`` does: same options and seed give
    the same V and W, bit for bit. Every option is ``lore fit``'s; None means the library's
    default. ``v_ref``: an array [F], a file with tensor ``v_ref``, or ``"bt"``. ``init``: a
    file (as ``--init``) or {"W0": [N, K], "V0": [F, K]}. ``trace``: a JSON-lines file of the
    steps. ``threads``: threads for this call (None: all cores). Releases the GIL; Ctrl-C
    raises KeyboardInterrupt."""

def load(path: _Path) -> Model:
    """Reads a model file (as ``lore fit`` writes it)."""

def load_users(path: _Path) -> Users:
    """Reads a users file (as ``lore personalize`` writes it; a model file gives its users)."""

def accuracy(
    model: Model, x: ArrayLike, user: ArrayLike, users: Users | None = None
) -> _Accuracy:
    """Pairwise accuracy per user on pairs ``x`` [P, F] of users ``user`` [P] with ``users``'
    weights (the model's own when None): {"mean", "std", "per_user" float32 [N]}."""

# --- end core ---

# --- lore.split / lore.sweep / lore.auto (src/pipeline.rs) and lore.Embedder (src/embed.rs) ---

_Text = Union[str, Sequence[dict[str, str]]]

def split(
    data: _Path,
    out: _Path,
    *,
    unseen_fraction: float | None = None,
    train_fraction: float | None = None,
    min_rows: int | None = None,
    max_train_rows: int | None = None,
    shots: int | None = None,
    by_prompt: bool = False,
    seed: int | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Splits a preference file into the four sets in the folder ``out``, as ``lore split``
    does; returns split.json's object (``source``, ``options``, ``counts``, ``embedder``)."""

def sweep(
    splits: _Path,
    *,
    ranks: Sequence[int] | None = None,
    alphas: Sequence[float] | None = None,
    seeds: Sequence[int] | None = None,
    v_ref: _Path | None = None,
    method: str | None = None,
    iterations: int | None = None,
    lr: float | None = None,
    logit_scale: float | None = None,
    prune_threshold: float | None = None,
    personalize_iterations: int | None = None,
    personalize_lr: float | None = None,
    out: _Path | None = None,
    force: bool = False,
    threads: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Accuracy against rank on a split folder, as ``lore sweep`` does; returns results.json's
    object (with ``out``: writes results.json and results.csv there). ``v_ref``: a file, or
    ``"bt"``."""

def auto(
    splits: _Path,
    *,
    method: str | None = None,
    ranks: Sequence[int] | None = None,
    alpha_scales: Sequence[float] | None = None,
    prior_strengths: Sequence[float] | None = None,
    iterations: int | None = None,
    lr: float | None = None,
    personalize_iterations: int | None = None,
    personalize_lr: float | None = None,
    logit_scale: float | None = None,
    folds: int | None = None,
    holdout_rows: float | None = None,
    eval_every: int | None = None,
    patience: int | None = None,
    selection: str | None = None,
    significance: float | None = None,
    seed: int | None = None,
    out: _Path | None = None,
    force: bool = False,
    threads: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Chooses the configuration on the seen users alone (cross-fitted over ``folds`` folds;
    ``selection``: ``"corrected"``, ``"best"`` or ``"fixed"``), then fits and evaluates it, as
    ``lore auto`` does; returns results.json's object (with ``out``: writes its files there)."""

@final
class Embedder:
    """A text encoder (``"minilm"`` or a model folder) making the features ``lore embed`` makes."""

    def __new__(
        cls,
        model: _Path,
        *,
        threads: int | None = None,
        batch_size: int | None = None,
        max_length: int | None = None,
    ) -> Embedder: ...
    @property
    def info(self) -> dict[str, Any]:
        """The embedder's identity as files record it (metadata ``embedder``)."""
    @property
    def name(self) -> str:
        """The model's name as files record it."""
    @property
    def features(self) -> int:
        """Feature dimension F."""
    def render(self, prompt: _Text, response: _Text) -> str:
        """The text ``lore embed`` embeds for ``response`` to ``prompt``."""
    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """One feature vector per text, float32 [n, F]."""
    def embed_responses(
        self, prompts: Sequence[_Text], responses: Sequence[_Text]
    ) -> npt.NDArray[np.float32]:
        """e(render(prompt, response)) per item, float32 [n, F]."""
    def embed_pairs(
        self, prompts: Sequence[_Text], chosen: Sequence[_Text], rejected: Sequence[_Text]
    ) -> npt.NDArray[np.float32]:
        """x = e(chosen) - e(rejected) per pair, float32 [n, F] (``lore embed``'s ``x``)."""
