"""ONNX export checked against onnxruntime: every layer configuration, every zoo model, each known trap.

The method of onnx-chainer, tf2onnx and paddle2onnx: export, ``check_model(full_check=True)``,
run onnxruntime on seeded batches of several sizes (the batch axis is symbolic) and compare with
``model.predict`` (eval mode) at rtol = atol = 1e-5, shapes and dtypes equal.
"""
from __future__ import annotations

import json
import re
import warnings

import numpy as np
import pytest

import xpnn
from xpnn import layers, metrics, onnx_export, zoo
from xpnn.cli import main
from xpnn.layers import (GELU, AvgPool2D, BatchNorm1D, BatchNorm2D, Conv2D, Dropout, Flatten, GlobalAvgPool2D, Layer,
                         LeakyReLU, Linear, MaxPool2D, ReLU, Sigmoid, Softmax, Tanh)
from xpnn.losses import BinaryCrossEntropy
from xpnn.onnx_export import OnnxExportError, export_onnx

onnx = pytest.importorskip("onnx", reason='onnx is not installed (pip install "xpnn[onnx]"): ONNX export untested')
ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed: exported graphs cannot be run")

TOLERANCE = {"rtol": 1e-5, "atol": 1e-5}
BATCHES = (1, 3, 5)
RESIDUAL = getattr(layers, "Residual", None)
needs_residual = pytest.mark.skipif(RESIDUAL is None, reason="xpnn.layers.Residual does not exist in this xpnn "
                                                             "(it comes with composable models)")
needs_nesting = pytest.mark.skipif(not issubclass(xpnn.Sequential, Layer),
                                   reason="Sequential is not a Layer in this xpnn, so it cannot be nested")


def session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def export_and_compare(model, tmp_path, input_shape, opset=17, batches=BATCHES, scale=1.0, pass_shape=True, **kwargs):
    """Export, check, and compare onnxruntime with ``model.predict`` on seeded batches of
    ``input_shape``; returns the loaded ONNX model. ``pass_shape=False`` leaves the shape to the model."""
    shape = {"input_shape": input_shape} if pass_shape else {}
    path = export_onnx(model, tmp_path / "model.onnx", opset, **shape, **kwargs)
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    runner = session(path)
    rng = np.random.default_rng(len(input_shape) + opset)
    dtype = np.float64 if model.dtype == "float64" else np.float32
    for n in batches:
        x = (rng.standard_normal((n, *input_shape)) * scale).astype(dtype)
        got = runner.run(None, {"input": x.astype(np.float32)})[0]
        want = model.predict(x)
        assert got.shape == want.shape
        assert got.dtype == np.float32 and (want.dtype == np.float32 or dtype == np.float64)
        np.testing.assert_allclose(got, want, **TOLERANCE)
    return proto


def ops(proto):
    return [node.op_type for node in proto.graph.node]


def attributes(proto, op):
    node = next(node for node in proto.graph.node if node.op_type == op)
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def metadata(proto):
    return {p.key: p.value for p in proto.metadata_props}


def trained_statistics(model, input_shape):
    """Run a few training forwards on shifted data so BatchNorm's running statistics move off (0, 1)."""
    rng = np.random.default_rng(7)
    for _ in range(3):
        x = (rng.standard_normal((8, *input_shape)) * 3 + 1).astype(np.float32)
        model(xpnn.to_device(x, model.device), train=True)
    return model


# --------------------------------------------------------------------------- every layer configuration

IMAGE = (2, 9, 8)  # non-square, odd: padding and remainders show up

CONVOLUTIONS = [
    dict(kernel_size=3),
    dict(kernel_size=3, padding=1),
    dict(kernel_size=3, padding=(1, 2)),
    dict(kernel_size=(3, 2), padding=(0, 1)),
    dict(kernel_size=2, padding="same"),
    dict(kernel_size=(4, 3), padding="same"),
    dict(kernel_size=3, padding="same", dilation=2),
    dict(kernel_size=2, padding="same", dilation=(1, 3)),
    dict(kernel_size=3, padding="valid", dilation=(2, 1)),
    dict(kernel_size=3, stride=2, padding=1),
    dict(kernel_size=3, stride=(2, 1), dilation=(1, 2)),
    dict(kernel_size=3, stride=3),
    dict(kernel_size=1, bias=False),
]


