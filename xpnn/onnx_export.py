"""Export a model to ONNX, for onnxruntime and every other ONNX consumer.

``xpnn.export_onnx(model, "model.onnx")`` (or ``xpnn export model.npz model.onnx``) writes the
inference graph: eval mode (BatchNorm with its running statistics, Dropout as Identity), float32,
batch axis symbolic (``"N"``), so any batch size runs. The graph is built by walking the model:
each layer type has one exporter in a registry (:func:`exporter`), and containers (Sequential,
Residual) export by composing their children's exporters, so nested and residual blocks need
nothing else. A layer type without an exporter, a user's own Layer subclass included, is an
:class:`OnnxExportError` naming it: never a guessed graph.

Choices, each checked against onnxruntime in tests/test_onnx_export.py:

- Outputs. A model trained with a loss that fuses its output activation (cross-entropy from
  logits: softmax, or the sigmoid of binary cross-entropy) gets two outputs: ``logits``, exactly
  what :meth:`Sequential.predict` returns, and ``probabilities``, as ``xpnn predict`` shows them
  (softmax; for a single logit ``[1 - p, p]``, one column per class; for several logits under
  binary cross-entropy, each one's sigmoid). Any other model has one output, ``output``. The
  metadata says which.
- float32 only. onnxruntime's CPU Conv has no float64 kernel, so a float64 model is exported
  with its weights cast to float32, with a warning and ``exported_from_dtype`` in the metadata.
- The IR version is pinned to the oldest one the opset needs (IR 8 for opset 17), so older
  runtimes load the file.
- ONNX defaults that differ from xpnn are always written out: pool strides (ONNX's default is 1,
  xpnn's the kernel size), ``count_include_pad=1`` for AvgPool2D, Gemm's ``transB=0`` (xpnn's
  Linear weight is (in, out)), BatchNormalization's epsilon, Conv pads in ONNX's
  [top, left, bottom, right] order (asymmetric for 'same' with an even kernel).
- GELU (tanh approximation): the ``Gelu`` operator from opset 20, a Mul/Add/Tanh decomposition
  below that.

The file is checked with ``onnx.checker.check_model(full_check=True)`` before it is written,
then written atomically. Weights with NaN or inf are refused.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import __version__, backend
from .files import atomic_write
from .layers import (GELU, AvgPool2D, BatchNorm1D, BatchNorm2D, Conv2D, Dropout, Flatten, GlobalAvgPool2D, LeakyReLU,
                     Linear, MaxPool2D, ReLU, Residual, Sigmoid, Softmax, Tanh)
from .layers import container
from .layers.base import join_path
from .losses import BinaryCrossEntropy, CrossEntropy
from .model import Sequential

__all__ = ["export_onnx", "exporter", "OnnxExportError", "DEFAULT_OPSET", "MIN_OPSET", "INPUT_NAME"]

DEFAULT_OPSET = 17
#: the oldest opset written: before 13, Softmax flattened everything from its axis on (wrong for
#: xpnn's per-axis Softmax on images)
MIN_OPSET = 13
#: the first opset with a Gelu operator (and its approximate="tanh" attribute)
GELU_OPSET = 20
INPUT_NAME = "input"
#: protobuf cannot serialize a message over 2 GiB (larger models need ONNX external data)
MAX_BYTES = 2**31 - 1
INSTALL_HINT = 'pip install "xpnn[onnx]"'


class OnnxExportError(ValueError):
    """The model cannot be written as ONNX: a layer without an exporter, non-finite weights, an unknown input shape."""


Exporter = Callable[[Any, "_Graph", str, str], str]
_EXPORTERS: dict[type, Exporter] = {}


def exporter(*layer_types: type) -> Callable[[Exporter], Exporter]:
    """Register ``fn(layer, graph, x, path) -> y`` as the ONNX exporter of exactly these types.

    ``x`` and ``y`` are tensor names in the graph; ``path`` is the layer's dotted position in the
    model (``"3.body.0"``), used to name its nodes and weights. ``graph.node(op, inputs, path,
    **attributes)`` adds a node and returns its output's name; ``graph.weight(path, array,
    layer.describe())`` and ``graph.constant(path, value)`` add float32 initializers;
    ``graph.layer(child, x, path)`` exports a child layer. Subclasses are not covered: a subclass
    may compute something else, so it needs its own exporter.
    """
    def register(fn: Exporter) -> Exporter:
        for layer_type in layer_types:
            _EXPORTERS[layer_type] = fn
        return fn
    return register


def _onnx() -> Any:
    try:
        import onnx
    except ImportError:
        raise ImportError(f"ONNX export needs the onnx package: {INSTALL_HINT}") from None
    return onnx


class _Graph:
    """The nodes and weights of the graph being built, with unique names."""

    def __init__(self, onnx: Any, opset: int) -> None:
        self.onnx, self.opset = onnx, opset
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self._used: set[str] = {INPUT_NAME}
        self.cast_from: str | None = None

    def unique(self, hint: str) -> str:
        name, k = hint, 1
        while name in self._used:
            k += 1
            name = f"{hint}_{k}"
        self._used.add(name)
        return name

    def weight(self, path: str, array: Any, describe: str) -> str:
        """A float32 initializer holding ``array`` (a device array: copied to the host)."""
        host = np.asarray(backend.to_numpy(array))
        if not np.all(np.isfinite(host)):
            raise OnnxExportError(f"{describe}: {path} has NaN or inf values; refusing to export a broken model")
        if host.dtype != np.float32:
            self.cast_from = str(host.dtype)
        name = self.unique(path)
        self.initializers.append(self.onnx.numpy_helper.from_array(np.ascontiguousarray(host, dtype=np.float32), name))
        return name

    def constant(self, path: str, value: float) -> str:
        """A float32 scalar initializer."""
        name = self.unique(path)
        self.initializers.append(self.onnx.numpy_helper.from_array(np.array(value, dtype=np.float32), name))
        return name

    def node(self, op: str, inputs: list[str], path: str, output: str | None = None, **attributes: Any) -> str:
        """Append an ``op`` node; returns its output's name (``output`` if given, else one made from ``path``)."""
        out = self.unique(output) if output is not None else self.unique(f"{path}/{op}" if path else op)
        self.nodes.append(self.onnx.helper.make_node(op, inputs, [out], name=self.unique(f"node:{out}"), **attributes))
        return out

    def layer(self, layer: Any, x: str, path: str) -> str:
        """Export ``layer`` applied to tensor ``x``; returns the output tensor's name."""
        fn = _EXPORTERS.get(type(layer))
        if fn is None:
            describe = layer.describe() if hasattr(layer, "describe") else type(layer).__name__
            raise OnnxExportError(
                f"cannot export {describe} at position {path or 'root'} to ONNX: xpnn has no ONNX exporter for "
                f"{type(layer).__qualname__} (supported: {', '.join(sorted(t.__name__ for t in _EXPORTERS))})")
        return fn(layer, self, x, path)


