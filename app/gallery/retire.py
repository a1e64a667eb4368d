"""Retiring old versions from disk: the last step of erasing a person from every version of a gallery.

A version is deleted only when nothing would serve it: serving_models.config's version policy for
its servable does not pick it, and no version label names it (change those first; the message
says how). It is renamed to a hidden name before it is deleted, so a server polling the base
path sees it go at once and never half of it.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterable, Iterator

from app.config import Settings
from app.serving.layout import list_versions
from app.serving.model_config import ModelConfigError, load_model_config


class RetireError(ValueError):
    """A version that may not be deleted, or cannot be."""


def retire_versions(settings: Settings, servables: Iterable[str], versions: Iterable[int]) -> Iterator[str]:
    """Delete the versions of each servable under the servable root; one line a deleted version."""
    root = settings.servable_root()
    try:
        config = load_model_config(settings.model_config_file, models_root=settings.models_root, check_paths=False)
    except ModelConfigError as exc:
        raise RetireError(f"cannot tell what is served: {exc}") from exc
    wanted = sorted(set(versions))
    checked: list[tuple[str, int]] = []
    for name in servables:
        base = root / name
        on_disk = list_versions(base)
        missing = [version for version in wanted if version not in on_disk]
        if missing:
            raise RetireError(f"{name} has no version {', '.join(map(str, missing))} under {base}")
        servable = config.get(name)
        if servable is not None:
            served = set(servable.policy.select(on_disk))
            kept = [version for version in wanted if version in served]
            if kept:
                raise RetireError(
                    f"{name}: version {', '.join(map(str, kept))} is still served by its version policy "
                    f"({servable.policy}) in {settings.model_config_file}: change model_version_policy first "
                    "(e.g. latest { num_versions: 1 }), let the servers drop it, then retire it"
                )
            labelled = sorted(f"{label}={version}" for label, version in servable.labels.items() if version in wanted)
            if labelled:
                raise RetireError(
                    f"{name}: version labels still name these versions ({', '.join(labelled)}): move the labels "
                    "first (docs/versions-and-labels.md)"
                )
        checked += [(name, version) for version in wanted]
    for name, version in checked:
        folder = root / name / str(version)
        retired = folder.parent / f".{version}.{uuid.uuid4().hex}.retired"
        folder.rename(retired)  # gone for a polling server at once, and never seen half deleted
        shutil.rmtree(retired)
        yield f"deleted {folder}"
