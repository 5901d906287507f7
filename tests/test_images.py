"""ImageFolder and load_image on real image files of every kind Pillow writes, good and broken."""
from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
from PIL import Image

from xpnn.data import ImageFolder, load_image
from xpnn.errors import DataError

RED, BLUE = (255, 0, 0), (0, 0, 255)


def _gradient(w=32, h=24):
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([xx * 255 // (w - 1), yy * 255 // (h - 1), np.full_like(xx, 90)], -1).astype(np.uint8)


def _halves(w=40, h=20):
    """Left half red, right half blue."""
    a = np.empty((h, w, 3), np.uint8)
    a[:, : w // 2], a[:, w // 2:] = RED, BLUE
    return a


def _rgba(path):
    a = np.zeros((8, 8, 4), np.uint8)
    a[..., 3] = 0                      # fully transparent black -> white
    a[:4, :, :] = (0, 0, 0, 255)       # opaque black top half
    a[6:, :, 3] = 128                  # half-transparent black bottom rows -> mid gray
    Image.fromarray(a, "RGBA").save(path)


def _palette(path):
    im = Image.new("P", (8, 8), 0)
    im.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    im.paste(1, (0, 0, 8, 4))          # top half green, bottom half index 0 (transparent)
    im.save(path, transparency=0)


def _gray16(path):
    a = np.zeros((8, 8), np.uint16)
    a[:, 4:] = 65535
    a[:4, :4] = 32896                  # 128.5 * 256.5 ~ 128 in 8 bits
    Image.fromarray(a).save(path)


def _exif_rotated(path):
    exif = Image.Exif()
    exif[0x0112] = 6                   # stored sideways: display needs a 90 degree clockwise turn
    Image.fromarray(_halves()).save(path, quality=95, exif=exif.tobytes())


def _jpeg_bytes(tmp_path):
    path = tmp_path / "whole.jpg"
    Image.fromarray(_gradient(64, 64)).save(path, quality=90)
    return path.read_bytes()


def test_load_image_formats(tmp_path):
    for ext in ("png", "jpg", "bmp", "gif", "webp"):
        Image.fromarray(_gradient()).save(tmp_path / f"g.{ext}")
        x = load_image(tmp_path / f"g.{ext}", size=None)
        assert x.shape == (3, 24, 32) and x.dtype == np.uint8, ext
        tol = 0 if ext in ("png", "bmp") else 40
        assert np.abs(x.astype(int) - _gradient().transpose(2, 0, 1)).mean() <= tol, ext


def test_modes_are_converted(tmp_path):
    _rgba(tmp_path / "rgba.png")
    x = load_image(tmp_path / "rgba.png", size=None)
    assert (x[:, :4] == 0).all() and (x[:, 4:6] == 255).all() and np.abs(x[:, 6:].astype(int) - 127).max() <= 1

    _palette(tmp_path / "p.png")
    x = load_image(tmp_path / "p.png", size=None)
    assert (x[:, :4].T == (0, 255, 0)).all() and (x[:, 4:] == 255).all()

    _gray16(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    x = load_image(tmp_path / "g16.png", size=None, color="gray")
    assert x.shape == (1, 8, 8)
    assert (x[0, :, 4:] == 255).all() and (x[0, 4:, :4] == 0).all() and (x[0, :4, :4] == 128).all()

    Image.fromarray(_halves(), "RGB").convert("L").save(tmp_path / "l.png")
    rgb = load_image(tmp_path / "l.png", size=None, color="rgb")
    assert rgb.shape == (3, 20, 40) and (rgb[0] == rgb[1]).all() and (rgb[1] == rgb[2]).all()

    Image.fromarray(_gradient()).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    x = load_image(tmp_path / "cmyk.jpg", size=None)
    assert x.shape == (3, 24, 32) and np.abs(x.astype(int) - _gradient().transpose(2, 0, 1)).mean() < 8


def test_exif_orientation_is_applied(tmp_path):
    _exif_rotated(tmp_path / "r.jpg")
    x = load_image(tmp_path / "r.jpg", size=None).astype(int)
    assert x.shape == (3, 40, 20)      # stored 40 wide x 20 high, shown 20 wide x 40 high
    top, bottom = x[:, :18].mean(axis=(1, 2)), x[:, 22:].mean(axis=(1, 2))
    assert top[0] > 200 > top[2] and bottom[2] > 200 > bottom[0]   # left (red) became the top


def test_resize_gray_and_size_forms(tmp_path):
    Image.fromarray(np.full((50, 70, 3), 200, np.uint8)).save(tmp_path / "a.png")
    assert load_image(tmp_path / "a.png", size=(16, 24)).shape == (3, 16, 24)
    x = load_image(tmp_path / "a.png", size=10, color="gray")
    assert x.shape == (1, 10, 10) and (x == 200).all()
    with pytest.raises(ValueError, match="color"):
        load_image(tmp_path / "a.png", color="cmyk")
    with pytest.raises(DataError, match="nothing.png"):
        load_image(tmp_path / "nothing.png")


def _folder(root, broken=True):
    """root/cat (3 good files), root/dog (2 good), plus a corrupt, a truncated and a text file."""
    (root / "cat").mkdir(parents=True)
    (root / "dog" / "nested").mkdir(parents=True)
    for i in range(3):
        Image.fromarray(np.full((20, 30, 3), 10 * i, np.uint8)).save(root / "cat" / f"c{i}.png")
    Image.fromarray(_gradient()).save(root / "dog" / "d0.jpg", quality=90)
    _rgba(root / "dog" / "nested" / "d1.png")
    (root / "dog" / "notes.txt").write_text("ignored: not an image extension")
    (root / ".hidden").mkdir()
    Image.fromarray(_gradient()).save(root / ".hidden" / "h.png")
    if broken:
        (root / "cat" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(200))
        (root / "dog" / "truncated.jpg").write_bytes(_jpeg_bytes(root)[:600])
        (root / "dog" / "text.webp").write_text("this is not an image")
        (root / "whole.jpg").unlink()


def test_image_folder_labels_and_layout(tmp_path):
    _folder(tmp_path, broken=False)
    ds = ImageFolder(tmp_path, size=(12, 16), workers=1)
    assert ds.classes == ["cat", "dog"] and ds.y.tolist() == [0, 0, 0, 1, 1] and ds.y.dtype == np.int64
    assert ds.x.shape == (5, 3, 12, 16) and ds.x.dtype == np.uint8
    assert [os.path.basename(p) for p in ds.paths] == ["c0.png", "c1.png", "c2.png", "d0.jpg", "d1.png"]
    assert (ds.x[1] == 10).all()
    gray = ImageFolder(tmp_path, size=8, color="gray", classes=["dog", "cat"], workers=3)
    assert gray.x.shape == (5, 1, 8, 8) and gray.y.tolist() == [0, 0, 1, 1, 1]
    parallel, serial = ImageFolder(tmp_path, size=8, workers=4), ImageFolder(tmp_path, size=8, workers=0)
    np.testing.assert_array_equal(parallel.x, serial.x)


def test_broken_files_warn_once_each_and_are_counted(tmp_path):
    _folder(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = ImageFolder(tmp_path, size=8)
    messages = [str(w.message) for w in caught]
    assert len(ds) == 5 and len(ds.skipped) == 3
    for name in ("corrupt.png", "truncated.jpg", "text.webp"):
        assert sum(name in m and m.startswith("skipping") for m in messages) == 1, (name, messages)
    assert sum("skipped 3 of 8 files" in m for m in messages) == 1
    assert len(messages) == 4


def test_strict_raises_naming_the_file(tmp_path):
    _folder(tmp_path)
    with pytest.raises(DataError, match=r"corrupt\.png: cannot read"):
        ImageFolder(tmp_path, size=8, strict=True, workers=1)
    (tmp_path / "cat" / "corrupt.png").unlink()
    (tmp_path / "dog" / "text.webp").unlink()
    with pytest.raises(DataError, match=r"(?i)truncated\.jpg: cannot read.*truncated"):
        ImageFolder(tmp_path, size=8, strict=True)


def test_empty_class_and_empty_root_name_the_path(tmp_path):
    with pytest.raises(DataError, match=str(tmp_path / "missing")):
        ImageFolder(tmp_path / "missing")
    with pytest.raises(DataError, match="no class subfolders"):
        ImageFolder(tmp_path)
    Image.fromarray(_gradient()).save(tmp_path / "loose.png")
    with pytest.raises(DataError, match="1 image file.*own subfolder"):
        ImageFolder(tmp_path)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    Image.fromarray(_gradient()).save(tmp_path / "a" / "x.png")
    with pytest.raises(DataError, match=f"class folder {tmp_path / 'b'} has no image files"):
        ImageFolder(tmp_path)
    (tmp_path / "b" / "bad.png").write_bytes(b"nope")
    with pytest.warns(UserWarning), pytest.raises(DataError, match=f"{tmp_path / 'b'} have no readable"):
        ImageFolder(tmp_path)
    with pytest.raises(DataError, match="do not exist"):
        ImageFolder(tmp_path, classes=["a", "zebra"])


def test_cache_hit_and_invalidation(tmp_path):
    _folder(tmp_path, broken=False)
    target = tmp_path / "cat" / "a.bmp"     # BMP: the file size does not depend on the pixels
    Image.fromarray(np.full((20, 30, 3), 7, np.uint8)).save(target)
    first = ImageFolder(tmp_path, size=8, cache=True)
    caches = list(tmp_path.glob(".xpnn-cache-8x8-rgb-*.npz"))
    assert len(caches) == 1 and (first.x[0] == 7).all()

    # Same size and mtime, different pixels: the cache is trusted, so the old pixels come back.
    st = target.stat()
    Image.fromarray(np.full((20, 30, 3), 99, np.uint8)).save(target)
    assert target.stat().st_size == st.st_size
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    hit = ImageFolder(tmp_path, size=8, cache=True)
    np.testing.assert_array_equal(hit.x, first.x)
    assert hit.paths == first.paths and hit.classes == first.classes and hit.y.tolist() == first.y.tolist()

    # A new mtime invalidates it: the file is decoded again and the stale cache removed.
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    fresh = ImageFolder(tmp_path, size=8, cache=True)
    assert (fresh.x[0] == 99).all()
    assert list(tmp_path.glob(".xpnn-cache-8x8-rgb-*.npz")) != caches
    assert len(list(tmp_path.glob(".xpnn-cache-8x8-rgb-*.npz"))) == 1

    # Other settings get their own cache file; an added file changes the key too.
    ImageFolder(tmp_path, size=8, color="gray", cache=True)
    assert len(list(tmp_path.glob(".xpnn-cache-*.npz"))) == 2
    Image.fromarray(_gradient()).save(tmp_path / "cat" / "c9.png")
    assert len(ImageFolder(tmp_path, size=8, cache=True)) == 7


def test_cache_replays_skip_warnings_and_custom_folder(tmp_path):
    data, store = tmp_path / "data", tmp_path / "store"
    _folder(data)
    for _ in range(2):              # the second load comes from the cache and warns the same way
        with pytest.warns(UserWarning) as caught:
            ds = ImageFolder(data, size=8, cache=store)
        assert len(ds) == 5 and len(caught) == 4 and "skipped 3 of 8" in str(caught[-1].message)
    assert len(list(store.glob(".xpnn-cache-*.npz"))) == 1 and not list(data.glob(".xpnn-cache-*"))
    with pytest.raises(DataError, match="corrupt.png"):
        ImageFolder(data, size=8, cache=store, strict=True)


def test_progress_bar(tmp_path, capsys):
    _folder(tmp_path, broken=False)
    ImageFolder(tmp_path, size=8, progress=True)
    assert "decoding" in capsys.readouterr().err
    ImageFolder(tmp_path, size=8)
    assert "decoding" not in capsys.readouterr().err
