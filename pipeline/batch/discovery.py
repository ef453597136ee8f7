"""Find the cases of a batch: patient sub-folders (DICOM or NIfTI), a flat folder of NIfTI, or a datalist.

Every entry of the source becomes a case or is named in a warning: patient folders and top-level NIfTI files
are cases, broken or self-referencing symbolic links are failed cases, other files are listed as ignored.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from pipeline.core.datalist import load_datalist

logger = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii.gz", ".nii")
# file stems that are never model inputs
NON_INPUT = re.compile(r"^(label|labels|seg|mask|gt|ground_?truth)([_-].*)?$", re.IGNORECASE)
DEFAULT_MODALITIES: Mapping[str, Sequence[str]] = {"image": ("ct", "image", "img", "scan")}
CHANNEL_SUFFIX = re.compile(r"_\d{4}$")  # nnU-Net's channel suffix: case_0000.nii.gz is channel 0 of "case"


@dataclass(frozen=True)
class Case:
    """One case of a batch: a sanitized id and its input paths per modality key (``{"image": path}``).

    ``problem`` makes the case fail before loading; ``skip`` (the reason) leaves it unread, listed as skipped
    (a hidden folder); ``warnings`` go to the log and the report (e.g. a folder holding both NIfTI and DICOM, of
    which only the NIfTI is read).
    """

    case_id: str
    inputs: dict[str, str]
    kind: str  # "nifti" | "dicom" | "missing" | "hidden"
    problem: str | None = None
    skip: str | None = None
    extra: dict[str, str] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()


def sanitize_case_id(name: str, max_length: int = 64) -> str:
    """A case id safe as one path component: ``[A-Za-z0-9._-]`` only, no leading dots, no traversal."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._-")
    return cleaned[:max_length] or "case"