def _pads(pads: tuple[tuple[int, int], tuple[int, int]]) -> list[int]:
    """xpnn's ((top, bottom), (left, right)) as ONNX's [top, left, bottom, right]."""
    (top, bottom), (left, right) = pads
    return [top, left, bottom, right]


# --------------------------------------------------------------------------- containers


@exporter(Sequential, container.Sequential)
def _sequential(model: Any, graph: _Graph, x: str, path: str) -> str:
    """Children in their declared order. (Sequential may run a ReLU after the MaxPool2D that
    follows it, for speed; the two commute, so the declared order gives the same result.)"""
    for index, layer in enumerate(model.layers):
        x = graph.layer(layer, x, join_path(path, index))
    return x


@exporter(Residual)
def _residual(block: Any, graph: _Graph, x: str, path: str) -> str:
    """``activation(body(x) + shortcut(x))``; no shortcut means the identity."""
    body = graph.layer(block.body, x, join_path(path, "body"))
    shortcut = x if block.shortcut is None else graph.layer(block.shortcut, x, join_path(path, "shortcut"))
    y = graph.node("Add", [body, shortcut], path)
    return y if block.activation is None else graph.layer(block.activation, y, join_path(path, "activation"))


# --------------------------------------------------------------------------- layers with weights


@exporter(Linear)
def _linear(layer: Linear, graph: _Graph, x: str, path: str) -> str:
    """Gemm with transB=0: xpnn's weight is (in, out), so ``y = x @ W + b`` as stored."""
    inputs = [x, graph.weight(join_path(path, "weight"), layer.weight.value, layer.describe())]
    if layer.bias is not None:
        inputs.append(graph.weight(join_path(path, "bias"), layer.bias.value, layer.describe()))
    return graph.node("Gemm", inputs, path, alpha=1.0, beta=1.0, transA=0, transB=0)


