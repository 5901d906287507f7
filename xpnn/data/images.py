"""Image files to uint8 NCHW arrays with Pillow: one folder per class, decoded in parallel, cached.

Every image goes through the same steps, in :func:`load_image`:

1. open with Pillow (JPEG, PNG, BMP, GIF (first frame), WebP; whatever the extension says, the
   content decides the format), and load fully, so a truncated file fails here, not later;
2. apply the EXIF orientation (``ImageOps.exif_transpose``), so phone photos stand upright;
3. convert to 8-bit RGB or gray: palette and alpha images are composited on white, CMYK and
   other modes converted by Pillow, 16-bit and 32-bit integer images rescaled to 0..255
   (Pillow's own ``convert("L")`` would clip them);
4. resize to ``size`` = (height, width), stretching if the aspect ratio differs (as Keras'
   ``image_dataset_from_directory`` does), with Pillow's **BILINEAR** filter and
   ``reducing_gap=3.0``. Pillow's filters widen with the scale factor, so bilinear
   downscaling is antialiased (unlike OpenCV's); the reducing gap first box-averages by an
   integer factor, which is much faster for large photos and, per Pillow's documentation,
   indistinguishable from the exact filter at 3.0. Bilinear is also what torchvision's and
   Keras' default pipelines use, so models trained elsewhere see the same kind of pixels.
   JPEGs are additionally decoded at a reduced scale (``Image.draft``) when they are much larger
   than ``size``.
"""
from __future__ import annotations

import hashlib
import json
import os
import stat
import struct
import warnings
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageOps

from ..errors import DataError
from ..files import atomic_write

__all__ = ["ImageFolder", "load_image", "image_size", "IMAGE_EXTENSIONS"]

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp"})
RESAMPLE = Image.Resampling.BILINEAR
REDUCING_GAP = 3.0
PROGRESS_MIN_FILES = 500
MAX_FILE_WARNINGS = 10
_CACHE_VERSION = 1
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, zlib.error,
                  Image.DecompressionBombError)


def image_size(size: "int | Sequence[int] | None") -> tuple[int, int] | None:
    """``size`` as ``(height, width)`` (None stays None), checked: positive, and no larger than
    Pillow's decompression-bomb limit, so a size read from a file cannot ask for gigabytes."""
    if size is None:
        return None
    hw = (size, size) if isinstance(size, int) else tuple(size)
    if len(hw) != 2 or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in hw):
        raise ValueError(f"size must be a positive int or (height, width), got {size!r}")
    h, w = hw
    if Image.MAX_IMAGE_PIXELS and h * w > Image.MAX_IMAGE_PIXELS:
        raise ValueError(f"size {h}x{w} is {h * w:,} pixels, more than Pillow's decompression-bomb limit of "
                         f"{Image.MAX_IMAGE_PIXELS:,} (PIL.Image.MAX_IMAGE_PIXELS); no image is resized that large")
    return h, w


def _color(color: str) -> str:
    if color not in ("rgb", "gray"):
        raise ValueError(f"color must be 'rgb' or 'gray', got {color!r}")
    return color


def _to_8bit(im: Image.Image) -> Image.Image:
    """Integer (16/32-bit) and float images as 8-bit gray, rescaled instead of clipped."""
    a = np.asarray(im)
    if im.mode.startswith("I;16"):
        a = (a.astype(np.uint32) * 255 + 32767) // 65535
    elif im.mode == "I":
        peak = 65535 if a.max(initial=0) > 255 else 255
        a = (np.clip(a, 0, peak).astype(np.int64) * 255 + peak // 2) // peak
    else:  # "F": floats in [0, 1] are scaled, anything else taken as 0..255
        a = np.clip(a * 255.0 if a.max(initial=0) <= 1.0 else a, 0, 255).round()
    return Image.fromarray(a.astype(np.uint8), "L")


def _convert(im: Image.Image, color: str) -> Image.Image:
    """Any Pillow mode to ``"RGB"`` or ``"L"``, compositing transparency on white."""
    if im.mode in ("I", "F") or im.mode.startswith("I;16"):
        im = _to_8bit(im)
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif im.mode in ("PA", "LA", "La", "RGBa") or (im.mode == "L" and "transparency" in im.info):
        im = im.convert("RGBA")
    elif im.mode == "RGB" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode == "RGBA":
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, im)
    target = "RGB" if color == "rgb" else "L"
    return im if im.mode == target else im.convert(target)


