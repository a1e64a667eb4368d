"""app/serving/protos: the TF Serving API without TensorFlow, equal to the official stubs, in a pool of its own.

Every generated file is compared with the official one (the tensorflow-serving-api and tensorflow wheels,
installed in the full profile): file descriptors whole, then message by message and field by field, and
services method by method. Messages travel between the two sets as bytes, unchanged both ways; both sets
load in one process in either order; and the generated code is what scripts/generate_protos.py makes now.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import pkgutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from google.protobuf import descriptor, descriptor_pb2, descriptor_pool, text_format

import app.serving.protos as protos
from app.serving import tensors
from app.serving.base import metadata_from_signature_defs
from scripts.generate_protos import requirement_pins

REPO = Path(__file__).resolve().parents[2]
PACKAGE = protos.__name__ + "."
GENERATED = sorted(
    info.name for info in pkgutil.walk_packages(protos.__path__, PACKAGE) if info.name.endswith(("_pb2", "_pb2_grpc"))
)
MESSAGES = [name for name in GENERATED if name.endswith("_pb2")]
SERVICES = [name for name in GENERATED if name.endswith("_pb2_grpc")]


@pytest.fixture(scope="module")
def official() -> descriptor_pool.DescriptorPool:
    """The default pool, holding every file the official stubs of the gateway's roots load."""
    for module in (
        "tensorflow_serving.apis.prediction_service_pb2",
        "tensorflow_serving.apis.model_service_pb2",
        "tensorflow_serving.config.model_server_config_pb2",
    ):
        importlib.import_module(module)
    return descriptor_pool.Default()


def _file_proto(file: descriptor.FileDescriptor) -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto()
    file.CopyToProto(proto)
    return proto


def _module(name: str) -> ModuleType:
    return importlib.import_module(name)


def test_the_package_holds_the_gateways_roots() -> None:
    for root in ("tensorflow_serving.apis.predict_pb2", "tensorflow_serving.apis.prediction_service_pb2_grpc",
                 "tensorflow_serving.apis.model_service_pb2_grpc", "tensorflow_serving.config.model_server_config_pb2",
                 "tensorflow.core.protobuf.meta_graph_pb2", "tensorflow.core.framework.tensor_pb2"):  # fmt: skip
        assert PACKAGE + root in GENERATED


@pytest.mark.parametrize("name", MESSAGES)
def test_each_file_equals_the_official_one(name: str, official: descriptor_pool.DescriptorPool) -> None:
    ours = _module(name).DESCRIPTOR
    theirs = official.FindFileByName(ours.name)
    assert ours is not theirs
    assert _file_proto(ours) == _file_proto(theirs)
    assert ours.serialized_pb == theirs.serialized_pb


def _fields(message: descriptor.Descriptor) -> list[tuple]:
    return [
        (
            field.name,
            field.number,
            field.type,
            field.cpp_type,
            field.is_repeated,
            field.message_type.full_name if field.message_type else None,
            field.enum_type.full_name if field.enum_type else None,
            field.containing_oneof.name if field.containing_oneof else None,
            field.has_presence,
        )
        for field in message.fields
    ]


def _walk(messages) -> list[descriptor.Descriptor]:
    found = []
    for message in messages:
        found.append(message)
        found += _walk(message.nested_types)
    return found


@pytest.mark.parametrize("name", MESSAGES)
def test_each_message_equals_the_official_one_field_by_field(name: str, official) -> None:
    ours = _module(name).DESCRIPTOR
    theirs = official.FindFileByName(ours.name)
    our_messages, their_messages = (
        _walk(ours.message_types_by_name.values()),
        _walk(theirs.message_types_by_name.values()),
    )
    assert [m.full_name for m in our_messages] == [m.full_name for m in their_messages]
    for mine, official_message in zip(our_messages, their_messages, strict=True):
        assert _fields(mine) == _fields(official_message), mine.full_name
        assert [e.full_name for e in mine.enum_types] == [e.full_name for e in official_message.enum_types]
    for enum_name, enum in ours.enum_types_by_name.items():
        assert [(v.name, v.number) for v in enum.values] == [
            (v.name, v.number) for v in theirs.enum_types_by_name[enum_name].values
        ]


