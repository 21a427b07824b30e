"""One world frame for every output: the volume, its labels (every level), the neuroglancer precomputed layers
and the SWC skeletons of a scan with a stage position sit at the same place, read back with independent
readers (ome-zarr-models for validation, ome_zarr's reader for the transforms, tensorstore for precomputed,
the SWC text itself). Also what ``segment`` leaves: ``OUT/segmentation.json``, and nothing after a failure."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zarr

from xnh_stream.io.omezarr import create_volume, pyramid, pyramid_shapes

VOXEL = 100e-9
#: Tens of micrometres from the stage origin, not on the voxel grid (precomputed rounds to whole voxels).
ORIGIN = (12.34e-6, -56.78e-6, 90.1234e-6)
SHAPE = (128, 128, 160)
CUBE, CYLINDER = 7, 3


def _scene() -> tuple[np.ndarray, np.ndarray]:
    """Labels (a 16-voxel cube on the 2x grid, a cylinder along x) and an image of them."""
    labels = np.zeros(SHAPE, np.uint64)
    labels[48:64, 64:80, 32:48] = CUBE
    zz, yy = np.ogrid[:SHAPE[0], :SHAPE[1]]
    labels[(zz - 100) ** 2 + (yy - 30) ** 2 <= 25, 20:140] = CYLINDER  # axis at z 100, y 30; x 20-139
    image = np.where(labels == CUBE, 1.0, np.where(labels == CYLINDER, 0.5, 0.0)).astype(np.float32)
    return labels, image


def _world(index: np.ndarray, transforms: list[dict]) -> np.ndarray:
    """OME-NGFF scale then translation of an index ``z y x``."""
    out = np.asarray(index, dtype=np.float64)
    for t in transforms:
        out = out * np.asarray(t["scale"]) if t["type"] == "scale" else out + np.asarray(t["translation"])
    return out


def _centroid(mask: np.ndarray) -> np.ndarray:
    return np.argwhere(mask).mean(axis=0)


@pytest.fixture(scope="module")
def segmented(tmp_path_factory) -> Path:
    """A volume made as the chain makes it (create_volume with the stage origin), run through ``segment``
    with --swc and --precomputed; the network's labels replaced by the known scene."""
    from actors.cli import main
    from xnh_stream.segment import pipeline

    out = tmp_path_factory.mktemp("frames")
    labels, image = _scene()
    for arr, level in zip(create_volume(out / "volume.ome.zarr", SHAPE, VOXEL, origin_m=ORIGIN), pyramid(image)):
        arr[...] = level
    mp = pytest.MonkeyPatch()
    mp.setattr(pipeline, "segment_volume",
               lambda raw, *a, **k: pipeline.SegmentResult(labels.copy(), None, None, {"predict": 0.0}))
    try:
        assert main(["segment", str(out), "--out", str(out), "--swc", str(out / "swc"), "--swc-min-voxels", "50",
                     "--precomputed", str(out / "ng")]) == 0
    finally:
        mp.undo()
    return out


def test_every_group_validates_with_ome_zarr_models(segmented, tmp_path):
    """The image, its labels group and label image; and the standalone label image of a volume elsewhere,
    which carries that volume's transforms too."""
    pytest.importorskip("ome_zarr_models.v05")
    from ome_zarr_models.v05.image import Image
    from ome_zarr_models.v05.image_label import ImageLabel
    from ome_zarr_models.v05.labels import Labels

    from xnh_stream.io.omezarr import multiscale_levels
    from xnh_stream.segment.pipeline import write_segmentation

    root = segmented / "volume.ome.zarr"
    Image.from_zarr(zarr.open_group(str(root), mode="r"))
    Labels.from_zarr(zarr.open_group(str(root / "labels"), mode="r"))
    ImageLabel.from_zarr(zarr.open_group(str(root / "labels" / "segmentation"), mode="r"))
    standalone, _ = write_segmentation(tmp_path, _scene()[0], VOXEL, CUBE, image=root)
    assert standalone == tmp_path / "segmentation.ome.zarr"
    ImageLabel.from_zarr(zarr.open_group(str(standalone), mode="r"))
    assert multiscale_levels(standalone) == multiscale_levels(root)


