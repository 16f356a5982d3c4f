"""tf.data input: decoding values, fallbacks, shapes, dtypes and seeded order."""

import numpy as np
import pytest
import soundfile as sf
import tensorflow as tf

from pipeline.core.config import AudioParams, DataParams
from pipeline.data import inputs, tau
from tests.tau_fixture import tone, write_tau

AUDIO = AudioParams()
DATA = DataParams()


def _one(tmp_path, name, x, rate, subtype):
    path = tmp_path / name
    sf.write(path, x, rate, subtype=subtype)
    info = tau.read_wav_header(path)
    code = inputs._format_code(info.encoding, info.bits)
    return inputs.load_clip(
        tf.constant(str(path)),
        tf.constant(code),
        tf.constant(info.sample_rate, tf.int64),
        target_rate=44100,
        clip_samples=44100,
    ).numpy()


@pytest.mark.parametrize("subtype, scale", [("PCM_16", 2**15), ("PCM_24", 2**23), ("PCM_32", 2**31)])
def test_pcm_decoding_matches_written_samples(tmp_path, subtype, scale):
    rng = np.random.default_rng(1)
    ints = rng.integers(-scale, scale, size=44100)
    x = ints / scale  # exactly representable at this bit depth
    got = _one(tmp_path, "x.wav", x, 44100, subtype)
    # soundfile writes the integers themselves; decoding must give them back / scale
    written, _ = sf.read(tmp_path / "x.wav", dtype="int32")
    expected = written.astype(np.float64) / 2**31
    np.testing.assert_allclose(got, expected, atol=1e-7)
    np.testing.assert_allclose(got, x, atol=1.0 / scale)


def test_float_wav_and_nonfinite_error_names_file(tmp_path):
    x = tone()
    np.testing.assert_allclose(_one(tmp_path, "f.wav", x, 44100, "FLOAT"), x, atol=1e-7)
    x[100] = np.nan
    with pytest.raises(tf.errors.InvalidArgumentError, match="nan.wav"):
        _one(tmp_path, "nan.wav", x, 44100, "FLOAT")
    x[100] = np.inf
    with pytest.raises(tf.errors.InvalidArgumentError, match="non-finite"):
        _one(tmp_path, "inf.wav", x, 44100, "FLOAT")


def test_stereo_is_downmixed_short_padded_long_cropped(tmp_path):
    st = tone(channels=2)
    got = _one(tmp_path, "st.wav", st, 44100, "FLOAT")
    np.testing.assert_allclose(got, st.mean(axis=1), atol=1e-7)
    short = tone(seconds=0.25)
    got = _one(tmp_path, "short.wav", short, 44100, "FLOAT")
    np.testing.assert_allclose(got[: short.size], short, atol=1e-7)
    assert np.all(got[short.size :] == 0) and got.shape == (44100,)
    long = tone(seconds=1.7, freq=300)
    np.testing.assert_allclose(_one(tmp_path, "long.wav", long, 44100, "FLOAT"), long[:44100], atol=1e-7)


def test_48k_is_resampled(tmp_path):
    x = tone(rate=48000, freq=1000.0, amp=0.5)
    got = _one(tmp_path, "r.wav", x, 48000, "PCM_24")
    assert got.shape == (44100,)
    # the 1 kHz tone survives resampling: peak of the spectrum at 1 kHz, level preserved
    spec = np.abs(np.fft.rfft(got[2000:42000] * np.hanning(40000)))
    peak_hz = np.argmax(spec) * 44100 / 40000
    assert abs(peak_hz - 1000) < 3
    assert abs(np.sqrt(np.mean(got[2000:42000] ** 2)) - 0.5 / np.sqrt(2)) < 0.02


@pytest.fixture()
def index(tmp_path):
    write_tau(tmp_path / "tau", subtype="PCM_24")
    return tau.read_index(tmp_path / "tau"), tmp_path / "tau"


def test_eval_dataset_order_shapes_dtypes(index):
    idx, root = index
    ev = idx[idx.split == "evaluate"].reset_index(drop=True)
    ds = inputs.eval_dataset(ev, root, AUDIO, DATA, batch_size=8)
    assert ds.element_spec[0].shape.as_list() == [None, 44100]
    assert ds.element_spec[0].dtype == tf.float32 and ds.element_spec[1].dtype == tf.int32
    waves, labels = zip(*ds.as_numpy_iterator(), strict=True)
    waves, labels = np.concatenate(waves), np.concatenate(labels)
    assert waves.shape == (len(ev), 44100)
    np.testing.assert_array_equal(labels, ev.label.to_numpy())
    first, _ = sf.read(root / ev.filename[0], dtype="float64")
    np.testing.assert_allclose(waves[0], first, atol=2**-23)


def _epochs(ds):
    return [labels.tolist() for _, labels in ds.as_numpy_iterator()]


