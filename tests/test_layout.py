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


# The layers of docs/architecture.md, lowest first: a module may import its own layer and the layers
# below it (a row's "may import" names the layers under it, and what they may import). quality/ sits under
# chain/ (the chain's row names it; it imports nothing of the chain). errors.py (standard library only)
# and the package's __init__ (__version__) are under every layer.
LAYERS: tuple[frozenset[str], ...] = (
    frozenset({"errors", "__init__"}),
    frozenset({"physics"}),
    frozenset({"io"}),
    frozenset({"state"}),
    frozenset({"ingest"}),
    frozenset({"quality"}),
    frozenset({"chain"}),
    frozenset({"live", "segment", "stitch", "simulate"}),
    frozenset({"cli", "nabu_cli", "runtime", "metrics", "overnight", "config", "interrupt"}),
)

#: Imports against the layering that are known and left for later: (importer, imported) -> why. An entry
#: that no longer occurs must be removed (the test says so).
KNOWN_EXCEPTIONS: dict[tuple[str, str], str] = {
    ("chain", "config"): "the chain takes its options as config.ProcessConfig (issue 21)",
    ("live", "config"): "the live driver and its workers take the chain's options, config.ProcessConfig "
                        "(annotations only; issue 21)",
    ("segment", "config"): "segment/commands.py, the command's handler kept with its package: ConfigError",
    ("segment", "runtime"): "segment/commands.py, the command's handler: runtime_of for --ray",
    ("stitch", "runtime"): "stitch/commands.py, the command's handler: runtime_of for --ray",
}


def _layer_of(module: str) -> str | None:
    """The layer of a dotted name under xnh_stream (``__init__`` for a name of the package itself, such as
    ``__version__``); None outside xnh_stream."""
    parts = module.split(".")
    if parts[0] != "xnh_stream":
        return None
    if len(parts) == 1:
        return "__init__"
    core = ROOT / "xnh_stream"
    is_module = (core / parts[1]).is_dir() or (core / f"{parts[1]}.py").is_file()
    return parts[1] if is_module else "__init__"


def _imported_layers(path: Path, package: list[str]) -> set[str]:
    """The xnh_stream layers a source file imports, at module level or inside a function; ``package`` is the
    dotted package relative imports start from (an ``__init__``'s own package)."""
    import ast

    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                if node.module:
                    names = [".".join([*base, node.module])]
                else:
                    names = [".".join([*base, a.name]) for a in node.names]
            else:
                names = [node.module or ""]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found.update(layer for name in names if (layer := _layer_of(name)) is not None)
    return found


def _rank(layer: str) -> int:
    return next(i for i, group in enumerate(LAYERS) if layer in group)


def test_the_layers_map_every_module():
    """Every package and top-level module of xnh_stream is in one layer of the table."""
    names = {p.stem if p.is_file() else p.name for p in (ROOT / "xnh_stream").iterdir()
             if (p.is_dir() and (p / "__init__.py").exists()) or p.suffix == ".py"}
    known = set().union(*LAYERS)
    assert names - known == set(), "add it to LAYERS (and to docs/architecture.md)"


def test_no_layer_imports_a_layer_above_it():
    """io/ must not import state/, state/ must not import chain/, and so on down the table of
    docs/architecture.md; only the exceptions in KNOWN_EXCEPTIONS, and each of them must still occur."""
    bad: list[str] = []
    seen: set[tuple[str, str]] = set()
    for f in sorted((ROOT / "xnh_stream").rglob("*.py")):
        own = _layer_of(".".join(f.relative_to(ROOT).with_suffix("").parts))
        if own is None or own == "__init__":
            continue
        for other in _imported_layers(f, list(f.relative_to(ROOT).parts[:-1])):
            if other != own and _rank(other) > _rank(own):
                if (own, other) in KNOWN_EXCEPTIONS:
                    seen.add((own, other))
                else:
                    bad.append(f"{f.relative_to(ROOT)} ({own}) imports {other}")
    assert not bad, bad
    stale = set(KNOWN_EXCEPTIONS) - seen
    assert not stale, f"no longer imported, remove from KNOWN_EXCEPTIONS: {sorted(stale)}"


def test_the_import_check_sees_back_imports(tmp_path):
    """The checker itself: a relative import of state/ from io/, a lazy absolute one of chain/ and the
    package's own __version__ are found, each in its layer."""
    f = tmp_path / "x.py"
    f.write_text("from ..state.journal import FrameJournal\nfrom .. import __version__\n"
                 "from . import nxtomo\n\ndef g():\n    import xnh_stream.chain.angles\n")
    assert _imported_layers(f, ["xnh_stream", "io"]) == {"state", "chain", "__init__", "io"}
    assert _rank("state") > _rank("io") and _rank("chain") > _rank("state")


def test_the_output_names_are_spelled_in_one_module():
    """What xnh-stream writes into an output folder is named in ``xnh_stream/io/names.py`` only (issue 21): every
    other module imports the name (a file name spelled out elsewhere, as a whole string constant, fails)."""
    import ast

    from xnh_stream.io import names

    spelled = {v for k, v in vars(names).items() if k.endswith("_NAME") and isinstance(v, str) and "." in v}
    assert {"volume.ome.zarr", "report.json", "journal.sqlite", "segmentation.json", "stitch.json"} <= spelled
    bad = []
    for f in sorted((ROOT / "xnh_stream").rglob("*.py")):
        if f == ROOT / "xnh_stream" / "io" / "names.py":
            continue
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in spelled:
                bad.append(f"{f.relative_to(ROOT)}:{node.lineno} {node.value!r}")
    assert not bad, bad


def test_no_function_of_the_driving_layers_is_over_sixty_lines():
    """The chain, the live driver and the Ray wiring read as steps (issue 21): no function or method of
    xnh_stream/chain, xnh_stream/live or actors/ is longer than 60 lines, docstring included."""
    import ast

    long = []
    for folder in ("xnh_stream/chain", "xnh_stream/live", "actors"):
        for path in sorted((ROOT / folder).glob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    n = node.end_lineno - node.lineno + 1
                    if n > 60:
                        long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({n} lines)")
    assert not long, long
