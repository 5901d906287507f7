"""The model zoo: the batch-normalized Fashion CNN variant ("cnn-bn")."""
import numpy as np
import pytest

import xpnn
from xpnn import layers, optim, zoo


@pytest.mark.parametrize("make, shape", [
    (lambda: zoo.fashion_cnn(channels=3, image_size=12), (3, 12, 12)),
    (lambda: zoo.tutorial_cnn(channels=1, image_size=10), (1, 10, 10)),
    (lambda: zoo.catdog_cnn(24, channels=1), (1, 24, 24)),
    (lambda: zoo.catdog_bn_cnn(32, channels=3), (3, 32, 32)),
    (lambda: zoo.resnet((3, 20, 24), 2, widths=(4, 8), blocks=(1, 1)), (3, 20, 24)),
    (lambda: zoo.tutorial_mlp(12288), (12288,)),
    (lambda: zoo.dense_mlp(784), (784,)),
    (lambda: zoo.build("mlp", (1, 28, 28), 10), (1, 28, 28)),
])
def test_every_builder_records_the_input_it_was_built_for(make, shape):
    assert make().input_shape == shape


def test_fashion_cnn_batch_norm_puts_a_bias_free_conv_before_each_batch_norm():
    model = zoo.build("cnn-bn", (1, 28, 28), 10)
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds[:8] == ["Conv2D", "BatchNorm2D", "ReLU", "MaxPool2D"] * 2
    convs = [layer for layer in model.layers if isinstance(layer, layers.Conv2D)]
    assert [conv.bias for conv in convs] == [None, None]
    assert model.output_shapes((1, 28, 28))[-1] == (1, 10)
    plain = zoo.build("cnn", (1, 28, 28), 10)
    assert not any(isinstance(layer, layers.BatchNorm2D) for layer in plain.layers)


def test_fashion_cnn_batch_norm_rejects_an_image_size_it_cannot_pool():
    with pytest.raises(ValueError, match="model 'cnn-bn' needs an image size that is a multiple of 4, got 30"):
        zoo.build("cnn-bn", (1, 30, 30), 10)


def test_fashion_cnn_batch_norm_learns_the_shipped_sample_and_survives_save_load(tmp_path):
    (x, y), (x_test, y_test) = xpnn.datasets.fashion_mnist_sample()
    with xpnn.use_device("cpu"):
        xpnn.seed(0)
        model = zoo.build("cnn-bn", (1, 28, 28), 10)
    model.fit(x[:3000], y[:3000], loss="cross_entropy", optimizer=optim.AdamW(lr=1e-3, weight_decay=0.05),
              epochs=2, batch_size=64, seed=0, scale="unit", verbose=0)
    accuracy = model.evaluate(x_test, y_test, scale="unit")["accuracy"]
    assert accuracy >= 0.80, f"test accuracy {accuracy:.3f}"
    path = tmp_path / "cnn_bn.npz"
    xpnn.save(model, path)
    loaded = xpnn.load(path)
    np.testing.assert_allclose(loaded.predict(x_test[:50], scale="unit"), model.predict(x_test[:50], scale="unit"),
                               rtol=1e-5, atol=1e-6)
