"""Message classes for caffe_subset.proto, compiled at run time with protobuf's descriptor API.

protoc would add a build step and generated code that pins a protobuf version; the subset is
small and regular, so a few lines of parsing turn it into a FileDescriptorProto instead. The
classes live in a private descriptor pool, so they never clash with another caffe_pb2 in the process.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

PROTO_FILE = Path(__file__).with_name("caffe_subset.proto")

_FD = descriptor_pb2.FieldDescriptorProto
_SCALARS = {
    "float": _FD.TYPE_FLOAT, "double": _FD.TYPE_DOUBLE, "int32": _FD.TYPE_INT32,
    "int64": _FD.TYPE_INT64, "uint32": _FD.TYPE_UINT32, "bool": _FD.TYPE_BOOL, "string": _FD.TYPE_STRING,
}
_LABELS = {"optional": _FD.LABEL_OPTIONAL, "repeated": _FD.LABEL_REPEATED}
_MESSAGE = re.compile(r"message\s+(\w+)\s*\{([^}]*)\}")
_FIELD = re.compile(r"(optional|repeated)\s+(\w+)\s+(\w+)\s*=\s*(\d+)\s*(?:\[([^\]]*)\])?\s*;")
_OPTION = re.compile(r"(\w+)\s*=\s*([^,\s]+)")


def parse_proto(text: str) -> descriptor_pb2.FileDescriptorProto:
    """The FileDescriptorProto of a proto2 file made of flat messages (the subset's grammar)."""
    text = re.sub(r"//[^\n]*", "", text)
    package = re.search(r"package\s+([\w.]+)\s*;", text).group(1)  # type: ignore[union-attr]
    file = descriptor_pb2.FileDescriptorProto(name="conta/caffe_subset.proto", package=package, syntax="proto2")
    for name, body in _MESSAGE.findall(text):
        message = file.message_type.add(name=name)
        for label, type_name, field_name, number, options in _FIELD.findall(body):
            field = message.field.add(name=field_name, number=int(number), label=_LABELS[label])
            if type_name in _SCALARS:
                field.type = _SCALARS[type_name]
            else:
                field.type, field.type_name = _FD.TYPE_MESSAGE, f".{package}.{type_name}"
            for key, value in _OPTION.findall(options or ""):
                if key == "default":
                    field.default_value = value
                elif key == "packed":
                    field.options.packed = value == "true"
    return file


@cache
def message_class(name: str) -> Any:
    """The generated class of message `name` (e.g. "NetParameter")."""
    pool = _pool()
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"caffe.{name}"))


@cache
def _pool() -> descriptor_pool.DescriptorPool:
    pool = descriptor_pool.DescriptorPool()
    pool.Add(parse_proto(PROTO_FILE.read_text()))
    return pool
