"""The repository's own promises: import names resolve here, and the layer contracts hold."""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["pipeline", "transforms", "networks"])
def test_package_resolves_inside_repository(name):
    module = importlib.import_module(name)
    assert Path(module.__file__).resolve().parent == REPO / name


def test_import_linter_contracts_hold():
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    assert lint, "import-linter is a dev dependency: pip install -e '.[dev]'"
    result = subprocess.run([lint], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 kept, 0 broken" in result.stdout


@pytest.mark.parametrize("top", ["pyproject.toml", "README.md", "pipeline", "transforms", "networks", "bundles", "tests", "data"])
def test_required_layout(top):
    assert (REPO / top).exists()


@pytest.mark.parametrize("leaf", ["transforms", "networks", "pipeline/core"])
def test_leaves_and_core_do_not_import_engines_or_handlers(leaf):
    import ast

    forbidden = ("monai.engines", "monai.handlers")
    for path in (REPO / leaf).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            bad = [n for n in names if n.startswith(forbidden)]
            assert not bad, f"{path.relative_to(REPO)}:{node.lineno} imports {bad[0]}"


@pytest.mark.parametrize("package", ["pipeline", "transforms", "networks"])
def test_no_import_cycles(package):
    """No module reaches itself through imports (deferred imports inside functions included)."""
    import grimp

    graph = grimp.build_graph(package, include_external_packages=False)
    for module in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(module)):
            chain = graph.find_shortest_chain(importer=imported, imported=module)
            assert chain is None, f"import cycle: {module} -> {' -> '.join(chain)}"


_BLOCK_IGNITE = """
import importlib.abc, sys

class _NoIgnite(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "ignite" or name.startswith("ignite."):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
        return None

sys.meta_path.insert(0, _NoIgnite())
import {module}
"""


@pytest.mark.parametrize("module", ["pipeline.core.checkpoint", "pipeline.inference.predictor"])
def test_inference_imports_without_ignite(module):
    """With ignite made unimportable (MONAI then skips its engines and handlers), the checkpoint format
    and the Predictor still import: inference needs no training machinery."""
    code = _BLOCK_IGNITE.replace("{module}", module)
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
