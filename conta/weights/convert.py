"""Import DeepLab / ResNet weights from Caffe (.caffemodel) and from deeplab-pytorch checkpoints.

The output is one file, `torch.save({"model": state dict, "meta": ...})` (loads with
weights_only=True), of one of two kinds:

- "deeplab_v2": a whole DeepLab v2 (trunk + ASPP) under the keys `conta seg train` writes
  (base.backbone.*, base.aspp.branches.<k>.*), so `seg.pretrained` and the Predictor take it as is;
- "resnet_backbone": the trunk only, under torchvision key names (conv1.weight, layer1.0.conv1.weight),
  as from an ImageNet Caffe ResNet (MSRA) whose classifier has no use in a segmenter.

Both record `stride_in_1x1` (Caffe/MSRA ResNets stride in the first 1x1 of a block, torchvision in
the 3x3: same shapes, different network, so the segmenter must be built to match) and
`normalization: caffe` (BGR, mean subtraction only), plus arch and width inferred from the tensors.

Name mapping: conv1 / bn_conv1 + scale_conv1 -> conv1 / bn1;
res{L}{a,b,c | a,b1..b22}_branch{1,2a,2b,2c} and bn/scale twins -> layer{L-1}.{block}.{downsample.0,
conv1, conv2, conv3} and {downsample.1, bn1, bn2, bn3}; fc1_<name>_c{k} -> ASPP branch k.
Caffe BatchNorm stores mean and variance multiplied by a scale factor (its third blob), so both
are divided by it; a different eps is folded into the variance (var + eps is what BN uses); the
Scale layer after it holds the affine weight and bias. Every source tensor is either converted or
skipped for a stated reason, and the result is loaded strictly into the model the meta describes.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from conta.data.voc import VOC_CLASSES
from conta.artifacts.model_file import read_model_file, save_model_file
from conta.errors import ContaError
from conta.models.deeplab import MSC, deeplab_v2
from conta.models.resnet import ARCHS, Bottleneck, ResNet, resnet
from conta.weights.backbone import _read_state_dict

BN_EPS = 1e-5                          # conta's BatchNorm eps (nn.BatchNorm2d's default)
DEEPLAB_RATES = (6, 12, 18, 24)        # deeplab-pytorch's only ASPP setting (not stored in its files)
MSC_SCALES = (0.5, 0.75)
KINDS = ("deeplab_v2", "resnet_backbone")
"""What a conversion writes."""
LOADABLE = (*KINDS, "deeplab_v3", "deeplab_v3plus")
"""What `load_converted` initialises a segmenter from: conversions and `conta seg train`'s model.pt of any kind."""
UNIT_NAMES = {"1": ("downsample.0", "downsample.1"), "2a": ("conv1", "bn1"),
              "2b": ("conv2", "bn2"), "2c": ("conv3", "bn3")}
DL_UNITS = {"reduce": "2a", "conv3x3": "2b", "increase": "2c", "shortcut": "1", "proj": "1"}
SKIP_MSC = "shared-weight MSC branch (the same tensors as the full-scale layer)"
SKIP_CLASSIFIER = "image classifier or DeepLab v1 1x1 head (the DeepLab v2 segmenter has none)"


@dataclass
class Conversion:
    """A converted state dict, its meta, and what happened to every source tensor."""

    state: dict[str, Tensor]
    meta: dict[str, Any]
    converted: int
    skipped: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def report(self) -> str:
        m = self.meta
        head = f"{m['kind']} {m['arch']} (width {m['width']}"
        if m["kind"] == "deeplab_v2":
            head += f", {m['n_classes']} classes, ASPP rates {m['atrous_rates']}"
        lines = [f"converted {self.converted} tensors from {m['source']} ({m['converted_from']}) into a {head}, "
                 f"stride_in_1x1={m['stride_in_1x1']}, normalization={m['normalization']}); "
                 f"checked by a strict load"]
        by_reason: dict[str, list[str]] = defaultdict(list)
        for name, reason in self.skipped:
            by_reason[reason].append(name)
        for reason, names in by_reason.items():
            shown = ", ".join(names[:4]) + (f", ... ({len(names)} in all)" if len(names) > 4 else "")
            lines.append(f"skipped {shown}: {reason}")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