@pytest.mark.parametrize("options", CONVOLUTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_conv2d_matches_onnxruntime(options, tmp_path):
    xpnn.seed(0)
    layer = Conv2D(IMAGE[0], 3, **options)
    if layer.bias is not None:  # a non-zero bias, so a dropped bias input would show
        layer.load_state_dict({"weight": np.asarray(layer.weight.value), "bias": np.linspace(-1, 1, 3, dtype=np.float32)})
    proto = export_and_compare(xpnn.Sequential([layer]), tmp_path, IMAGE)
    (top, bottom), (left, right) = layer.pads
    assert attributes(proto, "Conv")["pads"] == [top, left, bottom, right]


def test_conv2d_same_with_an_even_kernel_pads_bottom_and_right_more(tmp_path):
    """ONNX pads are [top, left, bottom, right]; 'same' with a 2x4 kernel needs [0, 1, 1, 2]."""
    proto = export_and_compare(xpnn.Sequential([Conv2D(2, 2, (2, 4), padding="same")]), tmp_path, IMAGE)
    assert attributes(proto, "Conv")["pads"] == [0, 1, 1, 2]


POOLS = [
    (MaxPool2D, dict(kernel_size=2)),
    (MaxPool2D, dict(kernel_size=3)),
    (MaxPool2D, dict(kernel_size=3, stride=2, padding=1)),
    (MaxPool2D, dict(kernel_size=(2, 3), stride=(1, 2), padding=(1, 1))),
    (MaxPool2D, dict(kernel_size=3, stride=1)),
    (AvgPool2D, dict(kernel_size=2)),
    (AvgPool2D, dict(kernel_size=3, stride=1, padding=1)),
    (AvgPool2D, dict(kernel_size=(3, 2), stride=(2, 1), padding=(1, 1))),
    (AvgPool2D, dict(kernel_size=(2, 3), stride=3)),
]


@pytest.mark.parametrize("pool, options", POOLS,
                         ids=lambda p: p.__name__ if isinstance(p, type) else ",".join(f"{k}={v}" for k, v in p.items()))
def test_pools_match_onnxruntime(pool, options, tmp_path):
    layer = pool(**options)
    proto = export_and_compare(xpnn.Sequential([layer]), tmp_path, IMAGE)
    op = "MaxPool" if pool is MaxPool2D else "AveragePool"
    assert attributes(proto, op)["strides"] == list(layer.stride)


def test_pool_strides_are_written_because_onnx_defaults_them_to_one(tmp_path):
    """MaxPool2D(2) means stride 2; an ONNX MaxPool without strides would slide by 1 (8x7 outputs)."""
    proto = export_and_compare(xpnn.Sequential([MaxPool2D(2), AvgPool2D(2)]), tmp_path, IMAGE)
    assert attributes(proto, "MaxPool")["strides"] == [2, 2] and attributes(proto, "AveragePool")["strides"] == [2, 2]
    output_dims = [d.dim_value for d in proto.graph.output[0].type.tensor_type.shape.dim[1:]]
    assert output_dims == [2, 2, 2]


def test_average_pool_counts_padding_as_xpnn_does(tmp_path):
    """Padded corners divide by the full window (count_include_pad=1): a 3x3 window at a corner
    of all-ones images averages to 4/9, not 1."""
    path = export_onnx(xpnn.Sequential([AvgPool2D(3, stride=1, padding=1)]), tmp_path / "m.onnx", input_shape=(1, 4, 4))
    assert attributes(onnx.load(str(path)), "AveragePool")["count_include_pad"] == 1
    corner = session(path).run(None, {"input": np.ones((1, 1, 4, 4), np.float32)})[0][0, 0, 0, 0]
    assert corner == pytest.approx(4 / 9)


def test_global_average_pool_gives_n_by_c_as_xpnn(tmp_path):
    proto = export_and_compare(xpnn.Sequential([GlobalAvgPool2D()]), tmp_path, IMAGE)
    assert ops(proto)[:2] == ["GlobalAveragePool", "Flatten"]
    assert len(proto.graph.output[0].type.tensor_type.shape.dim) == 2


@pytest.mark.parametrize("norm, shape", [(BatchNorm1D, (4,)), (BatchNorm2D, (4, 5, 3))], ids=["1d", "2d"])
def test_batch_norm_in_eval_mode_with_its_own_epsilon(norm, shape, tmp_path):
    """eps=0.1 against running variances of 0.005-0.03: ONNX's default epsilon (1e-5) would give other outputs."""
    model = xpnn.Sequential([norm(4, eps=0.1)])
    model.layers[0].load_state_dict({"gamma": np.array([0.5, 1.0, 1.5, -2.0], np.float32),
                                "beta": np.array([0.1, -0.2, 0.3, 0.0], np.float32),
                                "running_mean": np.array([2.0, -1.0, 0.5, 3.0], np.float32),
                                "running_var": np.array([0.01, 0.02, 0.005, 0.03], np.float32)})
    proto = export_and_compare(model, tmp_path, shape, scale=0.1)
    assert attributes(proto, "BatchNormalization")["epsilon"] == pytest.approx(0.1)


ACTIVATIONS = [ReLU(), LeakyReLU(0.2), Sigmoid(), Tanh(), Softmax(), Softmax(axis=1), GELU(), Dropout(0.5)]


@pytest.mark.parametrize("activation", ACTIVATIONS, ids=lambda a: a.describe())
@pytest.mark.parametrize("opset", [13, 17, 20])
def test_activations_match_onnxruntime(activation, opset, tmp_path):
    export_and_compare(xpnn.Sequential([activation]), tmp_path, (3, 4, 2), opset=opset, scale=4.0)


def test_gelu_is_the_gelu_operator_from_opset_20_and_a_tanh_decomposition_below(tmp_path):
    model = xpnn.Sequential([Linear(3, 4), GELU()])
    below = export_and_compare(model, tmp_path, (3,), opset=19, scale=3.0)
    assert "Gelu" not in ops(below) and "Tanh" in ops(below)
    native = export_and_compare(model, tmp_path, (3,), opset=20, scale=3.0)
    assert attributes(native, "Gelu")["approximate"] == b"tanh"


def test_dropout_exports_as_identity(tmp_path):
    proto = export_and_compare(xpnn.Sequential([Linear(6, 6), Dropout(0.9)]), tmp_path, (6,))
    assert "Dropout" not in ops(proto) and "Identity" in ops(proto)


def test_linear_weight_is_in_by_out_so_gemm_does_not_transpose_it(tmp_path):
    """A square weight would give wrong numbers, not a shape error, if transposed."""
    xpnn.seed(3)
    proto = export_and_compare(xpnn.Sequential([Linear(5, 5), ReLU(), Linear(5, 2, bias=False)]), tmp_path, (5,))
    assert all(attributes(proto, "Gemm")[k] == 0 for k in ("transA", "transB"))


def test_relu_before_maxpool_exports_in_declared_order_with_the_same_result(tmp_path):
    """Sequential runs a ReLU after the MaxPool2D that follows it (they commute); the file keeps
    the declared order and gives the same outputs."""
    xpnn.seed(1)
    model = xpnn.Sequential([Conv2D(2, 3, 3, padding=1), ReLU(), MaxPool2D(2), Flatten(), Linear(3 * 4 * 4, 2)])
    proto = export_and_compare(model, tmp_path, IMAGE)
    assert ops(proto)[:3] == ["Conv", "Relu", "MaxPool"]


# --------------------------------------------------------------------------- every zoo model


def build_small(name, channels=3, classes=3):
    """The zoo model ``name`` at its smallest listed image size that it accepts."""
    for size in (8, 16, 22, 32):
        try:
            return zoo.build(name, (channels, size, size), classes)
        except ValueError:
            continue
    raise AssertionError(f"zoo model {name!r} builds at none of the tried sizes")


@pytest.mark.parametrize("name", list(zoo.MODELS))
def test_every_zoo_model_matches_onnxruntime(name, tmp_path):
    xpnn.seed(0)
    model = build_small(name)
    trained_statistics(model, model.input_shape)
    model.loss = zoo.loss_for(model)
    proto = export_and_compare(model, tmp_path, model.input_shape, batches=(1, 4))
    assert [o.name for o in proto.graph.output] == ["logits", "probabilities"]
    export_and_compare(model, tmp_path, model.input_shape, opset=13, batches=(2,))


@pytest.mark.parametrize("classes, activation", [(2, "sigmoid"), (4, "softmax")])
def test_fused_loss_models_export_logits_and_probabilities(classes, activation, tmp_path):
    """Logits are what predict returns; probabilities are what `xpnn predict` shows (one column per class)."""
    model = zoo.build("tutorial-mlp", (1, 4, 4), classes)
    model.loss = zoo.loss_for(model)
    path = export_onnx(model, tmp_path / "m.onnx")
    x = np.random.default_rng(0).standard_normal((6, 1, 4, 4)).astype(np.float32) * 3
    logits, probabilities = session(path).run(["logits", "probabilities"], {"input": x})
    np.testing.assert_allclose(logits, model.predict(x), **TOLERANCE)
    assert probabilities.shape == (6, classes)
    np.testing.assert_allclose(probabilities, metrics.probabilities(logits), **TOLERANCE)
    meta = metadata(onnx.load(str(path)))
    assert meta["output_activation"] == activation and set(json.loads(meta["outputs"])) == {"logits", "probabilities"}


def test_binary_cross_entropy_on_several_logits_gives_a_sigmoid_per_column(tmp_path):
    """Multi-label: each column its own sigmoid, no [1 - p, p] pairs."""
    model = xpnn.Sequential([Linear(3, 4)])
    model.loss = BinaryCrossEntropy()
    path = export_onnx(model, tmp_path / "m.onnx", input_shape=(3,))
    x = np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32)
    probabilities = session(path).run(["probabilities"], {"input": x})[0]
    np.testing.assert_allclose(probabilities, 1 / (1 + np.exp(-model.predict(x))), **TOLERANCE)


