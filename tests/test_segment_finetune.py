"""Fine-tuning an affinity model on a few labelled blocks (issue 19, item 3): the loss on the blocks falls and
the weights change, the record holds the held-out scores before and after, bad blocks are refused naming their
file, the block's input normalisation is its volume's, and the command end to end (``finetune`` then
``segment --model``). Tiny networks stand in for the shipped model, so that each test takes seconds."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch

from xnh_stream.segment.data import LabelledVolume, LabelledVolumeError, affinities_from_labels, load_labelled
from xnh_stream.segment.finetune import (
    MIN_BLOCK_EDGE,
    FinetuneConfig,
    block_loss,
    finetune,
    output_patch,
    save_block,
)
from xnh_stream.segment.unet import AffinityModel, UNet3D, UNetConfig, normalise, volume_norm

from .test_segment_post import cells


def scan(shape: tuple[int, int, int] = (32, 80, 80), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """An image whose cell borders are dark (with noise), and its labels."""
    lab = cells(shape, int(np.prod(shape) / 1500), seed)
    border = affinities_from_labels(lab).min(axis=0) < 1
    raw = 1.0 - 0.8 * border + np.random.default_rng(seed).normal(0, 0.05, shape)
    return raw.astype(np.float32), lab


def blocks_of(tmp_path, edge: int = 24) -> list:
    """Three disjoint ``edge``^3 blocks of one image, written with :func:`save_block`."""
    raw, lab = scan()
    corners = [(4, 4, 4), (4, 4, 40), (4, 40, 4)]
    return [save_block(tmp_path / f"b{k}.h5", raw, lab[c[0]:c[0] + edge, c[1]:c[1] + edge, c[2]:c[2] + edge], c)
            for k, c in enumerate(corners)]


def tiny_model(path=None) -> AffinityModel:
    """An untrained small network with the shipped architecture's context (44 voxels) and a record."""
    torch.manual_seed(0)
    model = AffinityModel(UNet3D(UNetConfig(num_fmaps=3, convs_per_level=1)),
                          record={"iterations": 0, "postprocess": {"threshold": 0.5}})
    if path is not None:
        model.save(path)
    return model


def test_finetune_lowers_the_loss_changes_the_weights_and_records_scores(tmp_path):
    files = blocks_of(tmp_path)
    train_blocks, held_out = [load_labelled(f) for f in files[:2]], [load_labelled(files[2])]
    base = tiny_model()
    weights = {k: v.clone() for k, v in base.net.state_dict().items()}
    cfg = FinetuneConfig(iterations=40, lr=3e-3, device="cpu", shading=0.0)
    model = finetune(train_blocks, held_out, base, "tiny.pt", cfg, out=tmp_path / "ft.pt", progress=False)

    ft = model.record["finetune"]
    assert ft["loss_after"] < 0.9 * ft["loss_before"]
    assert ft["loss_before"] == pytest.approx(block_loss(base, train_blocks, "cpu"))
    assert any(not torch.equal(v, weights[k]) for k, v in model.net.state_dict().items())
    assert all(torch.equal(v, weights[k]) for k, v in base.net.state_dict().items())  # the base is untouched
    assert model.net.config == base.net.config and model.norm == base.norm
    assert ft["from"] == "tiny.pt" and ft["iterations"] == 40 and ft["cpu_seconds"] > 0
    assert ft["config"]["output_shape"] == [18, 18, 18]  # the largest valid output inside a 24^3 block
    for key in ("before", "before_retuned", "after"):
        assert [s["source"] for s in ft[key]] == [str(files[2])]
        assert 0 <= ft[key][0]["adapted_rand"] <= 1
    # the untrained base merges the held-out block's cells; 40 steps learn the dark borders (0.89 -> 0.13)
    assert ft["after"][0]["adapted_rand"] < ft["before"][0]["adapted_rand"] - 0.3
    assert ft["postprocess_before"]["threshold"] == 0.5  # the base model's own parameters
    assert set(ft["normalised_as"].values()) == {"its volume"}
    assert model.record["tuned_on"] == [str(f) for f in files[:2]]  # tuned on the training blocks only
    assert model.record["validation"] == ft["after"] and model.record["iterations"] == 40
    saved = AffinityModel.load(tmp_path / "ft.pt")
    assert saved.record["finetune"]["after"] == ft["after"]
    assert json.loads((tmp_path / "ft.json").read_text())["finetune"]["loss_after"] == ft["loss_after"]