@exporter(Conv2D)
def _conv(layer: Conv2D, graph: _Graph, x: str, path: str) -> str:
    inputs = [x, graph.weight(join_path(path, "weight"), layer.weight.value, layer.describe())]
    if layer.bias is not None:
        inputs.append(graph.weight(join_path(path, "bias"), layer.bias.value, layer.describe()))
    return graph.node("Conv", inputs, path, kernel_shape=list(layer.kernel_size), strides=list(layer.stride),
                      dilations=list(layer.dilation), pads=_pads(layer.pads), group=1)


@exporter(BatchNorm1D, BatchNorm2D)
def _batch_norm(layer: Any, graph: _Graph, x: str, path: str) -> str:
    """Inference form (running statistics), with xpnn's epsilon (ONNX's default is 1e-5)."""
    names = [graph.weight(join_path(path, name), value, layer.describe()) for name, value in
             (("gamma", layer.gamma.value), ("beta", layer.beta.value), ("running_mean", layer.running_mean),
              ("running_var", layer.running_var))]
    return graph.node("BatchNormalization", [x, *names], path, epsilon=layer.eps)


# --------------------------------------------------------------------------- pooling and shape


@exporter(MaxPool2D)
def _max_pool(layer: MaxPool2D, graph: _Graph, x: str, path: str) -> str:
    """Strides written out: ONNX's default is 1, xpnn's the kernel size. Padding never wins a max
    in ONNX, as xpnn's -inf padding."""
    return graph.node("MaxPool", [x], path, kernel_shape=list(layer.kernel_size), strides=list(layer.stride),
                      pads=_pads(layer.pads), ceil_mode=0)


@exporter(AvgPool2D)
def _avg_pool(layer: AvgPool2D, graph: _Graph, x: str, path: str) -> str:
    """``count_include_pad=1``: xpnn divides by the window size, padding included."""
    return graph.node("AveragePool", [x], path, kernel_shape=list(layer.kernel_size), strides=list(layer.stride),
                      pads=_pads(layer.pads), ceil_mode=0, count_include_pad=1)


@exporter(GlobalAvgPool2D)
def _global_avg_pool(layer: GlobalAvgPool2D, graph: _Graph, x: str, path: str) -> str:
    """GlobalAveragePool keeps (N, C, 1, 1); xpnn gives (N, C), hence the Flatten."""
    pooled = graph.node("GlobalAveragePool", [x], path)
    return graph.node("Flatten", [pooled], path, axis=1)


# --------------------------------------------------------------------------- weightless layers


#: layers that are one weightless ONNX operator: type -> (operator, its attributes for the layer).
#: Dropout is Identity: at inference it does nothing.
_ONE_OPERATOR: dict[type, tuple[str, Callable[[Any], dict[str, Any]]]] = {
    Flatten: ("Flatten", lambda layer: {"axis": 1}),
    Dropout: ("Identity", lambda layer: {}),
    ReLU: ("Relu", lambda layer: {}),
    LeakyReLU: ("LeakyRelu", lambda layer: {"alpha": layer.alpha}),
    Sigmoid: ("Sigmoid", lambda layer: {}),
    Tanh: ("Tanh", lambda layer: {}),
    Softmax: ("Softmax", lambda layer: {"axis": layer.axis}),
}


