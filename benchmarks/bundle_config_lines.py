"""Lines per bundle config and the share of bundle-config lines that recur in another config file.

The ``duplicates`` tool reads code only (not YAML), so this counts as it does, for configs: a line (stripped,
non-blank, not a comment) is repeated when it lies in a run of ``MIN_LINES`` (duplicates' default, 6) consecutive
lines that occurs in another file of the set. The set is every workflow config
of the shipped bundles, the shared base (``bundles/_base/``) and the planner's template.

    python benchmarks/bundle_config_lines.py [REPO]     # e.g. a `git archive` of the commit before, as reference
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

MIN_LINES = 6
PATTERNS = ("bundles/*/configs/*.yaml", "bundles/_base/*.yaml", "pipeline/planning/template/*.yaml")


def config_files(repo: Path, patterns: tuple[str, ...] = PATTERNS) -> list[Path]:
    """The config files, each once: a link (the shared ``multi_gpu_train.yaml``) counts as its target."""
    return sorted({p.resolve() for pattern in patterns for p in repo.glob(pattern)})


def _code_lines(path: Path) -> list[str]:
    stripped = (line.split(" #")[0].strip() for line in path.read_text().splitlines())
    return [line for line in stripped if line and not line.startswith("#")]


def main(repo: Path) -> None:
    for label, patterns in (("bundles and planner template", PATTERNS), ("bundles only", PATTERNS[:2])):
        print(f"{label}: ", end="")
        report(config_files(repo.resolve(), patterns))


def report(files: list[Path]) -> None:
    lines = {f: _code_lines(f) for f in files}
    windows = {f: [tuple(v[i : i + MIN_LINES]) for i in range(len(v) - MIN_LINES + 1)] for f, v in lines.items()}
    in_files = Counter(w for f in files for w in set(windows[f]))
    total = sum(len(v) for v in lines.values())
    repeated = 0
    for f in files:
        marked = set()
        for i, window in enumerate(windows[f]):
            if in_files[window] > 1:
                marked.update(range(i, i + MIN_LINES))
        repeated += len(marked)
    print(f"{len(files)} files, {total} config lines, {repeated} recur in another file ({repeated / total:.1%})")
    per_bundle: Counter[str] = Counter()
    for f in files:
        owner = f.parent.parent.name if f.parent.name == "configs" else f.parent.name  # bundles/ itself: overlays
        per_bundle[owner] += len(f.read_text().splitlines())
    for owner, n in sorted(per_bundle.items()):
        print(f"  {owner}: {n} lines (wc -l, *.yaml)")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1])
