"""Dependencies tell the truth: what package code imports is a runtime dependency, and every runtime dependency is used.

Read from the source's imports (package code and the bundles' ``$import`` / ``_target_`` references) and from the
installed distribution's metadata, so an import that only the ``dev`` extra satisfies fails here, not on a user's
fresh machine.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
OWN = {"pipeline", "transforms", "networks"}
PACKAGE_DIRS = sorted(OWN)

# Runtime dependencies that no package module imports by name, each with the code that needs it.
USED_INDIRECTLY = {
    "fire": "python -m monai.bundle's command line",
    "jsonschema": "monai.bundle's metadata checks",
    "pylibjpeg": "pydicom's decoder plugins for compressed transfer syntaxes",
    "pylibjpeg-openjpeg": "pydicom's JPEG 2000 decoder (real series in shared/data/totalseg)",
    "pylibjpeg-libjpeg": "pydicom's JPEG / JPEG-LS decoder",
    "onnxscript": "torch.onnx.export(dynamo=True), which pipeline/inference/onnx_export.py calls",
    "torchio": "MONAI's RandTorchIOd, which imports TorchIO's transforms by name (transforms/augment/mr.py)",
    "dynamic-network-architectures": "nnunetv2's U-Nets, pinned below 0.4 (whose timm pulls torchvision and CUDA torch)",
}

# Heavy modules imported only inside the functions that need them (never at a module's top level), so that
# `import pipeline` and every CLI command but the one that uses them stay fast.
LAZY = {
    "nnunetv2": "nnU-Net v2 models (nnunet:PATH)",
}


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _source_imports() -> dict[str, str]:
    """Top-level third-party module names imported by package code -> one place that imports it."""
    found: dict[str, str] = {}
    for folder in PACKAGE_DIRS:
        for path in sorted((REPO / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    found.setdefault(name.split(".")[0], f"{path.relative_to(REPO)}:{node.lineno}")
    for path in sorted((REPO / "bundles").rglob("*.yaml")):
        text = path.read_text()
        # ``$import x`` lines and dotted ``_target_: x.y.Z`` paths; a bare ``_target_: Compose`` is MONAI's short name
        for match in re.finditer(r"(?:\$import\s+|\$from\s+|_target_:\s*)([A-Za-z_][A-Za-z0-9_]*)\.?", text):
            if match.group(0).startswith("_target_") and not match.group(0).endswith("."):
                continue
            found.setdefault(match.group(1), str(path.relative_to(REPO)))
    return {
        name: where
        for name, where in found.items()
        if name not in OWN and name not in sys.stdlib_module_names and name != "__future__"
    }


def _top_level_imports(path: Path) -> set[str]:
    """Top-level module names that ``path`` imports in its module body (not inside a function or class)."""
    names = set()
    for node in ast.parse(path.read_text(), str(path)).body:
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def _runtime_requirements() -> set[str]:
    """Names of the installed ``clinseg`` distribution's requirements without an extra marker."""
    try:
        requires = importlib.metadata.requires("clinseg") or []
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("clinseg is not installed (pip install -e '.[dev]'): its metadata is what this test reads")
    names = set()
    for line in requires:
        requirement = Requirement(line)
        if requirement.marker is None or "extra" not in str(requirement.marker):
            names.add(_normalise(requirement.name))
    return names


def _declared_runtime() -> set[str]:
    """The same, read from pyproject.toml, so a stale editable install cannot hide an edit."""
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return {_normalise(Requirement(line).name) for line in project["dependencies"]}


def _third_party_modules() -> dict[str, str]:
    """Imported third-party module -> where; a module that no installed distribution provides fails here."""
    imports = _source_imports()
    unknown = {name: where for name, where in imports.items() if name not in importlib.metadata.packages_distributions()}
    assert not unknown, f"imported by package code but provided by no installed distribution: {unknown}"
    return imports


def test_installed_metadata_matches_pyproject():
    assert _runtime_requirements() == _declared_runtime(), "reinstall: pip install -e '.[dev]'"


def test_every_import_is_a_runtime_dependency():
    runtime = _declared_runtime()
    distributions = importlib.metadata.packages_distributions()
    missing = {
        name: where
        for name, where in _third_party_modules().items()
        if not {_normalise(d) for d in distributions[name]} & runtime
    }
    assert not missing, f"imported by package code but not a runtime dependency: {missing}"


def test_every_runtime_dependency_is_used():
    distributions = importlib.metadata.packages_distributions()
    imported = {_normalise(d) for name in _third_party_modules() for d in distributions[name]}
    unused = _declared_runtime() - imported - set(USED_INDIRECTLY)
    assert not unused, f"runtime dependencies that no package code imports: {sorted(unused)}"


def test_indirect_dependencies_are_still_declared():
    stale = set(USED_INDIRECTLY) - _declared_runtime()
    assert not stale, f"USED_INDIRECTLY names packages that are no longer dependencies: {sorted(stale)}"


def test_bundle_imports_are_found():
    """The YAML scan sees the bundles' ``$import`` lines (a guard against the regex silently matching nothing)."""
    assert {"torch", "ignite", "monai"} <= set(_source_imports())


def test_lazy_modules_are_imported_only_where_used():
    eager = {
        str(path.relative_to(REPO)): sorted(_top_level_imports(path) & set(LAZY))
        for folder in PACKAGE_DIRS
        for path in sorted((REPO / folder).rglob("*.py"))
        if _top_level_imports(path) & set(LAZY)
    }
    assert not eager, f"heavy modules imported at module level (importing clinseg would load them): {eager}"

