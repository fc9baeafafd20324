# SPDX-License-Identifier: Apache-2.0
"""scripts/gpu.sh's wait on the GPU machine: at once on a fresh machine, at once when done.

A machine is given back after 30 s idle and the next call lands on a bare one. A wait there used
to sleep its whole length (540 s of device time, twice) before anyone could see nothing ran.
"""

import os
import subprocess
import time
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu.sh"


def _wait(res: Path, seconds: int, timeout: float) -> tuple[subprocess.CompletedProcess, float]:
    env = {**os.environ, "LYNX_GPU_RES": str(res)}
    env.pop("OUT", None)
    t0 = time.monotonic()
    done = subprocess.run(
        ["bash", str(SCRIPT), "wait", str(seconds)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return done, time.monotonic() - t0


def test_wait_on_a_machine_where_start_never_ran_says_cold_at_once(tmp_path):
    done, took = _wait(tmp_path / "res", 600, timeout=60)
    assert done.returncode == 3, done.stdout + done.stderr
    assert "COLD" in done.stdout
    assert took < 30


def _started(tmp_path: Path, stages: str) -> Path:
    """The results folder of a machine where `start` ran (gpu.txt) with these stage lines."""
    res = tmp_path / "res"
    res.mkdir()
    (res / "gpu.txt").write_text("NVIDIA H200, 580, 143771 MiB\n")
    (res / "stages").write_text(stages)
    return res


def test_wait_returns_when_the_chain_is_done(tmp_path):
    res = _started(tmp_path, "13:09:25 kernel start\n13:10:00 all done\n")
    done, took = _wait(res, 600, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "all done" in done.stdout
    assert took < 30


def test_wait_waits_while_a_chain_runs(tmp_path):
    res = _started(tmp_path, "13:09:25 kernel start\n")
    done, took = _wait(res, 1, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert took >= 1 and "all done" not in done.stdout