class _RecordingChannel:
    """A channel that only records the methods a stub asks it for."""

    def __init__(self) -> None:
        self.methods: list[str] = []

    def unary_unary(self, method: str, *args, **kwargs):
        self.methods.append(method)
        return lambda *call_args, **call_kwargs: None


@pytest.mark.parametrize("name", SERVICES)
def test_each_service_equals_the_official_one(name: str, official) -> None:
    ours = _module(name)
    theirs = importlib.import_module(name.removeprefix(PACKAGE))
    for stub in [attr for attr in dir(theirs) if attr.endswith("Stub")]:
        mine, official_channel = _RecordingChannel(), _RecordingChannel()
        getattr(ours, stub)(mine)
        getattr(theirs, stub)(official_channel)
        assert mine.methods == official_channel.methods and mine.methods, stub
    file = _module(name.removesuffix("_grpc")).DESCRIPTOR
    for service_name, service in file.services_by_name.items():
        official_service = official.FindFileByName(file.name).services_by_name[service_name]
        assert [(m.name, m.input_type.full_name, m.output_type.full_name) for m in service.methods] == [
            (m.name, m.input_type.full_name, m.output_type.full_name) for m in official_service.methods
        ]


def test_the_modules_live_in_their_own_pool(official) -> None:
    for name in MESSAGES:
        file = _module(name).DESCRIPTOR
        assert file.pool is protos.POOL
        assert official.FindFileByName(file.name) is not file


# -- the two sets together --------------------------------------------------------------------------


def _predict_requests():
    from app.serving.protos.tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "latent_search_model"
    request.model_spec.version_label = "stable"
    request.model_spec.signature_name = "serving_default"
    request.output_filter.append("indices")
    for alias, value in {
        "target_latent": np.linspace(-1, 1, 8, dtype=np.float32).reshape(1, 8),
        "k_num": np.int32(5),
        "names": np.array(["visage é", b"\x00\xff"], dtype=object),
    }.items():
        request.inputs[alias].CopyFrom(tensors.to_tensor_proto(value))
    return request


def test_bytes_cross_between_the_two_sets_unchanged() -> None:
    from tensorflow_serving.apis import predict_pb2 as official_predict

    from app.serving.protos.tensorflow_serving.apis import predict_pb2

    ours = _predict_requests()
    data = ours.SerializeToString(deterministic=True)
    theirs = official_predict.PredictRequest.FromString(data)
    assert theirs.SerializeToString(deterministic=True) == data
    assert text_format.MessageToString(theirs) == text_format.MessageToString(ours)
    back = predict_pb2.PredictRequest.FromString(theirs.SerializeToString())
    assert back == ours
    assert tensors.from_tensor_proto(theirs.inputs["target_latent"]).tolist() == (
        tensors.from_tensor_proto(ours.inputs["target_latent"]).tolist()
    )


