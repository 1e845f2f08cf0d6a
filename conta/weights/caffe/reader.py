"""A .caffemodel as a list of layers with their weights as float32 arrays and their geometry."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf.message import DecodeError

from conta.errors import DataError
from conta.weights.caffe.proto import message_class

V1_TYPES: dict[int, str] = {4: "Convolution", 14: "InnerProduct"}  # V1LayerParameter.LayerType


@dataclass
class CaffeLayer:
    """One layer: blobs in Caffe's order, and the settings a converter must check against its model."""

    name: str
    type: str
    blobs: list[np.ndarray] = field(default_factory=list)
    kernel: int = 0
    stride: int = 1
    pad: int = 0
    dilation: int = 1
    num_output: int = 0
    eps: float = 1e-5


def read_caffemodel(path: str | Path) -> list[CaffeLayer]:
    """Every layer of a trained net (the binary .caffemodel, not the .prototxt), in file order."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(path, "caffemodel not found") from None
    net = message_class("NetParameter")()
    try:
        net.ParseFromString(data)
    except DecodeError as exc:
        raise DataError(path, f"not a binary Caffe NetParameter ({exc})") from None
    layers = [_layer(p, p.type) for p in net.layer]
    layers += [_layer(p, V1_TYPES.get(p.type, f"V1:{p.type}")) for p in net.layers]
    if not layers:
        raise DataError(path, "no layers (a .prototxt or an empty net? give the trained .caffemodel)")
    return layers


def _layer(proto: Any, kind: str) -> CaffeLayer:
    layer = CaffeLayer(proto.name, kind, [_array(b) for b in proto.blobs])
    if kind == "Convolution":
        conv = proto.convolution_param
        layer.kernel = _first(conv.kernel_size, conv.kernel_h)
        layer.stride = _first(conv.stride, conv.stride_h or 1)
        layer.pad = _first(conv.pad, conv.pad_h)
        layer.dilation = _first(conv.dilation, 1)
        layer.num_output = conv.num_output
    elif kind == "BatchNorm":
        layer.eps = proto.batch_norm_param.eps
    return layer


def _first(values: Any, default: int) -> int:
    """Caffe's repeated geometry fields: one value for every axis, or none for the default."""
    return int(values[0]) if len(values) else int(default)


def _array(blob: Any) -> np.ndarray:
    values = blob.data if len(blob.data) else blob.double_data
    array = np.fromiter(values, np.float32, len(values))
    if blob.HasField("shape"):
        shape = tuple(int(d) for d in blob.shape.dim)
    else:
        shape = tuple(d for d in (blob.num, blob.channels, blob.height, blob.width))
    return array.reshape(shape) if shape and int(np.prod(shape)) == array.size else array
