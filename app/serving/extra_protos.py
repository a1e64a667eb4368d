"""TF Serving config messages that no installed wheel carries: BatchingParameters and MonitoringConfig.

``tensorflow_model_server`` reads ``--batching_parameters_file`` (and each model's
``batching_params.pbtxt``) as a ``BatchingParameters`` text proto, and ``--monitoring_config_file``
as a ``MonitoringConfig``. The ``tensorflow-serving-api`` wheel ships neither module, so both are
declared here field by field as tensorflow/serving 2.20.0 declares them
(``servables/tensorflow/session_bundle_config.proto``, ``config/monitoring_config.proto``): same
package, names, numbers and types, in a descriptor pool of their own. Parsed with
``google.protobuf.text_format``, a file is read by protobuf's rules, as TF Serving reads it.
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, wrappers_pb2

_PACKAGE = "tensorflow.serving"
_F = descriptor_pb2.FieldDescriptorProto
_WRAPPED = {
    "int64": ".google.protobuf.Int64Value",
    "string": ".google.protobuf.StringValue",
    "bool": ".google.protobuf.BoolValue",
}
_SCALAR = {"int64": _F.TYPE_INT64, "string": _F.TYPE_STRING, "bool": _F.TYPE_BOOL}

# (field, number, kind): "wrapped int64" is a google.protobuf.Int64Value, "repeated int64" a packed list.
BATCHING_PARAMETERS_FIELDS = (
    ("max_batch_size", 1, "wrapped int64"),
    ("batch_timeout_micros", 2, "wrapped int64"),
    ("max_enqueued_batches", 3, "wrapped int64"),
    ("num_batch_threads", 4, "wrapped int64"),
    ("thread_pool_name", 5, "wrapped string"),
    ("allowed_batch_sizes", 6, "repeated int64"),
    ("pad_variable_length_inputs", 7, "bool"),
    ("enable_large_batch_splitting", 8, "wrapped bool"),
    ("max_execution_batch_size", 9, "wrapped int64"),
)
PROMETHEUS_CONFIG_FIELDS = (("enable", 1, "bool"), ("path", 2, "string"))


def _field(name: str, number: int, kind: str) -> descriptor_pb2.FieldDescriptorProto:
    words = kind.split()
    field = _F(name=name, number=number, json_name=_camel(name))
    if words[0] == "wrapped":
        field.type, field.type_name, field.label = _F.TYPE_MESSAGE, _WRAPPED[words[1]], _F.LABEL_OPTIONAL
    elif words[0] == "repeated":
        field.type, field.label = _SCALAR[words[1]], _F.LABEL_REPEATED
    elif words[0] == "message":
        field.type, field.type_name, field.label = _F.TYPE_MESSAGE, f".{_PACKAGE}.{words[1]}", _F.LABEL_OPTIONAL
    else:
        field.type, field.label = _SCALAR[words[0]], _F.LABEL_OPTIONAL
    return field


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(word.title() for word in rest)


def _build_pool() -> descriptor_pool.DescriptorPool:
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    batching = descriptor_pb2.FileDescriptorProto(
        name="tensorflow_serving/servables/tensorflow/session_bundle_config.proto",
        package=_PACKAGE,
        syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"],
    )
    batching.message_type.add(name="BatchingParameters").field.extend(
        _field(*spec) for spec in BATCHING_PARAMETERS_FIELDS
    )
    monitoring = descriptor_pb2.FileDescriptorProto(
        name="tensorflow_serving/config/monitoring_config.proto", package=_PACKAGE, syntax="proto3"
    )
    monitoring.message_type.add(name="PrometheusConfig").field.extend(
        _field(*spec) for spec in PROMETHEUS_CONFIG_FIELDS
    )
    monitoring.message_type.add(name="MonitoringConfig").field.append(
        _field("prometheus_config", 1, "message PrometheusConfig")
    )
    pool.Add(batching)
    pool.Add(monitoring)
    return pool


_POOL = _build_pool()
BatchingParameters = message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"{_PACKAGE}.BatchingParameters"))
MonitoringConfig = message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"{_PACKAGE}.MonitoringConfig"))