@pytest.mark.parametrize("loss", [None, BinaryCrossEntropy(from_logits=False)], ids=["no-loss", "bce-on-probabilities"])
def test_models_without_a_fused_activation_have_one_output(loss, tmp_path):
    model = xpnn.Sequential([Linear(3, 1), Sigmoid()])
    model.loss = loss
    proto = export_and_compare(model, tmp_path, (3,))
    assert [o.name for o in proto.graph.output] == ["output"] and metadata(proto)["output_activation"] == "none"


@needs_nesting
def test_nested_sequentials_export(tmp_path):
    xpnn.seed(2)
    inner = xpnn.Sequential([Conv2D(2, 4, 3, padding=1), BatchNorm2D(4), ReLU()])
    model = xpnn.Sequential([inner, xpnn.Sequential([MaxPool2D(2), xpnn.Sequential([Flatten()])]),
                             Linear(4 * 4 * 4, 3)])
    trained_statistics(model, IMAGE)
    export_and_compare(model, tmp_path, IMAGE)


@needs_residual
def test_residual_blocks_export(tmp_path):
    """An identity block and a downsampling block (strided body, 1x1 conv + BatchNorm shortcut)."""
    xpnn.seed(4)
    identity = RESIDUAL(xpnn.Sequential([Conv2D(4, 4, 3, padding=1), BatchNorm2D(4), ReLU(),
                                         Conv2D(4, 4, 3, padding=1), BatchNorm2D(4)]), activation=ReLU())
    down = RESIDUAL(xpnn.Sequential([Conv2D(4, 6, 3, stride=2, padding=1), BatchNorm2D(6), ReLU(),
                                     Conv2D(6, 6, 3, padding=1)]),
                    shortcut=xpnn.Sequential([Conv2D(4, 6, 1, stride=2), BatchNorm2D(6)]))
    model = xpnn.Sequential([Conv2D(2, 4, 3, padding=1), identity, down, GlobalAvgPool2D(), Linear(6, 3)])
    trained_statistics(model, IMAGE)
    proto = export_and_compare(model, tmp_path, IMAGE)
    assert ops(proto).count("Add") == 2


