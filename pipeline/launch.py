"""Local multi-worker launcher: ``python -m pipeline.launch --workers N [--max-restarts K] -- <pipeline.run args>``.

Starts N processes of ``python -m pipeline.run <args>`` on 127.0.0.1, each with free ports and
its own ``TF_CONFIG`` (worker 0 is the chief; ``--set train.strategy=multi_worker`` is added
when the arguments do not set ``train.strategy``), and streams their output line by line
prefixed ``[worker i]``. When one exits with an error the others are stopped (SIGTERM, then
SIGKILL after ``--grace-seconds``: TensorFlow's multi-worker runtime catches SIGTERM), and with
``--max-restarts K`` the whole group is started again, up to K times, on fresh ports: the
chief's interrupted ``train``/``teacher`` stage resumes from its last per-epoch checkpoint and
the other workers restore the same one. SIGINT/SIGTERM sent to the launcher are forwarded to
the workers (no restart). The exit status is the chief's when every worker succeeds, else
the first failure's (a worker killed by signal S counts as 128 + S).

For a real cluster, run the same ``python -m pipeline.run ... --set train.strategy=multi_worker``
on every machine with its ``TF_CONFIG`` (Kubeflow's TFJob sets it); this launcher is for trying
and testing on one machine.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time

from pipeline.run import seconds_arg

logger = logging.getLogger("pipeline.launch")



def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct TCP ports that were free on ``host`` a moment ago."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def tf_configs(n: int, host: str = "127.0.0.1") -> list[str]:
    """One TF_CONFIG JSON per worker: a cluster of ``n`` workers on ``host`` (worker 0 is the chief)."""
    workers = [f"{host}:{port}" for port in free_ports(n, host)]
    return [json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}}) for i in range(n)]


def run_arguments(args: list[str]) -> list[str]:
    """The pipeline.run arguments with ``train.strategy=multi_worker`` added when absent.

    Raises:
      ValueError: the arguments set another ``train.strategy`` (N copies of a single-worker run
        would write the same workdir).
    """
    values = [a.split("=", 1)[1] for a in args if a.startswith("train.strategy=")]
    values += [a.split("=", 1)[1] for a in args if a.startswith("--set=train.strategy=")]
    if any(v.strip() != "multi_worker" for v in values):
        raise ValueError(f"the pipeline.run arguments set train.strategy={values[-1]}; the launcher runs "
                         "train.strategy=multi_worker (leave it out or set multi_worker)")
    return list(args) if values else [*args, "--set", "train.strategy=multi_worker"]


class Group:
    """N worker processes of one attempt, their output streamed with a ``[worker i]`` prefix."""

    def __init__(self, n: int, args: list[str], host: str, out=None):
        self.out = out or sys.stdout
        self.lock = threading.Lock()
        self.procs: list[subprocess.Popen] = []
        self.threads: list[threading.Thread] = []
        for i, config in enumerate(tf_configs(n, host)):
            env = {**os.environ, "TF_CONFIG": config, "PYTHONUNBUFFERED": "1"}
            try:
                proc = subprocess.Popen([sys.executable, "-m", "pipeline.run", *args], env=env, cwd=os.getcwd(),
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                                        start_new_session=True)
            except OSError:
                for started in self.procs:  # no orphaned workers in their own sessions
                    started.kill()
                raise
            self.procs.append(proc)
            self._say(f"[launch] worker {i}{' (chief)' if i == 0 else ''}: pid {proc.pid}, TF_CONFIG {config}")
            thread = threading.Thread(target=self._pump, args=(i, proc), daemon=True)
            thread.start()
            self.threads.append(thread)

    def _say(self, line: str) -> None:
        with self.lock:
            self.out.write(line + "\n")
            self.out.flush()

    def _pump(self, i: int, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            self._say(f"[worker {i}] {line.rstrip()}")

    def first_failure(self) -> tuple[int, int] | None:
        """``(worker, status)`` of the first worker that exited with an error, or None."""
        for i, proc in enumerate(self.procs):
            code = proc.poll()
            if code not in (None, 0):
                return i, (128 - code if code < 0 else code)
        return None

    def done(self) -> bool:
        return all(proc.poll() is not None for proc in self.procs)

    def send(self, sig: int) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    pass

    def stop(self, grace: float, sig: int = signal.SIGTERM) -> None:
        """Ask the workers still running to stop (``sig``), SIGKILL them after ``grace`` seconds."""
        self.send(sig)
        deadline = time.monotonic() + grace
        while not self.done() and time.monotonic() < deadline:
            time.sleep(0.1)
        if not self.done():
            self._say(f"[launch] workers still running after {grace:g} s: killing them")
            self.send(signal.SIGKILL)
        for proc in self.procs:
            proc.wait()
        for thread in self.threads:
            thread.join(timeout=5)


def launch(n: int, args: list[str], *, max_restarts: int = 0, host: str = "127.0.0.1", grace: float = 10.0,
           out=None) -> int:
    """Run ``n`` workers of ``python -m pipeline.run args`` until done; restart the group on failure.

    Returns:
      The chief's exit status when all succeed, else the first failure's (130/143 when interrupted).
    """
    if n < 1:
        raise ValueError(f"--workers must be at least 1, got {n}")
    if max_restarts < 0:
        raise ValueError(f"--max-restarts must be >= 0, got {max_restarts}")
    args = run_arguments(args)
    received: list[int] = []

    def forward(sig, _frame):
        received.append(sig)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for attempt in range(max_restarts + 1):
            group = Group(n, args, host, out)
            if attempt:
                group._say(f"[launch] attempt {attempt + 1} of {max_restarts + 1}: the group resumes from its "
                           "checkpoints")
            failure = None
            while not group.done():
                if received:
                    group._say(f"[launch] got signal {received[0]}: forwarding it to the workers")
                    group.stop(grace, received[0])
                    return 128 + received[0]
                failure = group.first_failure()
                if failure is not None:
                    group._say(f"[launch] worker {failure[0]} failed with status {failure[1]}: stopping the others")
                    group.stop(grace)
                    break
                time.sleep(0.2)
            group.stop(grace)
            failure = failure or group.first_failure()
            if received:
                return 128 + received[0]
            if failure is None:
                group._say(f"[launch] all {n} workers finished")
                return group.procs[0].returncode
            if failure[1] == 2:  # a usage, configuration or environment error: a restart would fail the same way
                group._say(f"[launch] worker {failure[0]} refused to start (status 2): not restarting")
                return 2
            if attempt < max_restarts:
                group._say(f"[launch] restarting the group ({attempt + 1} of {max_restarts} restart(s))")
        group._say(f"[launch] giving up after {max_restarts} restart(s): status {failure[1]}")
        return failure[1]
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    run_args: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, run_args = argv[:cut], argv[cut + 1:]
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.launch",
        description="Run N local workers of `python -m pipeline.run` with train.strategy=multi_worker.",
        epilog="Example: python -m pipeline.launch --workers 2 -- --stage all --set train.epochs=3")
    parser.add_argument("--workers", type=int, required=True, help="worker processes (worker 0 is the chief)")
    parser.add_argument("--max-restarts", type=int, default=0,
                        help="restart the whole group this many times after a failure (default 0)")
    parser.add_argument("--host", default="127.0.0.1", help="address the workers listen on (default 127.0.0.1)")
    parser.add_argument("--grace-seconds", type=seconds_arg, default=10.0,
                        help="seconds between SIGTERM and SIGKILL when stopping workers (default 10)")
    args = parser.parse_args(argv)
    if not run_args:
        parser.error("give the pipeline.run arguments after --, e.g. -- --stage all")
    logging.basicConfig(level="INFO", format="%(message)s")
    try:
        return launch(args.workers, run_args, max_restarts=args.max_restarts, host=args.host,
                      grace=args.grace_seconds)
    except ValueError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
