"""Does each servable fit its stage of the pipeline file? Misfits said as the key to change and the value to set.

The gateway runs these checks when its backend starts (a misfit stops it with the
reason, instead of a 500 on every request later) and again, lazily, whenever a stage
is answered by a version it has not checked yet; ``check-models`` prints them. Only
metadata is read here (``GetModelMetadata``): shapes, dtypes and aliases.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from app.errors import GatewayError, UnknownModel, UnknownSignature, UnknownVersion
from app.pipeline_config import PipelineConfig, StageConfig
from app.serving.base import Backend, SignatureMetadata, TensorSpec

__all__ = [
    "Misfit",
    "PipelineMisfit",
    "StageReport",
    "check_pipeline",
    "check_signature",
    "check_stage",
    "fit_latent",
    "latent_size",
    "misfits_of",
]

_FLOATS = (np.float16, np.float32, np.float64)
_INTEGERS = (np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64)
_OBJECT = np.dtype(object)


@dataclass(frozen=True)
class Misfit:
    """One thing that does not fit: the pipeline file's key it concerns, what is wrong, and the change to make."""

    key: str
    problem: str
    fix: str

    def __str__(self) -> str:
        return f"[{self.key}] {self.problem}; {self.fix}"

    def to_dict(self) -> dict[str, str]:
        return {"key": self.key, "problem": self.problem, "fix": self.fix}


@dataclass
class StageReport:
    """What one stage's servable looks like and what of it does not fit (empty ``misfits``: it fits)."""

    stage: str
    servable: str
    signature: SignatureMetadata | None = None
    misfits: list[Misfit] = field(default_factory=list)
    # Set when the servable could not be asked at all (serving down): not a misfit, just unknown yet.
    unreachable: str | None = None

    @property
    def fits(self) -> bool:
        return not self.misfits and self.unreachable is None


class PipelineMisfit(GatewayError):
    """The servables do not fit the pipeline file: the gateway cannot run the stage until one of them changes."""

    status_code = 503
    code = "pipeline_misfit"

    def __init__(self, source: str, misfits: Iterable[tuple[str, Misfit]]) -> None:
        self.misfits = list(misfits)
        lines = "; ".join(f"{stage}: {misfit}" for stage, misfit in self.misfits)
        super().__init__(f"the servables do not fit the pipeline file {source}: {lines}", retry_after=30)


def _dtype_name(dtype: np.dtype) -> str:
    return "string" if dtype == _OBJECT else np.dtype(dtype).name


def _shape_text(shape: tuple[int | None, ...] | None) -> str:
    if shape is None:
        return "unknown rank"
    return "[" + ",".join("?" if d is None else str(d) for d in shape) + "]"


def describe_tensor(spec: TensorSpec) -> str:
    return f"{_dtype_name(spec.dtype)} {_shape_text(spec.shape)}"


def _is(spec: TensorSpec, kinds: tuple[type, ...]) -> bool:
    return any(spec.dtype == np.dtype(kind) for kind in kinds)


def _closest(word: str, choices: Iterable[str]) -> str | None:
    choices = sorted(choices)
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.0)
    return close[0] if close else None


def latent_size(shape: tuple[int | None, ...] | None, *, batched: bool = True) -> int | None:
    """Values in one face's latent: the product of the dims after the batch dim (None when unknown)."""
    if shape is None:
        return None
    dims = shape[1:] if batched and len(shape) >= 2 else shape
    if any(d is None for d in dims):
        return None
    return math.prod(dims)


def _search_shapes(spec: TensorSpec, size: int) -> tuple[int, ...] | None:
    """The shape one latent of ``size`` values takes to fit the search input ``spec`` (None: it cannot)."""
    if spec.shape is None:
        return (1, size)
    dims = list(spec.shape)
    candidates = []
    if dims and dims[0] in (None, 1):  # a leading batch dim of one
        candidates.append([1, *dims[1:]])
    candidates.append(dims)  # or a latent with no batch dim
    for dims in candidates:
        unknown = [i for i, d in enumerate(dims) if d is None]
        known = math.prod(d for d in dims if d is not None)
        if not unknown and known == size:
            return tuple(dims)
        if len(unknown) == 1 and known and size % known == 0:
            dims = list(dims)
            dims[unknown[0]] = size // known
            return tuple(dims)
    return None