def test_volume_labels_precomputed_and_swc_in_one_world_frame(segmented):
    """The cube's centre and the cylinder's axis at the same world place (within half a voxel) in the volume,
    every label level, both precomputed layers (every scale) and the SWC file."""
    ts = pytest.importorskip("tensorstore")
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    labels, _ = _scene()
    truth = np.asarray(ORIGIN) + VOXEL * _centroid(labels == CUBE)
    reader = Reader(parse_url(str(segmented / "volume.ome.zarr")))
    nodes = {tuple(type(s).__name__ for s in n.specs): n for n in reader()}
    image, seg = nodes[("Multiscales",)], nodes[("Label", "Multiscales")]
    image_t, seg_t = image.metadata["coordinateTransformations"], seg.metadata["coordinateTransformations"]
    assert len(image_t) == len(seg_t) == len(pyramid_shapes(SHAPE)) == 3
    assert seg_t == image_t  # the labels carry the image's transforms, level by level
    for level, transforms in enumerate(image_t):
        step = VOXEL * 2**level
        got = _world(_centroid(np.asarray(image.data[level]) > 0.9), transforms)
        np.testing.assert_allclose(got, truth, atol=VOXEL / 2, err_msg=f"volume level {level}")
        got = _world(_centroid(np.asarray(seg.data[level]) == CUBE), seg_t[level])
        np.testing.assert_allclose(got, truth, atol=step / 2, err_msg=f"labels level {level}")
        assert seg.data[level].shape == image.data[level].shape

    for layer, select in (("image", lambda a: a > 0.9), ("segmentation", lambda a: a == CUBE)):
        info = json.loads((segmented / "ng" / layer / "info").read_text())
        for level, scale in enumerate(info["scales"]):
            store = ts.open({"driver": "neuroglancer_precomputed", "scale_index": level,
                             "kvstore": {"driver": "file", "path": str(segmented / "ng" / layer) + "/"}}).result()
            lo = np.asarray(store.domain.inclusive_min[:3])  # x y z: the voxel_offset
            assert list(lo) == scale["voxel_offset"]
            res = np.asarray([u.multiplier for u in store.dimension_units[:3]])  # nm
            np.testing.assert_allclose(res, VOXEL * 1e9 * 2**level)
            data = np.asarray(store[..., 0].read().result())  # x y z
            centre_xyz_nm = (lo + _centroid(select(data)) + 0.5) * res  # neuroglancer: voxel i spans [i, i+1)
            np.testing.assert_allclose(centre_xyz_nm[::-1] * 1e-9, truth, atol=VOXEL * 2**level / 2,
                                       err_msg=f"precomputed {layer} scale {level}")

    swc = (segmented / "swc" / f"{CYLINDER}.swc").read_text()
    assert "# UNITS nm" in swc and "sample stage" in swc
    nodes_xyz = np.array([[float(v) for v in ln.split()[2:5]] for ln in swc.splitlines() if ln and ln[0] != "#"])
    # nodes sit on voxel centres of the label image (its level-0 transforms inverted) inside the cylinder
    scale = np.asarray(seg_t[0][0]["scale"])
    index = (nodes_xyz[:, ::-1] * 1e-9 - np.asarray(seg_t[0][1]["translation"])) / scale
    np.testing.assert_allclose(index, np.rint(index), atol=1e-3)
    assert np.all(np.asarray(seg.data[0])[tuple(np.rint(index).astype(int).T)] == CYLINDER)
    np.testing.assert_allclose(np.median(index[:, :2], axis=0), [100, 30], atol=1)  # on the axis (z, y)
    assert index[:, 2].max() - index[:, 2].min() > 60  # along x


def test_segment_writes_its_summary_with_the_frame(segmented):
    info = json.loads((segmented / "segmentation.json").read_text())
    assert info["segments"] == 2 and info["shape"] == list(SHAPE) and info["voxel_m"] == VOXEL
    np.testing.assert_allclose(info["origin_m"], ORIGIN)
    assert info["labels"] == "volume.ome.zarr/labels/segmentation" and "sample stage" in info["frame"]
    assert info["swc"]["files"] == 2 and info["swc"]["units"] == "nm"
    assert all(abs(r) <= 50 for r in info["precomputed"]["rounding_nm"])


def test_label_levels_have_the_image_shapes_for_odd_sizes():
    """The mode of each 2x2x2 block drops an odd last voxel as the image's block mean does (every second
    voxel kept one more), and keeps the most frequent id of each block."""
    labels = np.random.default_rng(0).integers(0, 3, (131, 130, 129)).astype(np.uint32)
    assert [lv.shape for lv in pyramid(labels, labels=True)] == pyramid_shapes(labels.shape)
    block = np.array([5, 2, 2, 9, 2, 9, 9, 9], np.uint32).reshape(2, 2, 2)
    assert pyramid(np.tile(block, (32, 32, 32)), labels=True)[1][0, 0, 0] == 9


