"""DataLoader on every backend: placement, dtype, scaling (global and per channel), transforms."""
from __future__ import annotations

import numpy as np
import pytest

from xpnn import backend
from xpnn.data import DataLoader, channel_stats, fashion_mnist_sample
from xpnn.data.transforms import RandomHorizontalFlip
from xpnn.errors import DataError


@pytest.fixture
def images(rng):
    return rng.integers(0, 256, (10, 3, 4, 5), dtype=np.uint8), np.arange(10) % 3


def test_batches_land_on_the_device_cast_and_unit_scaled(device, images):
    x, y = images
    batches = list(DataLoader(x, y, 4, scale="unit"))
    assert [len(backend.to_numpy(yb)) for _, yb in batches] == [4, 4, 2]
    for xb, yb in batches:
        assert backend.device_of(xb) == device and backend.device_of(yb) == device
        assert xb.dtype == device.xp.float32 and yb.dtype == device.xp.int64
    got = np.concatenate([backend.to_numpy(xb) for xb, _ in batches])
    np.testing.assert_allclose(got, x / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(np.concatenate([backend.to_numpy(yb) for _, yb in batches]), y)


def test_float64_and_no_scale(device, images):
    x, y = images
    xb, _ = next(iter(DataLoader(x, y, 10, dtype="float64")))
    assert xb.dtype == device.xp.float64
    np.testing.assert_array_equal(backend.to_numpy(xb), x.astype(np.float64))


def test_scalar_and_per_channel_standardization(device, images):
    x, y = images
    xb, _ = next(iter(DataLoader(x, y, None, scale=(100.0, 50.0))))
    np.testing.assert_allclose(backend.to_numpy(xb), (x - 100.0) / 50.0, rtol=1e-5, atol=1e-6)
    mean, std = channel_stats(x)
    np.testing.assert_allclose(mean, x.astype(np.float64).mean(axis=(0, 2, 3)))
    np.testing.assert_allclose(std, x.astype(np.float64).std(axis=(0, 2, 3)))
    xb, _ = next(iter(DataLoader(x, y, None, scale=(mean, std))))
    assert backend.device_of(xb) == device and xb.dtype == device.xp.float32
    z = backend.to_numpy(xb)
    np.testing.assert_allclose(z.mean(axis=(0, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(z.std(axis=(0, 2, 3)), 1, atol=1e-5)
    feats = x.reshape(10, -1)[:, :3].astype(np.float32)
    xb, _ = next(iter(DataLoader(feats, y, None, scale=([1, 2, 3], [2, 2, 2]))))
    np.testing.assert_allclose(backend.to_numpy(xb), (feats - [1, 2, 3]) / 2, rtol=1e-6)


def test_bad_scales_fail_at_construction(images):
    x, y = images
    with pytest.raises(ValueError, match="scale must be None"):
        DataLoader(x, y, scale="zscore")
    with pytest.raises(ValueError, match="std > 0"):
        DataLoader(x, y, scale=(0.0, 0.0))
    with pytest.raises(DataError, match="2 per-channel values but x has shape .*3 channels"):
        DataLoader(x, y, scale=([0, 0], [1, 1]))
    with pytest.raises(ValueError, match="one length"):
        DataLoader(x, y, scale=([0, 0, 0], [1, 1]))


def test_transform_runs_on_training_batches_only(device, images):
    x, y = images
    loader = DataLoader(x, y, 10, scale="unit", transform=RandomHorizontalFlip(1.0))
    xb, _ = next(iter(loader))
    assert backend.device_of(xb) == device
    np.testing.assert_allclose(backend.to_numpy(xb), x[..., ::-1] / 255.0, rtol=1e-6)
    xe, _ = loader.take(np.arange(10))
    np.testing.assert_allclose(backend.to_numpy(xe), x / 255.0, rtol=1e-6)


def test_seeded_shuffle_depends_on_seed_and_epoch(images):
    x, y = images
    loader = DataLoader(x, y, 3, shuffle=True, seed=5)
    first = loader.order()
    assert sorted(first.tolist()) == list(range(10))
    np.testing.assert_array_equal(DataLoader(x, y, 3, shuffle=True, seed=5).order(), first)
    loader.set_epoch(1)
    assert not np.array_equal(loader.order(), first)


def test_the_shipped_sample_feeds_the_loader(device):
    (x, y), _ = fashion_mnist_sample()
    xb, yb = next(iter(DataLoader(x, y, 64, shuffle=True, seed=0, scale="unit")))
    assert tuple(xb.shape) == (64, 1, 28, 28) and backend.device_of(xb) == device
    v = backend.to_numpy(xb)
    assert 0.0 <= v.min() and v.max() <= 1.0 and 0 <= backend.to_numpy(yb).min() <= backend.to_numpy(yb).max() <= 9
