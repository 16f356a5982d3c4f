"""Multi-worker training (``train.strategy=multi_worker``): TF_CONFIG, roles, peers, the strategy.

Every worker runs the same command with its own ``TF_CONFIG`` (what Kubeflow's TFJob and the
managed training services set; :mod:`pipeline.launch` does it on one machine)::

    {"cluster": {"chief": ["host0:port"], "worker": ["host1:port", ...]},
     "task": {"type": "worker", "index": 0}}

``cluster`` needs ``worker`` (and may have one ``chief``); the chief is the ``chief`` task, or
``worker`` 0 when there is none. The configuration is validated before TensorFlow sees it
(:func:`parse_tf_config`, a :class:`TFConfigError` naming TF_CONFIG and the problem; a
subclass of :class:`~pipeline.core.config.ConfigError`, exit status 2).

Bounded start-up. ``MultiWorkerMirroredStrategy`` blocks in its coordination service, without
a time limit, until every task has registered, so a peer that never comes up hangs the others
forever. Before creating the strategy each worker therefore opens a plain TCP listener on its
own TF_CONFIG port and waits until every peer's port accepts a connection (its listener or
its TensorFlow server), for at most ``train.connect_timeout_seconds``; then it closes the
listener and starts the strategy on that port. A peer that is not reachable in that time
gives a :class:`PeerUnreachableError` naming it. A peer that answered and died before
registering is caught by a watchdog: if the strategy is not up within the same timeout the
process logs the error and exits with status 1 (the blocked C++ call cannot be interrupted).
Collectives run with ``train.collective_timeout_seconds``, so a peer that dies mid-training
fails the others' next step instead of hanging them.

Roles. Only the chief writes under the workdir (stage outputs, checkpoints, markers, MLflow);
the other workers run only the stages whose record says ``distributed=True`` (``teacher`` when
enabled, ``train``) in a private scratch folder without tracking, read the chief's upstream
outputs and checkpoints from the shared workdir, and exit 0 when done. The runner gives a
process its role (:func:`pipeline.running.runner.run_stages`); this module only knows the cluster.

Signals. Creating the strategy lets TensorFlow install a C++ SIGTERM handler (its preemption
notifier) that swallows the signal; :func:`take_back_sigterm` restores Python's, so SIGTERM stops
a worker as Ctrl-C does (its MLflow run KILLED, its scratch folder deleted). A sweep runs in one
process and is refused under multi-worker training (:func:`refuse_sweep`).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass

from pipeline.core.config import ConfigError, Params, TrainParams
from pipeline.core.errors import StageError

logger = logging.getLogger(__name__)


class TFConfigError(ConfigError):
    """TF_CONFIG is missing or malformed (exit status 2 from ``pipeline.run``)."""


class PeerUnreachableError(StageError):
    """A worker named in TF_CONFIG did not come up within ``train.connect_timeout_seconds``."""


@dataclass(frozen=True)
class Cluster:
    """The cluster of a multi-worker run and this process's place in it.

    Attributes:
      chief: ``host:port`` of the ``chief`` task, or None (then ``worker`` 0 is the chief).
      workers: ``host:port`` of each ``worker`` task, in order.
      task_type: ``chief`` or ``worker``.
      task_index: this task's index among its type.
    """

    chief: str | None
    workers: tuple[str, ...]
    task_type: str
    task_index: int

    @property
    def addresses(self) -> tuple[str, ...]:
        """Every task's address, the chief first (the order of :attr:`rank`)."""
        return ((self.chief,) if self.chief else ()) + self.workers

    @property
    def num_workers(self) -> int:
        return len(self.addresses)

    @property
    def rank(self) -> int:
        """0 for the chief, then 1.. for the other tasks (TensorFlow's ``id_in_cluster``)."""
        if self.task_type == "chief":
            return 0
        return self.task_index + (1 if self.chief else 0)

    @property
    def is_chief(self) -> bool:
        return self.rank == 0

    @property
    def address(self) -> str:
        return self.addresses[self.rank]

    @property
    def peers(self) -> tuple[str, ...]:
        return tuple(a for i, a in enumerate(self.addresses) if i != self.rank)


def _address(value, where: str) -> str:
    if not isinstance(value, str) or value.count(":") < 1:
        raise TFConfigError(f"TF_CONFIG: {where} must be a 'host:port' string, got {value!r}")
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise TFConfigError(f"TF_CONFIG: {where} must be 'host:port' with a port in 1..65535, got {value!r}")
    return value


