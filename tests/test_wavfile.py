"""The one WAV reader (pipeline.inference.asc_infer.wavfile): formats, RIFF chunk rules, errors, ranges, scaling."""

import struct

import numpy as np
import pytest
import soundfile as sf
import tensorflow as tf

from pipeline.data import inputs
from pipeline.data.synthetic.wav import write_wav24
from pipeline.inference.asc_infer import wavfile

RATE = 16000


def _noise(frames=4001, channels=1, seed=0):
    x = np.random.default_rng(seed).uniform(-0.9, 0.9, size=(frames, channels))
    return x[:, 0] if channels == 1 else x


def _write(path, subtype, channels=1, frames=4001, fmt="WAV"):
    sf.write(path, _noise(frames, channels), RATE, subtype=subtype, format=fmt)
    return path


def _chunk(cid: bytes, payload: bytes) -> bytes:
    """One RIFF chunk, with the pad byte an odd-sized payload needs."""
    return cid + struct.pack("<I", len(payload)) + payload + (b"\x00" if len(payload) % 2 else b"")


def _fix_riff_size(raw: bytes) -> bytes:
    return raw[:4] + struct.pack("<I", len(raw) - 8) + raw[8:]


def _expected_pcm(path) -> np.ndarray:
    """soundfile's left-aligned int32 samples, scaled as the tf.data decoder scales them."""
    ints, _ = sf.read(path, dtype="int32", always_2d=True)
    return ints.astype(np.float32) * np.float32(2.0**-31)


@pytest.mark.parametrize("subtype, bits", [("PCM_16", 16), ("PCM_24", 24), ("PCM_32", 32)])
@pytest.mark.parametrize("channels", [1, 2])
def test_pcm_values_and_header(tmp_path, subtype, bits, channels):
    path = _write(tmp_path / "x.wav", subtype, channels)
    info = wavfile.read_info(path)
    assert (info.sample_rate, info.channels, info.bits, info.encoding, info.frames) == (
        RATE,
        channels,
        bits,
        "pcm",
        4001,
    )
    assert info.block_align == channels * bits // 8 and info.seconds == pytest.approx(4001 / RATE)
    got = wavfile.read_frames(path)
    assert got.dtype == np.float32 and got.shape == (4001, channels)
    np.testing.assert_array_equal(got, _expected_pcm(path))
    # and within one quantisation step of what was written
    np.testing.assert_allclose(got, _noise(4001, channels).reshape(4001, channels), atol=2.0 ** (1 - bits))
    mono = wavfile.read_mono(path)
    assert mono.shape == (4001,) and mono.dtype == np.float32
    np.testing.assert_allclose(mono, got.mean(axis=1), atol=1e-7)


@pytest.mark.parametrize("subtype, code", [("PCM_16", 0), ("PCM_24", 1), ("PCM_32", 2), ("FLOAT", 3)])
def test_scaling_equals_the_tf_data_decoder(tmp_path, subtype, code):
    path = _write(tmp_path / "x.wav", subtype, channels=2)
    tf_frames = inputs.decode_wav(tf.io.read_file(str(path)), tf.constant(code)).numpy()
    np.testing.assert_array_equal(wavfile.read_frames(path), tf_frames)


def test_synthetic_writer_24_bit_equals_the_tf_data_decoder(tmp_path):
    y = np.sin(np.linspace(0, 300, 5000)) * 0.7
    write_wav24(tmp_path / "s.wav", y, 44100)
    tf_frames = inputs.decode_wav(tf.io.read_file(str(tmp_path / "s.wav")), tf.constant(1)).numpy()
    np.testing.assert_array_equal(wavfile.read_frames(tmp_path / "s.wav"), tf_frames)
    np.testing.assert_allclose(wavfile.read_mono(tmp_path / "s.wav"), y, atol=2.0**-23)


@pytest.mark.parametrize("subtype, bits", [("FLOAT", 32), ("DOUBLE", 64)])
def test_float(tmp_path, subtype, bits):
    path = _write(tmp_path / "f.wav", subtype, channels=2)
    info = wavfile.read_info(path)
    assert (info.encoding, info.bits, info.channels) == ("float", bits, 2)
    np.testing.assert_array_equal(wavfile.read_frames(path), _noise(4001, 2).astype(np.float32))


@pytest.mark.parametrize("subtype", ["PCM_16", "PCM_24", "PCM_32", "FLOAT"])
def test_extensible_reads_like_the_plain_file(tmp_path, subtype):
    plain = _write(tmp_path / "p.wav", subtype, channels=2)
    ext = _write(tmp_path / "e.wav", subtype, channels=2, fmt="WAVEX")
    assert struct.unpack("<H", ext.read_bytes()[20:22])[0] == 0xFFFE  # really WAVE_FORMAT_EXTENSIBLE
    a, b = wavfile.read_info(plain), wavfile.read_info(ext)
    assert (a.encoding, a.bits, a.frames) == (b.encoding, b.bits, b.frames)
    np.testing.assert_array_equal(wavfile.read_frames(ext), wavfile.read_frames(plain))