# -- Caffe -------------------------------------------------------------------------------------


def convert_caffemodel(path: str | Path, class_names: Sequence[str] | None = None) -> Conversion:
    """A DeepLab v2 ResNet (.caffemodel with fc1_*_c{k} ASPP layers) or an MSRA ImageNet ResNet."""
    try:
        from conta.weights.caffe.reader import read_caffemodel
    except ImportError:
        raise ContaError('reading .caffemodel files needs protobuf: pip install "conta[caffe]"') from None
    layers = read_caffemodel(path)
    convs, bns, scales, aspp = {}, {}, {}, {}
    skipped: list[tuple[str, str]] = []
    for layer in layers:
        if not layer.blobs:
            continue
        if re.search(r"_res0(75|5)$", layer.name):
            skipped.append((layer.name, SKIP_MSC))
            continue
        role, unit = _caffe_role(layer.name)
        expected = {"conv": "Convolution", "aspp": "Convolution", "bn": "BatchNorm", "scale": "Scale"}.get(role)
        if role == "classifier":
            skipped.append((layer.name, SKIP_CLASSIFIER))
        elif expected is None or layer.type != expected:
            raise ContaError(f"{path}: layer {layer.name!r} ({layer.type}) is not part of a DeepLab v2 / "
                             f"MSRA ResNet this converter knows")
        else:
            {"conv": convs, "bn": bns, "scale": scales, "aspp": aspp}[role][unit] = layer
    state: dict[str, Tensor] = {}
    for unit, conv in convs.items():
        conv_key, bn_key = _unit_keys(unit, path)
        if len(conv.blobs) != 1:
            raise ContaError(f"{path}: {conv.name} has a bias; conta's backbone convolutions have none")
        state[f"{conv_key}.weight"] = _tensor(conv.blobs[0])
        if unit not in bns:
            raise ContaError(f"{path}: no BatchNorm layer for {conv.name} (expected bn{_bn_suffix(unit)})")
        state.update(_batch_norm(bns[unit], scales.get(unit), bn_key))
    strays = [layer.name for unit, layer in {**bns, **scales}.items() if unit not in convs]
    if strays:
        raise ContaError(f"{path}: BatchNorm/Scale layers without a convolution: {', '.join(strays)}")
    notes = []
    eps = sorted({bn.eps for bn in bns.values() if abs(bn.eps - BN_EPS) > 1e-12})
    if eps:
        notes.append(f"BatchNorm eps {', '.join(f'{e:g}' for e in eps)} folded into the running variance "
                     f"(conta's BatchNorm uses {BN_EPS:g}; var + eps is unchanged)")
    bare = [bn.name for unit, bn in bns.items() if unit not in scales]
    if bare:
        notes.append(f"{len(bare)} BatchNorm layers have no Scale layer, so weight 1 and bias 0 (first: {bare[0]})")
    rates = []
    for k in sorted(aspp):
        conv = aspp[k]
        if conv.pad != conv.dilation or conv.kernel != 3 or len(conv.blobs) != 2:
            raise ContaError(f"{path}: {conv.name} is not a 3x3 ASPP branch with padding = dilation and a bias")
        rates.append(conv.dilation)
        state[f"aspp.branches.{len(rates) - 1}.weight"] = _tensor(conv.blobs[0])
        state[f"aspp.branches.{len(rates) - 1}.bias"] = _tensor(conv.blobs[1])
    if not state:
        raise ContaError(f"{path}: no ResNet layers found")
    return _finish(state, skipped, notes, source=path, converted_from="caffe",
                   stride_in_1x1=_caffe_stride_in_1x1(convs, path), rates=rates, class_names=class_names)


