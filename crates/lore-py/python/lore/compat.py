"""A drop-in for the reference implementation's ``utils.py`` (facebookresearch/LoRe at commit
6f93990, 2025-08-21), computed by lore.

A script written for the reference switches with one line::

    import lore.compat as utils   # was: import utils

The classes ``LoRe``, ``LoRe_regularized`` and ``PersonalizeBatch`` take the reference's
constructor arguments and ``.train`` takes the reference's list of per-user feature arrays
[n_u, F] (rows x = e(chosen) - e(rejected)) and returns what the reference returns; the
functions ``solve_regularized``, ``solve_regularized_simplex``, ``learn_multiple_few_shot``,
``eval_multiple``, ``run``, ``run_regularized``, ``run_few_shot_vary_shots`` and
``sample_shots`` keep the reference's signatures and results. (``solve`` is left out: it uses a
class the reference never defines.)

Arrays: numpy arrays or torch tensors (torch is never imported here unless the caller passed
tensors, so it is not a dependency). Results come back as the type the features were given in:
torch tensors (float32, on the device of the first feature tensor) for tensor input, float32
numpy arrays otherwise. The work runs in lore's Rust core on the CPU; ``device`` arguments and
``.to(device)`` are accepted and ignored.

Where the reference has a defect, lore's behaviour is used instead (README, Faithfulness):

- a reference vector ``V_sft`` of shape [F, 1] is one vector (the reference's L2 term in
  ``LoRe`` broadcasts ``V[:, j] - V_sft`` to [F, F]);
- the number of features F is read from the data (``solve_regularized_simplex`` in the
  reference hard-codes 4096);
- log-sigmoid is computed stably (the reference's ``log(sigmoid(s))`` is -inf for s below
  about -88, and the fit then turns to NaN);
- ``run_regularized`` does not write its results to the reference's hard-coded cluster paths.

Random initial parameters are drawn with numpy when a class is constructed: from numpy's
global generator (so ``numpy.random.seed`` makes a script repeatable) unless the constructor's
keyword ``seed`` is given, in which case from ``numpy.random.default_rng(seed)``. The
distributions are the reference's: N(0, 1) for every parameter except ``LoRe_regularized.W``,
which is U[0, 1). To start from given parameters, assign ``W`` and ``V`` (``w`` for
``PersonalizeBatch``) before calling ``train``.
"""

from __future__ import annotations

import json
import os
import struct
import sys
import tempfile
from typing import Any, Literal, Sequence

import numpy as np
import numpy.typing as npt

from . import _lore

__all__ = [
    "LoRe",
    "LoRe_regularized",
    "PersonalizeBatch",
    "solve_regularized",
    "solve_regularized_simplex",
    "learn_multiple_few_shot",
    "eval_multiple",
    "run",
    "run_regularized",
    "run_few_shot_vary_shots",
    "sample_shots",
]

#: A numpy array or a torch tensor (anything ``numpy.asarray`` takes is accepted as input).
Array = Any

_F32 = npt.NDArray[np.float32]

# The reference's own constants (utils.py): `LoRe_regularized.train` keeps the columns whose
# largest user weight is at least this, and the `run*` functions scale the standard deviations
# they return by this factor.
_REFERENCE_PRUNE_THRESHOLD = 1e-2
_REFERENCE_STD_FACTOR = 0.25


# --- arrays: numpy or torch in, the same type out ---------------------------------------------


def _torch_tensor_type() -> Any:
    """torch.Tensor when the caller has imported torch, else None (torch is never imported
    here: an object cannot be a tensor unless torch was imported by someone)."""
    torch = sys.modules.get("torch")
    return None if torch is None else torch.Tensor


def _is_tensor(value: Any) -> bool:
    tensor = _torch_tensor_type()
    return tensor is not None and isinstance(value, tensor)


def _numpy(value: Array, dtype: Any = np.float32) -> npt.NDArray[Any]:
    """``value`` as a numpy array of ``dtype`` (a tensor is detached and moved to the CPU)."""
    if _is_tensor(value):
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=dtype)