# --------------------------------------------------------------------------- the input shape


def conv_pool_stack():
    return xpnn.Sequential([Conv2D(2, 4, 3, padding=1), ReLU(), MaxPool2D(2), Conv2D(4, 3, 3, padding=1), AvgPool2D(3),
                            Flatten(), Linear(3, 2)])


@pytest.mark.parametrize("make, shape", [
    (lambda: zoo.resnet((3, 16, 16), 2, widths=(4, 8), blocks=(1, 1)), (3, 16, 16)),
    (lambda: xpnn.Sequential([Linear(7, 9), ReLU(), Dropout(0.5), Linear(9, 3)]), (7,)),
    (lambda: xpnn.Sequential([Sigmoid(), xpnn.Sequential([Linear(5, 4), Tanh()]), Linear(4, 2)]), (5,)),
], ids=["zoo-resnet", "dense-stack", "nested-dense-stack"])
def test_models_that_determine_their_input_export_without_being_told(make, shape, tmp_path):
    """zoo builders record the shape they were built for; a first Linear fixes (in_features,)."""
    xpnn.seed(0)
    model = make()
    assert model.input_shape == shape
    proto = export_and_compare(model, tmp_path, shape, pass_shape=False)
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims[1:]] == list(shape)


def test_a_convolution_stack_takes_its_shape_at_export(tmp_path):
    """A Conv2D fixes only the channels: the error asks for input_shape, which then exports any size that fits."""
    model = conv_pool_stack()
    assert model.input_shape is None
    with pytest.raises(OnnxExportError, match=r"input shape is unknown: pass input_shape=\(C, H, W\)"):
        export_onnx(model, tmp_path / "m.onnx")
    assert not list(tmp_path.iterdir())
    for shape in ((2, 6, 6), (2, 7, 9)):
        export_and_compare(model, tmp_path, shape)