def _decode(path: Path, size: tuple[int, int] | None, color: str) -> np.ndarray:
    with Image.open(path) as im:
        if size is not None and im.format == "JPEG":
            longest = int(max(size) * REDUCING_GAP)  # orientation may swap the axes
            im.draft(im.mode, (longest, longest))
        im.load()
        im = ImageOps.exif_transpose(im)
        im = _convert(im, color)
        if size is not None and im.size != (size[1], size[0]):
            im = im.resize((size[1], size[0]), RESAMPLE, reducing_gap=REDUCING_GAP)
        a = np.asarray(im, dtype=np.uint8)
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


def load_image(path: "str | os.PathLike[str]", size: "int | Sequence[int] | None" = (128, 128),
               color: str = "rgb") -> np.ndarray:
    """One image file as a uint8 ``(C, H, W)`` array (C = 3 for ``"rgb"``, 1 for ``"gray"``).

    ``size`` is ``(height, width)``, an int for a square, or ``None`` to keep the file's size.
    Decoding follows the steps in this module's docstring, exactly as :class:`ImageFolder` does,
    so predictions see the pixels training saw. A file that cannot be read raises
    :class:`~xpnn.errors.DataError` naming it.
    """
    path = Path(path)
    hw, color = image_size(size), _color(color)
    if not _is_regular_file(path):
        raise DataError(f"{path}: cannot read as an image: not a regular file (missing, a folder, a FIFO or a device)")
    try:
        return _decode(path, hw, color)
    except _DECODE_ERRORS as exc:
        raise DataError(f"{path}: cannot read as an image: {exc}") from exc


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


#: bounds on listing one class folder: how deep it nests, and how many entries are looked at
MAX_WALK_DEPTH = 32
MAX_WALK_ENTRIES = 1_000_000