class _Like:
    """Converts numpy results back to the type of a template: a torch tensor on the
    template's device, or a numpy array."""

    def __init__(self, template: Any) -> None:
        self.tensor = _is_tensor(template)
        self.device = template.device if self.tensor else None

    def __call__(self, array: npt.NDArray[Any]) -> Array:
        if not self.tensor:
            return array
        torch = sys.modules["torch"]
        return torch.from_numpy(np.ascontiguousarray(array)).to(self.device)


def _first_array(features: Sequence[Array]) -> Any:
    for x in features:
        if x is not None:
            return x
    raise ValueError("no features: the list of per-user arrays is empty")


def _pack(features: Sequence[Array]) -> tuple[_F32, npt.NDArray[np.int64]]:
    """The reference's list of per-user arrays [n_u, F] as one C-contiguous float32 array
    [P, F] and the user index of each row (users in list order, so the rows are sorted)."""
    if len(features) == 0:
        raise ValueError("no features: the list of per-user arrays is empty")
    blocks = [_numpy(x) for x in features]
    for u, block in enumerate(blocks):
        if block.ndim != 2:
            raise ValueError(
                f"user {u}: features must be a 2-D array [n_u, F], got shape {block.shape}"
            )
        if block.shape[0] == 0:
            raise ValueError(f"user {u} has no rows (the reference's mean over them is 0/0)")
    x = np.ascontiguousarray(np.concatenate(blocks, axis=0), dtype=np.float32)
    user = np.repeat(np.arange(len(blocks), dtype=np.int64), [b.shape[0] for b in blocks])
    return x, user


def _softmax_rows(logits: npt.NDArray[Any]) -> _F32:
    z = np.asarray(logits, dtype=np.float64)
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    weights: _F32 = (z / z.sum(axis=-1, keepdims=True)).astype(np.float32)
    return weights


def _generator(seed: int | None) -> Any:
    """numpy's global generator (None) or a fresh ``default_rng(seed)``."""
    return np.random if seed is None else np.random.default_rng(seed)


def _normal(rng: Any, shape: tuple[int, ...]) -> _F32:
    return np.asarray(rng.standard_normal(shape), dtype=np.float32)


def _uniform(rng: Any, shape: tuple[int, ...]) -> _F32:
    return np.asarray(rng.random(shape), dtype=np.float32)


