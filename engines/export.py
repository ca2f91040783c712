"""torch -> ONNX at static shapes, and a static check for graphs TensorRT would refuse.

Exporter choice: the TorchScript exporter (`dynamo=False`). On this project's networks it exports in
well under a second for the small nets and tens of seconds for the 1024 generator, constant-folds the
baked noise and FIR taps into initializers, and emits plain Conv nodes whose weights are initializers.
torch 2.13's default dynamo exporter (via onnxscript) produces the same ops but spends seconds on
torch.export + decompositions even for a three-layer net; it stays selectable with exporter="dynamo".
"""
from __future__ import annotations

import hashlib
import io
import logging
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
import torch
from torch import nn

from engines.atomic import atomic_write_bytes
from engines.backends.base import TensorSpec, as_specs
from engines.cache import default_cache_dir
from engines.errors import UserError

log = logging.getLogger(__name__)

Exporter = Literal["torchscript", "dynamo"]
DEFAULT_OPSET = 18

# Ops the TensorRT 10 ONNX parser has no importer for (onnx-tensorrt docs/operators.md, "N" rows),
# plus the random ops: noise must be baked in as a constant, never sampled inside the graph.
TENSORRT_UNSUPPORTED = frozenset({
    "BitShift", "Col2Im", "Compress", "ConcatFromSequence", "ConvInteger", "Det", "DynamicQuantizeLinear",
    "MatMulInteger", "MaxRoiPool", "MaxUnpool", "Multinomial", "NegativeLogLikelihoodLoss", "Optional",
    "OptionalGetElement", "OptionalHasElement", "QLinearConv", "QLinearMatMul", "SequenceAt",
    "SequenceConstruct", "SequenceEmpty", "SequenceErase", "SequenceInsert", "SequenceLength",
    "SequenceMap", "SoftmaxCrossEntropyLoss", "SplitToSequence", "StringNormalizer", "TfIdfVectorizer",
    "Unique", "RegexFullMatch", "StringConcat", "StringSplit",
})
RANDOM_OPS = frozenset({"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Bernoulli"})
# Ops whose input 1 TensorRT takes as build-time weights; a tensor computed at run time is refused.
WEIGHT_INPUTS = {"Conv": 1, "ConvTranspose": 1}


class TensorRTIncompatible(UserError):
    """The ONNX graph uses something TensorRT's parser refuses; the message lists every problem."""


def export_onnx(module: nn.Module, example_inputs: Mapping[str, torch.Tensor] | Sequence[torch.Tensor],
                path: str | Path, input_names: Sequence[str] | None = None,
                output_names: Sequence[str] = ("output",), *, opset: int = DEFAULT_OPSET,
                exporter: Exporter = "torchscript") -> Path:
    """Export module (eval, float32, CPU) at the example inputs' static shapes into one ONNX file.

    example_inputs is either {name: tensor} (names taken from it) or a sequence with input_names.
    The file is self-contained (no external data), checked by onnx.checker, and written atomically.
    """
    if isinstance(example_inputs, Mapping):
        input_names = list(example_inputs)
        args = tuple(example_inputs.values())
    else:
        args = tuple(example_inputs)
        if input_names is None or len(input_names) != len(args):
            raise UserError(f"export_onnx {path}: give one input name per example input")
    path = Path(path)
    module = module.eval()
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        # the TorchScript exporter warns that it is deprecated on every call; the choice is deliberate
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        # shape-dependent Python branches (padding to a stride, ...) are meant to freeze at static shapes
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        try:
            if exporter == "torchscript":
                torch.onnx.export(module, args, buffer, input_names=list(input_names),
                                  output_names=list(output_names), opset_version=opset, dynamo=False,
                                  do_constant_folding=True)
                data = buffer.getvalue()
            else:
                program = torch.onnx.export(module, args, input_names=list(input_names),
                                            output_names=list(output_names), opset_version=opset, dynamo=True)
                data = program.model_proto.SerializeToString()
        except Exception as err:
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise UserError(f"{path}: ONNX export of {type(module).__name__} failed ({reason[:300]}); "
                            "export the network's export_safe() form at static shapes") from err
    model = onnx.load_from_string(data)
    _check_self_contained(model, path)
    onnx.checker.check_model(model)
    atomic_write_bytes(path, data)
    log.info("exported %s (%s, opset %d, %.1f MB)", path, exporter, opset, len(data) / 1e6)
    return path


