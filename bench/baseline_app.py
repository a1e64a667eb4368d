"""The portrait pipeline written the way the original tutorial did it: the baseline bench/pipeline.py measures against.

Deliberately naive but correct, so that the benchmark compares ways of writing the app,
not a broken app:

* the upload is saved to ``BASELINE_UPLOAD_DIR`` under its client-given name
  (``secure_filename``) and read back with ``cv2.imread`` at full resolution;
* the stages run one after another: detect -> crop -> encode -> search -> translate;
* every model call builds a fresh ``PredictRequest`` with ``tf.make_tensor_proto`` and
  reads the answer from ``float_val`` / ``int_val`` / ``string_val`` with
  ``np.array(...).reshape``, as a client of TF Serving's default answers must;
* the full-resolution photo goes to the detector.

No TF Serving binary runs here, so :class:`InProcessModelServer` plays its part in this
process: TF Serving's ``Predict`` over the gateway's own ``ModelRuntime`` (the same
SavedModels, loaded the same way), answering with typed ``*_val`` fields as TF Serving does.
Nothing goes over a socket, which spares the baseline the wire's copies: its figures are,
if anything, flattering.

Run it with the gateway's gunicorn settings::

    BASELINE_MODEL_CONFIG=serving_models.config GATEWAY_BIND=127.0.0.1:8001 \\
        .venv/bin/gunicorn --config gunicorn.conf.py 'bench.baseline_app:create_app()'

The page shows what the gateway's result page shows: the photo (long side 800), the face
crop, the anime image and the k nearest gallery faces.
"""

from __future__ import annotations

import base64
import os
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import tensorflow as tf
from flask import Flask, render_template_string, request
from flask.typing import ResponseReturnValue
from tensorflow_serving.apis import predict_pb2
from werkzeug.utils import secure_filename

from app.serving.runtime import ModelRuntime

REPO = Path(__file__).resolve().parents[1]
THRESHOLD = 0.7
CROP_SCALE = 1.75
K = 5
PHOTO_MAX_SIDE = 800
CROP_MAX_SIDE = 320

# TF Serving answers with the typed field of each dtype (Tensor::AsProtoField), not tensor_content.
_VAL_FIELDS = {
    np.dtype(np.float32): "float_val",
    np.dtype(np.float64): "double_val",
    np.dtype(np.int32): "int_val",
    np.dtype(np.int16): "int_val",
    np.dtype(np.int8): "int_val",
    np.dtype(np.uint8): "int_val",
    np.dtype(np.int64): "int64_val",
    np.dtype(np.bool_): "bool_val",
    np.dtype(object): "string_val",
}

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Result</title></head>
<body>
<h1>Result</h1>
<p>Face score {{ "%.2f"|format(score) }}, done in {{ "%.0f"|format(total_ms) }} ms.</p>
<img src="data:image/jpeg;base64,{{ photo }}" alt="photo">
<img src="data:image/jpeg;base64,{{ crop }}" alt="face">
<img src="data:image/png;base64,{{ anime }}" alt="anime">
<ol>{% for name, distance in matches %}<li data-match="{{ name }}">{{ name }} ({{ "%.1f"|format(distance) }})</li>
{% endfor %}</ol>
</body></html>
"""


class InProcessModelServer:
    """TF Serving's Predict in this process: PredictRequest in, PredictResponse with typed ``*_val`` fields out."""

    def __init__(self, model_config: Path) -> None:
        self.runtime = ModelRuntime(model_config, poll=False)

    def Predict(self, req: predict_pb2.PredictRequest) -> predict_pb2.PredictResponse:
        inputs = {alias: tf.make_ndarray(proto) for alias, proto in req.inputs.items()}
        version, outputs = self.runtime.predict(
            req.model_spec.name, inputs, signature=req.model_spec.signature_name or "serving_default"
        )
        response = predict_pb2.PredictResponse()
        response.model_spec.name = req.model_spec.name
        response.model_spec.version.value = version
        for alias, value in outputs.items():
            value = np.asarray(value)
            proto = response.outputs[alias]
            proto.dtype = tf.dtypes.as_dtype(value.dtype).as_datatype_enum
            for size in value.shape:
                proto.tensor_shape.dim.add(size=size)
            getattr(proto, _VAL_FIELDS[value.dtype]).extend(value.ravel().tolist())
        return response


