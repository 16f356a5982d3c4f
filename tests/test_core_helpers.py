"""The one lock primitive, dotted keys, mean +/- std and the named random streams (issue 23, "one of each")."""

import math
import multiprocessing
import statistics
import time

import numpy as np
import pytest

from pipeline.core import dotted, lock, seeds, stats


def _hold(path, ready, release):
    with lock.file_lock(path):
        ready.set()
        release.wait(30)


def test_file_lock_refuses_or_waits_while_another_process_holds_it(tmp_path):
    path = tmp_path / "x.lock"
    ctx = multiprocessing.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold, args=(path, ready, release))
    holder.start()
    try:
        assert ready.wait(30)
        with pytest.raises(lock.LockBusy, match="x.lock is locked"):
            with lock.file_lock(path, wait_seconds=0):
                pass
        with pytest.raises(KeyError, match="busy after"):
            with lock.file_lock(
                path,
                wait_seconds=0.2,
                poll_seconds=0.05,
                busy=lambda holder, waited: KeyError(f"busy after {waited:.1f} s"),
            ):
                pass
    finally:
        release.set()
        holder.join(30)
    start = time.monotonic()
    with lock.file_lock(path, wait_seconds=5) as fd:  # free again: taken at once
        assert isinstance(fd, int)
    assert time.monotonic() - start < 1.0
    assert path.read_bytes() == b""  # the primitive writes nothing into the file


def test_a_second_process_on_a_sweep_folder_is_refused(tmp_path):
    from pipeline.running.stages import StageError
    from pipeline.scaling import sweep

    ctx = multiprocessing.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold, args=(tmp_path / ".lock", ready, release))
    holder.start()
    try:
        assert ready.wait(30)
        with pytest.raises(StageError, match="another process is running this sweep"):
            with sweep._exclusive(tmp_path):
                pass
    finally:
        release.set()
        holder.join(30)
    with sweep._exclusive(tmp_path):  # free again
        pass


def test_workdir_lock_still_names_its_holder_and_is_reentrant(tmp_path):
    with lock.workdir_lock(tmp_path) as path:
        holder = __import__("json").loads(path.read_text())
        assert {"pid", "host", "since", "command"} <= set(holder)
        with lock.workdir_lock(tmp_path):  # the same process: shared
            pass
    assert path.read_text() == ""


def test_dotted_get_without_and_put():
    tree = {"a": {"b": 1, "c": {"d": 2}}, "e": 3}
    assert dotted.get(tree, "a.c.d") == 2 and dotted.get(tree, "e") == 3
    with pytest.raises(KeyError):
        dotted.get(tree, "a.x")
    cut = dotted.without(tree, "a.c.d")
    assert cut == {"a": {"b": 1, "c": {}}, "e": 3}
    assert tree == {"a": {"b": 1, "c": {"d": 2}}, "e": 3}  # not changed
    assert dotted.without(tree, "a.x.y") == tree and dotted.without(tree, "e.f") == tree
    assert dotted.without(tree, "e") == {"a": {"b": 1, "c": {"d": 2}}}
    dotted.put(tree, "a.c.z", 5)
    dotted.put(tree, "e.f", 6)  # a value on the way becomes a section
    assert tree == {"a": {"b": 1, "c": {"d": 2, "z": 5}}, "e": {"f": 6}}


def test_mean_std_is_the_sample_std():
    values = [0.5, 0.6, 0.7, 0.66]
    mean, std = stats.mean_std(values)
    assert mean == pytest.approx(np.mean(values), abs=1e-15)
    assert std == pytest.approx(np.std(values, ddof=1), abs=1e-15) and std == statistics.stdev(values)
    assert stats.DDOF == 1
    one = stats.mean_std([0.4])
    assert one[0] == 0.4 and math.isnan(one[1])
    assert stats.mean_std([0.4], single=0.0) == (0.4, 0.0)
    assert all(math.isnan(x) for x in stats.mean_std([]))
    s = stats.summary([0.123456, 0.2], digits=4)
    assert s == {
        "mean": 0.1617,
        "std": round(statistics.stdev([0.123456, 0.2]), 4),
        "min": 0.1235,
        "max": 0.2,
        "n": 2,
        "values": [0.1235, 0.2],
    }
    assert stats.summary([3.0])["std"] == 0.0
    with pytest.raises(ValueError, match="no values"):
        stats.summary([])


def test_random_streams_keep_the_offsets_they_had():
    assert seeds.STREAMS == {
        "head_dropout1": 1,
        "head_dropout2": 2,
        "time_shift": 7,
        "specaugment": 11,
        "freq_mixstyle": 13,
        "device_response": 17,
        "compress.prune_data": 101,
        "compress.qat_data": 202,
        "compress": 1000,
        "teacher": 1000,
        "specialize": 5000,
    }
    assert seeds.stream_seed(5, "time_shift") == 12
    assert [seeds.stream_seed(5, "specaugment", 1 + k) for k in range(3)] == [16, 27, 38]
    assert [seeds.stream_seed(5, "teacher", m + 1) for m in range(2)] == [1005, 2005]
    with pytest.raises(KeyError, match="unknown random stream 'nope'"):
        seeds.stream_seed(0, "nope")
