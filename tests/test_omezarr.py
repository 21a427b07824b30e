"""OME-Zarr volumes: the metadata outside tools read, and arrays too large for memory written chunk by chunk."""

from __future__ import annotations

import tracemalloc

import numpy as np
import zarr

from xnh_stream.io.omezarr import pyramid, read_volume, write_volume


def test_levels_and_scales_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    vol = rng.random((64, 96, 128), dtype=np.float32)
    path = write_volume(tmp_path / "v.ome.zarr", vol, 50e-9)
    g = zarr.open_group(str(path), mode="r")
    ms = (g.attrs.asdict().get("ome") or g.attrs.asdict())["multiscales"][0]
    assert [a["unit"] for a in ms["axes"]] == ["meter"] * 3 and len(ms["datasets"]) == 2
    s0, voxel = read_volume(path)
    s1, voxel1 = read_volume(path, level=1)
    np.testing.assert_array_equal(s0, vol)
    np.testing.assert_allclose(s1, vol.reshape(32, 2, 48, 2, 64, 2).mean(axis=(1, 3, 5)), rtol=1e-6)
    assert voxel == 50e-9 and voxel1 == 100e-9


def test_a_zarr_array_is_written_chunk_by_chunk_with_the_same_levels(tmp_path):
    """A labels volume on disk (as blockwise segmentation leaves it) is copied through dask: the levels equal
    the in-memory path's, and the writer never holds more than a few chunks (peak far below the volume)."""
    shape, chunks = (128, 256, 512), (32, 64, 64)  # 64 MiB; the peak depends on the chunks in flight, not on it
    src = zarr.open_array(str(tmp_path / "src.zarr"), mode="w", shape=shape, chunks=chunks, dtype="uint32")
    rng = np.random.default_rng(1)
    for z in range(0, shape[0], chunks[0]):  # fill slab by slab
        src[z:z + chunks[0]] = rng.integers(0, 1000, (chunks[0],) + shape[1:], dtype=np.uint32)
    nbytes = int(np.prod(shape)) * 4
    tracemalloc.start()
    path = write_volume(tmp_path / "seg.ome.zarr", src, 100e-9, labels=True, chunks=chunks)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"\nwriting a {nbytes / 2**20:.0f} MiB zarr labels volume: peak traced {peak / 2**20:.1f} MiB")
    assert peak < nbytes / 4
    whole = src[...]
    for level, expected in enumerate(pyramid(whole, labels=True)):
        got, voxel = read_volume(path, level)
        np.testing.assert_array_equal(got, expected)
        assert got.dtype == np.uint32 and voxel == 100e-9 * 2**level
