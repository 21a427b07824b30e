"""After :func:`compile_kernels` has run once, the stream's steps compile nothing: they load every kernel from
numba's cache (on a fresh install each actor compiled them at once, stalling the first frames for 10-20 s)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# A second process, another size and batch, frames read-only as they come out of Ray's object store, the
# slices fed unfiltered projections: it reports the kernels it ran and those it had to compile.
STEPS = r"""
import json
import numpy as np
from xnh_stream.config import ProcessConfig
from xnh_stream.chain.accumulate import ProgressiveVolume
from xnh_stream.chain.steps import AngleProcessor
from xnh_stream.chain.warmup import _tiny_geometry
from xnh_stream.physics import _numba_kernels as K
from xnh_stream.physics.fsc import fourier_shell_correlation
from xnh_stream.physics.slices import OrthoSlices

n = 72
rng = np.random.default_rng(1)
frames = {k: (1 + 0.02 * rng.standard_normal((n, n))).astype(np.float32) for k in range(4)}
for f in frames.values():
    f.flags.writeable = False
proc = AngleProcessor(_tiny_geometry(), (n, n), 300.0, ProcessConfig())
vol = ProgressiveVolume(n, n, cor=n / 2 - 0.3, batch=8)
slices = OrthoSlices(n, n, cor=n / 2 - 0.3)
for i in range(10):
    theta = 0.3 * i
    preview = proc.preview(i % 4, frames[i % 4], 18.0 * i, (0.1 * i, -0.2))
    final = proc.ctf(frames, 18.0 * i)
    vol.add(i, theta, preview, final=False)
    vol.add(i, theta, final, final=True)
    slices.add(final, theta)
slices.slices()
a, b = vol.half_volumes()
fourier_shell_correlation(np.asarray(a), np.asarray(b))
kernels = {name: getattr(K, name) for name in dir(K) if hasattr(getattr(K, name), "stats")}
print(json.dumps({name: [sum(d.stats.cache_hits.values()), sum(d.stats.cache_misses.values())]
                  for name, d in kernels.items()}))
"""


def _python(code: str, cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache)}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.slow
def test_after_the_warm_up_the_steps_compile_nothing(tmp_path):
    cache = tmp_path / "numba-cache"
    warm = _python("from xnh_stream.chain.warmup import compile_kernels\n"
                   "print(compile_kernels() > 0, compile_kernels())", cache)
    assert warm.returncode == 0, warm.stderr[-3000:]
    assert warm.stdout.split() == ["True", "0.0"]  # it ran, then once per process
    steps = _python(STEPS, cache)
    assert steps.returncode == 0, steps.stderr[-3000:]
    stats = json.loads(steps.stdout.strip().splitlines()[-1])
    ran = {name for name, (hits, misses) in stats.items() if hits + misses}
    # the phase retrieval, back-projection and FSC kernels all ran, and every one came from the cache
    assert {"bspline3_prefilter", "resample_separable", "_bp_stacked", "stack_rows", "bp_lines",
            "apodise_separable", "shell_sums"} <= ran, stats
    assert {name: misses for name, (_, misses) in stats.items() if misses} == {}


def test_without_the_warm_up_the_same_steps_would_compile(tmp_path):
    """The check above can fail: in an empty cache the same counters report compilations."""
    code = ("import json, numpy as np\nfrom xnh_stream.physics import _numba_kernels as K\n"
            "from xnh_stream.physics.align import rescale_shift\n"
            "rescale_shift(np.ones((16, 16), np.float32), 1.2)\n"
            "print(json.dumps(sum(K.bspline3_prefilter.stats.cache_misses.values())))")
    out = _python(code, tmp_path / "empty-cache")
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == 1


def test_preparing_the_ctf_builds_it_for_the_live_padding_and_changes_no_result():
    """PhaseWorker.prepare runs the CTF once on blank frames when the last distance appears: the filter, FFT plans
    and padding buffer then exist, and the first real angle comes out exactly as from a fresh processor."""
    import numpy as np

    from xnh_stream.chain.steps import AngleProcessor
    from xnh_stream.chain.warmup import _tiny_geometry
    from xnh_stream.config import ProcessConfig
    from xnh_stream.physics.phase import padded_shape

    n, geometry, config = 40, _tiny_geometry(), ProcessConfig()
    rng = np.random.default_rng(2)
    frames = {k: (1 + 0.05 * rng.standard_normal((n, n))).astype(np.float32) for k in range(4)}
    prepared = AngleProcessor(geometry, (n, n), 100.0, config, pad=config.stream.phase_pad)
    prepared.prepare_ctf()
    (retriever,) = prepared._retrievers.values()
    assert retriever.shape_padded == padded_shape((n, n), 1.25) != padded_shape((n, n), 2.0)
    fresh = AngleProcessor(geometry, (n, n), 100.0, config, pad=config.stream.phase_pad)
    np.testing.assert_array_equal(prepared.ctf(frames, 30.0), fresh.ctf(frames, 30.0))