@exporter(*_ONE_OPERATOR)
def _one_operator(layer: Any, graph: _Graph, x: str, path: str) -> str:
    op, attributes = _ONE_OPERATOR[type(layer)]
    return graph.node(op, [x], path, **attributes(layer))


@exporter(GELU)
def _gelu(layer: GELU, graph: _Graph, x: str, path: str) -> str:
    """``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``: Gelu(approximate="tanh") from opset 20,
    the same formula in Mul/Add/Tanh nodes below that."""
    if graph.opset >= GELU_OPSET:
        return graph.node("Gelu", [x], path, approximate="tanh")
    cube = graph.node("Mul", [graph.node("Mul", [x, x], path), x], path)
    inner = graph.node("Add", [x, graph.node("Mul", [cube, graph.constant(join_path(path, "k"), 0.044715)], path)], path)
    t = graph.node("Tanh", [graph.node("Mul", [inner, graph.constant(join_path(path, "c"), GELU._C)], path)], path)
    one_plus_t = graph.node("Add", [t, graph.constant(join_path(path, "one"), 1.0)], path)
    half_x = graph.node("Mul", [x, graph.constant(join_path(path, "half"), 0.5)], path)
    return graph.node("Mul", [half_x, one_plus_t], path)


# --------------------------------------------------------------------------- the model


def _fused_activation(loss: Any, output_shape: tuple[int, ...]) -> str | None:
    """"softmax" or "sigmoid" when ``loss`` applies it to the model's logits, else None."""
    if isinstance(loss, CrossEntropy) and len(output_shape) == 2:
        return "softmax"
    if isinstance(loss, BinaryCrossEntropy) and loss.from_logits:
        return "sigmoid"
    return None


def _probabilities(graph: _Graph, logits: str, activation: str, output_shape: tuple[int, ...]) -> str:
    """Class probabilities as ``xpnn predict`` shows them: softmax over classes; for one logit the
    sigmoid p as ``[1 - p, p]`` (a column per class)."""
    name = "probabilities"
    if activation == "softmax":
        return graph.node("Softmax", [logits], name, output=name, axis=1)
    p = graph.node("Sigmoid", [logits], name)
    if output_shape[1:] != (1,):
        return graph.node("Identity", [p], name, output=name)
    q = graph.node("Sub", [graph.constant("probabilities.one", 1.0), p], name)
    return graph.node("Concat", [q, p], name, output=name, axis=1)


def _metadata(model: Sequential, input_shape: tuple[int, ...], outputs: dict[str, str], activation: str | None,
              classes: Any, preprocessing: Any, cast_from: str | None, opset: int) -> dict[str, str]:
    meta = model.metadata
    classes = classes if classes is not None else meta.get("classes")
    preprocessing = preprocessing if preprocessing is not None else meta.get("input")
    props = {
        "xpnn_version": __version__, "opset": str(opset),
        "input": INPUT_NAME, "input_shape": json.dumps(["N", *input_shape]), "input_dtype": "float32",
        "outputs": json.dumps(outputs),
        "output_activation": activation or "none",
    }
    if classes is not None:
        props["classes"] = json.dumps([str(c) for c in classes])
    if preprocessing is not None:
        props["preprocessing"] = json.dumps(preprocessing)
        if "color" in preprocessing:
            props["input_color"] = str(preprocessing["color"])
        if "size" in preprocessing:
            props["input_size"] = json.dumps(list(preprocessing["size"]))
        if "scale" in preprocessing:
            scale = preprocessing["scale"]
            props["input_scale"] = "divide uint8 pixels by 255 (to [0, 1])" if scale == "unit" else json.dumps(scale)
    if cast_from is not None:
        props["exported_from_dtype"] = cast_from
    return props


def _check_opset(opset: Any, onnx: Any) -> int:
    newest = int(onnx.defs.onnx_opset_version())
    if not isinstance(opset, int) or isinstance(opset, bool) or not MIN_OPSET <= opset <= newest:
        raise ValueError(f"ONNX opset must be an integer from {MIN_OPSET} to {newest} (this onnx "
                         f"{onnx.__version__}), got {opset!r}")
    return opset


