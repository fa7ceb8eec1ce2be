"""Multipart bodies spilled as they stream: parts end to end (no padding), a part limit, the free-space watermark."""
from __future__ import annotations

import asyncio
import io
import shutil

import numpy as np
import pytest
from pydicom import dcmread

from serving.http.related_parts import SpillLimit, ViewReader, spill
from training.synthetic.dicom import make_dx_dataset

BOUNDARY = "b"


async def _chunks(body: bytes, size: int = 65536):
    for start in range(0, len(body), size):
        yield body[start:start + size]


def _body(*payloads: bytes) -> bytes:
    return b"".join(b"--b\r\n\r\n" + p + b"\r\n" for p in payloads) + b"--b--\r\n"


def _spill(body: bytes, folder, **limits):
    return asyncio.run(spill(_chunks(body), BOUNDARY, folder, **limits))


def test_tiny_parts_take_their_own_bytes_only(tmp_path):
    n = 20_000
    with _spill(_body(*[bytes([i % 251]) for i in range(n)]), tmp_path) as parts:
        assert len(parts) == n
        assert parts.spilled_bytes == n  # was one 4 KiB page per part (300,000 parts: 2.3 GiB)
        for i in (0, 1, 4095, 4096, n - 1):
            with parts.payload(parts.parts[i]) as view:
                assert bytes(view) == bytes([i % 251])


def test_a_part_after_an_unaligned_one_reads_as_a_dicom_file(tmp_path):
    ds = make_dx_dataset((np.arange(64 * 64) % 4096).astype(np.uint16).reshape(64, 64))
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    data = buffer.getvalue()
    with _spill(_body(b"x" * 4097, data, b"y"), tmp_path) as parts:
        assert parts.spilled_bytes == 4097 + len(data) + 1
        with parts.payload(parts.parts[1]) as view:
            assert bytes(view) == data
            assert dcmread(ViewReader(view)).SOPInstanceUID == ds.SOPInstanceUID


def test_a_body_over_the_part_limit_stops_at_the_next_part(tmp_path):
    with _spill(_body(*[b"x"] * 100), tmp_path, max_parts=100) as parts:
        assert len(parts) == 100
    with pytest.raises(SpillLimit, match="more than 100 parts"):
        _spill(_body(*[b"x"] * 101), tmp_path, max_parts=100)
    assert list(tmp_path.iterdir()) == []  # the anonymous file is gone


def test_a_body_is_refused_before_it_takes_the_spools_last_free_space(tmp_path):
    free = shutil.disk_usage(tmp_path).free
    with pytest.raises(SpillLimit, match="min_free_bytes"):
        _spill(_body(b"x" * 1000), tmp_path, min_free_bytes=free + 1)
    with _spill(_body(b"x" * 1000), tmp_path, min_free_bytes=1) as parts:
        assert parts.spilled_bytes == 1000
