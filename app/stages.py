"""The pipeline's stages: which servable, signature and tensor aliases each one uses (defaults per DESIGN.md).

A user whose own trained models use other names changes them here, never in the
code that calls the models; shapes, dtypes and sizes are read from each servable's
metadata, not written down.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from app.serving.base import DEFAULT_SIGNATURE, ModelRef


@dataclass(frozen=True)
class Stage:
    """One model call of the pipeline: a servable and the aliases of the tensors it reads and writes by role."""

    servable: str
    inputs: Mapping[str, str]
    outputs: Mapping[str, str]
    signature: str = DEFAULT_SIGNATURE
    extra_signatures: Mapping[str, str] = field(default_factory=dict)
    # The pixel range 0..255 maps to this range for a float image input (and back for a float image output).
    value_range: tuple[float, float] = (0.0, 255.0)

    def ref(self, *, version: int | None = None, label: str | None = None, signature: str | None = None) -> ModelRef:
        return ModelRef(self.servable, version=version, label=label, signature=signature or self.signature)


def _stage(
    servable: str,
    inputs: dict[str, str],
    outputs: dict[str, str],
    value_range: tuple[float, float] = (0.0, 255.0),
    **extra: str,
) -> Stage:
    return Stage(
        servable,
        MappingProxyType(inputs),
        MappingProxyType(outputs),
        extra_signatures=MappingProxyType(extra),
        value_range=value_range,
    )


DETECT = _stage(
    "face_detection",
    {"image": "input_images"},
    {"boxes": "boxes", "scores": "scores", "classes": "classes", "count": "num_detections"},
)
ENCODE = _stage("twingan_latent_encoder", {"image": "input_images"}, {"latent": "output"})
SEARCH = _stage(
    "latent_search_model",
    {"latent": "target_latent", "k": "k_num"},
    {"distances": "xvals", "indices": "indices", "filenames": "filenames"},
    size="gallery_size",
)
TRANSLATE = _stage("ugatit_selfie2anime", {"image": "input_images"}, {"image": "output_images"}, (-1.0, 1.0))

DEFAULT_STAGES: Mapping[str, Stage] = MappingProxyType(
    {"detect": DETECT, "encode": ENCODE, "search": SEARCH, "translate": TRANSLATE}
)
