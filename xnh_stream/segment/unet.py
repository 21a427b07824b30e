"""A 3-D U-Net (MALA style: valid convolutions, a few downsamplings, transposed-convolution upsampling, skip
connections cropped to size) that predicts nearest-neighbour affinities, and the file format of a trained model.

Shapes: with valid convolutions the output is smaller than the input by the network's ``context`` on each
axis; :meth:`UNet3D.output_shape` and :meth:`UNet3D.valid_input_shape` give the exact sizes.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .data import NEAREST_OFFSETS

#: The model shipped with the package (trained on simulated XNH neural tissue; see its ``.json`` record).
SHIPPED_MODEL = Path(__file__).with_name("models") / "xnh_sim_affinities.pt"


@dataclass
class UNetConfig:
    """Architecture of :class:`UNet3D`.

    Attributes
    ----------
    num_fmaps : int
        Feature maps at the top level.
    fmap_inc_factor : int
        Multiplier of the feature maps per level down.
    downsample_factors : list of (int, int, int)
        One entry per downsampling (MALA: three).
    convs_per_level : int
        Valid 3x3x3 convolutions (each followed by ReLU) per level and side.
    offsets : list of (int, int, int)
        Affinity neighbourhood; one output channel per offset.
    lsd_channels : int
        Channels of a second head that predicts the local shape descriptors (:mod:`~.lsd`) during training
        (``train --lsd-weight``); 0: none. Inference reads the affinities only.
    """

    num_fmaps: int = 12
    fmap_inc_factor: int = 2
    downsample_factors: list = field(default_factory=lambda: [[2, 2, 2]] * 3)
    convs_per_level: int = 2
    offsets: list = field(default_factory=lambda: [list(o) for o in NEAREST_OFFSETS])
    lsd_channels: int = 0


def _conv_block(cin: int, cout: int, n: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(n):
        layers += [nn.Conv3d(cin if i == 0 else cout, cout, 3), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


def _crop_to(x: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    off = [(a - b) // 2 for a, b in zip(x.shape[-3:], shape[-3:])]
    return x[..., off[0]:off[0] + shape[-3], off[1]:off[1] + shape[-2], off[2]:off[2] + shape[-1]]


class UNet3D(nn.Module):
    """U-Net with valid convolutions; ``forward`` returns affinities in ``[0, 1]`` (sigmoid)."""

    def __init__(self, config: UNetConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or UNetConfig()
        n = len(cfg.downsample_factors)
        fm = [cfg.num_fmaps * cfg.fmap_inc_factor**i for i in range(n + 1)]
        self.down = nn.ModuleList([_conv_block(1 if i == 0 else fm[i - 1], fm[i], cfg.convs_per_level)
                                   for i in range(n)])
        self.pool = nn.ModuleList([nn.MaxPool3d(tuple(f)) for f in cfg.downsample_factors])
        self.bottom = _conv_block(fm[n - 1], fm[n], cfg.convs_per_level)
        self.upsample = nn.ModuleList([nn.ConvTranspose3d(fm[i + 1], fm[i], tuple(cfg.downsample_factors[i]),
                                                          stride=tuple(cfg.downsample_factors[i]))
                                       for i in range(n)])
        self.up = nn.ModuleList([_conv_block(2 * fm[i], fm[i], cfg.convs_per_level) for i in range(n)])
        self.head = nn.Conv3d(fm[0], len(cfg.offsets), 1)
        self.lsd_head = nn.Conv3d(fm[0], cfg.lsd_channels, 1) if cfg.lsd_channels else None

    def add_lsd_head(self, channels: int) -> None:
        """Give a network trained without it a (new, untrained) local-shape-descriptor head."""
        if self.lsd_head is None:
            self.config.lsd_channels = int(channels)
            self.lsd_head = nn.Conv3d(self.head.in_channels, channels, 1).to(self.head.weight.device)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The top level's feature maps, which the heads read."""
        skips = []
        for conv, pool in zip(self.down, self.pool):
            x = conv(x)
            skips.append(x)
            x = pool(x)
        x = self.bottom(x)
        for i in reversed(range(len(self.up))):
            x = self.upsample[i](x)
            x = self.up[i](torch.cat([_crop_to(skips[i], x.shape), x], dim=1))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Affinities in ``[0, 1]``."""
        return torch.sigmoid(self.head(self.features(x)))

    def forward_with_lsd(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Affinities and local shape descriptors (sigmoid), from one pass; needs the LSD head."""
        if self.lsd_head is None:
            raise ValueError("this network has no local-shape-descriptor head (UNetConfig.lsd_channels = 0)")
        f = self.features(x)
        return torch.sigmoid(self.head(f)), torch.sigmoid(self.lsd_head(f))

    # ------------------------------------------------------------------ shapes
    def _axis_output(self, s: int, ax: int) -> int | None:
        cfg, k = self.config, 2 * self.config.convs_per_level
        factors = [f[ax] for f in cfg.downsample_factors]
        for f in factors:
            s -= k
            if s <= 0 or s % f:
                return None
            s //= f
        s -= k
        if s <= 0:
            return None
        for f in reversed(factors):
            s = s * f - k
        return s if s > 0 else None

    def output_shape(self, input_shape: tuple[int, int, int]) -> tuple[int, int, int] | None:
        """Output shape for ``input_shape``, or None where the input does not fit the downsamplings."""
        out = [self._axis_output(int(s), ax) for ax, s in enumerate(input_shape)]
        return None if any(o is None for o in out) else tuple(out)  # type: ignore[return-value]

    def valid_input_shape(self, min_output: tuple[int, int, int]) -> tuple[int, int, int]:
        """Smallest valid input shape whose output covers ``min_output``."""
        shape = []
        for ax, m in enumerate(min_output):
            s = 1
            while (o := self._axis_output(s, ax)) is None or o < m:
                s += 1
            shape.append(s)
        return tuple(shape)  # type: ignore[return-value]

    @property
    def context(self) -> tuple[int, int, int]:
        """Voxels lost per axis (input minus output), the same for every valid input."""
        i = self.valid_input_shape((1, 1, 1))
        o = self.output_shape(i)
        return tuple(a - b for a, b in zip(i, o))  # type: ignore[return-value]


