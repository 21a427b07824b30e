"""deploy/slurm/xnh-stream.sbatch: on a real one-node Slurm, and its choices with Slurm's commands stubbed.

The real run needs Debian's ``slurm-wlm`` and ``munge`` with the daemons started by ``.ci/slurm-single-node``
(``.ci/run`` does both). Without a Slurm that answers, that test skips, unless ``XNH_REQUIRE_SLURM=1`` (set by
CI), which turns the skip into a failure; the same holds for ``shellcheck`` (Debian package).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from xnh_stream.simulate.scan import SimulationConfig, simulate_scan

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "deploy" / "slurm" / "xnh-stream.sbatch"
SIM = SimulationConfig(nx=48, ny=16, n_angles=24, seed=5, oversample=1, n_flats=3, n_darks=2)
FINAL_STATES = {
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "PREEMPTED",
    "BOOT_FAIL",
    "DEADLINE",
}


def require(what: str, ok: bool, hint: str) -> None:
    """Skip when ``ok`` is false; fail instead when CI requires the Slurm tools (``XNH_REQUIRE_SLURM=1``)."""
    if ok:
        return
    msg = f"{what} ({hint})"
    if os.environ.get("XNH_REQUIRE_SLURM") == "1":
        pytest.fail(msg + " but XNH_REQUIRE_SLURM=1")
    pytest.skip(msg)


def slurm_is_up() -> bool:
    """Whether ``sbatch`` exists and the controller answers ``scontrol ping``."""
    if shutil.which("sbatch") is None or shutil.which("scontrol") is None:
        return False
    r = subprocess.run(["scontrol", "ping"], check=False, capture_output=True, text=True, timeout=20)
    return r.returncode == 0 and "is UP" in r.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def job_fields(job: str) -> dict[str, str]:
    """``scontrol show job -o``: the job's fields (JobState, ExitCode, ...)."""
    r = subprocess.run(
        ["scontrol", "show", "job", "-o", job], check=False, capture_output=True, text=True, timeout=20
    )
    return dict(re.findall(r"(\w+)=(\S*)", r.stdout))


