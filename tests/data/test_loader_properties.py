"""Property-based tests of the dataset file parsers: any bytes give a well-formed array or one DatasetFileError."""

import math

import numpy as np
from hypothesis import example, given, settings
from hypothesis import strategies as st

from dpdiffusion.data.cifar10 import RECORD_BYTES, parse_batch
from dpdiffusion.data.download import DatasetFileError
from dpdiffusion.data.mnist import parse_idx


def idx_like():
    """Bytes that often start like an IDX file: the magic, a small ndim, small sizes, then some data."""
    header = st.tuples(st.integers(0, 4), st.lists(st.integers(0, 6), max_size=4))
    return header.flatmap(lambda h: st.binary(max_size=80).map(
        lambda data: b"\x00\x00\x08" + bytes([h[0]]) + b"".join(s.to_bytes(4, "big") for s in h[1][:h[0]]) + data))


@settings(max_examples=300, deadline=None)
@given(content=st.one_of(st.binary(max_size=64), idx_like()))
@example(content=b"\x00\x00\x08\x04\x00\x00\x00\x00\x00\x00\x00\x03@T\x00\x00\xa9\xcc\x00\x00")  # 0 x 3 x huge x ?
def test_idx_parser_returns_a_consistent_array_or_refuses(content):
    try:
        array = parse_idx(content, "file")
    except DatasetFileError as error:
        assert "file" in str(error)
        return
    ndim = content[3]
    shape = tuple(int.from_bytes(content[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    assert array.dtype == np.uint8 and array.shape == shape
    assert len(content) == 4 + 4 * ndim + math.prod(shape)


def test_idx_parser_refuses_a_header_whose_sizes_overflow_int64():
    sizes = b"".join((2**32 - 1).to_bytes(4, "big") for _ in range(3))
    try:
        parse_idx(b"\x00\x00\x08\x03" + sizes + b"\x00", "file")
    except DatasetFileError:
        return
    raise AssertionError("a crafted header was accepted")


@settings(max_examples=100, deadline=None)
@given(records=st.integers(1, 3), data=st.data())
def test_cifar_parser_returns_images_and_labels_or_refuses(records, data):
    content = data.draw(st.binary(min_size=0, max_size=records * RECORD_BYTES + 3))
    try:
        images, labels = parse_batch(content, "batch", records=records)
    except DatasetFileError:
        return
    assert len(content) == records * RECORD_BYTES
    assert images.shape[0] == labels.shape[0] == records and labels.max() < 10