def _caffe_role(name: str) -> tuple[str, str]:
    """(conv | bn | scale | aspp | classifier | unknown, unit): the unit names the conv a layer belongs to."""
    if name == "conv1":
        return "conv", "conv1"
    if m := re.fullmatch(r"(bn|scale)_?(conv1|\d[a-z]\d*_branch\w+)", name):
        return m.group(1), m.group(2)
    if m := re.fullmatch(r"res(\d[a-z]\d*_branch\w+)", name):
        return "conv", m.group(1)
    if m := re.fullmatch(r"fc1_\w+_c(\d+)", name):
        return "aspp", m.group(1).zfill(3)
    if name.startswith("fc"):
        return "classifier", name
    return "unknown", name


def _unit_keys(unit: str, source: str | Path) -> tuple[str, str]:
    """conta's (conv, bn) module paths of a Caffe unit: conv1 or `{stage}{block}_branch{b}`."""
    if unit == "conv1":
        return "backbone.conv1", "backbone.bn1"
    m = re.fullmatch(r"(\d)([a-z])(\d*)_branch(1|2a|2b|2c)", unit)
    if m is None or not 2 <= int(m.group(1)) <= 5 or (m.group(3) and m.group(2) != "b"):
        raise ContaError(f"{source}: cannot place res{unit} in a ResNet")
    stage, letter, number, branch = m.groups()
    block = int(number) if number else ord(letter) - ord("a")
    prefix = f"backbone.layer{int(stage) - 1}.{block}"
    conv, bn = UNIT_NAMES[branch]
    return f"{prefix}.{conv}", f"{prefix}.{bn}"


def _bn_suffix(unit: str) -> str:
    return "_conv1" if unit == "conv1" else unit


def _batch_norm(bn: Any, scale: Any | None, key: str) -> dict[str, Tensor]:
    """BN tensors from a Caffe BatchNorm (statistics x factor, and the factor) and its Scale layer."""
    if len(bn.blobs) != 3:
        raise ContaError(f"{bn.name}: a Caffe BatchNorm has 3 blobs (mean, variance, scale factor), found {len(bn.blobs)}")
    factor = float(bn.blobs[2].reshape(-1)[0])
    inverse = 0.0 if factor == 0 else 1.0 / factor   # Caffe's own rule for a zero factor
    mean = bn.blobs[0].reshape(-1) * inverse
    var = bn.blobs[1].reshape(-1) * inverse + (bn.eps - BN_EPS)
    if scale is None:
        weight, bias = np.ones_like(mean), np.zeros_like(mean)
    else:
        weight = scale.blobs[0].reshape(-1)
        bias = scale.blobs[1].reshape(-1) if len(scale.blobs) > 1 else np.zeros_like(weight)
    return {f"{key}.running_mean": _tensor(mean), f"{key}.running_var": _tensor(var),
            f"{key}.weight": _tensor(weight), f"{key}.bias": _tensor(bias)}


def _caffe_stride_in_1x1(convs: dict[str, Any], source: str | Path) -> bool:
    """Where the first block of stage 3 (res3a) downsamples: the 1x1 (MSRA) or the 3x3."""
    first, second = convs.get("3a_branch2a"), convs.get("3a_branch2b")
    if first is None or second is None:
        raise ContaError(f"{source}: res3a_branch2a/2b not found; cannot tell the block layout")
    return first.stride > 1