def _fitted(model, shape):
    x = np.random.default_rng(1).standard_normal((16, *shape)).astype(np.float32)
    model.fit(x, np.arange(16) % 2, loss="cross_entropy", epochs=1, batch_size=8, seed=0, verbose=0)


def _predicted_at_another_size(model, shape):
    model.predict(np.zeros((2, shape[0], shape[1] + 4, shape[2] + 4), np.float32))


def _called(model, shape):
    model(xpnn.to_device(np.ones((3, *shape), np.float32)))


@pytest.mark.parametrize("make, shape, use", [
    (lambda: zoo.resnet((3, 16, 16), 2, widths=(4, 8), blocks=(1, 1)), (3, 16, 16), _fitted),
    (lambda: zoo.resnet((3, 16, 16), 2, widths=(4, 8), blocks=(1, 1)), (3, 16, 16), _predicted_at_another_size),
    (lambda: xpnn.Sequential([Linear(7, 9), ReLU(), Linear(9, 2)]), (7,), _fitted),
    (conv_pool_stack, (2, 6, 6), _called),
    (conv_pool_stack, (2, 6, 6), _fitted),
], ids=["resnet-fitted", "resnet-predicted-at-20x20", "dense-fitted", "conv-called", "conv-fitted"])
def test_a_saved_and_reloaded_model_exports_the_same_graph(make, shape, use, tmp_path):
    """Whatever shape fit, predict or a direct call leaves on the model, its file keeps it."""
    xpnn.seed(0)
    model = make()
    use(model, shape)
    before = onnx.load(str(export_onnx(model, tmp_path / "before.onnx")))
    after = onnx.load(str(export_onnx(xpnn.load(xpnn.save(model, tmp_path / "m.npz")), tmp_path / "after.onnx")))
    assert after.graph.SerializeToString() == before.graph.SerializeToString()
    assert metadata(after) == metadata(before)
    assert json.loads(metadata(after)["input_shape"])[1:] == list(model.input_shape)


# --------------------------------------------------------------------------- the file


def test_batch_axis_is_symbolic_and_ir_version_is_pinned(tmp_path):
    model = xpnn.Sequential([Flatten(), Linear(8, 2)])
    for opset, ir_version in ((17, 8), (20, 9)):
        proto = onnx.load(str(export_onnx(model, tmp_path / f"{opset}.onnx", opset, input_shape=(2, 4))))
        assert proto.ir_version == ir_version and proto.opset_import[0].version == opset
        dims = proto.graph.input[0].type.tensor_type.shape.dim
        assert dims[0].dim_param == "N" and [d.dim_value for d in dims[1:]] == [2, 4]
    assert model.input_shape is None  # exporting does not build the model as a side effect