def fit_latent(latent: np.ndarray, spec: TensorSpec | None) -> np.ndarray:
    """One face's latent reshaped to what the search servable's latent input takes; ValueError if it cannot."""
    values = np.asarray(latent).reshape(-1)
    if spec is None:
        return values[np.newaxis]
    shape = _search_shapes(spec, values.size)
    if shape is None:
        raise ValueError(
            f"a latent of {values.size} values does not fit the search input {spec.name} {_shape_text(spec.shape)}"
        )
    return values.reshape(shape)


# -- per stage -------------------------------------------------------------------------------------


def _aliases(stage_name: str, stage: StageConfig, meta: SignatureMetadata) -> list[Misfit]:
    misfits = []
    suggested = set()  # signature inputs already named as the fix of a wrong alias
    for kind, wanted, offered in (("inputs", stage.inputs, meta.inputs), ("outputs", stage.outputs, meta.outputs)):
        for role, alias in wanted.items():
            if alias in offered:
                continue
            close = _closest(alias, offered)
            suggested.add(close)
            fix = (
                f"set {role} = {close!r} (the signature's {kind}: {', '.join(sorted(offered)) or 'none'})"
                if close
                else f"the signature has no {kind}: wire another signature or servable"
            )
            misfits.append(
                Misfit(f"{stage_name}.{kind}", f"{role} = {alias!r} is not one of the signature's {kind}", fix)
            )
    # An input with a stored default (e.g. the IVF search's probes) may go unfed: the servable fills it in.
    unfed = sorted(set(meta.inputs) - set(stage.inputs.values()) - suggested - meta.defaults)
    for alias in unfed:
        roles = ", ".join(role for role, _ in stage.inputs.items())
        misfits.append(
            Misfit(
                f"{stage_name}.inputs",
                f"the signature also needs input {alias!r} ({describe_tensor(meta.inputs[alias])}), "
                "which no role feeds",
                f"the gateway sends only {roles}: map one of them to {alias!r}, or export a signature without it",
            )
        )
    return misfits


def _image_input(stage_name: str, stage: StageConfig, spec: TensorSpec, *, fixed_size: bool) -> list[Misfit]:
    key = f"{stage_name}.inputs"
    shape = spec.shape
    if spec.dtype != np.uint8 and not _is(spec, _FLOATS):
        return [
            Misfit(
                key,
                f"image input {spec.name!r} is {_dtype_name(spec.dtype)}",
                "images go in as uint8 pixels or as float values: export the input as uint8 or float32",
            )
        ]
    if shape is not None and (len(shape) != 4 or shape[3] not in (None, 3)):
        return [
            Misfit(
                key,
                f"image input {spec.name!r} is {_shape_text(shape)}, not [batch, height, width, 3]",
                "export the input as a batch of RGB images [?, height, width, 3] (a fixed batch of 1 is fine)",
            )
        ]
    if shape is not None and shape[0] not in (None, 1):
        return [
            Misfit(
                key,
                f"image input {spec.name!r} has a fixed batch of {shape[0]}",
                "the gateway sends one face per call: export the batch dimension as 1 or as unknown (-1)",
            )
        ]
    sized = shape is not None and shape[1] is not None and shape[2] is not None
    wanted = stage.image.size
    if sized and wanted is not None and tuple(wanted) != (shape[1], shape[2]):
        return [
            Misfit(
                f"{stage_name}.image",
                f"size = {list(wanted)} but the servable's input is {shape[1]}x{shape[2]}",
                f"set size = [{shape[1]}, {shape[2]}] or remove it",
            )
        ]
    if fixed_size and not sized and wanted is None:
        return [
            Misfit(
                f"{stage_name}.image",
                f"image input {spec.name!r} is {_shape_text(shape)}: its height and width are not fixed",
                "set size = [height, width] to the size the model was trained on",
            )
        ]
    return []