def test_train_order_is_seeded_reshuffled_and_resumable(index):
    idx, root = index
    tr = idx[idx.split == "train"].reset_index(drop=True)
    ds, steps = inputs.train_dataset(tr, root, AUDIO, DATA, batch_size=8, seed=3, start_epoch=0, epochs=3)
    assert steps == int(np.ceil(len(tr) / 8))
    batches = _epochs(ds)
    assert len(batches) == 3 * steps
    epoch = [sum(batches[e * steps : (e + 1) * steps], []) for e in range(3)]
    assert all(sorted(e) == sorted(tr.label.tolist()) for e in epoch)  # each epoch: every clip once
    assert epoch[0] != epoch[1]  # reshuffled
    again, _ = inputs.train_dataset(tr, root, AUDIO, DATA, batch_size=8, seed=3, start_epoch=0, epochs=3)
    assert _epochs(again) == batches  # same seed, same order
    resumed, _ = inputs.train_dataset(tr, root, AUDIO, DATA, batch_size=8, seed=3, start_epoch=2, epochs=3)
    assert _epochs(resumed) == batches[2 * steps :]  # resume sees what the full run saw
    other, _ = inputs.train_dataset(tr, root, AUDIO, DATA, batch_size=8, seed=4, start_epoch=0, epochs=1)
    assert _epochs(other) != batches[:steps]


def test_memory_cache_gives_the_same_batches(index):
    idx, root = index
    tr = idx[idx.split == "train"].reset_index(drop=True)
    plain, _ = inputs.train_dataset(tr, root, AUDIO, DATA, batch_size=8, seed=3, start_epoch=0, epochs=2)
    cached, _ = inputs.train_dataset(
        tr, root, AUDIO, DataParams(cache="memory"), batch_size=8, seed=3, start_epoch=0, epochs=2
    )
    for (wa, la), (wb, lb) in zip(plain.as_numpy_iterator(), cached.as_numpy_iterator(), strict=True):
        np.testing.assert_array_equal(la, lb)
        np.testing.assert_array_equal(wa, wb)


def _decoded(index, root) -> dict[str, np.ndarray]:
    """Each clip read by soundfile (float64, independent of the tf.data decoder), by file name."""
    return {f: sf.read(root / f, dtype="float64")[0] for f in index.filename}


def _which(wave, reference: dict[str, np.ndarray]) -> str:
    """The one clip of ``reference`` that ``wave`` decodes (24-bit PCM: within one step of 2**-23)."""
    found = [f for f, ref in reference.items() if np.allclose(wave, ref, rtol=0, atol=2**-23)]
    assert len(found) == 1, found
    return found[0]


def test_pipelines_run_without_tf_data_autotuning(index):
    # Deleting an autotuned iterator stalled for up to its lifetime, once per epoch for Keras'
    # validation iterator (inputs._no_autotune): every pipeline here turns the autotuner off.
    idx, root = index
    tr = idx[idx.split == "train"].reset_index(drop=True)
    pipelines = [inputs.eval_dataset(tr, root, AUDIO, DATA, batch_size=8)]
    for data in (DATA, DataParams(cache="memory"), DataParams(num_parallel_calls=1)):
        pipelines.append(inputs.train_dataset(tr, root, AUDIO, data, batch_size=8, seed=3, start_epoch=0, epochs=2)[0])
    for ds in pipelines:
        assert ds.options().autotune.enabled is False
    # and a stream dropped in the middle is released at once, as Keras does after each fit
    it = iter(pipelines[1])
    next(it)
    del it
    # without the autotuner every pipeline still gives the clips themselves: each element is one clip as
    # soundfile decodes it, with that clip's label, and each epoch holds every clip once
    reference, label = _decoded(tr, root), dict(zip(tr.filename, tr.label, strict=True))
    for ds in pipelines:
        seen = [
            (_which(w, reference), int(y))
            for waves, labels in ds.as_numpy_iterator()
            for w, y in zip(waves, labels, strict=True)
        ]
        assert all(label[f] == y for f, y in seen)
        epochs = len(seen) // len(tr)
        assert len(seen) == epochs * len(tr) and epochs in (1, 2)
        for e in range(epochs):
            assert sorted(f for f, _ in seen[e * len(tr) : (e + 1) * len(tr)]) == sorted(tr.filename)


def test_representative_waveforms(index):
    idx, root = index
    train = idx[idx.split == "train"]
    reps = inputs.representative_waveforms(train, root, AUDIO, n=5, seed=0)
    assert reps.shape == (5, 44100) and reps.dtype == np.float32
    # five different training clips, each exactly as soundfile decodes it, in index order
    reference = _decoded(train, root)
    picked = [_which(w, reference) for w in reps]
    assert len(set(picked)) == 5
    order = list(train.filename)
    assert [order.index(f) for f in picked] == sorted(order.index(f) for f in picked)
    np.testing.assert_array_equal(inputs.representative_waveforms(train, root, AUDIO, n=5, seed=0), reps)
    others = {_which(w, reference) for w in inputs.representative_waveforms(train, root, AUDIO, n=5, seed=1)}
    assert others != set(picked)  # another seed, other clips
    everything = inputs.representative_waveforms(train, root, AUDIO, n=100, seed=0)  # more than there are
    assert sorted(_which(w, reference) for w in everything) == sorted(order)