def test_extensible_with_an_unknown_sub_format_is_refused(tmp_path):
    raw = bytearray(_write(tmp_path / "e.wav", "PCM_16", fmt="WAVEX").read_bytes())
    raw[12 + 8 + 24 + 4] ^= 0xFF  # a byte of the GUID's standard tail
    with pytest.raises(wavfile.WavError, match="sub-format"):
        wavfile.read_info(bytes(raw))


def _split_at_data(raw: bytes) -> tuple[bytes, bytes]:
    """(everything before the data chunk, the data chunk and what follows)."""
    at = wavfile.read_info(raw).data_offset - 8
    return raw[:at], raw[at:]


def test_odd_sized_chunk_before_data_reads_the_same_samples(tmp_path):
    clean = _write(tmp_path / "c.wav", "PCM_24", channels=2).read_bytes()
    head, data = _split_at_data(clean)
    odd = _fix_riff_size(head + _chunk(b"JUNK", b"abc") + _chunk(b"bext", b"x" * 5) + data)
    assert len(odd) == len(clean) + 8 + 4 + 8 + 6  # 3 bytes + pad, 5 bytes + pad
    (tmp_path / "odd.wav").write_bytes(odd)
    a, b = wavfile.read_info(clean), wavfile.read_info(tmp_path / "odd.wav")
    assert b.frames == a.frames and b.data_offset == a.data_offset + 26
    np.testing.assert_array_equal(wavfile.read_frames(tmp_path / "odd.wav"), wavfile.read_frames(clean))


def test_list_chunk_after_data_and_partial_last_frame(tmp_path):
    clean = _write(tmp_path / "c.wav", "PCM_16", channels=2).read_bytes()
    with_list = _fix_riff_size(clean + _chunk(b"LIST", b"INFOISFT" + struct.pack("<I", 5) + b"test\x00"))
    info = wavfile.read_info(with_list)
    assert info.frames == 4001
    np.testing.assert_array_equal(wavfile.read_frames(with_list), wavfile.read_frames(clean))
    # a data size that is not a multiple of the 4-byte frame: the whole frames are used
    head, data = _split_at_data(clean)
    size = struct.unpack("<I", data[4:8])[0]
    ragged = head + b"data" + struct.pack("<I", size - 3) + data[8:]
    assert wavfile.read_info(ragged).frames == 4000
    np.testing.assert_array_equal(wavfile.read_frames(ragged), wavfile.read_frames(clean)[:4000])