def _check_detect(stage: StageConfig, meta: SignatureMetadata) -> list[Misfit]:
    misfits = _image_input("detect", stage, meta.inputs[stage.inputs["image"]], fixed_size=False)
    outputs = meta.outputs
    boxes = outputs[stage.outputs["boxes"]]
    if not _is(boxes, _FLOATS) or (boxes.shape is not None and (not boxes.shape or boxes.shape[-1] not in (None, 4))):
        misfits.append(
            Misfit(
                "detect.outputs",
                f"boxes = {boxes.name!r} is {describe_tensor(boxes)}, not float [?, N, 4]",
                "map boxes to the detector's box corners output",
            )
        )
    scores = outputs[stage.outputs["scores"]]
    if not _is(scores, _FLOATS):
        misfits.append(
            Misfit(
                "detect.outputs",
                f"scores = {scores.name!r} is {describe_tensor(scores)}, not float",
                "map scores to the detector's per-box score output",
            )
        )
    count_alias = stage.outputs.get("count")
    if count_alias is not None:
        count = outputs[count_alias]
        if not (_is(count, _FLOATS) or _is(count, _INTEGERS)) or (count.shape is not None and len(count.shape) > 1):
            misfits.append(
                Misfit(
                    "detect.outputs",
                    f"count = {count_alias!r} is {describe_tensor(count)}, not a number ([], [1] or [batch])",
                    "map count to the number-of-detections output, or remove count (every box is then read)",
                )
            )
    points_alias = stage.outputs.get("keypoints")
    if points_alias is not None:
        points = outputs[points_alias]
        if not _is(points, _FLOATS) or (points.shape is not None and (len(points.shape) < 3 or points.shape[-1] != 2)):
            misfits.append(
                Misfit(
                    "detect.outputs",
                    f"keypoints = {points_alias!r} is {describe_tensor(points)}, not float [?, N, points, 2]",
                    "map keypoints to the (y, x) face landmarks output, or remove it",
                )
            )
    return misfits


def _check_encode(stage: StageConfig, meta: SignatureMetadata) -> list[Misfit]:
    misfits = _image_input("encode", stage, meta.inputs[stage.inputs["image"]], fixed_size=True)
    latent = meta.outputs[stage.outputs["latent"]]
    if not _is(latent, _FLOATS):
        misfits.append(
            Misfit(
                "encode.outputs",
                f"latent = {latent.name!r} is {describe_tensor(latent)}; a latent must be float",
                "map latent to the encoder's float embedding output",
            )
        )
    return misfits


def _check_search(stage: StageConfig, meta: SignatureMetadata) -> list[Misfit]:
    misfits = []
    latent = meta.inputs[stage.inputs["latent"]]
    if not _is(latent, _FLOATS):
        misfits.append(
            Misfit(
                "search.inputs",
                f"latent = {latent.name!r} is {describe_tensor(latent)}; the gateway sends a float latent",
                "map latent to the search model's float query input",
            )
        )
    k = meta.inputs[stage.inputs["k"]]
    if not _is(k, _INTEGERS) or (k.shape is not None and math.prod(d or 1 for d in k.shape) != 1):
        misfits.append(
            Misfit(
                "search.inputs",
                f"k = {k.name!r} is {describe_tensor(k)}, not an integer scalar",
                "map k to the search model's int32 (or int64) number-of-matches input, shape [] or [1]",
            )
        )
    wanted = {"distances": (_FLOATS, "float"), "indices": (_INTEGERS, "an integer"), "filenames": ((), "string")}
    for role, (kinds, said) in wanted.items():
        spec = meta.outputs[stage.outputs[role]]
        ok = spec.dtype == _OBJECT if role == "filenames" else _is(spec, kinds)
        if not ok:
            misfits.append(
                Misfit(
                    "search.outputs",
                    f"{role} = {spec.name!r} is {describe_tensor(spec)}, where {said} is expected",
                    f"map {role} to the search model's {said} output",
                )
            )
    return misfits


def _check_translate(stage: StageConfig, meta: SignatureMetadata) -> list[Misfit]:
    misfits = _image_input("translate", stage, meta.inputs[stage.inputs["image"]], fixed_size=True)
    out = meta.outputs[stage.outputs["image"]]
    shape = out.shape
    if (out.dtype != np.uint8 and not _is(out, _FLOATS)) or (
        shape is not None and (len(shape) not in (3, 4) or shape[-1] not in (None, 3))
    ):
        misfits.append(
            Misfit(
                "translate.outputs",
                f"image = {out.name!r} is {describe_tensor(out)}, not an RGB image [?, height, width, 3]",
                "map image to the generator's image output (uint8, or float in [translate.image] range)",
            )
        )
    return misfits


_CHECKS = {"detect": _check_detect, "encode": _check_encode, "search": _check_search, "translate": _check_translate}


def check_stage(backend: Backend, stage_name: str, stage: StageConfig, *, version: int | None = None) -> StageReport:
    """One stage's servable against what the stage needs of it (metadata only)."""
    report = StageReport(stage_name, stage.servable)
    try:
        meta = backend.metadata(stage.ref(version=version))
    except UnknownSignature as exc:
        found = re.search(r"\(signatures: (.*)\)", exc.message)
        offered = [] if found is None else [s for s in found.group(1).split(", ") if s and s != "none"]
        close = _closest(stage.signature, offered)
        fix = (
            f"set signature = {close!r} (the servable's signatures: {', '.join(offered)})"
            if close
            else ("export the servable with a signature")
        )
        report.misfits.append(Misfit(stage_name, f"signature = {stage.signature!r} is not one of the servable's", fix))
        return report
    except (UnknownModel, UnknownVersion) as exc:
        report.misfits.append(
            Misfit(
                stage_name,
                f"servable = {stage.servable!r} is not served ({exc.message})",
                "set servable to a model name of serving_models.config, or add the model there and give it a version",
            )
        )
        return report
    except GatewayError as exc:
        report.unreachable = exc.message
        return report
    report.signature = meta
    report.misfits = check_signature(stage_name, stage, meta)
    return report


