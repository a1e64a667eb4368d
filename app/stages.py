"""Transitional aliases for the stage table, which now lives in the pipeline file (``app.pipeline_config``)."""

from __future__ import annotations

from app.pipeline_config import DEFAULT_PIPELINE, StageConfig

Stage = StageConfig
DEFAULT_STAGES = DEFAULT_PIPELINE
DETECT = DEFAULT_PIPELINE.detect
ENCODE = DEFAULT_PIPELINE.encode
SEARCH = DEFAULT_PIPELINE.search
TRANSLATE = DEFAULT_PIPELINE.translate