def ray_processes_under(folder: str) -> list[str]:
    """Command lines of the processes that name ``folder`` (the Ray of a job with that temporary folder)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if folder in cmd:
            found.append(cmd[:200])
    return found


@pytest.mark.slow
def test_sbatch_process_runs_on_a_real_slurm_and_stops_its_ray(tmp_path):
    """sbatch the script (`process`) on the one-node Slurm: Ray head started by srun, joined with --address
    and the numpy backend (no GPU reserved), the volume and the report written, the job COMPLETED with exit
    code 0, and no process of the job's Ray left afterwards."""
    require(
        "no Slurm answering scontrol ping",
        slurm_is_up(),
        "apt-get install slurm-wlm munge, then bash .ci/slurm-single-node",
    )
    scan, out = tmp_path / "scan", tmp_path / "out"
    simulate_scan(scan, SIM)
    port = free_port()
    ray_temp = tempfile.mkdtemp(
        prefix="xr", dir="/tmp"
    )  # short: Ray's socket paths must stay under 108 chars
    env = {k: v for k, v in os.environ.items() if not k.startswith("XNH_REQUIRE_")}
    env.update(
        {
            "XNH_VENV": sys.prefix,  # the script activates it: the job's PATH does not need to have it
            "XNH_RAY_PORT": str(port),
            "XNH_RAY_TEMP_DIR": ray_temp,
            "XNH_RAY_WAIT_S": "120",
            # everything on the loopback interface: the head's address, and Ray's switch that keeps it
            "XNH_RAY_NODE_IP": "127.0.0.1",
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        }
    )
    env["PATH"] = os.pathsep.join(
        p for p in env.get("PATH", "").split(os.pathsep) if not p.startswith(sys.prefix)
    )
    cpus = min(os.cpu_count() or 1, 2)
    submit = subprocess.run(
        [
            "sbatch",
            "--parsable",
            "--nodes=1",
            f"--cpus-per-task={cpus}",
            "--time=10",
            f"--chdir={tmp_path}",
            f"--output={tmp_path}/slurm-%j.out",
            str(SCRIPT),
            "process",
            str(scan),
            str(out),
        ],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert submit.returncode == 0, submit.stderr
    job = submit.stdout.strip().split(";")[0]
    try:
        deadline, fields = time.monotonic() + 300, {}
        while time.monotonic() < deadline:
            fields = job_fields(job)
            if fields.get("JobState") in FINAL_STATES:
                break
            time.sleep(0.5)
        log = next(tmp_path.glob("slurm-*.out")).read_text() if list(tmp_path.glob("slurm-*.out")) else ""
        assert fields.get("JobState") == "COMPLETED", f"job {job}: {fields.get('JobState')}\n{log[-4000:]}"
        assert fields.get("ExitCode") == "0:0", log[-4000:]
        assert "ray: 1 of 1 nodes up" in log
        assert f"--address 127.0.0.1:{port} --backend numpy" in log, log[-4000:]
        assert "xnh-stream process: exit code 0" in log
        assert (out / "volume.ome.zarr" / ".zattrs").exists() or (
            out / "volume.ome.zarr" / "zarr.json"
        ).exists()
        report = json.loads((out / "report.json").read_text())
        assert report, "empty report"
        # the job's Ray is gone with it (the head's processes all name their temporary folder)
        for _ in range(20):
            left = ray_processes_under(ray_temp)
            if not left:
                break
            time.sleep(0.5)
        assert not left, left
    finally:
        if job_fields(job).get("JobState") not in FINAL_STATES:
            subprocess.run(["scancel", job], check=False, timeout=20)
        shutil.rmtree(ray_temp, ignore_errors=True)


# --- the script's choices, with Slurm, Ray and xnh-stream stubbed (no Slurm needed) -------------------------
STUB_SLURM = {
    # the job's nodes, one a line
    "scontrol": 'echo "$*" >> "$STUB_LOG/calls"; '
    '[ "$1 $2" = "show hostnames" ] && printf "%s\\n" $STUB_NODES',
    # `srun ... hostname --ip-address` answers with an IPv6 and an IPv4 address; `srun ... ray start` blocks
    "srun": """echo "srun $*" >> "$STUB_LOG/calls"
case "$*" in
  *"hostname --ip-address"*) echo "fe80::1 192.0.2.7" ;;
  *"ray start"*) env | grep -E "^RAY_AUTH" | sort > "$STUB_LOG/ray.env"; echo $$ >> "$STUB_LOG/srun.pids"
                 exec sleep 30 ;;
esac""",
    "scancel": 'echo "scancel $*" >> "$STUB_LOG/calls"; '
    '[ "$1" = --signal=TERM ] && kill $(cat "$STUB_LOG/srun.pids")'
    "; true",
    "squeue": "true",
}
STUB_ENV = {
    "ray": 'echo "ray $*" >> "$STUB_LOG/calls"',
    # wait_for_nodes: reads its program from standard input
    "python": 'cat > /dev/null; echo "python $*" >> "$STUB_LOG/calls"; echo "ray: $3 of $3 nodes up"',
    "xnh-stream": '''echo "xnh-stream $*" >> "$STUB_LOG/calls"
env | grep -E "^(XNH_|RAY_AUTH)" | sort > "$STUB_LOG/xnh.env"
ls "${STUB_SD:-/nonexistent}" > "$STUB_LOG/sd.list" 2>/dev/null && cat "$STUB_SD"/*.json > "$STUB_LOG/sd.json"
exit "${STUB_RC:-0}"''',
}


def stub_run(tmp_path: Path, *args: str, **env: str) -> tuple[subprocess.CompletedProcess, Path]:
    """Run the script with bash outside Slurm, with stubbed commands; returns the result and the log
    folder."""
    bin_dir, venv, log = tmp_path / "bin", tmp_path / "venv", tmp_path / "log"
    for folder, stubs in ((bin_dir, STUB_SLURM), (venv / "bin", STUB_ENV)):
        folder.mkdir(parents=True, exist_ok=True)
        for name, body in stubs.items():
            f = folder / name
            f.write_text("#!/bin/bash\n" + body + "\n")
            f.chmod(f.stat().st_mode | stat.S_IXUSR)
    (venv / "bin" / "activate").write_text(
        f'export PATH="{venv}/bin:$PATH"\n'
    )  # what a venv's does, in short
    log.mkdir(exist_ok=True)
    base = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "STUB_LOG": str(log),
        "SLURM_JOB_ID": "42",
        "SLURM_JOB_NODELIST": "n[1-2]",
        "STUB_NODES": "n1 n2",
        "SLURM_CPUS_PER_TASK": "8",
        "XNH_VENV": str(venv),
        "XNH_CTF_ALPHA_LOW": "0.2",
    }
    r = subprocess.run(
        ["bash", str(SCRIPT), *args],
        check=False,
        capture_output=True,
        text=True,
        env={**base, **env},
        timeout=60,
    )
    return r, log


def calls(log: Path) -> list[str]:
    return (log / "calls").read_text().splitlines()