def test_a_failed_segment_leaves_no_output_folder(tmp_path, capsys):
    from actors.cli import main

    out = tmp_path / "new" / "out"
    assert main(["segment", str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert "no such volume" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


def test_a_failed_segment_removes_what_it_created_and_nothing_else(tmp_path, monkeypatch):
    from actors.cli import main
    from xnh_stream.io import precomputed
    from xnh_stream.segment import pipeline

    labels, image = _scene()
    out = tmp_path / "out"
    for arr, level in zip(create_volume(out / "volume.ome.zarr", SHAPE, VOXEL, origin_m=ORIGIN), pyramid(image)):
        arr[...] = level
    (out / "report.json").write_text("{}")
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    monkeypatch.setattr(pipeline, "segment_volume",
                        lambda raw, *a, **k: pipeline.SegmentResult(labels.copy(), None, None, {}))

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk gone")

    monkeypatch.setattr(precomputed, "write_precomputed", broken)
    with pytest.raises(RuntimeError, match="disk gone"):
        main(["segment", str(out), "--out", str(out), "--precomputed", str(out / "ng")])
    after = sorted(p.relative_to(out) for p in out.rglob("*") if p.name != ".xnh.lock")
    assert after == before  # the label image, its group, the summary are gone; the volume and report stay
    monkeypatch.undo()
    monkeypatch.setattr(pipeline, "segment_volume",
                        lambda raw, *a, **k: pipeline.SegmentResult(labels.copy(), None, None, {}))
    assert main(["segment", str(out), "--out", str(out)]) == 0  # not refused as 'a segmentation exists'


def test_cloud_volume_and_navis_put_every_layer_at_the_same_world_place(segmented):
    """Issue 20, item 3, read back by the tools a neuroscientist overlays with: cloud-volume (the precomputed
    image and segmentation, every scale), navis (the SWC: one tree, nm) and ome_zarr's reader (volume and
    labels). The cube's centre and the cylinder's axis agree across all of them within half a voxel."""
    cloudvolume = pytest.importorskip("cloudvolume")
    navis = pytest.importorskip("navis")
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    labels, _ = _scene()
    truth = np.asarray(ORIGIN) + VOXEL * _centroid(labels == CUBE)  # z y x metres
    reader = Reader(parse_url(str(segmented / "volume.ome.zarr")))
    nodes = {tuple(type(s).__name__ for s in n.specs): n for n in reader()}
    image, seg = nodes[("Multiscales",)], nodes[("Label", "Multiscales")]
    places = {"volume": _world(_centroid(np.asarray(image.data[0]) > 0.9),
                               image.metadata["coordinateTransformations"][0]),
              "labels": _world(_centroid(np.asarray(seg.data[0]) == CUBE),
                               seg.metadata["coordinateTransformations"][0])}
    for layer, select in (("image", lambda a: a > 0.9), ("segmentation", lambda a: a == CUBE)):
        info = json.loads((segmented / "ng" / layer / "info").read_text())
        for mip in range(len(info["scales"])):
            cv = cloudvolume.CloudVolume(f"file://{segmented / 'ng' / layer}", mip=mip, progress=False,
                                         fill_missing=True)  # chunks all background are not written
            data = np.asarray(cv[:, :, :])[..., 0]  # x y z
            offset, res = np.asarray(cv.voxel_offset), np.asarray(cv.resolution)  # voxels, nm
            centre_nm = (offset + _centroid(select(data)) + 0.5) * res  # voxel i spans [i, i+1) * resolution
            places[f"{layer} mip {mip}"] = centre_nm[::-1] * 1e-9
            assert abs(places[f"{layer} mip {mip}"] - truth).max() <= VOXEL * 2**mip / 2, (layer, mip)
    for name in ("volume", "labels"):
        np.testing.assert_allclose(places[name], truth, atol=VOXEL / 2, err_msg=name)

    # navis reads the SWC: one tree, nodes on voxel centres of the label image (its transforms from ome_zarr's
    # reader, inverted) inside the cylinder, along its axis (kimimaro's path keeps within a voxel of it)
    neuron = navis.read_swc(str(segmented / "swc" / f"{CYLINDER}.swc"), precision=64)
    assert neuron.n_trees == 1 and neuron.n_nodes > 10
    zyx_m = neuron.nodes[["z", "y", "x"]].to_numpy(np.float64) * 1e-9
    scale, shift = (np.asarray(t["scale" if t["type"] == "scale" else "translation"])
                    for t in seg.metadata["coordinateTransformations"][0])
    index = (zyx_m - shift) / scale
    np.testing.assert_allclose(index, np.rint(index), atol=1e-3)  # the same frame to a thousandth of a voxel
    assert np.all(np.asarray(seg.data[0])[tuple(np.rint(index).astype(int).T)] == CYLINDER)
    np.testing.assert_allclose(np.median(index[:, :2], axis=0), [100, 30], atol=1.5)
    assert np.rint(index[:, 2]).min() >= 20 and np.rint(index[:, 2]).max() <= 139