def test_metadata_says_how_to_preprocess(tmp_path):
    model = zoo.build("cnn", (1, 8, 8), 3)
    model.loss = zoo.loss_for(model)
    model.metadata = {"classes": ["cat", "dog", "emu"],
                      "input": {"size": [8, 8], "color": "gray", "channels": 1, "scale": "unit"}}
    meta = metadata(onnx.load(str(export_onnx(model, tmp_path / "m.onnx"))))
    assert json.loads(meta["classes"]) == ["cat", "dog", "emu"]
    assert json.loads(meta["input_shape"]) == ["N", 1, 8, 8] and meta["input_dtype"] == "float32"
    assert meta["input_color"] == "gray" and json.loads(meta["input_size"]) == [8, 8]
    assert "255" in meta["input_scale"] and json.loads(meta["preprocessing"])["scale"] == "unit"
    assert meta["xpnn_version"] == xpnn.__version__ and meta["output_activation"] == "softmax"
    override = metadata(onnx.load(str(export_onnx(model, tmp_path / "o.onnx", classes=["a", "b", "c"],
                                                  preprocessing={"scale": [[0.5], [0.25]]}))))
    assert json.loads(override["classes"]) == ["a", "b", "c"] and json.loads(override["input_scale"]) == [[0.5], [0.25]]


def test_float64_models_export_as_float32_with_a_note(tmp_path):
    xpnn.seed(5)
    model = xpnn.Sequential([Linear(4, 3, dtype="float64"), Tanh(), Linear(3, 2, dtype="float64")])
    with pytest.warns(UserWarning, match="float64; ONNX export writes float32"):
        proto = export_and_compare(model, tmp_path, (4,))
    assert metadata(proto)["exported_from_dtype"] == "float64"
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT


def test_a_model_on_another_device_exports_from_host_copies(tmp_path):
    """Weights on array-api-strict's device1 (the GPU stand-in) come to the host for the file."""
    with xpnn.use_device("array_api_strict:device1"):
        xpnn.seed(6)
        model = xpnn.Sequential([Conv2D(2, 3, 3, padding=1), BatchNorm2D(3), ReLU(), GlobalAvgPool2D()])
        trained_statistics(model, IMAGE)
        export_and_compare(model, tmp_path, IMAGE)


