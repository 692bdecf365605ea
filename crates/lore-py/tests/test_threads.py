"""Long calls release the GIL (another Python thread keeps running during a fit), honour
Ctrl-C (KeyboardInterrupt, promptly, nothing written), and `threads=N` runs the call in N
threads with the same bits as any other count."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import lore
from conftest import planted


class Counter(threading.Thread):
    """A pure-Python loop that needs the GIL to count."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.count = 0
        self.stop = False

    def run(self) -> None:
        while not self.stop:
            self.count += 1


def big_data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((20_000, 256), dtype=np.float32)
    return x, np.repeat(np.arange(200), 100)


def test_another_thread_runs_during_a_fit() -> None:
    x, user = big_data()
    counter = Counter()
    counter.start()
    try:
        time.sleep(0.2)
        c0, t0 = counter.count, time.perf_counter()
        time.sleep(0.3)
        rate = (counter.count - c0) / (time.perf_counter() - t0)  # counts/s with a free GIL

        c0, t0 = counter.count, time.perf_counter()
        model = lore.fit(x, user, 8, iterations=150, lr=0.1)
        elapsed = time.perf_counter() - t0
        during = counter.count - c0
    finally:
        counter.stop = True
        counter.join()
    assert model.steps == 150
    assert elapsed > 0.3, f"the fit took only {elapsed:.2f} s: too short to tell"
    # Holding the GIL would leave the counter at most one switch interval (5 ms) of counts.
    assert during > 0.05 * rate * elapsed, (
        f"the other thread counted {during} during a {elapsed:.2f} s fit (free rate {rate:.0f}/s)"
    )


def test_thread_counts_give_the_same_bits() -> None:
    x, user = planted(n_users=40, pairs=20, features=32, rank=4, seed=41)
    models = [lore.fit(x, user, 4, iterations=40, lr=0.1, threads=t) for t in (None, 1, 2, 3)]
    for m in models[1:]:
        assert m.V.tobytes() == models[0].V.tobytes()
        assert m.W.tobytes() == models[0].W.tobytes()
    users = [models[0].personalize(x, user, iterations=60, threads=t) for t in (None, 1, 2)]
    for u in users[1:]:
        assert u.W.tobytes() == users[0].W.tobytes()


INTERRUPT = textwrap.dedent(
    """
    import json, os, signal, sys, threading, time
    import numpy as np
    import lore

    what, threads = sys.argv[1], (int(sys.argv[2]) or None)
    trace = sys.argv[3]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((20_000, 128), dtype=np.float32)
    user = np.repeat(np.arange(200), 100)
    model = lore.fit(x[:2000], user[:2000], 4, iterations=5)
    sent = []

    def interrupt():
        sent.append(time.perf_counter())
        os.kill(os.getpid(), signal.SIGINT)

    threading.Timer(0.5, interrupt).start()
    try:
        if what == "fit":
            lore.fit(x, user, 4, iterations=10**7, threads=threads, trace=trace)
        elif what == "bt":
            lore.fit(x, user, 4, iterations=10**7, threads=threads, v_ref="bt", alpha=1.0)
        else:
            model.personalize(x, user, iterations=10**8, threads=threads)
        print(json.dumps({"raised": None}))
    except KeyboardInterrupt:
        print(json.dumps({"raised": "KeyboardInterrupt", "after": time.perf_counter() - sent[0]}))
    """
)


@pytest.mark.parametrize("what", ["fit", "bt", "personalize"])
@pytest.mark.parametrize("threads", [0, 2], ids=["all-cores", "threads-2"])
def test_ctrl_c_raises_keyboard_interrupt_promptly(what: str, threads: int, tmp_path) -> None:
    trace = tmp_path / "trace.jsonl"
    done = subprocess.run(
        [sys.executable, "-c", INTERRUPT, what, str(threads), str(trace)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["raised"] == "KeyboardInterrupt"
    assert report["after"] < 2.0, f"KeyboardInterrupt {report['after']:.2f} s after SIGINT"
    assert not trace.exists(), "an interrupted fit wrote its trace"
    assert not list(tmp_path.iterdir()), "an interrupted fit left files"


def test_a_progress_bar_changes_nothing() -> None:
    x, user = planted(n_users=20, pairs=10, features=16, rank=3, seed=42)
    quiet = lore.fit(x, user, 3, iterations=30, v_ref="bt", alpha=0.5)
    shown = lore.fit(x, user, 3, iterations=30, v_ref="bt", alpha=0.5, progress=True)
    assert shown.V.tobytes() == quiet.V.tobytes()
    users = quiet.personalize(x, user, iterations=20, progress=True)
    assert users.W.tobytes() == quiet.personalize(x, user, iterations=20).W.tobytes()