def _is_regular_file(path: Path) -> bool:
    """A regular file (after following symlinks): not a FIFO, device or socket, which may block."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def _image_files(folder: Path) -> list[Path]:
    """Image files below ``folder`` (recursively, hidden files and folders skipped), sorted.

    Symlinked folders are followed, each real folder once (a link loop adds nothing), except
    links up to a folder that holds ``folder`` (they would add other classes' images); only
    regular files are listed (a FIFO named ``pipe.png`` would block forever); the walk stops
    with a :class:`~xpnn.errors.DataError` beyond :data:`MAX_WALK_DEPTH` levels or
    :data:`MAX_WALK_ENTRIES` entries, so pointing it at ``/`` or ``/proc`` ends quickly.
    """
    found: list[Path] = []
    seen: set[tuple[int, int]] = set()
    start = Path(os.path.realpath(folder))
    entries = 0
    stack = [(folder, 0)]
    while stack:
        directory, depth = stack.pop()
        try:
            info = os.stat(directory)
        except OSError:
            continue
        real = Path(os.path.realpath(directory))
        if (info.st_dev, info.st_ino) in seen or (real != start and start.is_relative_to(real)):
            continue  # seen already, or a link up to a folder that holds this one (other classes too)
        seen.add((info.st_dev, info.st_ino))
        try:
            with os.scandir(directory) as it:
                listing = list(it)
        except OSError:
            continue
        entries += len(listing)
        if entries > MAX_WALK_ENTRIES:
            raise DataError(f"{folder} holds more than {MAX_WALK_ENTRIES:,} files and folders; is it really an image "
                            f"class folder? (xpnn.data.images.MAX_WALK_ENTRIES sets the limit)")
        for entry in listing:
            if _is_hidden(entry.name):
                continue
            path = Path(directory) / entry.name
            try:
                is_dir = entry.is_dir()
            except OSError:
                continue
            if is_dir:
                if depth + 1 > MAX_WALK_DEPTH:
                    raise DataError(f"{folder} nests folders more than {MAX_WALK_DEPTH} levels deep ({path}); "
                                    f"is it really an image class folder?")
                stack.append((path, depth + 1))
            elif path.suffix.lower() in IMAGE_EXTENSIONS and _is_regular_file(path):
                found.append(path)
    return sorted(found)


class ImageFolder:
    """A labelled image data set from ``root/<class>/<images>``, decoded into host arrays.

    Attributes: ``x`` uint8 ``(N, C, H, W)``; ``y`` int64 labels; ``classes`` (label ``i`` is
    ``classes[i]``: the sorted subfolder names, or the ``classes`` given); ``paths`` (the file
    of each sample); ``skipped`` (``(path, reason)`` of files that could not be decoded).

    ``size`` is ``(height, width)`` (or an int), ``color`` ``"rgb"`` or ``"gray"``; see the module
    docstring for how files are decoded and resized. Files with the extensions in
    :data:`IMAGE_EXTENSIONS` are read, in subfolders too; hidden files are ignored.
    A corrupt, truncated or non-image file is skipped with one warning naming it (up to
    ``MAX_FILE_WARNINGS``) and a count at the end; ``strict=True`` raises
    :class:`~xpnn.errors.DataError` naming it instead. A class folder with no images, or a
    ``root`` with none, raises :class:`~xpnn.errors.DataError` naming the folder.

    ``workers`` threads decode in parallel (Pillow releases the GIL; default: one per CPU; 0 or
    1 decodes in this thread). ``progress``: show a tqdm bar (default: from
    ``PROGRESS_MIN_FILES`` files on). ``cache=True`` stores the decoded arrays in
    ``root/.xpnn-cache-<H>x<W>-<color>-<key>.npz`` (or in the folder ``cache`` names, with a
    hash of ``root`` added to the name), keyed on the relative paths, sizes and modification
    times of the files and on the settings, so any change to the files rebuilds it; stale caches
    for the same root and settings are removed. Skipped files are recorded and warned about
    again on a cache hit.
    """

    def __init__(self, root: "str | os.PathLike[str]", size: "int | Sequence[int]" = (128, 128), color: str = "rgb",
                 classes: Sequence[str] | None = None, strict: bool = False,
                 cache: "bool | str | os.PathLike[str]" = False, workers: int | None = None,
                 progress: bool | None = None) -> None:
        self.root = Path(root)
        hw = image_size(size)
        if hw is None:
            raise ValueError("ImageFolder needs a size: images of one batch must have one shape")
        self.size, self.color, self.strict = hw, _color(color), strict
        self.classes = self._find_classes(classes)
        files, labels = self._list_files()
        self.skipped: list[tuple[str, str]] = []
        cache_file = self._cache_file(cache, files) if cache else None
        if cache_file is not None and self._load_cache(cache_file):
            return
        x, ok = self._decode_all(files, workers, progress)
        self.x = x if ok.all() else x[ok]
        self.y = np.asarray(labels, dtype=np.int64)[ok]
        self.paths = [str(f) for f, good in zip(files, ok) if good]
        self._check_classes_nonempty()
        if cache_file is not None:
            self._save_cache(cache_file)

    def __len__(self) -> int:
        return len(self.y)

    def __repr__(self) -> str:
        return (f"ImageFolder({str(self.root)!r}: {len(self)} images, {len(self.classes)} classes, "
                f"x {self.x.dtype} {tuple(self.x.shape)})")

    # ---------------------------------------------------------------- listing

    def _find_classes(self, classes: Sequence[str] | None) -> list[str]:
        if not self.root.is_dir():
            raise DataError(f"image folder {self.root} does not exist or is not a folder")
        if classes is not None:
            classes = [str(c) for c in classes]
            if len(set(classes)) != len(classes) or not classes:
                raise ValueError(f"classes must be a non-empty list of distinct folder names, got {classes}")
            missing = [c for c in classes if not (self.root / c).is_dir()]
            if missing:
                raise DataError(f"class folder(s) {', '.join(str(self.root / c) for c in missing)} do not exist")
            return classes
        found = sorted(p.name for p in self.root.iterdir() if p.is_dir() and not _is_hidden(p.name))
        for name in found:
            try:
                name.encode("utf-8")
            except UnicodeEncodeError:
                raise DataError(f"class folder {os.fsencode(self.root / name)!r}: its name is not valid UTF-8, so it "
                                f"cannot be a class name in reports and model files; rename the folder") from None
        if not found:
            loose = [p for p in self.root.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS]
            hint = (f"; it holds {len(loose)} image file(s) directly: put each class in its own subfolder"
                    if loose else "")
            raise DataError(f"image folder {self.root} has no class subfolders (expected root/<class>/<image>)"
                            f"{hint}")
        return found

    def _list_files(self) -> tuple[list[Path], list[int]]:
        files: list[Path] = []
        labels: list[int] = []
        for label, name in enumerate(self.classes):
            found = _image_files(self.root / name)
            if not found:
                raise DataError(f"class folder {self.root / name} has no image files "
                                f"({', '.join(sorted(IMAGE_EXTENSIONS))})")
            files += found
            labels += [label] * len(found)
        return files, labels

    def _check_classes_nonempty(self) -> None:
        counts = np.bincount(self.y, minlength=len(self.classes))
        empty = [self.classes[i] for i in np.flatnonzero(counts == 0)]
        if empty:
            raise DataError(f"class folder(s) {', '.join(str(self.root / c) for c in empty)} have no readable "
                            f"images: every file failed to decode")

    # ---------------------------------------------------------------- decoding

    def _decode_all(self, files: list[Path], workers: int | None,
                    progress: bool | None) -> tuple[np.ndarray, np.ndarray]:
        h, w = self.size
        x = np.empty((len(files), 3 if self.color == "rgb" else 1, h, w), dtype=np.uint8)
        errors: list[str | None] = [None] * len(files)

        def work(i: int) -> None:
            try:
                x[i] = _decode(files[i], self.size, self.color)
            except _DECODE_ERRORS as exc:
                if self.strict:
                    raise DataError(f"{files[i]}: cannot read as an image: {exc}") from exc
                errors[i] = f"{type(exc).__name__}: {exc}"

        workers = (os.cpu_count() or 1) if workers is None else workers
        show = len(files) >= PROGRESS_MIN_FILES if progress is None else progress
        bar = _progress_bar(len(files), f"decoding {self.root.name or self.root}", show)
        pool = ThreadPoolExecutor(max_workers=workers) if workers > 1 else None
        try:
            results = map(work, range(len(files))) if pool is None else pool.map(work, range(len(files)))
            for _ in results:
                bar.update(1)
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
            bar.close()
        bad = [(str(files[i]), reason) for i, reason in enumerate(errors) if reason is not None]
        self._report_skipped(bad, len(files))
        return x, np.asarray([e is None for e in errors], dtype=bool)

    def _report_skipped(self, bad: list[tuple[str, str]], total: int) -> None:
        self.skipped = bad
        if not bad:
            return
        if self.strict:
            path, reason = bad[0]
            raise DataError(f"{path}: cannot read as an image: {reason}")
        for path, reason in bad[:MAX_FILE_WARNINGS]:
            warnings.warn(f"skipping {path}: cannot read as an image ({reason})", stacklevel=4)
        more = f" ({len(bad) - MAX_FILE_WARNINGS} not listed above)" if len(bad) > MAX_FILE_WARNINGS else ""
        warnings.warn(f"ImageFolder({self.root}): skipped {len(bad)} of {total} files that could not be read "
                      f"as images{more}; strict=True raises instead", stacklevel=4)

    # ---------------------------------------------------------------- cache

    def _cache_file(self, cache: "bool | str | os.PathLike[str]", files: list[Path]) -> Path:
        folder = self.root if cache is True else Path(cache)
        root_hash = hashlib.sha256(str(self.root.resolve()).encode()).hexdigest()[:8]
        self._cache_tag = "" if cache is True else f"{root_hash}-"
        entries = []
        for f in files:
            st = f.stat()
            entries.append([f.relative_to(self.root).as_posix(), st.st_size, st.st_mtime_ns])
        key = json.dumps({"version": _CACHE_VERSION, "size": self.size, "color": self.color,
                          "classes": self.classes, "files": entries}, separators=(",", ":"))
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        return folder / f"{self._cache_prefix()}{digest}.npz"

    def _cache_prefix(self) -> str:
        return f".xpnn-cache-{self._cache_tag}{self.size[0]}x{self.size[1]}-{self.color}-"

    def _load_cache(self, path: Path) -> bool:
        if not path.is_file():
            return False
        try:
            with np.load(path, allow_pickle=False) as f:
                x, y = f["x"], f["y"]
                rel, skipped = f["paths"].tolist(), f["skipped"].tolist()
        except (OSError, ValueError, KeyError, zlib.error, EOFError, zipfile.BadZipFile):
            return False  # a damaged or truncated cache is rebuilt
        h, w = self.size
        channels = 3 if self.color == "rgb" else 1
        if (x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != (channels, h, w) or y.shape != (len(x),)
                or len(rel) != len(x) or (len(y) and not 0 <= y.min() <= y.max() < len(self.classes))):
            return False
        self.x, self.y = x, y
        self.paths = [str(self.root / p) for p in rel]
        self._report_skipped([(str(self.root / p), reason) for p, reason in skipped], len(rel) + len(skipped))
        return True

    def _save_cache(self, path: Path) -> None:
        rel = [Path(p).relative_to(self.root).as_posix() for p in self.paths]
        skipped = [[Path(p).relative_to(self.root).as_posix(), r] for p, r in self.skipped]
        try:
            with atomic_write(path) as out:
                np.savez(out, x=self.x, y=self.y, paths=np.asarray(rel, dtype=str),
                         skipped=np.asarray(skipped, dtype=str).reshape(-1, 2))
        except OSError as exc:
            warnings.warn(f"ImageFolder: could not write the cache {path} ({exc}); continuing without it",
                          stacklevel=3)
            return
        for stale in path.parent.glob(f"{self._cache_prefix()}*.npz"):
            if stale != path:
                stale.unlink(missing_ok=True)


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress_bar(total: int, desc: str, show: bool) -> Any:
    if not show:
        return _NoBar()
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, unit="img")