def parse_tf_config(text: str | None) -> Cluster:
    """Validate a TF_CONFIG JSON string and return its :class:`Cluster`.

    Raises:
      TFConfigError: TF_CONFIG unset, not JSON, without ``cluster.worker``, with unknown task
        types, duplicate addresses, or a ``task`` whose type/index is not in the cluster.
    """
    if not text or not text.strip():
        raise TFConfigError(
            "train.strategy=multi_worker needs the TF_CONFIG environment variable (JSON with "
            "'cluster' and 'task'); it is unset or empty"
        )
    try:
        config = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TFConfigError(f"TF_CONFIG is not valid JSON: {exc}") from None
    if not isinstance(config, dict) or not isinstance(config.get("cluster"), dict):
        raise TFConfigError("TF_CONFIG must be a JSON object with a 'cluster' object")
    cluster = config["cluster"]
    unknown = set(cluster) - {"chief", "worker"}
    if unknown:
        raise TFConfigError(
            f"TF_CONFIG: cluster has task type(s) {sorted(unknown)}; multi_worker training "
            "takes 'worker' and an optional 'chief' only"
        )
    workers = cluster.get("worker")
    if not isinstance(workers, list) or not workers:
        raise TFConfigError("TF_CONFIG: cluster.worker must be a non-empty list of 'host:port' strings")
    workers = tuple(_address(w, f"cluster.worker[{i}]") for i, w in enumerate(workers))
    chief = cluster.get("chief")
    if chief is not None:
        if not isinstance(chief, list) or len(chief) != 1:
            raise TFConfigError(f"TF_CONFIG: cluster.chief must be a list of exactly one 'host:port', got {chief!r}")
        chief = _address(chief[0], "cluster.chief[0]")
    every = ((chief,) if chief else ()) + workers
    if len(set(every)) != len(every):
        raise TFConfigError(f"TF_CONFIG: the cluster names an address twice: {list(every)}")
    task = config.get("task")
    if not isinstance(task, dict):
        raise TFConfigError("TF_CONFIG must have a 'task' object with 'type' and 'index'")
    task_type, index = task.get("type"), task.get("index", 0)
    if task_type not in ("chief", "worker") or task_type not in cluster:
        raise TFConfigError(f"TF_CONFIG: task.type {task_type!r} is not a task type of the cluster ({sorted(cluster)})")
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(cluster[task_type]):
        raise TFConfigError(
            f"TF_CONFIG: task.index {index!r} is not in 0..{len(cluster[task_type]) - 1} "
            f"(cluster.{task_type} has {len(cluster[task_type])} task(s))"
        )
    return Cluster(chief=chief, workers=workers, task_type=task_type, task_index=index)


def cluster_of(params: Params) -> Cluster | None:
    """The cluster of a multi-worker run (from TF_CONFIG), or None for single-machine strategies."""
    if params.train.strategy != "multi_worker":
        return None
    return parse_tf_config(os.environ.get("TF_CONFIG"))


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def _reachable(address: str) -> bool:
    try:
        with socket.create_connection(_split(address), timeout=1.0):
            return True
    except OSError:
        return False


def wait_for_peers(cluster: Cluster, timeout: float, poll: float = 0.2) -> None:
    """Listen on this task's port and wait until every peer's port accepts a connection.

    Args:
      cluster: the cluster (this task's address is :attr:`Cluster.address`).
      timeout: seconds (``train.connect_timeout_seconds``).

    Raises:
      PeerUnreachableError: naming the peers still unreachable after ``timeout`` seconds.
      StageError: this task's own port is taken by another process.
    """
    host, port = _split(cluster.address)
    listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind(("", port))
    except OSError as exc:
        listener.close()
        raise StageError(
            f"TF_CONFIG gives this task ({cluster.task_type} {cluster.task_index}) the address "
            f"{cluster.address}, but port {port} is taken: {exc}"
        ) from None
    listener.listen(16)
    listener.settimeout(poll)
    stop = threading.Event()

    def answer():  # accept the peers' probes until this task's TensorFlow server takes over the port
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
                conn.close()
            except OSError:
                continue

    thread = threading.Thread(target=answer, daemon=True, name="peer-probe-listener")
    thread.start()
    deadline = time.monotonic() + timeout
    waiting = list(cluster.peers)
    try:
        while waiting:
            waiting = [peer for peer in waiting if not _reachable(peer)]
            if not waiting:
                break
            if time.monotonic() > deadline:
                raise PeerUnreachableError(
                    f"multi-worker training: {len(waiting)} peer(s) named in TF_CONFIG did not come up within "
                    f"train.connect_timeout_seconds={timeout:g} s: {', '.join(waiting)} (this task: "
                    f"{cluster.task_type} {cluster.task_index} at {cluster.address}); start every worker with "
                    "the same command, or check the addresses"
                )
            time.sleep(poll)
        time.sleep(2 * poll)  # let the peers' last probes of this port end before it changes hands
    finally:
        stop.set()
        thread.join()
        listener.close()
    logger.info("multi-worker: all %d peer(s) reachable", len(cluster.peers))


_STRATEGY: dict[str, object] = {}  # one MultiWorkerMirroredStrategy per process (TensorFlow allows one)