# ---------------------------------------------------------------------- model files
@dataclass
class AffinityModel:
    """A trained network with how to normalise its input and the record of its training."""

    net: UNet3D
    norm: dict = field(default_factory=lambda: {"method": "percentile", "low": 1.0, "high": 99.0})
    record: dict = field(default_factory=dict)

    @property
    def offsets(self) -> list[list[int]]:
        """Affinity offsets of the output channels."""
        return [list(o) for o in self.net.config.offsets]

    def save(self, path: str | Path) -> Path:
        """Write the weights (float32) and configuration to one torch file; the record also goes beside it
        as JSON (``path`` with suffix ``.json``) when it is not empty."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        record = json.loads(json.dumps(self.record, default=str))  # plain types only: loadable weights-only
        torch.save({"format": "xnh-affinity-model/1", "config": asdict(self.net.config), "norm": self.norm,
                    "state_dict": self.net.state_dict(), "record": record}, path)
        if self.record:
            path.with_suffix(".json").write_text(json.dumps(self.record, indent=1))
        return path

    @classmethod
    def load(cls, path: str | Path | None = None, device: str | torch.device = "cpu") -> AffinityModel:
        """Read a model file (the shipped model when ``path`` is None)."""
        path = Path(path) if path else SHIPPED_MODEL
        if not path.is_file():
            raise FileNotFoundError(f"{path}: model file not found")
        try:
            blob = torch.load(path, map_location=device, weights_only=True)
        except Exception as exc:  # noqa: BLE001 - reported with the file name
            raise ValueError(f"{path}: not a model file ({exc})") from exc
        if not isinstance(blob, dict) or blob.get("format") != "xnh-affinity-model/1":
            raise ValueError(f"{path}: not an xnh-stream affinity model (format field missing or unknown)")
        net = UNet3D(UNetConfig(**blob["config"]))
        net.load_state_dict(blob["state_dict"])
        net.to(device).eval()
        return cls(net, blob["norm"], blob.get("record", {}))


def normalise(raw: np.ndarray, norm: dict, sample: np.ndarray | None = None) -> tuple[float, float]:
    """Offset and scale that map ``raw`` to the network's input range: percentiles ``low``/``high`` to -1/1.

    ``sample`` (optional) is a subset of voxels to take the percentiles from (for volumes larger than memory).
    """
    if norm.get("method") != "percentile":
        raise ValueError(f"unknown input normalisation {norm.get('method')!r}")
    vals = np.asarray(raw if sample is None else sample, np.float64).ravel()
    lo, hi = np.percentile(vals, [norm["low"], norm["high"]])
    if not hi > lo:
        raise ValueError("image is constant: cannot normalise it for the network")
    return float((hi + lo) / 2), float((hi - lo) / 2)


#: Key of :attr:`~.data.LabelledVolume.meta` holding the input normalisation of the volume a block was cut
#: from (``{"offset", "scale", "method", "low", "high"}``, :func:`~.finetune.save_block`).
INPUT_NORM_KEY = "input_norm"


def volume_norm(raw: np.ndarray, meta: dict, norm: dict) -> tuple[float, float]:
    """Offset and scale of a labelled volume's input: those of the volume it was cut from when its ``meta``
    holds them (:data:`INPUT_NORM_KEY`, taken with the same percentiles as ``norm``), else :func:`normalise`
    of ``raw`` itself. A block inside the tissue has a narrower intensity range than the whole volume with its
    air and resin; normalised on its own, the network would see it at a different contrast than in the
    volume."""
    given = meta.get(INPUT_NORM_KEY) if meta else None
    if given and all(given.get(k) == norm.get(k) for k in ("method", "low", "high")):
        return float(given["offset"]), float(given["scale"])
    return normalise(raw, norm)