def test_a_block_is_normalised_as_its_volume(tmp_path):
    """A block inside the tissue spans a narrower range than its volume with air around the sample: it keeps
    the volume's normalisation, which training and tuning then use."""
    raw, lab = scan()
    raw[:, :, :8] = 0.0  # air
    path = save_block(tmp_path / "b.h5", raw, lab[4:28, 4:28, 40:64], (4, 4, 40))
    block = load_labelled(path)
    norm = AffinityModel(UNet3D(UNetConfig(num_fmaps=2, convs_per_level=1))).norm
    assert volume_norm(block.raw, block.meta, norm) == pytest.approx(normalise(raw, norm))
    assert volume_norm(block.raw, block.meta, norm) != pytest.approx(normalise(block.raw, norm))
    assert volume_norm(block.raw, {}, norm) == pytest.approx(normalise(block.raw, norm))
    with pytest.raises(ValueError, match="inside the volume"):
        save_block(tmp_path / "c.h5", raw, lab[:24, :24, :24], (20, 0, 0))


def test_bad_blocks_are_refused_naming_the_file(tmp_path):
    files = blocks_of(tmp_path)
    good = load_labelled(files[0])
    net = tiny_model().net
    small = LabelledVolume(good.raw[:16], good.labels[:16], good.mask[:16], source="small.h5")
    with pytest.raises(LabelledVolumeError, match=rf"small.h5: block 16 x 24 x 24 smaller than fine-tuning needs: "
                                                  rf"at least {MIN_BLOCK_EDGE}"):
        finetune([good, small], [], tiny_model(), cfg=FinetuneConfig(iterations=1, device="cpu"), progress=False)
    blank = LabelledVolume(good.raw, np.zeros_like(good.labels), good.mask, source="blank.h5")
    with pytest.raises(LabelledVolumeError, match="blank.h5: no labelled voxel"):
        finetune([good], [blank], tiny_model(), cfg=FinetuneConfig(iterations=1, device="cpu"), progress=False)
    with pytest.raises(LabelledVolumeError, match=r"b0.h5: block 24 x 24 x 24 smaller than the output patch "
                                                  r"34 x 34 x 34"):
        output_patch(net, [good], (32, 32, 32))
    with h5py.File(tmp_path / "shape.h5", "w") as f:
        f["raw"] = good.raw
        f["labels"] = good.labels[:, :, :20]
    with pytest.raises(LabelledVolumeError, match=r"shape.h5: labels shape \(24, 24, 20\) differs from image"):
        load_labelled(tmp_path / "shape.h5")


def test_finetune_command_end_to_end_then_segment_uses_the_model(tmp_path, capsys):
    from actors.cli import main
    from xnh_stream.io.omezarr import write_volume

    files = blocks_of(tmp_path)
    base = tmp_path / "tiny.pt"
    tiny_model(base)
    out = tmp_path / "ft.pt"
    assert main(["finetune", str(files[0]), str(files[1]), "--validate", str(files[2]), "--out", str(out),
                 "--from", str(base), "--iterations", "3", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert f"fine-tuned from {base}: 3 iterations on 2 block(s)" in printed
    assert f"held-out {files[2]}: adapted Rand" in printed and "after" in printed
    rec = AffinityModel.load(out).record
    assert rec["finetune"]["blocks"] == [str(f) for f in files[:2]] and len(rec["finetune"]["after"]) == 1
    assert rec["command"].startswith("xnh-stream finetune")

    raw, _ = scan((32, 48, 48), seed=3)
    write_volume(tmp_path / "vol.ome.zarr", raw, 100e-9)
    assert main(["segment", str(tmp_path / "vol.ome.zarr"), "--out", str(tmp_path / "seg"), "--model", str(out),
                 "--device", "cpu"]) == 0
    summary = json.loads((tmp_path / "seg" / "segmentation.json").read_text())
    assert summary["model"] == str(out)
    assert summary["params"]["threshold"] == rec["postprocess"]["threshold"]
    assert summary["params"]["fragment_method"] == rec["postprocess"]["fragment_method"]

    # bad input: a missing block, labels of another shape, a block too small, a missing model, each named
    with h5py.File(tmp_path / "shape.h5", "w") as f:
        f["raw"] = raw[:24, :24, :24]
        f["labels"] = np.ones((24, 24, 20), np.uint32)
    with h5py.File(tmp_path / "small.h5", "w") as f:
        f["raw"] = raw[:16, :24, :24]
        f["labels"] = np.ones((16, 24, 24), np.uint32)
    for bad, message in ((tmp_path / "nope.h5", "nope.h5: no such file"),
                         (tmp_path / "shape.h5", "shape.h5: labels shape (24, 24, 20) differs"),
                         (tmp_path / "small.h5", "small.h5: block 16 x 24 x 24 smaller than fine-tuning needs")):
        capsys.readouterr()
        assert main(["finetune", str(files[0]), str(bad), "--out", str(tmp_path / "x.pt"), "--from", str(base),
                     "--iterations", "1", "--device", "cpu"]) == 2
        assert message in capsys.readouterr().err
    assert main(["finetune", str(files[0]), "--out", str(tmp_path / "x.pt"), "--from", str(tmp_path / "none.pt"),
                 "--iterations", "1", "--device", "cpu"]) == 2
    assert "none.pt: model file not found" in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()
