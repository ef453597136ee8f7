"""Locate a bundle's files and run its configs through MONAI's own ``ConfigWorkflow``."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from monai.bundle import ConfigParser, ConfigWorkflow

logger = logging.getLogger(__name__)

COMMON = "common"  # configs/common.yaml: the settings a bundle's configs share, merged under each of them


class BundleError(ValueError):
    """A folder that is not a usable MONAI bundle."""


@dataclass(frozen=True)
class Bundle:
    """A MONAI bundle folder: ``configs/metadata.json``, ``configs/<name>.yaml|json``, ``models/``.

    ``configs/common.yaml``, where a bundle has it, holds the settings its configs share and is merged first
    under every config (as the documented ``--config_file "['.../common.yaml', '.../train.yaml']"`` does).
    """

    root: Path

    @classmethod
    def at(cls, path: str | Path) -> Bundle:
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
        return self.root / "models" / "model.pt"

    def config_file(self, name: str) -> Path:
        for suffix in (".yaml", ".yml", ".json"):
            candidate = self.root / "configs" / f"{name}{suffix}"
            if candidate.is_file():
                return candidate
        found = sorted(p.stem for p in (self.root / "configs").glob("*.*") if p.suffix in {".yaml", ".yml", ".json"})
        raise BundleError(f"bundle {self.root} has no config {name!r}; configs found: {found}")

    def config_files(self, config: str | list[str]) -> list[str]:
        """The files MONAI merges, in order, for one config or several: ``common`` first when the bundle has it."""
        names = [config] if isinstance(config, str) else list(config)
        if COMMON not in names and (self.root / "configs" / f"{COMMON}.yaml").is_file():
            names = [COMMON, *names]
        return [str(self.config_file(n)) for n in names]

    def parser(self, config: str | list[str] = "inference", **overrides: Any) -> ConfigParser:
        """A ``ConfigParser`` over one config (or several, merged in order) with the metadata and overrides."""
        parser = ConfigParser()
        parser.read_config(self.config_files(config))
        parser.read_meta(str(self.meta_file))
        parser.update({"bundle_root": str(self.root), **overrides})
        return parser

    def workflow(self, config: str | list[str] = "train", workflow_type: str = "train", **overrides: Any) -> ConfigWorkflow:
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
        config: str | list[str] = "train",
        workflow_type: str = "train",
        export_config: str | Path | None = None,
        **overrides: Any,
    ) -> ConfigWorkflow:
        """Initialize, run and finalize a config; returns the workflow so callers can read engine state.

        ``export_config`` writes the config as run (files merged, overrides applied) to that JSON file after
        the config's ``initialize`` checks passed and before training, as MONAI's ``save_execute_config`` does,
        for MLflow params and artifacts.
        """
        workflow = self.workflow(config, workflow_type, **overrides)
        workflow.initialize()
        if export_config is not None:
            from pipeline.core.atomic import atomic_write_json

            Path(export_config).parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(export_config, workflow.parser.get())
        missing = workflow.check_properties()
        if missing:
            logger.warning("bundle %s lacks optional properties: %s", self.name, missing)
        workflow.run()
        workflow.finalize()
        return workflow
