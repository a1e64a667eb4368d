"""What `check-models` finds: does each servable fit its pipeline stage? Verdicts, the exact change, a test call.

For every stage it prints the servable's signature, a verdict, and for each misfit
the key of the pipeline file to change and the value to set; then it sends one
synthetic request through each servable that fits, the way the pipeline would. It
exits non-zero on any misfit or failed request; ``--json`` prints the same as JSON.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from app.errors import GatewayError
from app.pipeline import Face, Photo, Pipeline
from app.pipeline_check import StageReport, check_pipeline, describe_tensor
from app.pipeline_config import PipelineConfig

# The synthetic photo: a mid-grey square the size of a small portrait.
_PHOTO_SIDE = 256


@dataclass
class CallResult:
    """One synthetic request through a stage's servable: what came back, or why it failed."""

    ok: bool
    said: str
    milliseconds: float = 0.0


@dataclass
class CheckReport:
    """Everything check-models found, stage by stage."""

    pipeline_source: str
    model_config: str
    stages: dict[str, StageReport]
    calls: dict[str, CallResult] = field(default_factory=dict)

    @property
    def fits(self) -> bool:
        return all(report.fits for report in self.stages.values()) and all(call.ok for call in self.calls.values())

    def to_dict(self) -> dict[str, Any]:
        stages = {}
        for name, report in self.stages.items():
            entry: dict[str, Any] = {"servable": report.servable, "fits": report.fits}
            if report.signature is not None:
                entry["version"] = report.signature.version
                entry["signature"] = report.signature.name
                entry["inputs"] = {a: describe_tensor(s) for a, s in sorted(report.signature.inputs.items())}
                entry["outputs"] = {a: describe_tensor(s) for a, s in sorted(report.signature.outputs.items())}
            if report.unreachable:
                entry["unreachable"] = report.unreachable
            entry["misfits"] = [misfit.to_dict() for misfit in report.misfits]
            call = self.calls.get(name)
            if call is not None:
                entry["request"] = {"ok": call.ok, "said": call.said, "ms": round(call.milliseconds, 1)}
            stages[name] = entry
        return {
            "pipeline_file": self.pipeline_source,
            "model_config": self.model_config,
            "fits": self.fits,
            "stages": stages,
        }


def check_models(pipeline: Pipeline, *, model_config: str = "", requests: bool = True) -> CheckReport:
    """Check every stage's servable against the pipeline file, then call each one that fits."""
    config: PipelineConfig = pipeline.config
    report = CheckReport(config.source, model_config, check_pipeline(pipeline.backend, config))
    if requests:
        report.calls = _synthetic_requests(pipeline, report.stages)
    return report


def _synthetic_requests(pipeline: Pipeline, stages: dict[str, StageReport]) -> dict[str, CallResult]:
    """One request through each stage that fits, in pipeline order, each fed what the one before gave."""
    photo = Photo(np.full((_PHOTO_SIDE, _PHOTO_SIDE, 3), 128, np.uint8), (_PHOTO_SIDE, _PHOTO_SIDE))
    landmarks = ((0.4, 0.35), (0.4, 0.65), (0.55, 0.5), (0.7, 0.5), (0.45, 0.2), (0.45, 0.8))
    face = Face((0.2, 0.2, 0.8, 0.8), 1.0, landmarks)
    latent: list[np.ndarray] = []

    def detect() -> str:
        faces, version = pipeline.detect_faces(photo)
        return f"version {version}: {len(faces)} face(s) above {pipeline.threshold:g} in a grey square"

    def encode() -> str:
        crop = pipeline.face_crop("encode", photo, face, pipeline.input_side("encode", None))
        latent.append(pipeline.encode([crop])[0])
        return f"a latent of shape {list(latent[0].shape)} for a {crop.shape[1]}x{crop.shape[0]} crop"

    def search() -> str:
        if not latent:
            return "skipped: no latent from the encoder to search with"
        found = pipeline.search(latent[0], 1)
        matches = found.matches
        nearest = f"nearest {matches[0].filename!r} at {matches[0].distance:.4g}" if matches else "no match"
        missing = f" ({len(found.missing)} shard(s) not answering)" if found.missing else ""
        return f"version {found.version}: {nearest}{missing}"

    def translate() -> str:
        crop = pipeline.face_crop("translate", photo, face, pipeline.input_side("translate", None))
        image = pipeline.translate(crop)
        return f"a {image.shape[1]}x{image.shape[0]} image for a {crop.shape[1]}x{crop.shape[0]} crop"

    calls: dict[str, Callable[[], str]] = {"detect": detect, "encode": encode, "search": search, "translate": translate}
    results = {}
    for name, call in calls.items():
        if not stages[name].fits:
            continue
        started = time.perf_counter()
        try:
            said = call()
        except GatewayError as exc:
            results[name] = CallResult(False, f"{exc.code}: {exc.message}", (time.perf_counter() - started) * 1000)
        else:
            results[name] = CallResult(True, said, (time.perf_counter() - started) * 1000)
    return results


def report_lines(report: CheckReport) -> Iterator[str]:
    """What a person reads: a verdict per stage, the signature, and for each misfit the change to make."""
    yield f"pipeline file: {report.pipeline_source}"
    yield f"model config:  {report.model_config}"
    for name, stage in report.stages.items():
        call = report.calls.get(name)
        verdict = "fits" if stage.fits and (call is None or call.ok) else "DOES NOT FIT"
        if stage.unreachable:
            verdict = "CANNOT BE ASKED"
        version = f" version {stage.signature.version}" if stage.signature else ""
        yield ""
        yield f"{name}: {stage.servable}{version} - {verdict}"
        if stage.signature is not None:
            yield f"    signature {stage.signature.name!r}"
            for kind, specs in (("in ", stage.signature.inputs), ("out", stage.signature.outputs)):
                for alias, spec in sorted(specs.items()):
                    yield f"      {kind} {alias}: {describe_tensor(spec)}"
        if stage.unreachable:
            yield f"    the servable cannot be asked: {stage.unreachable}"
        for misfit in stage.misfits:
            yield f"    misfit in [{misfit.key}]: {misfit.problem}"
            yield f"      change: {misfit.fix}"
        if call is not None:
            yield f"    request: {'ok' if call.ok else 'FAILED'} in {call.milliseconds:.0f} ms: {call.said}"
    yield ""
    yield "every stage fits" if report.fits else "some stages do not fit: change what each 'change:' line says"
