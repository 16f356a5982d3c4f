"""Local multi-worker launcher: ``python -m pipeline.launch --workers N [--max-restarts K] -- <pipeline.run args>``.

Starts N processes of ``python -m pipeline.run <args>`` on ``--host`` (default 127.0.0.1), each
with free ports and its own ``TF_CONFIG`` (worker 0 is the chief; ``--set
train.strategy=multi_worker`` is added when the arguments do not set ``train.strategy``), and
streams their output line by line prefixed ``[worker i]``. When one exits with an error the
others are stopped (SIGTERM, then SIGKILL after ``--grace-seconds``, default 30), and with
``--max-restarts K`` the whole group is started again, up to K times, on fresh ports: the
chief's interrupted ``train``/``teacher`` stage resumes from its last per-epoch checkpoint and
the other workers restore the same one. A worker that exits with status 2 (a usage,
configuration or environment error) is not restarted. The exit status is the chief's when
every worker succeeds, else the first failure's (a worker killed by signal S counts as 128 + S).

Checked before any worker starts (exit status 2, the message names the option and the value):

* ``--workers`` is 1..:func:`max_workers`: 4 per CPU this process may use, at most 64. Each
  worker is a whole TensorFlow process (about 0.8 GB resident, and it needs CPU time: more
  workers than that only time-slice the same cores while multiplying the memory).
* ``--max-restarts`` is 0..20 (a group that failed 20 times has a cause a restart does not fix).
* ``--host`` resolves to an IPv4 address of this machine (the launcher listens on it).
* The pipeline.run arguments run one job: ``--sweep``, ``--seeds``, ``--shard`` and
  ``--summary-only`` (or an abbreviation) are refused. A sweep runs its cells one after another
  in one process; N workers would each run the whole sweep. Launch each cell instead (``--set
  KEY=VALUE --set seed=S``), or run the sweep without the launcher. ``train.strategy`` other
  than ``multi_worker`` is refused too (N copies of a single-worker run would write one workdir).

Signals. SIGINT and SIGTERM sent to the launcher are forwarded to every worker (SIGHUP, the
terminal going away, is forwarded as SIGTERM; a signal the launcher was started ignoring, as
under ``nohup``, stays ignored), and the group is not restarted. A worker unwinds
as ``pipeline.run`` does on Ctrl-C: its stage's MLflow run ends KILLED with ``error.txt``, a
non-chief worker deletes its scratch folder, and it exits 128 + signal (TensorFlow's
multi-worker runtime takes SIGTERM for its own preemption notices;
:func:`pipeline.scaling.distributed.take_back_sigterm` gives it back to Python). The chief's
interrupted resumable stage keeps its checkpoints and ``_RUNNING.json``, which names the
KILLED run: rerunning the same command resumes there, in the same MLflow run. Workers still
running ``--grace-seconds`` after the signal, or at a second signal, are killed (SIGKILL: no
clean-up; the next run marks their MLflow runs KILLED and clears their scratch folders).
The launcher exits 128 + the signal it got (130 for SIGINT, 143 for SIGTERM, 129 for SIGHUP).

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
from collections.abc import Callable, Sequence

from pipeline.running.cli import seconds_arg

logger = logging.getLogger("pipeline.launch")

MAX_WORKERS = 64  # whatever the machine: each worker is a TensorFlow process of ~0.8 GB
WORKERS_PER_CPU = 4
MAX_RESTARTS = 20
SWEEP_OPTIONS = ("--sweep", "--seeds", "--shard", "--summary-only")  # pipeline.run options of a sweep
_SHARED_PREFIX = ("--set", "--stage")  # "--s", "--se": ambiguous for pipeline.run, which refuses them itself
FORWARDED = {signal.SIGINT: signal.SIGINT, signal.SIGTERM: signal.SIGTERM, signal.SIGHUP: signal.SIGTERM}


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the platform has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def max_workers() -> int:
    """The upper bound of ``--workers``: :data:`WORKERS_PER_CPU` per usable CPU, at most :data:`MAX_WORKERS`."""
    return min(MAX_WORKERS, WORKERS_PER_CPU * usable_cpus())


def check_workers(n: int) -> None:
    """Raises ValueError naming ``--workers`` and ``n`` unless ``1 <= n <= max_workers()``."""
    top = max_workers()
    if not 1 <= n <= top:
        raise ValueError(
            f"--workers: expected 1..{top} ({WORKERS_PER_CPU} per usable CPU, {usable_cpus()} here, at "
            f"most {MAX_WORKERS}: each worker is a TensorFlow process of about 0.8 GB), got {n}"
        )


def check_restarts(k: int) -> None:
    """Raises ValueError naming ``--max-restarts`` and ``k`` unless ``0 <= k <= MAX_RESTARTS``."""
    if not 0 <= k <= MAX_RESTARTS:
        raise ValueError(f"--max-restarts: expected 0..{MAX_RESTARTS}, got {k}")


def check_host(host: str) -> None:
    """The workers can listen on ``host``: it resolves to an IPv4 address and this machine can bind it.

    Raises:
      ValueError: naming ``--host``, the value and the reason (unresolvable name, an IPv6 or
        malformed address, or an address that is not this machine's).
    """
    if not host.strip():
        raise ValueError("--host '': give an IPv4 address or a name of this machine, e.g. 127.0.0.1")
    try:
        socket.getaddrinfo(host, 0, socket.AF_INET, socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, socket.gaierror) else exc
        raise ValueError(
            f"--host {host!r}: cannot resolve it to an IPv4 address ({reason}); give an IPv4 address "
            "or a name of this machine, e.g. 127.0.0.1"
        ) from None
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((host, 0))
    except OSError as exc:
        raise ValueError(
            f"--host {host!r}: the workers cannot listen on it ({exc.strerror or exc}): it is not an "
            "address of this machine; the launcher starts every worker here (e.g. 127.0.0.1)"
        ) from None


def _bounded(check: Callable[[int], None]) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        try:
            check(value)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc).split(": ", 1)[1]) from None
        return value

    return parse


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


def sweep_option(args: Sequence[str]) -> str | None:
    """The first argument that selects a sweep option of pipeline.run (or an abbreviation argparse takes), or None."""
    for arg in args:
        name = arg.split("=", 1)[0]
        if not name.startswith("--") or len(name) < 4:
            continue
        if any(o.startswith(name) for o in SWEEP_OPTIONS) and not any(o.startswith(name) for o in _SHARED_PREFIX):
            return arg
    return None


def run_arguments(args: list[str]) -> list[str]:
    """The pipeline.run arguments with ``train.strategy=multi_worker`` added when absent.

    Raises:
      ValueError: the arguments set another ``train.strategy`` (N copies of a single-worker run
        would write the same workdir), or select a sweep (``--sweep``, ``--seeds``, ``--shard``,
        ``--summary-only``: one process runs every cell, so N workers would each run the sweep).
    """
    sweep = sweep_option(args)
    if sweep is not None:
        raise ValueError(
            f"the pipeline.run arguments select a sweep ({sweep}); the launcher runs one multi-worker "
            "job, and a sweep runs its cells one after another in one process. Launch each cell as its "
            "own job (-- --stage all --set KEY=VALUE --set seed=S), or run the sweep without the "
            "launcher (python -m pipeline.run ... --sweep ...)"
        )
    values = [a.split("=", 1)[1] for a in args if a.startswith("train.strategy=")]
    values += [a.split("=", 1)[1] for a in args if a.startswith("--set=train.strategy=")]
    if any(v.strip() != "multi_worker" for v in values):
        raise ValueError(
            f"the pipeline.run arguments set train.strategy={values[-1]}; the launcher runs "
            "train.strategy=multi_worker (leave it out or set multi_worker)"
        )
    return list(args) if values else [*args, "--set", "train.strategy=multi_worker"]


class Group:
    """N worker processes of one attempt, their output streamed with a ``[worker i]`` prefix.

    Args:
      n: workers; ``args``: their arguments; ``host``: the address they listen on.
      out: where the output goes (default stdout).
      command: the worker program before ``args`` (default ``python -m pipeline.run``).
    """

    def __init__(self, n: int, args: list[str], host: str, out=None, command: Sequence[str] | None = None):
        self.out = out or sys.stdout
        self.lock = threading.Lock()
        self.procs: list[subprocess.Popen] = []
        self.threads: list[threading.Thread] = []
        command = list(command or (sys.executable, "-m", "pipeline.run"))
        for i, config in enumerate(tf_configs(n, host)):
            env = {**os.environ, "TF_CONFIG": config, "PYTHONUNBUFFERED": "1"}
            try:
                proc = subprocess.Popen(
                    [*command, *args],
                    env=env,
                    cwd=os.getcwd(),
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                    bufsize=1,
                    start_new_session=True,
                )
            except OSError:
                for started in self.procs:  # no orphaned workers in their own sessions
                    started.kill()
                raise
            self.procs.append(proc)
            self.say(f"[launch] worker {i}{' (chief)' if i == 0 else ''}: pid {proc.pid}, TF_CONFIG {config}")
            thread = threading.Thread(target=self._pump, args=(i, proc), daemon=True)
            thread.start()
            self.threads.append(thread)

    def say(self, line: str) -> None:
        """Write one line; a closed output (the terminal went away) loses it but never stalls the workers."""
        with self.lock:
            try:
                self.out.write(line + "\n")
                self.out.flush()
            except (OSError, ValueError):
                pass

    def _pump(self, i: int, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            self.say(f"[worker {i}] {line.rstrip()}")

    def first_failure(self) -> tuple[int, int] | None:
        """``(worker, status)`` of the first worker that exited with an error, or None."""
        for i, proc in enumerate(self.procs):
            code = proc.poll()
            if code not in (None, 0):
                return i, (128 - code if code < 0 else code)
        return None

    def done(self) -> bool:
        return all(proc.poll() is not None for proc in self.procs)

    def statuses(self) -> str:
        """``worker 0: 143, worker 1: 143`` (a worker killed by signal S: 128 + S)."""
        return ", ".join(
            f"worker {i}: {128 - p.returncode if p.returncode < 0 else p.returncode}"
            for i, p in enumerate(self.procs)
            if p.returncode is not None
        )

    def send(self, sig: int) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    pass

    def stop(self, grace: float, sig: int = signal.SIGTERM, hurry: Callable[[], bool] = lambda: False) -> None:
        """Ask the workers still running to stop (``sig``); SIGKILL them after ``grace`` seconds or once ``hurry()``."""
        self.send(sig)
        deadline = time.monotonic() + grace
        while not self.done() and time.monotonic() < deadline and not hurry():
            time.sleep(0.1)
        if not self.done():
            why = "at a second signal" if hurry() else f"still running after {grace:g} s"
            self.say(f"[launch] workers {why}: killing them (SIGKILL)")
            self.send(signal.SIGKILL)
        for proc in self.procs:
            proc.wait()
        for thread in self.threads:
            thread.join(timeout=5)


def launch(
    n: int,
    args: list[str],
    *,
    max_restarts: int = 0,
    host: str = "127.0.0.1",
    grace: float = 30.0,
    out=None,
    command: Sequence[str] | None = None,
) -> int:
    """Run ``n`` workers of ``python -m pipeline.run args`` until done; restart the group on failure.

    Args:
      n: workers (1..:func:`max_workers`); ``args``: the pipeline.run arguments.
      max_restarts: restarts of the whole group after a failure (0..:data:`MAX_RESTARTS`).
      host: the address the workers listen on (an IPv4 address of this machine).
      grace: seconds between SIGTERM and SIGKILL when stopping workers.
      out: where the workers' output goes (default stdout).
      command: the worker program (default ``python -m pipeline.run``; tests use a stand-in).

    Returns:
      The chief's exit status when all succeed, else the first failure's; 128 + S after signal S
      (SIGINT, SIGTERM or SIGHUP) reached the launcher.

    Raises:
      ValueError: a bound, ``--host`` or the pipeline.run arguments (see :func:`run_arguments`),
        before any worker starts.
    """
    check_workers(n)
    check_restarts(max_restarts)
    check_host(host)
    args = run_arguments(args)
    received: list[int] = []

    def note(sig, _frame):
        received.append(sig)

    # A signal the launcher was started ignoring (nohup: SIGHUP; a background job: SIGINT) stays ignored.
    previous = {s: signal.signal(s, note) for s in FORWARDED if signal.getsignal(s) is not signal.SIG_IGN}
    try:
        for attempt in range(max_restarts + 1):
            group = Group(n, args, host, out, command)
            if attempt:
                group.say(
                    f"[launch] attempt {attempt + 1} of {max_restarts + 1}: the group resumes from its checkpoints"
                )
            failure = None
            while not group.done():
                if received:
                    return _interrupted(group, received, grace)
                failure = group.first_failure()
                if failure is not None:
                    group.say(f"[launch] worker {failure[0]} failed with status {failure[1]}: stopping the others")
                    group.stop(grace, hurry=lambda: bool(received))
                    break
                time.sleep(0.2)
            group.stop(grace, hurry=lambda: bool(received))
            failure = failure or group.first_failure()
            if received:
                group.say(f"[launch] got {signal.Signals(received[0]).name}: not restarting ({group.statuses()})")
                return 128 + received[0]
            if failure is None:
                group.say(f"[launch] all {n} workers finished")
                return group.procs[0].returncode
            if failure[1] == 2:  # a usage, configuration or environment error: a restart would fail the same way
                group.say(f"[launch] worker {failure[0]} refused to start (status 2): not restarting")
                return 2
            if attempt < max_restarts:
                group.say(f"[launch] restarting the group ({attempt + 1} of {max_restarts} restart(s))")
        group.say(f"[launch] giving up after {max_restarts} restart(s): status {failure[1]}")
        return failure[1]
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _interrupted(group: Group, received: list[int], grace: float) -> int:
    """Forward the launcher's signal, wait for the workers to unwind (or kill them), return 128 + signal."""
    sig = received[0]
    forward = FORWARDED[sig]
    group.say(
        f"[launch] got {signal.Signals(sig).name}: sending {signal.Signals(forward).name} to the workers; they "
        f"stop as on Ctrl-C (SIGKILL after {grace:g} s, or at a second signal)"
    )
    group.stop(grace, forward, hurry=lambda: len(received) > 1)
    group.say(f"[launch] workers stopped ({group.statuses()}); exit status {128 + sig}")
    return 128 + sig


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.launch",
        description="Run N local workers of `python -m pipeline.run` with train.strategy=multi_worker. "
        "SIGINT/SIGTERM stop every worker as Ctrl-C stops pipeline.run (exit 128 + signal).",
        epilog="Example: python -m pipeline.launch --workers 2 -- --stage all --set train.epochs=3",
    )
    parser.add_argument(
        "--workers",
        type=_bounded(check_workers),
        required=True,
        metavar="N",
        help=f"worker processes, worker 0 the chief: 1..{max_workers()} here ({WORKERS_PER_CPU} per "
        f"usable CPU, at most {MAX_WORKERS}; each is a TensorFlow process of about 0.8 GB)",
    )
    parser.add_argument(
        "--max-restarts",
        type=_bounded(check_restarts),
        default=0,
        metavar="K",
        help=f"restart the whole group up to K times after a failure, 0..{MAX_RESTARTS} (default 0)",
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="IPv4 address (or name) of this machine the workers listen on (default 127.0.0.1)",
    )
    parser.add_argument(
        "--grace-seconds",
        type=seconds_arg,
        default=30.0,
        help="seconds between SIGTERM (or SIGINT) and SIGKILL when stopping workers (default 30: "
        "a worker unwinds in well under a second, then TensorFlow's teardown at exit takes "
        "seconds more: 5-9 s measured on 2 busy cores)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    run_args: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, run_args = argv[:cut], argv[cut + 1 :]
    parser = build_parser()
    args = parser.parse_args(argv)
    if not run_args:
        parser.error("give the pipeline.run arguments after --, e.g. -- --stage all")
    logging.basicConfig(level="INFO", format="%(message)s")
    try:
        return launch(args.workers, run_args, max_restarts=args.max_restarts, host=args.host, grace=args.grace_seconds)
    except ValueError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
