"""The one RIFF/WAVE reader: header facts and sample ranges, standard library and NumPy only.

What it accepts (anything else is a :class:`WavError` saying what is wrong):

* a path (``str`` / ``os.PathLike``) or the whole file's ``bytes``;
* ``RIFF``/``WAVE`` files whose ``fmt `` chunk is ``WAVE_FORMAT_PCM`` (1), ``WAVE_FORMAT_IEEE_FLOAT``
  (3) or ``WAVE_FORMAT_EXTENSIBLE`` (0xFFFE) with the standard PCM or IEEE-float sub-format GUID;
* PCM 16, 24 and 32 bits, IEEE float 32 and 64 bits (float 64 is converted to float32), any
  number of channels and any sample rate;
* any other chunks (``LIST``, ``fact``, ``bext``, ``JUNK``, ``cue `` ...) before or after the
  ``data`` chunk; every chunk of odd size is followed by its pad byte, as RIFF requires;
* a ``data`` chunk whose size is not a multiple of the frame size: the whole frames are used.

Refused: empty files, non-RIFF files (including RF64), a missing ``fmt `` or ``data`` chunk, a
``data`` chunk announcing more bytes than the file holds (truncated), zero frames, 8-bit PCM,
A-law, mu-law, ADPCM, MP3-in-WAV and any other encoding (named in the message).

Scaling (identical to the tf.data decoder, ``pipeline.data.inputs.decode_wav``): PCM16 / 2**15,
PCM24 / 2**23 (the same as the left-aligned int32 / 2**31), PCM32 converted to float32 and then
/ 2**31, float as stored. Only the requested byte range is read (seek + read), so a long file is
never loaded whole.
"""

from __future__ import annotations

import io
import os
import struct
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

Source = str | os.PathLike | bytes

_PCM, _FLOAT, _EXTENSIBLE = 0x0001, 0x0003, 0xFFFE
# the last 14 bytes of KSDATAFORMAT_SUBTYPE_PCM / _IEEE_FLOAT; the first two bytes are the format tag
_GUID_TAIL = b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
_ENCODING_NAMES = {
    0x0002: "Microsoft ADPCM",
    0x0006: "A-law",
    0x0007: "mu-law",
    0x0011: "IMA ADPCM",
    0x0031: "GSM 6.10",
    0x0050: "MPEG",
    0x0055: "MPEG Layer 3 (MP3)",
    0x0092: "Dolby AC3",
}


class WavError(ValueError):
    """A WAV file that cannot be read; the message says what is wrong (without the path)."""


@dataclass(frozen=True)
class WavInfo:
    """Header facts of one WAV file.

    Attributes:
      sample_rate: frames per second (Hz).
      channels: samples per frame.
      bits: bits per sample (16, 24, 32 or 64).
      encoding: ``"pcm"`` (signed integers) or ``"float"`` (IEEE float).
      frames: whole frames in the ``data`` chunk (>= 1).
      data_offset: byte offset of the first frame in the file.
      block_align: bytes per frame (``channels * bits // 8``).
    """

    sample_rate: int
    channels: int
    bits: int
    encoding: str
    frames: int
    data_offset: int
    block_align: int

    @property
    def seconds(self) -> float:
        """Duration in seconds (``frames / sample_rate``)."""
        return self.frames / self.sample_rate


