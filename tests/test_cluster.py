"""The stream and the final pass on a two-node local Ray cluster (ray.cluster_utils.Cluster), joined by address:
the same volume as in one process."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest


@pytest.mark.slow
def test_stream_runs_on_a_two_node_cluster(tmp_path):
    # A separate interpreter: this test session already runs an embedded Ray of its own.
    script = textwrap.dedent(f"""
        import numpy as np, ray
        from ray.cluster_utils import Cluster
        from actors.stream import StreamDriver, StreamOptions
        from xnh_stream.config import ProcessConfig
        from xnh_stream.simulate.scan import SimulationConfig, simulate_scan, read_truth
        from xnh_stream.chain.batch import process_scan
        from tests.test_stream import ListSource

        cluster = Cluster(initialize_head=True, head_node_args={{"num_cpus": 1}})
        cluster.add_node(num_cpus=1)
        ray.init(address=cluster.address, log_to_driver=False)
        assert len([n for n in ray.nodes() if n["Alive"]]) == 2
        folder = r"{tmp_path / 'scan'}"
        simulate_scan(folder, SimulationConfig(nx=48, ny=16, n_angles=24, seed=8, n_flats=3, n_darks=2))
        _, rec = read_truth(folder)
        config = ProcessConfig.from_mapping({{"sample.delta_beta": rec["delta_beta"], "fbp.cor": rec["cor_px"], "alignment.angles": 8}})
        result = StreamDriver(ListSource(folder), folder, r"{tmp_path / 'out'}", config,
                              StreamOptions(n_workers=2, n_shards=2, poll_interval_s=0.0)).run()
        used = {{n["NodeID"] for n in ray.nodes() if n["Alive"]}}
        batch = process_scan(folder, None, config).volume
        # the final pass took the stream's flat-fielded frames (tests/test_stream.py, assert_final_is_process)
        assert np.allclose(result.final.volume, batch, rtol=0, atol=1e-4 * np.abs(batch).max())
        assert result.final.report.frames.from_stream == 24 * 4
        assert result.counts["pending"] == 0
        # the final pass alone, in small tasks spread over both nodes, against the same pass in one process
        from actors.executor import RayExecutor
        from xnh_stream.chain.final import ChainLayout
        spread = process_scan(folder, None, config, executor=RayExecutor(),
                              layout=ChainLayout(angle_batch=3, slab_rows=4)).volume
        assert np.allclose(spread, batch, rtol=0, atol=1e-6 * np.abs(batch).max())  # the cut changes nothing
        where = ray.remote(lambda: ray.get_runtime_context().get_node_id()).options(scheduling_strategy="SPREAD")
        nodes = set(ray.get([where.remote() for _ in range(8)]))
        assert len(nodes) == 2
        print("NODES", len(used), "FRAMES", result.counts["received"])
        ray.shutdown(); cluster.shutdown()
    """)
    from pathlib import Path

    script = script.replace(f"r\"{tmp_path / 'out'}\"", f"__import__('pathlib').Path(r\"{tmp_path / 'out'}\")")
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "NODES 2" in proc.stdout
