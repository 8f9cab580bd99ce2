"""MNIST-style data sets from IDX files: where they are looked for, how they are
downloaded (checked against the published MD5s, written atomically into a cache), and how
an IDX file is read. ``data.load`` reads ``mnist`` and ``fashion-mnist`` through here.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import tempfile
import urllib.request
from pathlib import Path

import numpy as np

IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
# Download bases, tried in order (tests point these at a local server).
MIRRORS = {
    "mnist": ("https://ossci-datasets.s3.amazonaws.com/mnist/",),
    "fashion-mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
}
# MD5 of the official .gz files, as published by torchvision and zalandoresearch/fashion-mnist.
# (Debian's dataset-fashion-mnist recompresses them, so only downloads are checked.)
MD5 = {
    "mnist": {"train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
              "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
              "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
              "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c"},
    "fashion-mnist": {"train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                      "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
                      "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
                      "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310"},
}
SYSTEM_DIRS = {"fashion-mnist": ("/usr/share/datasets/fashion-mnist",), "mnist": ()}
_IDX_DTYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class DataNotFoundError(FileNotFoundError):
    """An IDX data set is in none of the folders searched and could not be downloaded."""


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (plain or gzipped, detected by its magic bytes) into an array.

    The header is ``0x00 0x00 <dtype code> <ndim>`` then ``ndim`` big-endian uint32 sizes.
    Dtype codes: 0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64.

    Raises:
        ValueError: Bad magic, unknown dtype code, or a size that disagrees with the header.

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "x-idx1-ubyte"
    >>> _ = p.write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 8, 9]))
    >>> read_idx(p).tolist()
    [7, 8, 9]
    """
    path = Path(path)
    raw = path.read_bytes()
    fix = "re-download it or delete it so that it is fetched again"
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as err:
            raise ValueError(f"{path}: gzip data is truncated or corrupt ({err}); {fix}") from err
    if len(raw) < 4 or raw[:2] != b"\x00\x00":
        raise ValueError(f"{path}: bad IDX magic {raw[:4].hex() or 'empty file'}, expected "
                         f"0000<dtype><ndim>; not an IDX file or corrupt; {fix}")
    code, ndim = raw[2], raw[3]
    if code not in _IDX_DTYPES:
        raise ValueError(f"{path}: unknown IDX dtype code 0x{code:02x}, expected one of "
                         f"{', '.join(f'0x{c:02x}' for c in _IDX_DTYPES)}; {fix}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header: {len(raw)} bytes, need {header}; {fix}")
    dims = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[code])
    want = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) != want:
        kind = "truncated" if len(raw) < want else "trailing bytes after the data"
        raise ValueError(f"{path}: {kind}: header says shape {dims} ({want} bytes), "
                         f"file has {len(raw)} bytes; {fix}")
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
    return data.astype(dtype.newbyteorder("="))


def search_dirs(name: str, root: str | os.PathLike | None = None) -> list[Path]:
    """Folders searched, in order, for the IDX files of ``name``.

    ``root`` and ``root/<name>``; ``$DECAYLAB_DATA/<name>`` and ``$DECAYLAB_DATA``; the
    user cache ``$XDG_CACHE_HOME/decaylab/<name>`` (default ``~/.cache``); system folders
    such as Debian's ``/usr/share/datasets/fashion-mnist``.

    >>> [str(p) for p in search_dirs("mnist", root="/data")[:2]]
    ['/data', '/data/mnist']
    """
    dirs = [Path(root), Path(root) / name] if root is not None else []
    if os.environ.get("DECAYLAB_DATA"):
        env = Path(os.environ["DECAYLAB_DATA"]).expanduser()
        dirs += [env / name, env]
    return dirs + [_cache_dir(name)] + [Path(d) for d in SYSTEM_DIRS.get(name, ())]


def _cache_dir(name: str) -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "decaylab" / name


def _idx_paths(folder: Path) -> dict[str, Path] | None:
    """The four IDX files in ``folder`` (``.gz`` or plain), or None if any is missing."""
    found = {}
    for stem in IDX_FILES:
        hits = [folder / f for f in (stem, stem + ".gz") if (folder / f).is_file()]
        if not hits:
            return None
        found[stem] = hits[0]
    return found


def _fetch(url: str, target: Path, md5: str) -> None:
    """Download ``url`` to ``target`` via a temp file; keep it only if its MD5 matches."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        from .files import umask_mode

        umask_mode(fd)
        digest = hashlib.md5(usedforsecurity=False)
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as resp:
            while chunk := resp.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != md5:
            raise ValueError(f"MD5 mismatch for {url}: got {digest.hexdigest()}, expected {md5}; "
                             f"the downloaded file was deleted")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _download(name: str, folder: Path) -> list[str]:
    """Fetch the missing official files of ``name`` into ``folder``; return the errors."""
    folder.mkdir(parents=True, exist_ok=True)
    errors = []
    for fname, md5 in MD5[name].items():
        if (folder / fname).is_file():
            continue
        for base in MIRRORS[name]:
            try:
                _fetch(base.rstrip("/") + "/" + fname, folder / fname, md5)
                break
            except (OSError, ValueError, http.client.HTTPException) as err:
                errors.append(f"{base}{fname}: {err}")
        else:
            return errors
    return []


def _not_found(name: str, dirs: list[Path], errors: list[str]) -> DataNotFoundError:
    how = ["point decaylab at a folder holding them with --set data.root=FOLDER (root= in Python, "
           "or $DECAYLAB_DATA)",
           "allow download=True" if not errors else "retry the download"]
    if name == "fashion-mnist":
        how.insert(0, "apt-get install dataset-fashion-mnist")
    msg = (f"{name}: the IDX files {', '.join(IDX_FILES)} (.gz or plain) are in none of: "
           + "; ".join(map(str, dirs)) + ".")
    if errors:
        msg += " Download failed: " + " | ".join(errors) + "."
    return DataNotFoundError(msg + " To get them: " + ", or ".join(how) + ".")


def load_idx(name: str, root: str | os.PathLike | None, download: bool):
    """Find (or download) and read the IDX files: x/y train, x/y test in [0, 1], (H, W)."""
    dirs = search_dirs(name, root)
    paths = next((p for p in map(_idx_paths, dirs) if p is not None), None)
    errors = []
    if paths is None and download:
        errors = _download(name, _cache_dir(name))
        paths = _idx_paths(_cache_dir(name))
    if paths is None:
        raise _not_found(name, dirs, errors)
    out = []
    for split in ("train", "t10k"):
        images = read_idx(paths[f"{split}-images-idx3-ubyte"])
        labels = read_idx(paths[f"{split}-labels-idx1-ubyte"])
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(
                f"{name}: {split} images have shape {images.shape} but labels {labels.shape} "
                f"({paths[f'{split}-images-idx3-ubyte']}, {paths[f'{split}-labels-idx1-ubyte']})"
                f"; expected [N, H, W] and [N] with the same N; the files are mismatched or "
                f"corrupt, re-download or delete them")
        out += [images.reshape(len(images), -1) / np.float32(255), labels.astype(np.int64)]
    return (*out, tuple(images.shape[1:]))