def _open(source: Source) -> tuple[BinaryIO, int]:
    """(binary file object, total size in bytes) for a path or a bytes object."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        return io.BytesIO(data), len(data)
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"source must be a path or bytes, got {type(source).__name__}")
    fh = open(source, "rb")
    return fh, os.fstat(fh.fileno()).st_size


def _encoding(tag: int, bits: int) -> str:
    if tag == _PCM:
        if bits not in (16, 24, 32):
            raise WavError(f"unsupported PCM bit depth {bits} (16, 24 or 32 supported)")
        return "pcm"
    if tag == _FLOAT:
        if bits not in (32, 64):
            raise WavError(f"unsupported float bit depth {bits} (32 or 64 supported)")
        return "float"
    name = _ENCODING_NAMES.get(tag, "unknown")
    raise WavError(f"unsupported WAV encoding {name} (format tag 0x{tag:04X}); PCM or IEEE float supported")


def _parse_fmt(body: bytes) -> tuple[int, int, int, int, int]:
    """(format tag, channels, rate, block_align, bits) from a ``fmt `` chunk body."""
    if len(body) < 16:
        raise WavError(f"invalid 'fmt ' chunk ({len(body)} bytes, at least 16 expected)")
    tag, channels, rate, _, block_align, bits = struct.unpack("<HHIIHH", body[:16])
    if tag == _EXTENSIBLE:
        if len(body) < 40:
            raise WavError(f"WAVE_FORMAT_EXTENSIBLE 'fmt ' chunk too short ({len(body)} bytes, 40 expected)")
        guid = body[24:40]
        if guid[2:] != _GUID_TAIL:
            raise WavError(f"unsupported WAVE_FORMAT_EXTENSIBLE sub-format {guid.hex()}")
        tag = struct.unpack("<H", guid[:2])[0]
    return tag, channels, rate, block_align, bits


def _parse(fh: BinaryIO, size: int) -> WavInfo:
    if size == 0:
        raise WavError("empty file")
    head = fh.read(12)
    if len(head) >= 4 and head[:4] == b"RF64":
        raise WavError("RF64 (WAV larger than 4 GB) is not supported")
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        raise WavError("not a RIFF/WAVE file (corrupt or wrong format)")
    fmt = None
    pos = 12
    while True:
        fh.seek(pos)
        chunk = fh.read(8)
        if len(chunk) < 8:
            raise WavError("truncated header: no 'fmt ' chunk" if fmt is None else "truncated header: no 'data' chunk")
        cid, csize = chunk[:4], struct.unpack("<I", chunk[4:])[0]
        if cid == b"fmt ":
            body = fh.read(csize)
            if len(body) < csize:
                raise WavError("truncated header: incomplete 'fmt ' chunk")
            fmt = _parse_fmt(body)
        elif cid == b"data":
            if fmt is None:
                raise WavError("'data' chunk before 'fmt ' chunk")
            data_offset = pos + 8
            break
        pos += 8 + csize + (csize & 1)  # odd-sized chunks are followed by one pad byte
    tag, channels, rate, block_align, bits = fmt
    encoding = _encoding(tag, bits)
    if channels < 1 or rate < 1 or block_align != channels * bits // 8:
        raise WavError(
            f"inconsistent header (channels={channels}, rate={rate}, block_align={block_align}, bits={bits})"
        )
    available = size - data_offset
    if csize > available or csize == 0xFFFFFFFF:
        raise WavError(f"truncated: header announces {csize} data bytes, file holds {available}")
    frames = csize // block_align
    if frames == 0:
        raise WavError("no audio samples")
    return WavInfo(int(rate), int(channels), int(bits), encoding, int(frames), int(data_offset), int(block_align))


def read_info(source: Source) -> WavInfo:
    """Parse a WAV header (no audio data read) and check that the file holds the frames it announces.

    Args:
      source: a path, or the whole WAV file as bytes.

    Returns:
      The :class:`WavInfo` of the file.

    Raises:
      WavError: saying what is wrong (empty, not RIFF/WAVE, truncated, unsupported encoding ...).
      FileNotFoundError, IsADirectoryError, PermissionError: passed through from ``open``.
    """
    fh, size = _open(source)
    with fh:
        return _parse(fh, size)


def _decode(raw: bytes, info: WavInfo) -> np.ndarray:
    """Little-endian sample bytes -> float32 ``[n, channels]`` scaled as documented above."""
    if info.encoding == "float":
        x = np.frombuffer(raw, "<f4" if info.bits == 32 else "<f8").astype(np.float32)
    elif info.bits == 16:
        x = np.frombuffer(raw, "<i2").astype(np.float32) * np.float32(2.0**-15)
    elif info.bits == 24:
        b = np.frombuffer(raw, np.uint8).reshape(-1, 3)
        wide = np.zeros((len(b), 4), np.uint8)
        wide[:, 1:] = b  # left-aligned in int32: sample * 2**8, as tensorflow-io returns it
        x = wide.view("<i4")[:, 0].astype(np.float32) * np.float32(2.0**-31)
    else:
        x = np.frombuffer(raw, "<i4").astype(np.float32) * np.float32(2.0**-31)
    return x.reshape(-1, info.channels)


def _range(info: WavInfo, start: int, count: int | None) -> tuple[int, int]:
    if isinstance(start, bool) or not isinstance(start, (int, np.integer)) or start < 0:
        raise ValueError(f"start must be an integer >= 0, got {start!r}")
    if count is not None and (isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 0):
        raise ValueError(f"count must be None or an integer >= 0, got {count!r}")
    start = min(int(start), info.frames)
    stop = info.frames if count is None else min(info.frames, start + int(count))
    return start, stop


def read_frames(source: Source, info: WavInfo | None = None, start: int = 0, count: int | None = None) -> np.ndarray:
    """Frames ``[start, start + count)`` (clipped to the file) as float32 ``[n, channels]`` in [-1, 1].

    Args:
      source: a path, or the whole WAV file as bytes.
      info: the file's :func:`read_info` result (read here when None).
      start: first frame (>= 0); beyond the end gives zero frames.
      count: number of frames (>= 0), None for all to the end.

    Returns:
      float32 ``[n, channels]``, ``n = min(count, frames - start)`` (0 when ``start >= frames``).
      Only those bytes are read from a file.

    Raises:
      WavError: the file is shorter than its header says (changed since ``info`` was read).
      ValueError: ``start`` or ``count`` negative or not an integer.
    """
    if info is None:
        info = read_info(source)
    start, stop = _range(info, start, count)
    nbytes = (stop - start) * info.block_align
    offset = info.data_offset + start * info.block_align
    if isinstance(source, (bytes, bytearray, memoryview)):
        raw = bytes(memoryview(source)[offset : offset + nbytes])
    else:
        with open(source, "rb") as fh:
            fh.seek(offset)
            raw = fh.read(nbytes)
    if len(raw) != nbytes:
        raise WavError(
            f"truncated: expected {nbytes} bytes of frames {start}..{stop} at offset {offset}, read {len(raw)}"
        )
    return _decode(raw, info)


def read_mono(source: Source, info: WavInfo | None = None, start: int = 0, count: int | None = None) -> np.ndarray:
    """Like :func:`read_frames`, downmixed to mono: float32 ``[n]``, the mean of the channels."""
    frames = read_frames(source, info, start, count)  # [n, channels]
    if frames.shape[1] == 1:
        return frames[:, 0].copy()
    return frames.mean(axis=1, dtype=np.float32)