def _check_self_contained(model: onnx.ModelProto, path: Path) -> None:
    external = [t.name for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    if external:
        raise UserError(f"{path}: {len(external)} initializers use external data; "
                        "this project ships one self-contained file per network (models < 2 GB)")


def _constant_names(graph: onnx.GraphProto) -> set[str]:
    """Tensors known at build time: initializers, Constant outputs, and anything computed only from them."""
    known = {t.name for t in graph.initializer}
    for node in graph.node:  # ONNX nodes are topologically sorted
        computable = node.op_type == "Constant" or (node.input and all(not i or i in known for i in node.input))
        if computable and node.op_type not in RANDOM_OPS:
            known.update(o for o in node.output if o)
    return known


def _zero_point_problems(graph: onnx.GraphProto) -> list[str]:
    """TensorRT takes only symmetric (zero point 0) INT8 quantisation."""
    initializers = {t.name: t for t in graph.initializer}
    problems = []
    for node in graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 2 and node.input[2]:
            zero_point = initializers.get(node.input[2])
            if zero_point is None:
                continue
            values = onnx.numpy_helper.to_array(zero_point)
            if values.dtype != np.int8 or np.any(values != 0):
                problems.append(f"{node.op_type} {node.name or node.output[0]!r} has a {values.dtype} zero "
                                "point that is not int8 zero (quantise symmetric int8, biases left float)")
    return problems


def find_tensorrt_problems(model: onnx.ModelProto) -> list[str]:
    """Every reason TensorRT's ONNX parser would refuse this graph, one line each (empty: looks fine)."""
    graph = model.graph
    problems = []
    constants = _constant_names(graph)
    for node in graph.node:
        where = f"{node.op_type} node {node.name or node.output[0]!r}"
        if node.domain not in ("", "ai.onnx"):
            problems.append(f"{where} is a custom op of domain {node.domain!r} (an ONNX Runtime fusion?)")
        elif node.op_type in RANDOM_OPS:
            problems.append(f"{where} samples random numbers: bake noise in as a constant buffer")
        elif node.op_type in TENSORRT_UNSUPPORTED:
            problems.append(f"{where}: TensorRT has no importer for {node.op_type}")
        weight_index = WEIGHT_INPUTS.get(node.op_type)
        if weight_index is not None and node.input[weight_index] not in constants:
            problems.append(f"{where} takes its weight {node.input[weight_index]!r} from the graph at run "
                            "time; export the network's export_safe() form (modulation on activations)")
    problems += _zero_point_problems(graph)
    for value in list(graph.input) + list(graph.output):
        dims = value.type.tensor_type.shape.dim
        if any(not d.HasField("dim_value") for d in dims):
            problems.append(f"{value.name!r} has a dynamic shape: export at static shapes")
    return problems


def _load_graph(onnx_path: Path) -> onnx.ModelProto:
    """The ONNX file's graph (weights left external, if any); UserError when it is missing or unreadable."""
    try:
        return onnx.load(str(onnx_path), load_external_data=False)
    except Exception as err:  # protobuf's DecodeError, OSError, and onnx's own errors for a bad file
        raise UserError(f"{onnx_path}: not a readable ONNX file ({err}); re-export it") from err


def check_tensorrt_compatible(onnx_path: str | Path) -> None:
    """Raise TensorRTIncompatible listing every problem if TensorRT would refuse the graph at onnx_path."""
    onnx_path = Path(onnx_path)
    problems = find_tensorrt_problems(_load_graph(onnx_path))
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise TensorRTIncompatible(f"{onnx_path}: TensorRT would refuse this graph: {shown}")


def graph_io_specs(onnx_path: str | Path) -> tuple[dict[str, TensorSpec], tuple[str, ...]]:
    """Static input specs and output names of an ONNX file."""
    model = _load_graph(Path(onnx_path))
    initializers = {t.name for t in model.graph.initializer}
    specs = {}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
        if any(d < 0 for d in dims):
            raise UserError(f"{onnx_path}: input {value.name!r} has a dynamic shape; export at static shapes")
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)
        specs[value.name] = TensorSpec(tuple(dims), np.dtype(dtype).name)
    return specs, tuple(o.name for o in model.graph.output)


def module_fingerprint(module: nn.Module, input_specs: Mapping[str, tuple],
                       output_names: Sequence[str], opset: int = DEFAULT_OPSET) -> str:
    """sha256 over the module's class, parameters, buffers, plain settings and the export settings.

    Plain settings are every submodule's scalar attributes (a clamp, a flag, a size): two modules with the
    same weights but another conv_clamp trace to different graphs."""
    digest = hashlib.sha256()
    digest.update(f"{type(module).__module__}.{type(module).__qualname__}|{opset}|{list(output_names)}".encode())
    digest.update(repr(sorted(as_specs(input_specs).items())).encode())
    for name, sub in module.named_modules():
        settings = sorted((k, v) for k, v in vars(sub).items()
                          if not k.startswith("_") and k != "training"  # export always traces in eval mode
                          and isinstance(v, (bool, int, float, str, tuple, type(None))))
        digest.update(f"{name}:{type(sub).__qualname__}:{settings!r}".encode())
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def export_cached(module: nn.Module, input_specs: Mapping[str, tuple], output_names: Sequence[str] = ("output",),
                  cache_dir: Path | None = None, opset: int = DEFAULT_OPSET) -> Path:
    """The ONNX export of module at input_specs, reused from cache_dir when its fingerprint matches."""
    specs = as_specs(input_specs)
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir() / "onnx"
    path = cache_dir / f"{module_fingerprint(module, specs, output_names, opset)[:32]}.onnx"
    if path.exists():
        log.debug("reusing exported graph %s", path)
        return path
    examples = {name: _example(spec) for name, spec in specs.items()}
    return export_onnx(module, examples, path, output_names=output_names, opset=opset)


def _example(spec: TensorSpec) -> torch.Tensor:
    dtype = torch.from_numpy(np.zeros(0, dtype=spec.dtype)).dtype
    if dtype.is_floating_point:
        return torch.randn(spec.shape, generator=torch.Generator().manual_seed(0)).to(dtype)
    return torch.zeros(spec.shape, dtype=dtype)
