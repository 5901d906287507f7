"""Augmentation on every backend: shapes, dtypes and devices kept, and each does what it says."""
from __future__ import annotations

import numpy as np
import pytest

import xpnn
from xpnn import backend
from xpnn.data.transforms import ColorJitter, Compose, RandomCrop, RandomHorizontalFlip
from xpnn.errors import ShapeError


def _batch(device, rng, shape=(6, 3, 5, 7)):
    host = rng.random(shape).astype(np.float32)
    return host, backend.to_device(host, device)


def _same_place(out, x, device):
    assert tuple(out.shape) == tuple(x.shape) and out.dtype == x.dtype
    assert backend.device_of(out) == device


ALL = [RandomHorizontalFlip(0.5), RandomCrop((5, 7), padding=2), ColorJitter(0.4, 0.4), ColorJitter(0.3, clip=None),
       Compose([RandomCrop((5, 7), padding=(1, 0)), RandomHorizontalFlip(), ColorJitter(contrast=(0.5, 1.5))])]


@pytest.mark.parametrize("transform", ALL, ids=repr)
def test_keeps_shape_dtype_device_and_is_seeded(device, rng, transform):
    _, x = _batch(device, rng)
    xpnn.seed(7)
    first = transform(x)
    _same_place(first, x, device)
    xpnn.seed(7)
    np.testing.assert_array_equal(backend.to_numpy(transform(x)), backend.to_numpy(first))


def test_flip(device, rng):
    host, x = _batch(device, rng)
    np.testing.assert_array_equal(backend.to_numpy(RandomHorizontalFlip(1.0)(x)), host[..., ::-1])
    np.testing.assert_array_equal(backend.to_numpy(RandomHorizontalFlip(0.0)(x)), host)
    host, x = _batch(device, rng, (64, 1, 2, 3))
    out = backend.to_numpy(RandomHorizontalFlip(0.5)(x))
    flipped = (out == host[..., ::-1]).all(axis=(1, 2, 3))
    assert ((out == host).all(axis=(1, 2, 3)) | flipped).all() and 10 < flipped.sum() < 54


def test_crop_identity_and_windows(device, rng):
    host, x = _batch(device, rng)
    np.testing.assert_array_equal(backend.to_numpy(RandomCrop((5, 7))(x)), host)
    out = backend.to_numpy(RandomCrop((3, 4), padding=2, fill=-1.0)(x))
    assert out.shape == (6, 3, 3, 4)
    padded = np.pad(host, ((0, 0), (0, 0), (2, 2), (2, 2)), constant_values=-1.0)
    offsets = []
    for n in range(len(host)):   # each sample is one window of its own padded image, all channels alike
        hits = [(i, j) for i in range(9 - 3 + 1) for j in range(11 - 4 + 1)
                if (padded[n, :, i:i + 3, j:j + 4] == out[n]).all()]
        assert hits, n
        offsets.append(hits[0])
    assert len(set(offsets)) > 1      # offsets differ between samples


def test_crop_offsets_are_per_sample_and_uniform(device):
    values = np.arange(900, dtype=np.float32)
    x = backend.to_device(values.reshape(900, 1, 1, 1), device)
    out = backend.to_numpy(RandomCrop(1, padding=1, fill=-1.0)(x)).reshape(-1)
    # a 1x1 image padded to 3x3 and cut to 1x1: one offset in 9 hits the pixel, and then its own
    hit = out >= 0
    np.testing.assert_array_equal(out[hit], values[hit])
    assert 60 < hit.sum() < 140


def test_color_jitter(device, rng):
    host, x = _batch(device, rng)
    np.testing.assert_allclose(backend.to_numpy(ColorJitter(brightness=(2.0, 2.0))(x)), np.clip(2 * host, 0, 1),
                               rtol=1e-6)
    flat = backend.to_numpy(ColorJitter(contrast=(0.0, 0.0))(x))
    luma = (0.299 * host[:, 0] + 0.587 * host[:, 1] + 0.114 * host[:, 2]).mean(axis=(1, 2))
    np.testing.assert_allclose(flat, np.broadcast_to(luma[:, None, None, None], host.shape), rtol=1e-5)
    ratio = backend.to_numpy(ColorJitter(brightness=0.5, clip=None)(x)) / host
    per_sample = ratio.reshape(len(host), -1)
    np.testing.assert_allclose(per_sample, per_sample[:, :1] * np.ones_like(per_sample), rtol=1e-5)
    assert per_sample[:, 0].min() >= 0.5 - 1e-6 and per_sample[:, 0].max() <= 1.5 + 1e-6
    assert len(np.unique(per_sample[:, 0].round(5))) == len(host)
    gray = backend.to_device(rng.random((4, 1, 3, 3)).astype(np.float32), device)
    _same_place(ColorJitter(0.2, 0.2)(gray), gray, device)


def test_compose_applies_in_order(device, rng):
    host, x = _batch(device, rng)
    out = Compose([RandomHorizontalFlip(1.0), ColorJitter(brightness=(0.5, 0.5))])(x)
    np.testing.assert_allclose(backend.to_numpy(out), host[..., ::-1] * 0.5, rtol=1e-6)


def test_bad_inputs(device):
    ints = backend.to_device(np.zeros((2, 1, 3, 3), np.uint8), device)
    with pytest.raises(TypeError, match="floating-point"):
        RandomHorizontalFlip()(ints)
    flat = backend.to_device(np.zeros((2, 9), np.float32), device)
    with pytest.raises(ShapeError, match=r"NCHW batch \(4-d\), got shape \(2, 9\)"):
        ColorJitter(0.1)(flat)
    x = backend.to_device(np.zeros((2, 1, 3, 3), np.float32), device)
    with pytest.raises(ShapeError, match="does not fit the padded 5x5"):
        RandomCrop(6, padding=1)(x)
    with pytest.raises(ValueError):
        RandomHorizontalFlip(1.5)
    with pytest.raises(ValueError):
        ColorJitter(brightness=-1)
