"""Build xpnn/data/fashion_mnist_sample.npz: a stratified, seeded sample of Fashion-MNIST.

600 images per class from the official training split and 100 per class from the test split
(6,000 / 1,000), kept in their original order. Source: the four IDX files of Zalando Research's
Fashion-MNIST (MIT licence), found as xpnn.datasets.fashion_mnist() finds them, e.g. from
Debian's dataset-fashion-mnist package. The npz is written with fixed zip timestamps, so the
same inputs always give the same bytes:

    python ci/make_fashion_sample.py            # rebuild
    python ci/make_fashion_sample.py --check    # exit 1 if the committed file differs
"""
from __future__ import annotations

import argparse
import io
import sys
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from xpnn.data.datasets import FASHION_MNIST_CLASSES, SAMPLE_FILE, fashion_mnist  # noqa: E402

SEED = 20240601
PER_CLASS = {"train": 600, "test": 100}
INFO = ("Stratified sample of Fashion-MNIST (github.com/zalandoresearch/fashion-mnist), "
        "Copyright (c) 2017 Zalando SE, MIT licence. 600 train + 100 test images per class, "
        f"seed {SEED}, built by ci/make_fashion_sample.py. *_index: positions in the official splits.")


def stratified(y: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """``per_class`` indices of each label, drawn without replacement, returned sorted."""
    picks = [rng.choice(np.flatnonzero(y == c), per_class, replace=False) for c in range(len(FASHION_MNIST_CLASSES))]
    return np.sort(np.concatenate(picks))


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """A compressed npz whose bytes depend only on the arrays (no timestamps)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, array in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            member = io.BytesIO()
            np.lib.format.write_array(member, np.asarray(array), allow_pickle=False)
            zf.writestr(info, member.getvalue(), compresslevel=9)
    return buf.getvalue()


def build(root: str | None) -> bytes:
    rng = np.random.default_rng(SEED)
    arrays: dict[str, np.ndarray] = {}
    for part, (x, y) in zip(("train", "test"), fashion_mnist(root)):
        idx = stratified(y, PER_CLASS[part], rng)
        arrays[f"x_{part}"] = x[idx]
        arrays[f"y_{part}"] = y[idx].astype(np.uint8)
        arrays[f"{part}_index"] = idx.astype(np.int32)
    arrays["classes"] = np.asarray(FASHION_MNIST_CLASSES)
    arrays["info"] = np.asarray(INFO)
    return npz_bytes(arrays)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", help="folder with the four Fashion-MNIST IDX files (default: the usual search)")
    parser.add_argument("--out", type=Path, default=ROOT / "xpnn" / "data" / SAMPLE_FILE)
    parser.add_argument("--check", action="store_true", help="compare with --out instead of writing it")
    args = parser.parse_args()
    data = build(args.root)
    if args.check:
        same = args.out.is_file() and args.out.read_bytes() == data
        print(f"{args.out}: {'up to date' if same else 'DIFFERS from a fresh build'}")
        return 0 if same else 1
    args.out.write_bytes(data)
    print(f"wrote {args.out} ({len(data):,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