def _tensor(array: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


# -- deeplab-pytorch ---------------------------------------------------------------------------


def convert_deeplab_pytorch(path: str | Path, class_names: Sequence[str] | None = None,
                            atrous_rates: Sequence[int] = DEEPLAB_RATES) -> Conversion:
    """A state dict saved by kazuto1011/deeplab-pytorch (DeepLabV2 / MSC / DeepLabV1 / ResNet)."""
    source = _read_state_dict(Path(path))
    state: dict[str, Tensor] = {}
    skipped: list[tuple[str, str]] = []
    for name, tensor in source.items():
        key = re.sub(r"^(module\.|base\.)+", "", name)
        target = _deeplab_pytorch_key(key)
        if target is None and key.startswith("fc."):
            skipped.append((name, SKIP_CLASSIFIER))
        elif target is None:
            raise ContaError(f"{path}: key {name!r} is not a deeplab-pytorch ResNet / DeepLab key")
        else:
            state[target] = tensor.detach().float() if tensor.is_floating_point() else tensor
    has_aspp = any(k.startswith("aspp.") for k in state)
    notes = [f"deeplab-pytorch files do not store the ASPP rates; assumed {list(atrous_rates)}"] if has_aspp else []
    n_branches = len({k.split(".")[2] for k in state if k.startswith("aspp.")})
    return _finish(state, skipped, notes, source=path, converted_from="deeplab-pytorch", stride_in_1x1=True,
                   rates=list(atrous_rates)[:n_branches] if has_aspp else [], class_names=class_names)


def _deeplab_pytorch_key(key: str) -> str | None:
    """layer1.conv1.{conv,bn}.* / layer{L}.block{n}.{reduce,conv3x3,increase,shortcut}.{conv,bn}.* /
    aspp.[stages.]c{k}.* -> conta's key, or None."""
    if m := re.fullmatch(r"layer1\.conv1\.(conv|bn)\.(\w+)", key):
        return f"backbone.{'conv1' if m.group(1) == 'conv' else 'bn1'}.{m.group(2)}"
    if m := re.fullmatch(r"layer([2-5])\.block(\d+)\.(reduce|conv3x3|increase|shortcut|proj)\.(conv|bn)\.(\w+)", key):
        stage, block, unit, part, param = m.groups()
        conv, bn = UNIT_NAMES[DL_UNITS[unit]]
        return f"backbone.layer{int(stage) - 1}.{int(block) - 1}.{conv if part == 'conv' else bn}.{param}"
    if m := re.fullmatch(r"aspp\.(?:stages\.)?c(\d+)\.(weight|bias)", key):
        return f"aspp.branches.{m.group(1)}.{m.group(2)}"
    return None


# -- shared: infer the model, check strictly, write ---------------------------------------------


def _finish(state: dict[str, Tensor], skipped: list[tuple[str, str]], notes: list[str], *, source: str | Path,
            converted_from: str, stride_in_1x1: bool, rates: list[int],
            class_names: Sequence[str] | None) -> Conversion:
    converted = sum(not k.endswith("num_batches_tracked") for k in state)
    arch, width = _infer_arch(state, source)
    meta: dict[str, Any] = {"kind": "resnet_backbone", "arch": arch, "width": width,
                            "stride_in_1x1": stride_in_1x1, "normalization": "caffe",
                            "source": str(source), "converted_from": converted_from}
    if rates:
        n_classes = int(state["aspp.branches.0.weight"].shape[0])
        meta.update(kind="deeplab_v2", n_classes=n_classes, atrous_rates=rates, msc_scales=list(MSC_SCALES),
                    class_names=_class_names(class_names, n_classes))
        model: nn.Module = deeplab_v2(n_classes, arch, width, rates, MSC_SCALES, stride_in_1x1)
        state = {f"base.{k}": v for k, v in state.items()}
    else:
        model = resnet(arch, width, strides=(2, 2, 1, 1), dilations=(1, 1, 2, 4),
                       stride_in_1x1=stride_in_1x1, maxpool_ceil_mode=True)
        state = {k.removeprefix("backbone."): v for k, v in state.items()}
    own = model.state_dict()
    for key, value in own.items():
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = torch.zeros_like(value)
    _check_keys(state, own, source)
    model.load_state_dict(state, strict=True)
    return Conversion({k: state[k] for k in own}, meta, converted, skipped, notes)


def _infer_arch(state: dict[str, Tensor], source: str | Path) -> tuple[str, int]:
    if "backbone.conv1.weight" not in state:
        raise ContaError(f"{source}: no stem convolution (conv1) found")
    blocks = tuple(1 + max((int(m.group(1)) for k in state if (m := re.match(rf"backbone\.layer{i}\.(\d+)\.", k))),
                           default=-1) for i in range(1, 5))
    bottleneck = any(".conv3." in k for k in state)
    for arch, (block, layers) in ARCHS.items():
        if tuple(layers) == blocks and (block is Bottleneck) == bottleneck:
            return arch, int(state["backbone.conv1.weight"].shape[0])
    raise ContaError(f"{source}: blocks per stage {blocks} match no supported ResNet ({', '.join(ARCHS)})")


def _class_names(given: Sequence[str] | None, n_classes: int) -> list[str]:
    """Background first; VOC's names for 21 classes unless given; else class_<k>."""
    if given:
        names = list(given)
        names = ["background", *names] if len(names) == n_classes - 1 else names
        if len(names) != n_classes:
            raise ContaError(f"{len(given)} class names given for a {n_classes}-class model")
        return names
    if n_classes == len(VOC_CLASSES) + 1:
        return ["background", *VOC_CLASSES]
    return ["background", *(f"class_{k}" for k in range(1, n_classes))]


def _check_keys(state: dict[str, Tensor], own: dict[str, Tensor], source: str | Path) -> None:
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
             if k in state and state[k].shape != v.shape]
    for problem, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
        if keys:
            raise ContaError(f"{source}: {len(keys)} {problem} after conversion (first: {keys[0]})")