def strategy(train: TrainParams):
    """The process's ``MultiWorkerMirroredStrategy`` (created once: validated TF_CONFIG, peers up, bounded).

    Args:
      train: ``connect_timeout_seconds`` bounds the start-up, ``collective_timeout_seconds`` each collective.

    Raises:
      TFConfigError: TF_CONFIG missing or malformed.
      PeerUnreachableError: a peer did not come up in time.
    """
    import tensorflow as tf

    cluster = parse_tf_config(os.environ.get("TF_CONFIG"))
    key = os.environ["TF_CONFIG"]
    if key in _STRATEGY:
        return _STRATEGY[key]
    wait_for_peers(cluster, train.connect_timeout_seconds)
    timeout = train.connect_timeout_seconds

    def give_up():
        logger.error(
            "multi-worker: the strategy did not start within train.connect_timeout_seconds=%g s (a peer "
            "answered, then did not register: it died or runs another configuration); exiting",
            timeout,
        )
        logging.shutdown()
        os._exit(1)

    watchdog = threading.Timer(timeout, give_up)
    watchdog.daemon = True
    watchdog.start()
    try:
        options = tf.distribute.experimental.CommunicationOptions(
            implementation=tf.distribute.experimental.CommunicationImplementation.RING,
            timeout_seconds=train.collective_timeout_seconds or None,
        )
        made = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    finally:
        watchdog.cancel()
    take_back_sigterm()
    logger.info(
        "MultiWorkerMirroredStrategy: %s %d of %d workers (%s), %d replica(s) in sync; global batch %d",
        cluster.task_type,
        cluster.task_index,
        cluster.num_workers,
        "chief" if cluster.is_chief else "non-chief",
        made.num_replicas_in_sync,
        train.batch_size,
    )
    _STRATEGY[key] = made
    return made


def refuse_sweep(cells: dict[str, Params]) -> None:
    """A sweep runs its cells one after another in one process: it cannot be a task of multi-worker training.

    Called before a sweep takes the workdir lock or writes anything. Without it, every task of
    the cluster would run the whole sweep: the non-chief ones take the workdir lock (the chief
    is then told the workdir is in use) and write sweep summaries.

    Args:
      cells: the sweep's Params by cell name.

    Raises:
      ConfigError: ``TF_CONFIG`` names more than one task (or is malformed), or a cell sets
        ``train.strategy=multi_worker``; the message names it and what to do instead.
    """
    instead = (
        "run each cell as its own multi-worker job (python -m pipeline.launch --workers N -- --stage all "
        "--set KEY=VALUE --set seed=S)"
    )
    text = os.environ.get("TF_CONFIG")
    if text and text.strip():
        try:
            cluster = parse_tf_config(text)
        except TFConfigError as exc:
            raise ConfigError(
                f"a sweep (--sweep/--seeds) runs in one process, and TF_CONFIG is set: {exc}; unset "
                "TF_CONFIG to run the sweep here"
            ) from None
        if cluster.num_workers > 1:
            role = "the chief" if cluster.is_chief else "a non-chief task"
            raise ConfigError(
                f"a sweep (--sweep/--seeds) runs its cells one after another in one process, but "
                f"TF_CONFIG names {cluster.num_workers} tasks and makes this process {role} "
                f"({cluster.task_type} {cluster.task_index}); unset TF_CONFIG to run the sweep here, "
                f"or {instead}"
            )
    multi = [name for name, params in cells.items() if params.train.strategy == "multi_worker"]
    if multi:
        which = (
            "every cell"
            if len(multi) == len(cells)
            else "cell(s) " + ", ".join(multi[:5]) + (", ..." if len(multi) > 5 else "")
        )
        raise ConfigError(
            f"train.strategy=multi_worker in {which} of the sweep: a sweep runs its cells one after "
            f"another in one process; sweep with train.strategy default or mirrored, or {instead}"
        )


def take_back_sigterm() -> None:
    """Give SIGTERM back to Python after TensorFlow's coordination service took it.

    Creating ``MultiWorkerMirroredStrategy`` starts TensorFlow's preemption notifier, which
    installs a C++ SIGTERM handler that only records a "preemption notice" for
    ``PreemptionCheckpointHandler`` (not used here): a SIGTERM then no longer reaches Python, and
    the worker trains on until SIGKILL, leaving its MLflow run RUNNING and its scratch folder
    behind. Re-installing the Python-level handler (whatever it is: :func:`pipeline.running.preflight.
    terminate_as_interrupt`'s during ``pipeline.run``, else the default, which ends the process)
    makes SIGTERM unwind the worker like Ctrl-C. Only the main thread can install handlers; from
    another thread this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    handler = signal.getsignal(signal.SIGTERM)
    if handler is None:  # installed outside Python: not ours to change
        return
    signal.signal(signal.SIGTERM, handler)
    logger.debug("multi-worker: SIGTERM handled by Python again (%r)", handler)


def check_batch(batch_size: int, n_clips: int, workers: int) -> None:
    """The global batch must split evenly over the workers, and no step may leave a worker without clips.

    Raises:
      ValueError: naming ``train.batch_size`` and the numbers.
    """
    if batch_size % workers:
        raise ValueError(
            f"train.batch_size={batch_size} is the global batch and must be a multiple of the {workers} workers"
        )
    last = n_clips % batch_size
    if 0 < last < workers:
        raise ValueError(
            f"train.batch_size={batch_size}: the last batch of each epoch holds {last} of {n_clips} "
            f"clips, fewer than the {workers} workers; choose another batch size or data.max_train_clips"
        )