def test_metadata_reads_signature_defs_of_either_set() -> None:
    """The embedded runtime hands TensorFlow's SignatureDefs to the same function GrpcBackend hands ours."""
    from tensorflow_serving.apis import get_model_metadata_pb2 as official_metadata

    from app.serving.protos.tensorflow_serving.apis import get_model_metadata_pb2

    text = """
    signature_def { key: "serving_default" value {
      method_name: "tensorflow/serving/predict"
      inputs { key: "target_latent" value { name: "x:0" dtype: DT_FLOAT tensor_shape { dim { size: -1 } dim { size: 128 } } } }
      inputs { key: "k_num" value { name: "k:0" dtype: DT_INT32 tensor_shape { } } }
      outputs { key: "filenames" value { name: "f:0" dtype: DT_STRING tensor_shape { unknown_rank: true } } }
    } }
    signature_def { key: "__saved_model_init_op" value { } }
    """  # noqa: E501
    theirs = text_format.Parse(text, official_metadata.SignatureDefMap())
    response = official_metadata.GetModelMetadataResponse()
    response.model_spec.name = "latent_search_model"
    response.model_spec.version.value = 3
    response.metadata["signature_def"].Pack(theirs)
    # What GrpcBackend receives: the bytes, read with its own classes.
    received = get_model_metadata_pb2.GetModelMetadataResponse.FromString(response.SerializeToString())
    ours = get_model_metadata_pb2.SignatureDefMap()
    assert received.metadata["signature_def"].Unpack(ours)
    from_ours = metadata_from_signature_defs("latent_search_model", 3, ours.signature_def)
    from_theirs = metadata_from_signature_defs("latent_search_model", 3, theirs.signature_def)
    assert from_ours == from_theirs
    signature = from_ours.signature("serving_default")
    assert signature.inputs["target_latent"].shape == (None, 128)
    assert signature.inputs["k_num"].dtype == np.int32 and signature.outputs["filenames"].shape is None


def test_the_serving_config_parses_alike_in_both_sets() -> None:
    from tensorflow_serving.config import model_server_config_pb2 as official_config

    from app.serving.protos.tensorflow_serving.config import model_server_config_pb2

    text = (REPO / "serving_models.config").read_text(encoding="utf-8")
    ours = text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
    theirs = text_format.Parse(text, official_config.ModelServerConfig())
    assert ours.SerializeToString(deterministic=True) == theirs.SerializeToString(deterministic=True)


_LOAD_ALL = "; ".join(f"import {name}" for name in GENERATED)
_LOAD_OFFICIAL = (
    "import tensorflow_serving.apis.prediction_service_pb2_grpc, tensorflow_serving.apis.model_service_pb2_grpc, "
    "tensorflow_serving.config.model_server_config_pb2, tensorflow.core.protobuf.meta_graph_pb2"
)


@pytest.mark.slow
@pytest.mark.parametrize("first", ["generated", "official"])
def test_both_sets_load_in_one_process_in_either_order(first: str) -> None:
    steps = [_LOAD_ALL, _LOAD_OFFICIAL] if first == "generated" else [_LOAD_OFFICIAL, _LOAD_ALL]
    code = "; ".join(steps) + "; print('loaded')"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "loaded", result.stderr[-2000:]


def test_the_generated_modules_import_no_tensorflow() -> None:
    code = (
        f"import sys; {_LOAD_ALL}\n"
        "from google.protobuf import descriptor_pool\n"
        "try:\n"
        "    descriptor_pool.Default().FindFileByName('tensorflow/core/framework/tensor.proto')\n"
        "    sys.exit('registered in the default pool')\n"
        "except KeyError:\n"
        "    pass\n"
        "sys.exit([m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'tensorflow_serving')][:5] or 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]


# -- where they come from -----------------------------------------------------------------------------


def test_the_generated_modules_are_what_the_script_makes_now() -> None:
    script = REPO / "scripts" / "generate_protos.py"
    result = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_manifest_names_the_pinned_release_and_its_descriptors(official) -> None:
    manifest = json.loads((Path(protos.__file__).parent / "MANIFEST.json").read_text(encoding="utf-8"))
    pins = requirement_pins(REPO / "requirements.txt")
    assert manifest["descriptors_from"] == {
        name: pins[name] for name in ("tensorflow", "tensorflow-serving-api", "protobuf")
    }
    for file_name, digest in manifest["files"].items():
        assert hashlib.sha256(official.FindFileByName(file_name).serialized_pb).hexdigest() == digest, file_name
    assert {_module(name).DESCRIPTOR.name for name in MESSAGES} == set(manifest["files"])