def _input_shape(model: Sequential, input_shape: Any) -> tuple[int, ...]:
    shape = input_shape if input_shape is not None else model.input_shape
    if shape is None:
        raise OnnxExportError("the model's input shape is unknown: pass input_shape=(C, H, W) (one sample, no "
                              "batch axis) or call model.build(sample_shape) first")
    return tuple(int(d) for d in shape)


def export_onnx(model: Sequential, path: "str | os.PathLike[str]", opset: int = DEFAULT_OPSET, *,
                input_shape: Any = None, classes: Any = None, preprocessing: dict[str, Any] | None = None) -> Path:
    """Write ``model`` as an ONNX inference graph to ``path`` (atomically); returns the path.

    ``input_shape`` is one sample's shape, ``(C, H, W)`` or ``(features,)`` (default: the
    model's, from ``build``, ``fit`` or its file). ``classes`` and ``preprocessing`` (how inputs
    are made: ``{"size": [H, W], "color": "rgb", "scale": "unit"}``) go into the file's metadata;
    by default they come from ``model.metadata`` (what ``xpnn train`` saves). The input is
    ``"input"``, float32, ``(N, *input_shape)`` with N symbolic; for the outputs see the module
    docstring. Needs the ``onnx`` package (``pip install "xpnn[onnx]"``).
    """
    onnx = _onnx()
    opset = _check_opset(opset, onnx)
    if not isinstance(model, Sequential):
        raise TypeError(f"export_onnx needs an xpnn Sequential model, got {type(model).__name__}")
    sample_shape = _input_shape(model, input_shape)
    output_shape = model.output_shape((1, *sample_shape))  # checks the shape; records nothing
    activation = _fused_activation(model.loss, output_shape)

    graph = _Graph(onnx, opset)
    final = graph.layer(model, INPUT_NAME, "")
    first = "logits" if activation else "output"
    graph.node("Identity", [final], first, output=first)
    names = [first]
    if activation:
        outputs = {first: f"raw scores, as Sequential.predict returns them: the model was trained with "
                          f"{type(model.loss).__name__}, which applies the {activation} itself"}
        names.append(_probabilities(graph, first, activation, output_shape))
        outputs["probabilities"] = f"{activation} of the logits, one column per class (as `xpnn predict` shows)"
    else:
        outputs = {first: "the model's output, as Sequential.predict returns it"}
    if graph.cast_from is not None:
        warnings.warn(f"the model is {graph.cast_from}; ONNX export writes float32 weights (onnxruntime's CPU Conv "
                      f"has no float64 kernel), so outputs differ from the {graph.cast_from} model by float32 rounding",
                      stacklevel=2)

    helper, elem = onnx.helper, onnx.TensorProto.FLOAT
    probability_shape = ["N", 2] if activation == "sigmoid" and output_shape[1:] == (1,) else ["N", *output_shape[1:]]
    shapes = {first: ["N", *output_shape[1:]], "probabilities": probability_shape}
    onnx_graph = helper.make_graph(
        graph.nodes, "xpnn", [helper.make_tensor_value_info(INPUT_NAME, elem, ["N", *sample_shape])],
        [helper.make_tensor_value_info(name, elem, shapes[name]) for name in names], graph.initializers)
    opset_id = helper.make_opsetid("", opset)
    proto = helper.make_model(onnx_graph, opset_imports=[opset_id], producer_name="xpnn",
                              producer_version=__version__,
                              doc_string=f"xpnn {type(model).__name__} exported for inference; "
                                         f"outputs: {', '.join(names)}")
    proto.ir_version = helper.find_min_ir_version_for([opset_id])
    helper.set_model_props(proto, _metadata(model, sample_shape, outputs, activation, classes, preprocessing,
                                            graph.cast_from, opset))
    size = proto.ByteSize()
    if size > MAX_BYTES:
        raise OnnxExportError(f"the model is {size / 2**30:.1f} GiB as ONNX, over protobuf's 2 GiB limit for one file")
    onnx.checker.check_model(proto, full_check=True)
    path = Path(path)
    with atomic_write(path) as f:
        f.write(proto.SerializeToString())
    return path
