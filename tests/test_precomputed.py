"""Neuroglancer precomputed export: the format read back by hand (info and raw chunk files, as neuroglancer
reads them) and through tensorstore, for images and compressed segmentation labels."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr

from xnh_stream.io.omezarr import pyramid
from xnh_stream.io.precomputed import read_precomputed, write_precomputed


def test_image_chunks_decode_by_hand(tmp_path):
    rng = np.random.default_rng(0)
    img = rng.random((40, 70, 90), dtype=np.float32)  # z y x, none a multiple of the chunk
    path = write_precomputed(tmp_path / "image", img, 50e-9, chunk=(16, 32, 32))
    info = json.loads((path / "info").read_text())
    assert info["type"] == "image" and info["data_type"] == "float32" and info["num_channels"] == 1
    s0 = info["scales"][0]
    assert s0["size"] == [90, 70, 40] and s0["resolution"] == [50.0, 50.0, 50.0]
    assert s0["chunk_sizes"] == [[32, 32, 16]] and s0["encoding"] == "raw"
    # One edge chunk, file named x0-x1_y0-y1_z0-z1, little-endian, x fastest (neuroglancer's layout).
    raw = (path / s0["key"] / "64-90_64-70_32-40").read_bytes()
    chunk = np.frombuffer(raw, "<f4").reshape(8, 6, 26)  # z y x in C order = x y z in Fortran order
    np.testing.assert_array_equal(chunk, img[32:40, 64:70, 64:90])
    np.testing.assert_array_equal(read_precomputed(path), img)


def test_labels_from_zarr_all_scales(tmp_path):
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 50, (64, 96, 80)).astype(np.uint32)
    src = zarr.open_array(str(tmp_path / "l.zarr"), mode="w", shape=labels.shape, chunks=(32, 32, 32),
                          dtype="uint32")
    src[...] = labels
    path = write_precomputed(tmp_path / "seg", src, 100e-9, labels=True, chunk=(32, 32, 32), block_chunks=1)
    info = json.loads((path / "info").read_text())
    assert info["type"] == "segmentation" and info["data_type"] == "uint32"
    assert [s["encoding"] for s in info["scales"]] == ["compressed_segmentation"] * 2
    assert [s["resolution"][0] for s in info["scales"]] == [100.0, 200.0]
    for level, expected in enumerate(pyramid(labels, labels=True)):
        np.testing.assert_array_equal(read_precomputed(path, level), expected)


def test_bad_input_is_refused(tmp_path):
    with pytest.raises(ValueError, match="uint32 or uint64"):
        write_precomputed(tmp_path / "a", np.zeros((8, 8, 8), np.float32), 1e-7, labels=True)
    with pytest.raises(ValueError, match="3-D"):
        write_precomputed(tmp_path / "b", np.zeros((8, 8), np.float32), 1e-7)
    with pytest.raises(ValueError, match="labels only"):
        write_precomputed(tmp_path / "c", np.zeros((8, 8, 8), np.float32), 1e-7, encoding="compressed_segmentation")