def test_sbatch_with_gpus_runs_cupy_and_gives_ray_the_reservation(tmp_path):
    """GPUs reserved (SLURM_GPUS_ON_NODE): --backend cupy, --num-gpus on every node, the step asks for them;
    the head's first IPv4 address; workers join it with --address; the settings do not reach xnh-stream but
    its configuration variables and the job's Ray token do."""
    r, log = stub_run(
        tmp_path, "watch", "/data/scan", "/data/out", "--slab-rows", "64", SLURM_GPUS_ON_NODE="2"
    )
    assert r.returncode == 0, r.stderr
    c = calls(log)
    head = next(x for x in c if "ray start --head" in x)
    assert "-w n1" in head and "--node-ip-address=192.0.2.7" in head and "--port=6379" in head
    assert "--num-cpus=8" in head and "--num-gpus=2" in head and "--gres=gpu:2" in head
    assert "--cpus-per-task=8" in head and "--block" in head
    worker = next(x for x in c if "ray start --address" in x)
    assert "-w n2" in worker and "--address=192.0.2.7:6379" in worker and "--num-gpus=2" in worker
    driver = next(x for x in c if x.startswith("xnh-stream"))
    assert driver == (
        "xnh-stream watch /data/scan --out /data/out --address 192.0.2.7:6379 --backend cupy --slab-rows 64"
    )
    assert [x for x in c if x.startswith("python")] == [
        "python - 192.0.2.7:6379 1 300",
        "python - 192.0.2.7:6379 2 300",
    ]
    env = (log / "xnh.env").read_text()
    assert "XNH_CTF_ALPHA_LOW=0.2" in env and "XNH_VENV" not in env
    assert "RAY_AUTH_MODE=token" in env and re.search(r"RAY_AUTH_TOKEN=[0-9a-f]{64}\n", env)
    assert (log / "ray.env").read_text() == "".join(
        x + "\n" for x in sorted(env.splitlines()) if "RAY_AUTH" in x
    )
    assert any(x == "scancel --signal=TERM 42" for x in c), "Ray's steps not stopped"


def test_sbatch_without_gpus_runs_numpy(tmp_path):
    r, log = stub_run(
        tmp_path, "process", "/data/scan", "/data/out", STUB_NODES="n1", SLURM_JOB_NODELIST="n1"
    )
    assert r.returncode == 0, r.stderr
    c = calls(log)
    head = next(x for x in c if "ray start --head" in x)
    assert "--num-gpus=0" in head and "--gres" not in head
    assert not [x for x in c if "ray start --address" in x]
    assert next(x for x in c if x.startswith("xnh-stream")).endswith("--backend numpy")


def test_sbatch_passes_the_exit_code_and_refuses_a_bad_mode(tmp_path):
    r, _ = stub_run(tmp_path, "process", "/data/scan", "/data/out", STUB_RC="3")
    assert r.returncode == 3 and "xnh-stream process: exit code 3" in r.stdout
    r, _ = stub_run(tmp_path, "segment", "/data/scan", "/data/out")
    assert r.returncode == 2 and "usage: sbatch xnh-stream.sbatch process|watch|overnight" in r.stderr
    r, _ = stub_run(tmp_path, "process", "/data/scan")
    assert r.returncode == 2


def test_sbatch_writes_prometheus_targets_while_it_runs(tmp_path):
    """XNH_PROM_SD_DIR: the overnight queue's metrics on the head's address, its file_sd target there while
    the command runs, removed at the end."""
    sd = tmp_path / "sd"
    sd.mkdir()
    r, log = stub_run(
        tmp_path, "overnight", "/data/visitor", "/data/processed", XNH_PROM_SD_DIR=str(sd), STUB_SD=str(sd)
    )
    assert r.returncode == 0, r.stderr
    driver = next(x for x in calls(log) if x.startswith("xnh-stream"))
    assert "--metrics-address 192.0.2.7 --metrics-port 9109" in driver
    assert (log / "sd.list").read_text().split() == ["xnh-overnight-42.json"]
    assert json.loads((log / "sd.json").read_text()) == [
        {"targets": ["192.0.2.7:9109"], "labels": {"slurm_job_id": "42"}}
    ]
    assert list(sd.iterdir()) == []


def test_slurm_scripts_pass_shellcheck():
    require("shellcheck not found", shutil.which("shellcheck") is not None, "apt-get install shellcheck")
    r = subprocess.run(
        ["shellcheck", "-s", "bash", str(SCRIPT), str(ROOT / ".ci" / "slurm-single-node")],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stdout + r.stderr