def _stem(path: Path) -> str:
    name = path.name
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _is_nifti(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(NIFTI_SUFFIXES)


def _looks_like_dicom(folder: Path) -> bool:
    for path in folder.rglob("*"):
        if path.is_file() and path.name.upper() != "DICOMDIR":
            with path.open("rb") as f:
                header = f.read(132)
            if header[128:132] == b"DICM" or path.suffix.lower() == ".dcm":
                return True
    return False


def _match_modalities(files: list[Path], modalities: Mapping[str, Sequence[str]]) -> tuple[dict[str, str], str | None]:
    candidates = [f for f in files if not NON_INPUT.match(_stem(f))]
    inputs: dict[str, str] = {}
    for key, names in modalities.items():
        wanted = {n.lower() for n in names}
        match = [f for f in candidates if _stem(f).lower() in wanted]
        if not match and len(modalities) == 1 and len(candidates) == 1:
            match = candidates
        if len(match) != 1:
            found = ", ".join(f.name for f in candidates) or "none"
            return inputs, f"cannot choose the {key!r} image (expected one of {sorted(wanted)}; NIfTI found: {found})"
        inputs[key] = str(match[0])
    return inputs, None


def _broken_link(path: Path) -> bool:
    """A symbolic link whose target is missing or loops back on itself."""
    return path.is_symlink() and not path.exists()


def _broken_link_case(path: Path) -> Case:
    return Case(
        sanitize_case_id(_stem(path)), {}, "missing", f"{path}: broken or self-referencing symbolic link"
    )


def _case_from_folder(folder: Path, modalities: Mapping[str, Sequence[str]]) -> Case:
    case_id = sanitize_case_id(folder.name)
    niftis = sorted(p for p in folder.iterdir() if _is_nifti(p))
    if niftis:
        inputs, problem = _match_modalities(niftis, modalities)
        warnings = ()
        if not problem and _looks_like_dicom(folder):
            read = ", ".join(Path(v).name for v in inputs.values())
            warnings = (f"{folder} holds NIfTI and DICOM files; read the NIfTI {read}, not the DICOM files",)
        return Case(case_id, inputs, "nifti", problem, warnings=warnings)
    if _looks_like_dicom(folder):
        if len(modalities) > 1:
            return Case(case_id, {}, "dicom", f"DICOM folder {folder} holds one modality; the bundle needs {sorted(modalities)}")
        return Case(case_id, {next(iter(modalities)): str(folder)}, "dicom")
    links = [p.name for p in folder.iterdir() if _broken_link(p)]
    detail = f" (broken or self-referencing symbolic links: {', '.join(links)})" if links else ""
    return Case(case_id, {}, "missing", f"no NIfTI image or DICOM files found in {folder}{detail}")


def _case_from_entry(entry: Mapping[str, object], modalities: Mapping[str, Sequence[str]]) -> Case:
    """A datalist entry as a case; one lacking an input channel fails alone, the channel named."""
    case_id = sanitize_case_id(str(entry["case"]))
    inputs = {k: str(entry[k]) for k in modalities if k in entry}
    missing = [k for k in modalities if k not in entry]
    if missing:
        return Case(case_id, inputs, "missing", f"datalist entry lacks input channel(s) {missing}")
    kind = "dicom" if Path(inputs[next(iter(modalities))]).is_dir() else "nifti"
    return Case(case_id, inputs, kind, extra={k: v for k, v in entry.items() if k == "label"})


def _flat_ids(files: Sequence[Path], strip_channel_suffix: bool | None) -> list[str]:
    """Case ids of NIfTI files: their stems, without nnU-Net's ``_0000`` channel suffix when ``strip_channel_suffix``
    (``None``: when every stem has one, as in an nnU-Net ``imagesTs`` folder)."""
    stems = [_stem(p) for p in files]
    if strip_channel_suffix is None:
        strip_channel_suffix = bool(stems) and all(CHANNEL_SUFFIX.search(s) for s in stems)
    return [sanitize_case_id(CHANNEL_SUFFIX.sub("", s) if strip_channel_suffix else s) for s in stems]


def _flat_cases(
    files: Sequence[Path], modalities: Mapping[str, Sequence[str]], strip_channel_suffix: bool | None
) -> list[Case]:
    """Cases of the NIfTI files of a flat folder: one per file, or for a model of several inputs with nnU-Net's
    channel suffixes (``imagesTs``: ``case_0000.nii.gz``, ``case_0001.nii.gz``) one per case, channel *i* as the
    *i*-th input key (an nnU-Net model's ``dataset.json`` ``channel_names`` order, a bundle's ``input_keys``).
    A case lacking a channel file, or holding one past the model's channels, fails with the files named."""
    keys = list(modalities)
    ids = _flat_ids(files, strip_channel_suffix)
    grouped = len(keys) > 1 and bool(files) and all(CHANNEL_SUFFIX.search(_stem(p)) for p in files)
    if not grouped or strip_channel_suffix is False:
        return [Case(i, {keys[0]: str(p)}, "nifti") for i, p in zip(ids, files)]
    by_case: dict[str, dict[int, Path]] = {}
    for case_id, path in zip(ids, files):
        by_case.setdefault(case_id, {})[int(_stem(path)[-4:])] = path
    cases = []
    for case_id, channels in by_case.items():
        inputs = {keys[c]: str(p) for c, p in sorted(channels.items()) if c < len(keys)}
        first = Path(next(iter(channels.values())))
        stem = _stem(first)[:-5]
        ending = first.name[len(_stem(first)) :]
        missing = [f"{stem}_{c:04d}{ending} ({k})" for c, k in enumerate(keys) if c not in channels]
        extra = [p.name for c, p in sorted(channels.items()) if c >= len(keys)]
        problem = None
        if missing or extra:
            found = ", ".join(p.name for _, p in sorted(channels.items()))
            detail = "; ".join(
                ([f"channel file(s) {', '.join(missing)} missing"] if missing else [])
                + ([f"channel file(s) {', '.join(extra)} beyond the model's channels"] if extra else [])
            )
            problem = f"{first.parent}: {detail} (the model takes {len(keys)} channels {keys}; found: {found})"
        cases.append(Case(case_id, inputs, "missing" if problem else "nifti", problem))
    return cases


def discover_cases(
    source: str | Path,
    *,
    split: str = "test",
    modalities: Mapping[str, Sequence[str]] = DEFAULT_MODALITIES,
    strip_channel_suffix: bool | None = None,
) -> list[Case]:
    """Cases of a batch, sorted by id; ids are unique (a numeric suffix resolves clashes after sanitizing).

    Args:
        source: a folder of patient sub-folders (each a DICOM series tree or NIfTI files matched by name,
            e.g. ``ct.nii.gz`` + ``mr.nii.gz``), ``*.nii.gz`` files (one case per file, beside the folders
            or alone; for several ``modalities`` nnU-Net's ``case_0000``, ``case_0001`` ... one case: see
            :func:`_flat_cases`), a single NIfTI file (one case), or a datalist JSON (entries of ``split``).
            Broken symbolic links are failed cases.
        split: datalist split to read when ``source`` is a JSON file.
        modalities: input key -> accepted file stems, e.g. ``{"ct": ["ct"], "mr": ["mr", "t1"]}``, in the model's
            input order.
        strip_channel_suffix: drop nnU-Net's ``_0000`` from the ids of NIfTI files (``None``: when all have it).

    Raises:
        FileNotFoundError: ``source`` does not exist, or is a file that is neither NIfTI nor a datalist.
    """
    source = Path(source)
    key = next(iter(modalities))
    if not source.exists():
        raise FileNotFoundError(f"input {source} is missing: no such file or folder")
    if source.is_file() and _is_nifti(source):
        (case_id,) = _flat_ids([source], strip_channel_suffix)
        return [Case(case_id, {key: str(source)}, "nifti")]
    if source.is_file() and source.suffix == ".json":
        entries = load_datalist(source, split, required_keys=(), check_files=False)
        cases = [_case_from_entry(e, modalities) for e in entries]
    elif source.is_dir():
        listed = sorted(source.iterdir())
        entries = [p for p in listed if not p.name.startswith(".")]
        hidden = [p for p in listed if p.name.startswith(".") and p.is_dir()]
        flat = [p for p in entries if _is_nifti(p) and not NON_INPUT.match(_stem(p))]
        folders = [p for p in entries if p.is_dir()]
        links = [p for p in entries if _broken_link(p)]
        ignored = [p.name for p in entries if p not in flat and p not in folders and p not in links]
        if ignored:
            logger.warning("%s: ignored %d entries that are neither case folders nor NIfTI images: %s",
                           source, len(ignored), ", ".join(ignored[:10]) + (" ..." if len(ignored) > 10 else ""))
        cases = _flat_cases(flat, modalities, strip_channel_suffix)
        cases += [_case_from_folder(f, modalities) for f in folders] + [_broken_link_case(p) for p in links]
        cases += [_hidden_case(p) for p in hidden]
    else:
        raise FileNotFoundError(f"input {source} is neither a folder, a NIfTI file nor a datalist .json file")
    if not cases:
        raise ValueError(f"no cases found in {source}")
    return _unique_ids(cases)


def _hidden_case(folder: Path) -> Case:
    """A hidden folder (``.name/``): listed as skipped, so that no case vanishes from the report unsaid."""
    reason = f"hidden folder {folder.name}/ (its name starts with '.'): not read; rename it to segment it"
    return Case(sanitize_case_id(folder.name.lstrip(".") or "hidden"), {}, "hidden", skip=reason)


def _unique_ids(cases: list[Case]) -> list[Case]:
    seen: dict[str, int] = {}
    unique = []
    for case in sorted(cases, key=lambda c: c.case_id):
        count = seen.get(case.case_id, 0)
        seen[case.case_id] = count + 1
        if count:
            case = replace(case, case_id=f"{case.case_id}_{count + 1}")
        unique.append(case)
    return unique
