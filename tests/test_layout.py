"""The layout tells the architecture: the core (xnh_stream) never imports Ray; the Ray wiring is in actors/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_no_core_module_imports_ray():
    """Import every module of xnh_stream in a fresh interpreter: Ray must not be loaded by any of them."""
    script = (
        "import importlib, pkgutil, sys\n"
        "import xnh_stream\n"
        "names = [m.name for m in pkgutil.walk_packages(xnh_stream.__path__, 'xnh_stream.')]\n"
        "for n in names:\n"
        "    importlib.import_module(n)\n"
        "print(len(names), 'ray' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    n, loaded = out.stdout.split()
    assert int(n) > 40  # every module was imported
    assert loaded == "False", "a module of xnh_stream imports ray"


def test_no_core_module_names_ray_or_actors_even_lazily():
    """Not even inside a function: the commands reach Ray through the runtime they are given
    (xnh_stream.runtime.Runtime, implemented in actors/cli.py)."""
    import re

    pattern = re.compile(r"^\s*(import ray\b|from ray\b|import actors\b|from actors\b)", re.M)
    bad = [str(f.relative_to(ROOT)) for f in (ROOT / "xnh_stream").rglob("*.py") if pattern.search(f.read_text())]
    assert not bad, bad


def test_a_command_that_needs_the_runtime_says_so_without_one(tmp_path, capsys):
    from xnh_stream.cli import main

    (tmp_path / "scan").mkdir()
    assert main(["watch", str(tmp_path / "scan"), "--out", str(tmp_path / "out")]) == 2
    assert "needs the distributed runtime" in capsys.readouterr().err


def test_the_physics_is_pure():
    """physics/ reads no file and keeps no scan state: it imports nothing from io/, state/, chain/ or ingest/."""
    bad = []
    for f in (ROOT / "xnh_stream" / "physics").glob("*.py"):
        text = f.read_text()
        for layer in ("io", "state", "chain", "ingest", "quality", "live"):
            if f"from ..{layer}" in text or f"xnh_stream.{layer}" in text:
                bad.append(f"{f.name} imports {layer}")
    assert not bad, bad
