"""Shared helpers of the lore tests: a tiny pure-numpy safetensors reader and writer, the
golden reference runs, planted preference data, and the `lore` binary (env LORE_BIN)."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[3]
REFERENCE = REPO / "tests" / "fixtures" / "reference"

_DTYPES = {
    "F32": np.float32,
    "F16": np.float16,
    "F64": np.float64,
    "I64": np.int64,
    "I32": np.int32,
    "U32": np.uint32,
}
_NAMES = {np.dtype(v): k for k, v in _DTYPES.items()}


def read_safetensors(path: str | os.PathLike[str]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Tensors and metadata of a safetensors file: an 8-byte little-endian header length, a
    JSON header, then the raw little-endian bytes of every tensor."""
    raw = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    metadata = header.pop("__metadata__", {}) or {}
    data = raw[8 + n :]
    tensors = {}
    for name, info in header.items():
        start, end = info["data_offsets"]
        dtype = np.dtype(_DTYPES[info["dtype"]]).newbyteorder("<")
        tensors[name] = np.frombuffer(data[start:end], dtype=dtype).reshape(info["shape"]).copy()
    return tensors, metadata


def write_safetensors(
    path: str | os.PathLike[str],
    tensors: dict[str, np.ndarray],
    metadata: dict[str, Any] | None = None,
) -> None:
    """Writes `tensors` (and `metadata`, each value JSON-encoded as lore does) as safetensors."""
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = {k: json.dumps(v) for k, v in metadata.items()}
    blobs, offset = [], 0
    for name, array in tensors.items():
        array = np.ascontiguousarray(array)
        blob = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {
            "dtype": _NAMES[array.dtype],
            "shape": list(array.shape),
            "data_offsets": [offset, offset + len(blob)],
        }
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as out:
        out.write(struct.pack("<Q", len(text)))
        out.write(text)
        for blob in blobs:
            out.write(blob)


def golden(name: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """A golden run of the reference implementation: tensors and metadata (JSON parsed)."""
    tensors, metadata = read_safetensors(REFERENCE / name)
    return tensors, {k: json.loads(v) for k, v in metadata.items()}


def planted(
    n_users: int = 12,
    pairs: int = 16,
    features: int = 24,
    rank: int = 3,
    seed: int = 0,
    shuffle: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Preference rows x [P, F] (float32) and users [P] from a planted low-rank model: each
    user's reward direction is a mix of `rank` hidden directions, and the chosen side is
    drawn from the Bradley-Terry probability."""
    rng = np.random.default_rng(seed)
    basis = rng.standard_normal((features, rank))
    mixes = rng.dirichlet(np.ones(rank), size=n_users)
    user = np.repeat(np.arange(n_users), pairs)
    x = rng.standard_normal((n_users * pairs, features))
    scores = np.einsum("pf,fk,pk->p", x, basis, mixes[user])
    flip = rng.random(len(x)) > 1 / (1 + np.exp(-scores))
    x[flip] *= -1
    if shuffle:
        order = rng.permutation(len(x))
        x, user = x[order], user[order]
    return x.astype(np.float32), user.astype(np.int64)


def lore_bin() -> str:
    """The `lore` binary the Python results are compared with (env LORE_BIN, as
    scripts/test-python sets it; else the workspace's debug build)."""
    path = os.environ.get("LORE_BIN") or str(REPO / "target" / "debug" / "lore")
    if not (Path(path).is_file() and os.access(path, os.X_OK)):
        path = shutil.which("lore") or ""
    if not path:
        pytest.skip("no `lore` binary: set LORE_BIN (scripts/test-python builds it)")
    return path


def run_lore(*args: str | os.PathLike[str]) -> subprocess.CompletedProcess[str]:
    """Runs `lore ARGS --quiet`, failing the test with its stderr when it fails."""
    argv = [lore_bin(), *map(str, args), "--quiet"]
    done = subprocess.run(argv, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(argv)} failed:\n{done.stderr}"
    return done