def create_app() -> Flask:
    """The tutorial app over BASELINE_MODEL_CONFIG's servables, saving uploads into BASELINE_UPLOAD_DIR."""
    app = Flask(__name__)
    app.config["UPLOAD_FOLDER"] = os.environ.get("BASELINE_UPLOAD_DIR") or tempfile.mkdtemp(prefix="baseline-")
    app.config["MAX_CONTENT_LENGTH"] = 20 * 1024 * 1024
    server = InProcessModelServer(Path(os.environ.get("BASELINE_MODEL_CONFIG", REPO / "serving_models.config")))

    def predict(model: str, **inputs: tf.Tensor) -> predict_pb2.PredictResponse:
        req = predict_pb2.PredictRequest()
        req.model_spec.name = model
        req.model_spec.signature_name = "serving_default"
        for name, proto in inputs.items():
            req.inputs[name].CopyFrom(proto)
        return server.Predict(req)

    @app.get("/readyz")
    def readyz() -> ResponseReturnValue:
        return {"status": "ready"}

    @app.post("/detect_face/image")
    def detect_face() -> ResponseReturnValue:
        started = time.perf_counter()
        file = request.files.get("image_file")
        if file is None or not file.filename:
            return "No image uploaded", 400
        path = os.path.join(app.config["UPLOAD_FOLDER"], secure_filename(file.filename) or "upload")  # noqa: PTH118
        file.save(path)
        image = cv2.imread(path)
        if image is None:
            return "Not an image", 415
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        height, width = image.shape[:2]

        result = predict("face_detection", input_images=tf.make_tensor_proto(image[np.newaxis], dtype=tf.uint8))
        count = int(np.array(result.outputs["num_detections"].float_val)[0])
        boxes = np.array(result.outputs["boxes"].float_val).reshape(-1, 4)[:count]
        scores = np.array(result.outputs["scores"].float_val)[:count]
        if count == 0 or scores.max() < THRESHOLD:
            return "No face found", 422
        ymin, xmin, ymax, xmax = boxes[int(np.argmax(scores))]

        centre_y, centre_x = (ymin + ymax) / 2 * height, (xmin + xmax) / 2 * width
        side = round(min(max(max((ymax - ymin) * height, (xmax - xmin) * width) * CROP_SCALE, 1), height, width))
        top = min(max(round(centre_y - side / 2), 0), height - side)
        left = min(max(round(centre_x - side / 2), 0), width - side)
        face = image[top : top + side, left : left + side]

        # The encoder's input size, written down as the tutorial wrote its sizes (the demo encoder takes 150 px).
        face_150 = cv2.resize(face, (150, 150), interpolation=cv2.INTER_AREA)
        result = predict("twingan_latent_encoder", input_images=tf.make_tensor_proto(face_150[np.newaxis]))
        latent = np.array(result.outputs["output"].float_val, dtype=np.float32).reshape(1, -1)

        result = predict(
            "latent_search_model",
            target_latent=tf.make_tensor_proto(latent),
            k_num=tf.make_tensor_proto(K, dtype=tf.int32),
        )
        distances = np.array(result.outputs["xvals"].float_val).reshape(-1)
        filenames = [name.decode() for name in result.outputs["filenames"].string_val]

        face_256 = cv2.resize(face, (256, 256), interpolation=cv2.INTER_AREA).astype(np.float32) / 127.5 - 1
        result = predict("ugatit_selfie2anime", input_images=tf.make_tensor_proto(face_256[np.newaxis]))
        anime = np.array(result.outputs["output_images"].float_val).reshape(256, 256, 3)
        anime = np.clip((anime + 1) * 127.5 + 0.5, 0, 255).astype(np.uint8)

        scale = min(1.0, PHOTO_MAX_SIDE / max(height, width))
        photo = cv2.resize(image, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_AREA)
        shown_face = cv2.resize(face, (min(side, CROP_MAX_SIDE),) * 2, interpolation=cv2.INTER_AREA)
        return render_template_string(
            PAGE,
            score=float(scores.max()),
            total_ms=(time.perf_counter() - started) * 1000,
            photo=_b64(".jpg", photo),
            crop=_b64(".jpg", shown_face),
            anime=_b64(".png", anime),
            matches=list(zip(filenames, distances, strict=True)),
        )

    return app


def _b64(extension: str, rgb: np.ndarray) -> str:
    ok, encoded = cv2.imencode(extension, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError(f"could not encode {extension}")
    return base64.b64encode(encoded.tobytes()).decode("ascii")
