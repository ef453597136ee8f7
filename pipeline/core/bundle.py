"""Locate a bundle's files and run its configs through MONAI's own ``ConfigWorkflow``."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from monai.bundle import ConfigParser, ConfigWorkflow

from pipeline.core.model_uri import bundle_folder, is_model_uri, open_fetched

logger = logging.getLogger(__name__)

CONFIG_SUFFIXES = (".yaml", ".yml", ".json")
COMMON = "common"  # configs/common.yaml: the settings a bundle's configs share, merged under each of them
BASE = "_base"  # bundles/_base/base_<name>.yaml: the workflows the bundles beside it share
RUNS = "runs"  # runs/<bundle name>/ under the working directory: a shipped bundle's default checkpoint folder


def run_folder(name: str) -> str:
    """The default checkpoint folder of a shipped bundle named ``name`` (metadata.json's ``name``):
    ``runs/<name>`` under the working directory, absolute; stable, so ``resume`` and ``predict`` find it."""
    return str((Path(RUNS) / name).resolve())


class BundleError(ValueError):
    """A folder that is not a usable MONAI bundle."""


@dataclass(frozen=True)
class Bundle:
    """A MONAI bundle folder: ``configs/metadata.json``, ``configs/<name>.yaml|json``, ``models/``.

    ``configs/common.yaml``, where a bundle has it, holds the settings its configs share and is merged first
    under every config. A bundle beside a ``_base`` folder (the shipped ``bundles/``) is a delta: each config the
    base has (``common``, ``train``, ``inference``, ``evaluate``) comes before the bundle's own one, if any (as the
    documented ``--config_file "['bundles/_base/base_common.yaml', '.../common.yaml',
    'bundles/_base/base_train.yaml', '.../train.yaml']"`` does). Planned and exported bundles hold standalone configs.
    """

    root: Path

    @classmethod
    def at(cls, path: str | Path, *, tracking_uri: str | None = None) -> Bundle:
        """The bundle in folder ``path``, or the bundle of a registered model ``models:/NAME/VERSION`` or
        ``models:/NAME@ALIAS`` (fetched from the registry at ``tracking_uri``, :mod:`pipeline.core.model_uri`,
        into a temporary folder removed with the returned object)."""
        if is_model_uri(path):
            return open_fetched(str(path), tracking_uri, lambda artifact: cls(bundle_folder(artifact).resolve()))
        root = Path(path).resolve()
        if not (root / "configs" / "metadata.json").is_file():
            raise BundleError(f"{path} is not a MONAI bundle: {root / 'configs' / 'metadata.json'} is missing")
        return cls(root)

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def meta_file(self) -> Path:
        return self.root / "configs" / "metadata.json"

    @property
    def logging_file(self) -> Path:
        return self.root / "configs" / "logging.conf"

    @property
    def default_checkpoint(self) -> Path:
        """The newest ``model.pt`` of ``runs/<name>`` under the working directory (where ``clinseg train``
        puts a shipped bundle's checkpoints) and of the bundle's ``models/`` (planned and exported bundles).

        Raises:
            BundleError: neither exists (the message lists both places).
        """
        name = json.loads(self.meta_file.read_text()).get("name", self.name) if self.meta_file.is_file() else self.name
        candidates = [Path(run_folder(name)) / "model.pt", self.root / "models" / "model.pt"]
        found = [path for path in candidates if path.is_file()]
        if not found:
            raise BundleError(
                f"bundle {self.root} has no trained checkpoint: looked for {', '.join(map(str, candidates))}; "
                "train it first (clinseg train) or pass --checkpoint"
            )
        return max(found, key=lambda path: path.stat().st_mtime)

    def datalist_file(self, config: str | Path | Sequence[str | Path] = "inference", **overrides: Any) -> Path:
        """The bundle's ``datalist_file`` (a planned bundle names the datalist it was planned from)."""
        return Path(self.parser(config, **overrides).get_parsed_content("datalist_file"))

    def config_file(self, name: str | Path) -> Path:
        """A config by name under ``configs/`` (``"train"``, ``"cosine_warmup"``) or a config file's path."""
        if Path(name).suffix in CONFIG_SUFFIXES and Path(name).is_file():
            return Path(name).resolve()
        for suffix in CONFIG_SUFFIXES:
            candidate = self.root / "configs" / f"{name}{suffix}"
            if candidate.is_file():
                return candidate
        found = sorted(p.stem for p in (self.root / "configs").glob("*.*") if p.suffix in CONFIG_SUFFIXES)
        raise BundleError(
            f"bundle {self.root} has no config {str(name)!r} and no such .yaml/.json file exists; "
            f"configs found: {found}"
        )

    def has_config(self, name: str) -> bool:
        """Whether ``configs/<name>`` or the shared base's ``base_<name>.yaml`` exists."""
        own = any((self.root / "configs" / f"{name}{s}").is_file() for s in CONFIG_SUFFIXES)
        return own or (self.root.parent / BASE / f"base_{name}.yaml").is_file()

    def config_files(self, config: str | Path | Sequence[str | Path], *, with_common: bool = True) -> list[str]:
        """The files MONAI merges, in order (later override earlier), for a config and its overlays:
        ``common`` first when the bundle has it (and ``with_common``), each shared base config before the
        bundle's delta of it."""
        names = [config] if isinstance(config, (str, Path)) else list(config)
        if with_common and COMMON not in names and (self.root / "configs" / f"{COMMON}.yaml").is_file():
            names = [COMMON, *names]
        files: list[str] = []
        for name in names:
            base = self.root.parent / BASE / f"base_{name}.yaml"
            if isinstance(name, str) and base.is_file():
                files.append(str(base))
                if not any((self.root / "configs" / f"{name}{s}").is_file() for s in CONFIG_SUFFIXES):
                    continue  # the base alone (e.g. evaluate.yaml: no bundle changes it)
            files.append(str(self.config_file(name)))
        return files

    def parser(
        self, config: str | Path | Sequence[str | Path] = "inference", **overrides: Any
    ) -> ConfigParser:
        """A ``ConfigParser`` over one config (or several, merged in order) with the metadata and overrides."""
        parser = ConfigParser()
        parser.read_config(self.config_files(config))
        parser.read_meta(str(self.meta_file))
        parser.update({"bundle_root": str(self.root), **overrides})
        return parser

    def workflow(
        self,
        config: str | Path | Sequence[str | Path] = "train",
        workflow_type: str = "train",
        **overrides: Any,
    ) -> ConfigWorkflow:
        """MONAI's ``ConfigWorkflow`` for the config, as ``python -m monai.bundle run`` builds it."""
        return ConfigWorkflow(
            config_file=self.config_files(config),
            meta_file=str(self.meta_file),
            logging_file=str(self.logging_file) if self.logging_file.is_file() else False,
            workflow_type=workflow_type,
            **{"bundle_root": str(self.root), **overrides},
        )

    def run(
        self,
        config: str | Path | Sequence[str | Path] = "train",
        workflow_type: str = "train",
        **overrides: Any,
    ) -> ConfigWorkflow:
        """Initialize, run and finalize a config; returns the workflow so callers can read engine state."""
        workflow = self.workflow(config, workflow_type, **overrides)
        workflow.initialize()
        missing = workflow.check_properties()
        if missing:
            logger.warning("bundle %s lacks optional properties: %s", self.name, missing)
        workflow.run()
        workflow.finalize()
        return workflow