def check_signature(stage_name: str, stage: StageConfig, meta: SignatureMetadata) -> list[Misfit]:
    """What of one signature does not fit its stage: aliases first, then dtypes and shapes by role."""
    return _aliases(stage_name, stage, meta) or _CHECKS[stage_name](stage, meta)


def _check_wiring(config: PipelineConfig, reports: Mapping[str, StageReport]) -> list[tuple[str, Misfit]]:
    """What fits each servable alone but not the others: the latent between encoder and search, alignment points."""
    misfits = []
    encode, search = reports.get("encode"), reports.get("search")
    if encode and search and encode.signature and search.signature and encode.fits and search.fits:
        produced = encode.signature.outputs[config.encode.outputs["latent"]]
        taken = search.signature.inputs[config.search.inputs["latent"]]
        size = latent_size(produced.shape)
        if size is not None and _search_shapes(taken, size) is None:
            misfits.append(
                (
                    "search",
                    Misfit(
                        "search.inputs",
                        f"the encoder's latent {produced.name!r} is {_shape_text(produced.shape)} "
                        f"({size} values a face) "
                        f"but the search input {taken.name!r} is {_shape_text(taken.shape)}",
                        "index the gallery with this encoder (build-index), or wire the encoder it was built with",
                    ),
                )
            )
    for name in ("encode", "translate"):
        if config[name].crop == "aligned" and config.detect.outputs.get("keypoints") is None:
            misfits.append(
                (
                    name,
                    Misfit(
                        name,
                        'crop = "aligned" needs face landmarks, and [detect.outputs] maps no keypoints',
                        'set [detect.outputs] keypoints to the detector\'s landmarks output, or set crop = "box"',
                    ),
                )
            )
    return misfits


def _check_size_signature(backend: Backend, stage: StageConfig, report: StageReport) -> list[Misfit]:
    signature = stage.signatures.get("size")
    if signature is None or not report.fits:
        return []
    try:
        meta = backend.metadata(stage.ref(signature=signature))
    except UnknownSignature:
        return [
            Misfit(
                "search.signatures",
                f"size = {signature!r} is not one of the servable's signatures",
                "remove size (k is then checked by the model itself) or export that signature",
            )
        ]
    except GatewayError:
        return []
    if meta.inputs or "size" not in meta.outputs:
        return [
            Misfit(
                "search.signatures",
                f"size = {signature!r} must take no inputs and answer a 'size' output",
                "remove size, or export it as a signature with no inputs and one output named 'size'",
            )
        ]
    return []


def check_sharded(backend: Backend, stage_name: str, stage: StageConfig) -> StageReport:
    """A stage with several servables (a sharded search): each checked, their misfits named by shard."""
    if len(stage.servables) == 1:
        return check_stage(backend, stage_name, stage)
    combined = StageReport(stage_name, ", ".join(stage.servables))
    for servable in stage.servables:
        report = check_stage(backend, stage_name, stage.for_servable(servable))
        combined.signature = combined.signature or report.signature
        combined.misfits += [
            Misfit(misfit.key, f"shard {servable}: {misfit.problem}", misfit.fix) for misfit in report.misfits
        ]
        if report.unreachable is not None and combined.unreachable is None:
            combined.unreachable = f"shard {servable}: {report.unreachable}"
    return combined


def check_pipeline(backend: Backend, config: PipelineConfig) -> dict[str, StageReport]:
    """Every stage's report, with the cross-stage checks added to the stage they concern."""
    reports = {name: check_sharded(backend, name, stage) for name, stage in config.items()}
    for servable in config.search.servables:
        shard = config.search.for_servable(servable)
        reports["search"].misfits += _check_size_signature(backend, shard, reports["search"])
    for stage, misfit in _check_wiring(config, reports):
        reports[stage].misfits.append(misfit)
    return reports


def misfits_of(reports: Mapping[str, StageReport]) -> list[tuple[str, Misfit]]:
    return [(name, misfit) for name, report in reports.items() for misfit in report.misfits]