def save_conversion(conversion: Conversion, out: str | Path) -> Path:
    """Write the model file {"model", "meta"} atomically."""
    out = Path(out)
    save_model_file(out, conversion.state, conversion.meta)
    return out


# -- using a converted file --------------------------------------------------------------------


def load_converted(model: MSC, path: str | Path) -> str:
    """Initialise a DeepLab from a converted file or a conta segmenter: the trunk strictly, the head
    (ASPP, and v3+'s decoder) too when the file's is of the same architecture with the same shapes
    (else it keeps its random init, e.g. COCO's 91 classes into VOC's 21)."""
    weights, meta = read_model_file(path, LOADABLE, "a converted weights file (make one with `conta weights convert`)")
    backbone: ResNet = model.base.backbone
    if _stride_in_1x1(backbone) != meta["stride_in_1x1"]:
        raise ContaError(f"{path}: weights for stride_in_1x1={meta['stride_in_1x1']}, but the model was built "
                         f"with the other block layout; build it from the file's meta")
    if meta["kind"] == "resnet_backbone":
        trunk, head = weights, {}
    else:
        trunk = {k.removeprefix("base.backbone."): v for k, v in weights.items() if k.startswith("base.backbone.")}
        head = {k.removeprefix("base."): v for k, v in weights.items()
                if k.startswith("base.") and not k.startswith("base.backbone.")}
    try:
        backbone.load_state_dict(trunk, strict=True)
    except RuntimeError as exc:
        raise ContaError(f"{path}: trunk does not fit this model ({str(exc).splitlines()[0]})") from None
    net, name = model.base, model.base.head_name
    own = {k: v for k, v in net.state_dict().items() if not k.startswith("backbone.")}
    same = meta["kind"] == net.kind
    if head and same and head.keys() == own.keys() and all(head[k].shape == v.shape for k, v in own.items()):
        net.load_state_dict({**{f"backbone.{k}": v for k, v in trunk.items()}, **head}, strict=True)
        return f"loaded trunk and {name} from {path}"
    reason = ("the file has none" if not head else "its classes or rates differ from this model's" if same
              else f"the file's is a {meta['kind']} head, this model is {net.kind}")
    return f"loaded the trunk from {path}; {name} randomly initialised ({reason})"


def _stride_in_1x1(backbone: ResNet) -> bool:
    block = backbone.layer2[0]
    return isinstance(block, Bottleneck) and block.conv1.stride[0] > 1