def test_the_python_api_overwrites_atomically(tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(b"old")
    export_onnx(xpnn.Sequential([Linear(2, 2)]), path, input_shape=(2,))
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


# --------------------------------------------------------------------------- what cannot be exported


class Doubler(Layer):
    def forward(self, x, *, train, input_grad):
        return x * 2, lambda dy: dy * 2


class MyReLU(ReLU):
    """Same name family, other maths: must not be exported as Relu."""

    def forward(self, x, *, train, input_grad):
        return x * 0, lambda dy: dy * 0


@pytest.mark.parametrize("custom, name", [(Doubler(), "Doubler()"), (MyReLU(), "MyReLU()")])
def test_a_layer_without_an_exporter_is_one_error_naming_it_and_writes_nothing(custom, name, tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(b"old")
    model = xpnn.Sequential([Linear(3, 3), custom])
    with pytest.raises(OnnxExportError, match=rf"cannot export {re.escape(name)} \(layer 1\) at position 1 to ONNX: xpnn has no "
                                              rf"ONNX exporter for {type(custom).__qualname__} \(supported: .*Conv2D"):
        export_onnx(model, path, input_shape=(3,))
    assert path.read_bytes() == b"old" and len(list(tmp_path.iterdir())) == 1


def test_a_registered_exporter_exports_a_users_own_layer(tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_export, "_EXPORTERS", dict(onnx_export._EXPORTERS))

    @onnx_export.exporter(Doubler)
    def _doubler(layer, graph, x, path):
        return graph.node("Mul", [x, graph.constant(f"{path}.two", 2.0)], path)

    export_and_compare(xpnn.Sequential([Linear(3, 3), Doubler()]), tmp_path, (3,))


def test_non_finite_weights_are_refused(tmp_path):
    model = xpnn.Sequential([Linear(2, 2), ReLU(), Linear(2, 1)])
    weight = np.asarray(model.layers[2].weight.value).copy()
    weight[1, 0] = np.nan
    model.layers[2].load_state_dict({"weight": weight, "bias": np.zeros(1, np.float32)})
    with pytest.raises(OnnxExportError, match=r"Linear\(in_features=2, out_features=1, bias=True\) \(layer 2\): "
                                              r"2.weight has NaN or inf values"):
        export_onnx(model, tmp_path / "m.onnx", input_shape=(2,))
    assert not list(tmp_path.iterdir())


def test_unknown_input_shape_and_bad_opsets_are_clear_errors(tmp_path):
    model = xpnn.Sequential([Flatten(), Linear(4, 2)])
    with pytest.raises(OnnxExportError, match=r"input shape is unknown: pass input_shape=\(C, H, W\)"):
        export_onnx(model, tmp_path / "m.onnx")
    for opset in (12, 10_000, "17"):
        with pytest.raises(ValueError, match=rf"ONNX opset must be an integer from 13 to \d+ .*got {opset!r}"):
            export_onnx(model, tmp_path / "m.onnx", opset, input_shape=(4,))
    assert model.input_shape is None and not list(tmp_path.iterdir())


# --------------------------------------------------------------------------- the command


@pytest.fixture
def model_file(tmp_path):
    xpnn.seed(0)
    model = zoo.build("cnn", (1, 8, 8), 3)
    model.loss = zoo.loss_for(model)
    return xpnn.save(model, tmp_path / "model.npz", metadata={
        "classes": ["a", "b", "c"], "input": {"size": [8, 8], "color": "gray", "channels": 1, "scale": "unit"}})


def test_export_command_writes_a_checked_file_and_keeps_an_existing_one(model_file, tmp_path, capsys):
    out = tmp_path / "model.onnx"
    assert main(["export", str(model_file), str(out), "--opset", "20"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    proto = onnx.load(str(out))
    assert proto.opset_import[0].version == 20 and json.loads(metadata(proto)["classes"]) == ["a", "b", "c"]
    x = np.random.default_rng(0).random((2, 1, 8, 8), dtype=np.float32)
    np.testing.assert_allclose(session(out).run(["logits"], {"input": x})[0], xpnn.load(model_file).predict(x),
                               **TOLERANCE)
    before = out.read_bytes()
    assert main(["export", str(model_file), str(out)]) == 2
    assert capsys.readouterr().err.strip() == f"xpnn: error: {out} exists; pass --force to replace it"
    assert out.read_bytes() == before
    assert main(["export", str(model_file), str(out), "--force"]) == 0
    assert onnx.load(str(out)).opset_import[0].version == 17


def test_export_command_takes_the_input_shape_a_file_does_not_record(tmp_path, capsys):
    path = xpnn.save(conv_pool_stack(), tmp_path / "convs.npz")
    out = tmp_path / "convs.onnx"
    assert main(["export", str(path), str(out)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"xpnn: error: {path} does not record the shape of the model's input: pass --input-shape C,H,W (one sample, "
        f"no batch axis; for a dense model the feature count)")
    for bad in ("2,x,6", "2,0,6", ""):
        with pytest.raises(SystemExit) as exit_info:
            main(["export", str(path), str(out), "--input-shape", bad])
        assert exit_info.value.code == 2
        assert f"expected positive integers separated by commas, like 3,64,64, got {bad!r}" in capsys.readouterr().err
    assert not out.exists()
    assert main(["export", str(path), str(out), "--input-shape", "2,6,6"]) == 0
    x = np.random.default_rng(0).random((3, 2, 6, 6), dtype=np.float32)
    np.testing.assert_allclose(session(out).run(None, {"input": x})[0], xpnn.load(path).predict(x), **TOLERANCE)


def test_export_command_errors_are_one_line(model_file, tmp_path, capsys):
    assert main(["export", str(tmp_path / "missing.npz"), str(tmp_path / "m.onnx")]) == 2
    assert "model file" in capsys.readouterr().err
    assert main(["export", str(model_file), str(tmp_path / "m.onnx"), "--opset", "12"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("xpnn: error: ONNX opset must be an integer from 13")
    assert not (tmp_path / "m.onnx").exists()


def test_no_warnings_for_a_float32_model(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        export_onnx(zoo.build("mlp", (1, 4, 4), 2), tmp_path / "m.onnx")