@pytest.mark.parametrize(
    "case, error, match",
    [
        ("empty", wavfile.WavError, "empty file"),
        ("random", wavfile.WavError, "not a RIFF/WAVE file"),
        ("rf64", wavfile.WavError, "RF64"),
        ("short_header", wavfile.WavError, "truncated header"),
        ("truncated_data", wavfile.WavError, "truncated: header announces"),
        ("no_frames", wavfile.WavError, "no audio samples"),
        ("data_before_fmt", wavfile.WavError, "'data' chunk before 'fmt '"),
        ("8bit", wavfile.WavError, "unsupported PCM bit depth 8"),
        ("alaw", wavfile.WavError, "A-law"),
        ("directory", IsADirectoryError, "bad.wav"),
        ("missing", FileNotFoundError, "bad.wav"),
    ],
)
def test_bad_files_say_what_is_wrong(tmp_path, case, error, match):
    path = tmp_path / "bad.wav"
    good = _write(tmp_path / "good.wav", "PCM_16").read_bytes()
    if case == "empty":
        path.write_bytes(b"")
    elif case == "random":
        path.write_bytes(np.random.default_rng(0).bytes(3000))
    elif case == "rf64":
        path.write_bytes(b"RF64" + good[4:])
    elif case == "short_header":
        path.write_bytes(good[:30])
    elif case == "truncated_data":
        path.write_bytes(good[: len(good) // 2])
    elif case == "no_frames":
        sf.write(path, np.zeros(0), RATE, subtype="PCM_16")
    elif case == "data_before_fmt":
        path.write_bytes(_fix_riff_size(good[:12] + _chunk(b"data", b"\x00\x00") + good[12:]))
    elif case == "8bit":
        sf.write(path, _noise(), RATE, subtype="PCM_U8")
    elif case == "alaw":
        sf.write(path, _noise(), RATE, subtype="ALAW")
    elif case == "directory":
        path.mkdir()
    with pytest.raises(error, match=match) as caught:
        wavfile.read_info(path)
    if error is wavfile.WavError:
        assert str(path) not in str(caught.value)  # callers add the path


def test_bytes_input_equals_path_input(tmp_path):
    path = _write(tmp_path / "x.wav", "PCM_24", channels=2)
    raw = path.read_bytes()
    assert wavfile.read_info(raw) == wavfile.read_info(path)
    np.testing.assert_array_equal(
        wavfile.read_frames(raw, start=7, count=100), wavfile.read_frames(path, start=7, count=100)
    )
    np.testing.assert_array_equal(wavfile.read_mono(raw), wavfile.read_mono(path))


@pytest.mark.parametrize(
    "start, count", [(0, None), (0, 1), (1000, 17), (3990, 50), (4001, 5), (9000, None), (4000, None), (5, 0)]
)
def test_frame_ranges_equal_a_full_read_sliced(tmp_path, start, count):
    path = _write(tmp_path / "x.wav", "PCM_32", channels=2)
    info = wavfile.read_info(path)
    full = wavfile.read_frames(path)
    stop = None if count is None else start + count
    got = wavfile.read_frames(path, info, start=start, count=count)
    assert got.shape[1] == 2
    np.testing.assert_array_equal(got, full[start:stop])
    np.testing.assert_array_equal(wavfile.read_mono(path, info, start, count), full[start:stop].mean(axis=1))


def test_bad_range_arguments_are_named(tmp_path):
    path = _write(tmp_path / "x.wav", "PCM_16")
    with pytest.raises(ValueError, match="start must be an integer >= 0, got -1"):
        wavfile.read_frames(path, start=-1)
    with pytest.raises(ValueError, match="count must be None or an integer >= 0, got 2.5"):
        wavfile.read_frames(path, count=2.5)


def test_file_shortened_after_the_header_was_read(tmp_path):
    path = _write(tmp_path / "x.wav", "PCM_16")
    info = wavfile.read_info(path)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(wavfile.WavError, match="truncated"):
        wavfile.read_frames(path, info)


@pytest.mark.parametrize(
    "case", ["odd_chunk_before_data", "odd_data_with_pad", "list_after_odd_data", "extensible", "ragged_data"]
)
def test_tf_data_decodes_what_the_reader_reads(tmp_path, case):
    # tensorflow-io 0.37.1 alone decodes the first case to 0 frames and fails on the next two
    # ("EOF reached"): pipeline.data.inputs.canonical_wav rewrites the bytes before it decodes them.
    odd = _write(tmp_path / "c.wav", "PCM_24", frames=4001).read_bytes()  # 12003 data bytes + pad byte
    head, data = _split_at_data(odd)
    raw = {
        "odd_chunk_before_data": lambda: _fix_riff_size(head + _chunk(b"JUNK", b"abc") + data),
        "odd_data_with_pad": lambda: odd,
        "list_after_odd_data": lambda: _fix_riff_size(odd + _chunk(b"LIST", b"INFOx")),
        "extensible": lambda: _write(tmp_path / "e.wav", "PCM_24", 2, 4001, fmt="WAVEX").read_bytes(),
        "ragged_data": lambda: head + b"data" + struct.pack("<I", 12002) + data[8:],
    }[case]()
    path = tmp_path / f"{case}.wav"
    path.write_bytes(raw)
    expected = wavfile.read_frames(path)
    assert len(expected) == (4000 if case == "ragged_data" else 4001)
    got = inputs.decode_wav(tf.io.read_file(str(path)), tf.constant(1)).numpy()
    np.testing.assert_array_equal(got, expected)


def test_load_clip_checks_the_decoded_length_against_the_header(tmp_path):
    path = _write(tmp_path / "c.wav", "PCM_16", frames=4000)

    def load(frames):
        return inputs.load_clip(
            tf.constant(str(path)),
            tf.constant(0),
            tf.constant(RATE, tf.int64),
            target_rate=RATE,
            clip_samples=RATE,
            frames=tf.constant(frames, tf.int64),
        ).numpy()

    np.testing.assert_array_equal(load(4000)[:4000], wavfile.read_mono(path))
    with pytest.raises(tf.errors.InvalidArgumentError, match="(?s)decoded.*c.wav.*header announces"):
        load(4001)


def test_prepare_header_check_uses_the_reader_and_refuses_what_tf_data_cannot_decode(tmp_path):
    from pipeline.data import tau as data

    odd = _write(tmp_path / "c.wav", "PCM_24", frames=4001).read_bytes()
    head, body = _split_at_data(odd)
    (tmp_path / "odd.wav").write_bytes(_fix_riff_size(head + _chunk(b"JUNK", b"abc") + body))
    assert data.read_wav_header(tmp_path / "odd.wav") == wavfile.read_info(tmp_path / "odd.wav")
    _write(tmp_path / "d.wav", "DOUBLE")
    assert wavfile.read_info(tmp_path / "d.wav").bits == 64  # the prediction reader reads it
    with pytest.raises(ValueError, match="unsupported float bit depth 64 for training"):
        data.read_wav_header(tmp_path / "d.wav")