def _basis_model(V: Array) -> _lore.Model:
    """A lore model holding the basis ``V`` [F, K] (and one placeholder user), for
    personalizing with a basis the caller holds: written as a minimal model file (tensors
    ``V`` and ``W``; the logit scale is the library's default, the reference's 1/100) and read
    back with ``lore.load``."""
    basis = np.ascontiguousarray(_numpy(V))
    if basis.ndim == 1:
        basis = basis[:, None]
    if basis.ndim != 2:
        raise ValueError(f"V must be a 2-D array [F, K], got shape {basis.shape}")
    k = basis.shape[1]
    tensors = {"V": basis, "W": np.full((1, k), 1.0 / k, dtype=np.float32)}
    header: dict[str, Any] = {"__metadata__": {"kind": "model"}}
    offset = 0
    for name, array in tensors.items():
        size = array.nbytes
        header[name] = {
            "dtype": "F32",
            "shape": list(array.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    with tempfile.TemporaryDirectory(prefix="lore-compat-") as folder:
        path = os.path.join(folder, "basis.safetensors")
        with open(path, "wb") as out:
            out.write(struct.pack("<Q", len(encoded)))
            out.write(encoded)
            for array in tensors.values():
                out.write(array.astype("<f4", copy=False).tobytes())
        return _lore.load(path)


def _ones_like_features(features: Sequence[Array], n: int) -> list[Array]:
    """The reference's weights of a single-column basis: ``[1.0]`` for each of ``n`` users."""
    like = _Like(_first_array(features))
    return [like(np.ones(1, dtype=np.float32)) for _ in range(n)]


# --- the reference's classes ------------------------------------------------------------------


class _JointFit:
    """What ``LoRe`` and ``LoRe_regularized`` share: the reference's constructor arguments,
    the initial parameters and the call into lore's fit."""

    def __init__(
        self,
        V_sft: Array,
        alpha: float,
        num_classes: int,
        num_features: int,
        num_basis_vectors: int,
        num_iterations: int,
        learning_rate: float,
        *,
        seed: int | None = None,
    ) -> None:
        self.V_sft = V_sft
        self.alpha = alpha
        self.num_classes = num_classes
        self.num_features = num_features
        self.num_basis_vectors = num_basis_vectors
        self.num_iterations = num_iterations
        self.learning_rate = learning_rate
        rng = _generator(seed)
        self.W: Array = self._initial_logits(rng, (num_classes, num_basis_vectors))
        self.V: Array = _normal(rng, (num_features, num_basis_vectors))
        self.model: _lore.Model | None = None

    @staticmethod
    def _initial_logits(rng: Any, shape: tuple[int, int]) -> _F32:
        return _normal(rng, shape)

    def _fit(
        self,
        features: Sequence[Array],
        method: Literal["lore", "regularized"],
        **options: Any,
    ) -> _F32:
        """Runs lore's fit from the current W and V, stores the trained parameters in W and
        V (typed like the features) and returns softmax(W) [C, K]. Rows of W beyond the users
        in ``features`` get no gradient in the reference, so they are left as they are."""
        x, user = _pack(features)
        n = len(features)
        W0 = _numpy(self.W)
        if W0.ndim != 2 or W0.shape[0] < n:
            raise ValueError(f"W must be [C, K] with C >= {n} users, got shape {W0.shape}")
        v_ref = _numpy(self.V_sft) if self.alpha > 0 else None
        model = _lore.fit(
            x,
            user,
            self.num_basis_vectors,
            method=method,
            lr=self.learning_rate,
            iterations=self.num_iterations,
            alpha=float(self.alpha),
            v_ref=v_ref,
            init={"W0": np.ascontiguousarray(W0[:n]), "V0": _numpy(self.V)},
            **options,
        )
        self.model = model
        logits = W0.copy()
        logits[:n] = model.W_logits
        weights = _softmax_rows(logits)
        weights[:n] = model.W
        like = _Like(_first_array(features))
        self.W = like(logits)
        self.V = like(model.V)
        return weights


class LoRe(_JointFit):
    """The reference ``LoRe``: a shared basis V [F, K] and per-user logits W [C, K] trained
    together by one Adam on the sum over users of each user's mean -log sigmoid(x . V
    softmax(W_u) / 100), plus alpha * sum_j |V[:, j] - V_sft|^2 when alpha > 0.

    ``W`` (logits) and ``V`` are drawn at construction (see the module's docstring for the
    random generator) and may be replaced before ``train``; ``train`` leaves the trained
    parameters in them. ``model`` is the ``lore.Model`` of the last ``train`` (for
    ``.rewards``, ``.save``)."""

    def __init__(
        self,
        V_sft: Array,
        alpha: float,
        num_classes: int,
        num_features: int,
        num_basis_vectors: int,
        num_iterations: int,
        learning_rate: float,
        *,
        seed: int | None = None,
    ) -> None:
        """The reference's arguments: the reference vector ``V_sft`` ([F] or [F, 1]; unused
        when ``alpha`` is 0), the pull's strength ``alpha``, the number of users C, of
        features F and of basis columns K, the number of Adam steps and the learning rate.
        ``seed``: None draws the initial W ~ N(0,1) [C, K] and V ~ N(0,1) [F, K] from numpy's
        global generator, an int from ``numpy.random.default_rng(seed)``."""
        super().__init__(
            V_sft,
            alpha,
            num_classes,
            num_features,
            num_basis_vectors,
            num_iterations,
            learning_rate,
            seed=seed,
        )

    def to(self, *args: Any, **kwargs: Any) -> LoRe:
        """Accepted for the reference's ``.to(device)``; lore runs on the CPU. Returns self."""
        return self

    def train(self, x: Sequence[Array]) -> tuple[Array, Array]:
        """Trains on ``x``, a list of C per-user arrays [n_u, F]; returns (softmax(W) [C, K],
        V [F, K]) as the reference does, typed like the features."""
        weights = self._fit(x, "lore")
        like = _Like(_first_array(x))
        return like(weights), self.V


class LoRe_regularized(_JointFit):
    """The reference ``LoRe_regularized``: alternating Adam steps on W (V fixed) and on V (W
    fixed), the mean over all pairs of -log sigmoid(x . V softmax(W_u) / 100), on the V-step
    plus alpha_t * mean_j (1 - cos(V[:, j], V_sft)) with alpha_t warming up from 0 (before 20%
    of the steps) to alpha (from 80%); ``train`` returns only the columns some user weighs at
    least 1e-2.

    ``W`` (logits, U[0,1) at construction) and ``V`` (N(0,1)) may be replaced before
    ``train``; ``train`` leaves all trained columns in them, pruned ones included, as the
    reference's module does, and the indices of the kept columns in ``kept``. ``model`` is
    the ``lore.Model`` of the last ``train`` (all columns)."""

    def __init__(
        self,
        V_sft: Array,
        alpha: float,
        num_classes: int,
        num_features: int,
        num_basis_vectors: int,
        num_iterations: int,
        learning_rate: float,
        *,
        seed: int | None = None,
    ) -> None:
        """The reference's arguments (as ``LoRe``'s; ``V_sft`` [F] or [F, 1]). ``seed``: None
        draws the initial W ~ U[0,1) [C, K] and V ~ N(0,1) [F, K] from numpy's global
        generator, an int from ``numpy.random.default_rng(seed)``."""
        super().__init__(
            V_sft,
            alpha,
            num_classes,
            num_features,
            num_basis_vectors,
            num_iterations,
            learning_rate,
            seed=seed,
        )
        self.kept: list[int] = []

    @staticmethod
    def _initial_logits(rng: Any, shape: tuple[int, int]) -> _F32:
        return _uniform(rng, shape)

    def to(self, *args: Any, **kwargs: Any) -> LoRe_regularized:
        """Accepted for the reference's ``.to(device)``; lore runs on the CPU. Returns self."""
        return self

    def train(self, X: Sequence[Array]) -> tuple[Array, Array]:
        """Trains on ``X``, a list of C per-user arrays [n_u, F]; returns (softmax(W)[:, kept]
        [C, K'], V[:, kept] [F, K']) as the reference does, typed like the features, where
        the kept columns are those whose largest user weight is at least 1e-2."""
        # lore keeps every column here and the reference's pruning is applied below, so that
        # W and V hold all the trained columns as in the reference's module.
        weights = self._fit(X, "regularized", prune_threshold=0.0)
        kept = weights.max(axis=0) >= np.float32(_REFERENCE_PRUNE_THRESHOLD)
        self.kept = [int(j) for j in np.flatnonzero(kept)]
        print(
            f"Num dimensions kept: {len(self.kept)}/{self.num_basis_vectors} "
            f"(threshold={_REFERENCE_PRUNE_THRESHOLD:.0e})"
        )
        like = _Like(_first_array(X))
        return (
            like(np.ascontiguousarray(weights[:, kept])),
            like(np.ascontiguousarray(_numpy(self.V)[:, kept])),
        )


class PersonalizeBatch:
    """The reference ``PersonalizeBatch``: with a basis V [F, K] fixed, fits each user's
    logits w_u [K] by one Adam on the sum over users of each user's mean
    -log sigmoid(x . V softmax(w_u) / 100).

    ``w`` (a list of C logit vectors [K], N(0,1) at construction) may be replaced before
    ``train`` (by a list of [K] vectors or one [C, K] array); ``train`` leaves the trained
    logits in it."""

    def __init__(
        self,
        num_classes: int,
        num_features: int,
        num_basis_vectors: int,
        num_iterations: int,
        learning_rate: float,
        *,
        seed: int | None = None,
    ) -> None:
        """The reference's arguments: the number of users C, of features F and of basis
        columns K, the number of Adam steps and the learning rate. ``seed``: None draws the
        initial logits from numpy's global generator, an int from
        ``numpy.random.default_rng(seed)``."""
        self.num_classes = num_classes
        self.num_features = num_features
        self.num_basis_vectors = num_basis_vectors
        self.num_iterations = num_iterations
        self.learning_rate = learning_rate
        rng = _generator(seed)
        self.w: Any = [_normal(rng, (num_basis_vectors,)) for _ in range(num_classes)]

    def to(self, *args: Any, **kwargs: Any) -> PersonalizeBatch:
        """Accepted for the reference's ``.to(device)``; lore runs on the CPU. Returns self."""
        return self

    def _initial_logits(self) -> _F32:
        if isinstance(self.w, (list, tuple)):
            return np.stack([_numpy(w).reshape(-1) for w in self.w])
        return _numpy(self.w).reshape(len(self.w), -1)

    def train(self, X: Sequence[Array], V: Array) -> list[Array]:
        """Fits the weights of the users in ``X`` (a list of per-user arrays [n_u, F]) with
        ``V`` [F, K] fixed; returns the list of softmax(w_u) [K], typed like the features."""
        x, user = _pack(X)
        n = len(X)
        w0 = self._initial_logits()
        if w0.ndim != 2 or w0.shape[0] < n:
            raise ValueError(f"w must hold at least {n} users' logits, got shape {w0.shape}")
        users = _basis_model(V).personalize(
            x,
            user,
            iterations=self.num_iterations,
            lr=self.learning_rate,
            init=np.ascontiguousarray(w0[:n]),
        )
        like = _Like(_first_array(X))
        logits = w0.copy()
        logits[:n] = users.W_logits
        self.w = [like(row) for row in logits]
        return [like(row) for row in users.W]


# --- the reference's functions ----------------------------------------------------------------


def _n_features(features: Sequence[Array]) -> int:
    return int(_numpy(_first_array(features)).shape[-1])


def solve_regularized(
    V_sft: Array,
    alpha: float,
    train_features: Sequence[Array],
    num_basis_vectors: int,
    num_iterations: int = 1000,
    learning_rate: float = 0.01,
) -> tuple[Array, Array]:
    """Fits ``LoRe`` (initial parameters from numpy's global generator) on the per-user
    arrays ``train_features``; returns (softmax(W) [N, K], V [F, K])."""
    am = LoRe(
        V_sft,
        alpha,
        len(train_features),
        _n_features(train_features),
        num_basis_vectors,
        num_iterations,
        learning_rate,
    )
    return am.train(train_features)


def solve_regularized_simplex(
    V_sft: Array,
    alpha: float,
    train_features: Sequence[Array],
    num_basis_vectors: int,
    num_iterations: int = 1000,
    learning_rate: float = 0.01,
) -> tuple[Array, Array]:
    """Fits ``LoRe_regularized`` (initial parameters from numpy's global generator; F from the
    data, not the reference's 4096) on the per-user arrays ``train_features``; returns the
    kept columns (softmax(W)[:, kept] [N, K'], V[:, kept] [F, K'])."""
    am = LoRe_regularized(
        V_sft,
        alpha,
        len(train_features),
        _n_features(train_features),
        num_basis_vectors,
        num_iterations,
        learning_rate,
    )
    return am.train(train_features)


def learn_multiple_few_shot(
    train_features: Sequence[Array],
    V: Array,
    num_iterations: int = 1000,
    learning_rate: float = 0.01,
) -> list[Array]:
    """Fits each user's weights on their arrays in ``train_features`` with the basis ``V``
    [F, K] fixed (``PersonalizeBatch``, initial logits from numpy's global generator);
    returns the list of the users' weights [K]."""
    k = int(_numpy(V).reshape(_numpy(V).shape[0], -1).shape[1])
    fitw = PersonalizeBatch(
        len(train_features), _n_features(train_features), k, num_iterations, learning_rate
    )
    return fitw.train(train_features, V)


def _accuracy(X: Array, V: Array, w: Array) -> float:
    """The share of rows of ``X`` [n, F] with X V w > 0 (the reference's ``evaluate_model``)."""
    x = _numpy(X)
    basis = _numpy(V)
    if basis.ndim == 1:
        basis = basis[:, None]
    direction = basis.astype(np.float64) @ _numpy(w, np.float64).reshape(-1)
    scores = x @ direction
    return float(np.count_nonzero(scores > 0) / scores.size)


def eval_multiple(
    W_list: Sequence[Array], V_list: Sequence[Array], test_features: Sequence[Array]
) -> list[float]:
    """Each user's accuracy on their arrays in ``test_features``: the share of rows x with
    x . V_list[u] W_list[u] > 0. Prints the mean and standard deviation as the reference does
    and returns the list of accuracies."""
    accuracies = [
        _accuracy(test_features[u], V_list[u], W_list[u]) for u in range(len(test_features))
    ]
    print(f"Average accuracy: {np.mean(accuracies):.4f}")
    print(f"Standard deviation of accuracy: {np.std(accuracies):.4f}")
    return accuracies


def _table(
    solve: Any,
    joint_options: dict[str, Any],
    few_shot_options: dict[str, Any],
    K_list: Sequence[int],
    alpha_list: Sequence[float],
    V_final: Array,
    train_features: Sequence[Array],
    test_features_sparse: Sequence[Array],
    train_features_unseen: Sequence[Array],
    test_features_sparse_unseen: Sequence[Array],
    N: int,
    N_unseen: int,
    announce_alpha: bool,
    rank_label: str,
) -> tuple[npt.NDArray[np.float64], ...]:
    """The loop shared by ``run`` and ``run_regularized``."""
    columns: list[list[float]] = [[] for _ in range(8)]

    def record(mean_column: int, accuracies: list[float]) -> None:
        columns[mean_column].append(float(np.mean(accuracies)))
        columns[mean_column + 4].append(float(np.std(accuracies)))

    for alpha in alpha_list:
        if announce_alpha:
            print("alpha : ", alpha)
        for K in K_list:
            print(rank_label, K)
            if K == 0:
                V_joint = V_final
                W_joint: Any = _ones_like_features(train_features, N)
            else:
                W_joint, V_joint = solve(V_final, alpha, train_features, K, **joint_options)
            print("Train Performance")
            record(0, eval_multiple(W_joint, [V_joint] * N, train_features))
            print("Seen User Unseen Prompts")
            record(1, eval_multiple(W_joint, [V_joint] * N, test_features_sparse))
            if K <= 1:
                W_few_shot = _ones_like_features(train_features_unseen, N_unseen)
            else:
                W_few_shot = learn_multiple_few_shot(
                    train_features_unseen, V_joint, **few_shot_options
                )
            print("Few Shot Train Performance")
            record(2, eval_multiple(W_few_shot, [V_joint] * N_unseen, train_features_unseen))
            print("Unseen User Unseen Prompts")
            record(
                3, eval_multiple(W_few_shot, [V_joint] * N_unseen, test_features_sparse_unseen)
            )
    means = tuple(np.array(c) for c in columns[:4])
    stds = tuple(_REFERENCE_STD_FACTOR * np.array(c) for c in columns[4:])
    return means + stds


def run(
    K_list: Sequence[int],
    alpha_list: Sequence[float],
    V_final: Array,
    train_features: Sequence[Array],
    test_features_sparse: Sequence[Array],
    train_features_unseen: Sequence[Array],
    test_features_sparse_unseen: Sequence[Array],
    N: int,
    N_unseen: int,
    device: Any,
) -> tuple[npt.NDArray[np.float64], ...]:
    """The reference's experiment table: for each alpha and K, fits ``LoRe`` on the seen users
    (1000 steps, learning rate 0.5; K = 0 uses ``V_final`` [F, 1] with weight 1), evaluates it
    on their training and held-out arrays, fits the unseen users' weights with the basis fixed
    (500 steps, learning rate 0.1; K <= 1 uses weight 1) and evaluates on their few-shot and
    held-out arrays. Returns 8 arrays, one entry per (alpha, K): the mean accuracies of
    (seen train, seen held-out, unseen few-shot, unseen held-out), then their standard
    deviations over users times 0.25. ``device`` is ignored."""
    return _table(
        solve_regularized,
        {"num_iterations": 1000, "learning_rate": 0.5},
        {"num_iterations": 500, "learning_rate": 0.1},
        K_list,
        alpha_list,
        V_final,
        train_features,
        test_features_sparse,
        train_features_unseen,
        test_features_sparse_unseen,
        N,
        N_unseen,
        announce_alpha=False,
        rank_label="K : ",
    )


def run_regularized(
    K_list: Sequence[int],
    alpha_list: Sequence[float],
    V_final: Array,
    train_features: Sequence[Array],
    test_features_sparse: Sequence[Array],
    train_features_unseen: Sequence[Array],
    test_features_sparse_unseen: Sequence[Array],
    N: int,
    N_unseen: int,
    device: Any,
) -> tuple[npt.NDArray[np.float64], ...]:
    """``run`` with ``LoRe_regularized`` (``solve_regularized_simplex``, 20000 steps, learning
    rate 0.5) for the seen users and learning rate 0.5 for the unseen users' weights; returns
    the same 8 arrays. Unlike the reference, nothing is written to its hard-coded cluster
    paths. ``device`` is ignored."""
    return _table(
        solve_regularized_simplex,
        {"num_iterations": 20000, "learning_rate": 0.5},
        {"num_iterations": 500, "learning_rate": 0.5},
        K_list,
        alpha_list,
        V_final,
        train_features,
        test_features_sparse,
        train_features_unseen,
        test_features_sparse_unseen,
        N,
        N_unseen,
        announce_alpha=True,
        rank_label="Rank : ",
    )


def sample_shots(train_features_unseen: Sequence[Array], shots: int) -> list[Array]:
    """``shots`` rows drawn without replacement from each array (all of them when it has
    fewer), in random order, with numpy's global generator; each result is the type of its
    input."""
    sampled = []
    for features in train_features_unseen:
        order = np.random.permutation(int(features.shape[0]))[:shots]
        if _is_tensor(features):
            sampled.append(features[sys.modules["torch"].as_tensor(order, device=features.device)])
        else:
            sampled.append(np.asarray(features)[order])
    return sampled


def run_few_shot_vary_shots(
    trials: int,
    alpha_list: Sequence[float],
    K_list: Sequence[int],
    num_shots: Sequence[int],
    train_features: Sequence[Array],
    train_features_unseen: Sequence[Array],
    test_features_sparse_unseen: Sequence[Array],
    V_final: Array,
    N: int,
    N_unseen: int,
    device: Any,
) -> tuple[list[float], list[float], list[float], list[float]]:
    """The reference's few-shot curve: for each alpha and K, fits ``LoRe`` on the seen users
    (500 steps, learning rate 0.5), then for each number of shots runs ``trials`` times:
    ``sample_shots`` of the unseen users' arrays, their weights fitted with the basis fixed
    (500 steps, learning rate 0.1; K <= 1 uses weight 1), accuracy on the shots and on the
    held-out arrays. Returns (mean few-shot accuracy, its std over trials, mean held-out
    accuracy, its std), one entry per number of shots, for the last (alpha, K) only, as the
    reference does. ``device`` is ignored."""
    few_shot_means: list[float] = []
    few_shot_stds: list[float] = []
    held_out_means: list[float] = []
    held_out_stds: list[float] = []
    for alpha in alpha_list:
        print("alpha : ", alpha)
        for K in K_list:
            print("K : ", K)
            if K == 0:
                V_joint = V_final
                W_joint: Any = _ones_like_features(train_features, N)
            else:
                W_joint, V_joint = solve_regularized(
                    V_final, alpha, train_features, K, num_iterations=500, learning_rate=0.5
                )
            print("Train Performance")
            eval_multiple(W_joint, [V_joint] * N, train_features)
            few_shot_means, few_shot_stds = [], []
            held_out_means, held_out_stds = [], []
            for shots in num_shots:
                print("Shots : ", shots)
                few_shot: list[float] = []
                held_out: list[float] = []
                for _ in range(trials):
                    sampled = sample_shots(train_features_unseen, shots)
                    if K <= 1:
                        W_few_shot = _ones_like_features(sampled, N_unseen)
                    else:
                        W_few_shot = learn_multiple_few_shot(
                            sampled, V_joint, num_iterations=500, learning_rate=0.1
                        )
                    print("Few Shot Train Performance")
                    few_shot.append(
                        float(np.mean(eval_multiple(W_few_shot, [V_joint] * N_unseen, sampled)))
                    )
                    print("Unseen User Unseen Prompts")
                    held_out.append(
                        float(
                            np.mean(
                                eval_multiple(
                                    W_few_shot, [V_joint] * N_unseen, test_features_sparse_unseen
                                )
                            )
                        )
                    )
                few_shot_means.append(float(np.mean(few_shot)))
                few_shot_stds.append(float(np.std(few_shot)))
                held_out_means.append(float(np.mean(held_out)))
                held_out_stds.append(float(np.std(held_out)))
    return few_shot_means, few_shot_stds, held_out_means, held_out_stds
