"""Faces brought as descriptors: a gallery from another pipeline, or from photos no longer kept, without re-encoding.

The file is numpy's ``.npz`` with two arrays: ``descriptors`` float32 ``[N, D]`` (or
``[N, *latent_shape]``) and ``names`` ``[N]`` (text: a unicode or bytes array; Python object arrays
are refused, since reading them would run pickled code). Every problem is refused with one line
that says what is wrong and where: a latent shape that is not the encoder's, NaN or infinity,
a count mismatch, a name given twice, an empty name.

    np.savez("faces.npz", descriptors=vectors.astype(np.float32), names=np.array(names))
"""

from __future__ import annotations

import zipfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from app.gallery.record import Faces

IMPORT_ENCODER = "import"  # what the record says made a face brought as a descriptor, unless told otherwise


class DescriptorFileError(ValueError):
    """A descriptors file that cannot become gallery faces."""


def read_descriptors(path: Path, *, latent_shape: Sequence[int] | None = None, encoder: str = IMPORT_ENCODER) -> Faces:
    """The faces of a descriptors file, checked; ``latent_shape`` is the encoder's (None: not checked)."""
    path = Path(path)
    where = f"{path}:"
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DescriptorFileError(f"{where} cannot be read as a numpy .npz file ({exc})") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise DescriptorFileError(f"{where} is a single .npy array: save both arrays with np.savez into an .npz file")
    with data:
        missing = [name for name in ("descriptors", "names") if name not in data.files]
        if missing:
            raise DescriptorFileError(
                f"{where} no array named {' or '.join(missing)} (it has {', '.join(data.files) or 'none'}); "
                "save it with np.savez(path, descriptors=..., names=...)"
            )
        try:
            descriptors, names = data["descriptors"], data["names"]
        except ValueError as exc:
            if "pickle" not in str(exc).lower():
                raise DescriptorFileError(f"{where} cannot be read ({exc})") from None
            raise DescriptorFileError(
                f"{where} an array holds Python objects (pickles are never loaded): save names as text, e.g. "
                "np.array(names, dtype=str)"
            ) from None
        except (OSError, zipfile.BadZipFile, EOFError) as exc:
            raise DescriptorFileError(f"{where} cannot be read ({exc})") from None
    return check_descriptors(descriptors, names, where=where, latent_shape=latent_shape, encoder=encoder)


def check_descriptors(
    descriptors: np.ndarray,
    names: np.ndarray,
    *,
    where: str = "",
    latent_shape: Sequence[int] | None = None,
    encoder: str = IMPORT_ENCODER,
) -> Faces:
    """Descriptors and names as gallery faces, or DescriptorFileError saying what is wrong."""
    prefix = f"{where} " if where else ""
    if descriptors.ndim < 2 or not np.issubdtype(descriptors.dtype, np.number) or np.iscomplexobj(descriptors):
        raise DescriptorFileError(
            f"{prefix}descriptors must be real numbers shaped [N, D], got {descriptors.dtype} {list(descriptors.shape)}"
        )
    count = len(descriptors)
    if names.ndim != 1 or names.dtype.kind not in "US":
        raise DescriptorFileError(f"{prefix}names must be a 1-D text array, got {names.dtype} {list(names.shape)}")
    if len(names) != count:
        raise DescriptorFileError(f"{prefix}{count} descriptors but {len(names)} names: give one name per descriptor")
    if count == 0:
        raise DescriptorFileError(f"{prefix}no descriptors: the file holds no face")
    shape = tuple(int(d) for d in descriptors.shape[1:])
    if latent_shape is not None and tuple(latent_shape) != shape:
        raise DescriptorFileError(
            f"{prefix}descriptors have shape {list(shape)} but the encoder's latent is {list(latent_shape)}: "
            "they come from another encoder"
        )
    vectors = np.ascontiguousarray(descriptors, dtype=np.float32)
    flat = vectors.reshape(count, -1)
    finite = np.ones(count, dtype=bool)
    for start in range(0, count, 65_536):  # a row mask in blocks: no N x D temporary of booleans
        finite[start : start + 65_536] = np.isfinite(flat[start : start + 65_536]).all(axis=1)
    if not finite.all():
        first = int(np.flatnonzero(~finite)[0])
        raise DescriptorFileError(
            f"{prefix}descriptor {first} ({_name(names[first])!r}) holds NaN or infinity "
            f"({int((~finite).sum())} such rows)"
        )
    texts = [_name(name) for name in names.tolist()]
    empty = [i for i, text in enumerate(texts) if not text.strip()]
    if empty:
        raise DescriptorFileError(f"{prefix}name {empty[0]} is empty ({len(empty)} empty names): every face needs one")
    repeated = [name for name, times in Counter(texts).items() if times > 1]
    if repeated:
        raise DescriptorFileError(
            f"{prefix}{len(repeated)} names are given more than once (e.g. {sorted(repeated)[0]!r}): names must be "
            "unique"
        )
    return Faces.new(vectors, texts, encoder=encoder)


def _name(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)
