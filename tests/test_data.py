"""Tests for decaylab.lab.data: bundled sets, splits, IDX files, search, download, mnist1d."""
import functools
import gzip
import hashlib
import http.server
import json
import os
import socket
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from decaylab.lab import data, idx

FASHION_SYSTEM = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No test sees the real cache, $DECAYLAB_DATA, system folders or the network."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("DECAYLAB_DATA", raising=False)
    monkeypatch.setattr(idx, "SYSTEM_DIRS", {"fashion-mnist": (), "mnist": ()})
    dead = f"http://127.0.0.1:{_free_port()}/"
    monkeypatch.setattr(idx, "MIRRORS", {"mnist": (dead,), "fashion-mnist": (dead,)})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_CODES = {"u1": 0x08, "i1": 0x09, ">i2": 0x0B, ">i4": 0x0C, ">f4": 0x0D, ">f8": 0x0E}


def write_idx(path: Path, array: np.ndarray, dtype: str = "u1") -> Path:
    """Write ``array`` as IDX (gzipped when ``path`` ends in .gz)."""
    header = bytes([0, 0, _CODES[dtype], array.ndim])
    header += b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    raw = header + np.asarray(array, dtype=dtype).tobytes()
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)
    return path


def write_idx_set(folder: Path, n_train=50, n_test=20, gz=True, seed=0) -> Path:
    """A tiny MNIST-style folder: 28x28 uint8 images and labels 0..9."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    ext = ".gz" if gz else ""
    for split, n in (("train", n_train), ("t10k", n_test)):
        write_idx(folder / f"{split}-images-idx3-ubyte{ext}",
                  rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(folder / f"{split}-labels-idx1-ubyte{ext}", np.arange(n) % 10)
    return folder


def _rows(x: torch.Tensor) -> set:
    return {r.tobytes() for r in x.numpy()}


# --- bundled and generated sets ---------------------------------------------------------

@pytest.mark.parametrize("name,task,n_features,n_classes,image_shape", [
    ("digits", "classification", 64, 10, (8, 8)),
    ("breast_cancer", "classification", 30, 2, None),
    ("diabetes", "regression", 10, None, None),
    ("mnist1d", "classification", 40, 10, None),
    ("synthetic", "classification", 40, 3, None),
])
def test_small_sets_shapes_and_info(name, task, n_features, n_classes, image_shape):
    ds = data.load(name)
    assert (ds.task, ds.n_features, ds.n_classes, ds.image_shape) == (
        task, n_features, n_classes, image_shape)
    for x, y in ((ds.x_train, ds.y_train), (ds.x_val, ds.y_val), (ds.x_test, ds.y_test)):
        assert x.dtype == torch.float32 and x.shape == (len(y), n_features)
        assert y.dtype == (torch.int64 if task == "classification" else torch.float32)
    info = json.loads(json.dumps(ds.info()))
    assert info["n_train"] == len(ds.x_train) and info["n_test"] == len(ds.x_test)
    assert info["image_shape"] == (list(image_shape) if image_shape else None)
    assert 0.15 < info["n_test"] / sum(info[k] for k in ("n_train", "n_val", "n_test")) < 0.25


def test_splits_are_disjoint_and_cover_the_data():
    ds = data.load("breast_cancer")
    train, val, test = _rows(ds.x_train), _rows(ds.x_val), _rows(ds.x_test)
    assert not (train & val) and not (train & test) and not (val & test)
    assert len(train) + len(val) + len(test) == 569


def test_same_seed_same_split_other_seed_other_val_same_test():
    a, b, c = data.load("digits", seed=3), data.load("digits", seed=3), data.load("digits", seed=4)
    assert torch.equal(a.x_val, b.x_val) and torch.equal(a.y_train, b.y_train)
    assert not torch.equal(a.x_val, c.x_val)
    assert torch.equal(a.y_test, c.y_test)  # the test split does not move with the seed


def test_tabular_standardized_with_train_statistics_only():
    ds = data.load("breast_cancer")
    assert torch.allclose(ds.x_train.mean(0), torch.zeros(30), atol=1e-5)
    assert torch.allclose(ds.x_train.std(0, unbiased=False), torch.ones(30), atol=1e-4)
    assert ds.x_val.mean(0).abs().max() > 1e-3  # val was not normalized on its own


def test_images_scaled_by_one_scalar_std_and_blank_pixels_stay_zero():
    ds = data.load("digits")
    assert abs(ds.x_train.std(unbiased=False).item() - 1) < 1e-4
    assert ds.x_train.min().item() == 0.0  # not centered: a blank pixel is exactly 0
    assert (ds.x_train[:, 0] == 0).all()  # digits' corner pixel is always blank


def test_diabetes_target_standardized_with_train_statistics():
    ds = data.load("diabetes")
    assert abs(ds.y_train.mean().item()) < 1e-5 and abs(ds.y_train.std(unbiased=False) - 1) < 1e-4
    assert ds.feature_names[:3] == ["age", "sex", "bmi"]


def test_n_train_subsamples_but_keeps_validation_fixed():
    full, small = data.load("digits"), data.load("digits", n_train=100)
    assert len(small.x_train) == 100 and len(small.x_val) == len(full.x_val)
    assert torch.equal(full.y_val, small.y_val) and torch.equal(full.y_test, small.y_test)
    assert torch.equal(data.load("digits", n_train=100).x_train, small.x_train)


@pytest.mark.parametrize("kwargs,match", [
    ({"name": "cifar"}, r"unknown data set 'cifar'.*digits.*fashion-mnist"),
    ({"name": "digits", "val_fraction": 0.0}, r"val_fraction=0.0 must be in \(0, 1\)"),
    ({"name": "digits", "val_fraction": 1.0}, r"val_fraction=1.0"),
    ({"name": "digits", "val_fraction": -0.2}, r"val_fraction=-0.2"),
    ({"name": "digits", "n_train": 0}, r"n_train=0 .* pass 1\.\.\d+ or None"),
    ({"name": "digits", "n_train": 10**6}, r"n_train=1000000 but digits has \d+"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        data.load(**kwargs)


def test_synthetic_names_the_informative_features_first():
    from sklearn.feature_selection import f_classif

    ds = data.load("synthetic")
    assert ds.feature_names[:6] == [*(f"informative_{i}" for i in range(5)), "noise_0"]
    f_score, _ = f_classif(ds.x_train.numpy(), ds.y_train.numpy())
    assert set(np.argsort(f_score)[-5:]) == set(range(5))


def test_make_mnist1d_is_deterministic_per_seed():
    x1, y1 = data.make_mnist1d(200, seed=7)
    x2, y2 = data.make_mnist1d(200, seed=7)
    x3, _ = data.make_mnist1d(200, seed=8)
    assert x1.shape == (200, 40) and np.array_equal(x1, x2) and np.array_equal(y1, y2)
    assert not np.array_equal(x1, x3) and set(y1.tolist()) == set(range(10))


def test_make_mnist1d_rejects_a_too_short_signal():
    with pytest.raises(ValueError, match=r"length=20\) is too short.*length >= 30"):
        data.make_mnist1d(10, length=20)


def test_mnist1d_is_learnable_by_a_linear_model():
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    ds = data.load("mnist1d")
    with threadpool_limits(1):  # threaded BLAS on a tiny problem is slower, much on busy CPUs
        clf = LogisticRegression(max_iter=300).fit(ds.x_train.numpy(), ds.y_train.numpy())
    assert clf.score(ds.x_test.numpy(), ds.y_test.numpy()) > 0.30  # chance is 0.10


# --- IDX reader -------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", list(_CODES))
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_read_idx_round_trips_every_dtype(tmp_path, dtype, suffix):
    signed = np.arange(24).reshape(2, 3, 4) - (0 if dtype == "u1" else 5)
    array = (signed / (4 if "f" in dtype else 1)).astype(dtype)
    out = idx.read_idx(write_idx(tmp_path / f"a-idx3{suffix}", array, dtype))
    assert out.shape == (2, 3, 4) and out.dtype.isnative and np.array_equal(out, array)


def test_read_idx_detects_gzip_by_magic_without_extension(tmp_path):
    path = write_idx(tmp_path / "labels.gz", np.arange(5, dtype=np.uint8))
    plain_name = path.rename(tmp_path / "labels-idx1-ubyte")
    assert idx.read_idx(plain_name).tolist() == [0, 1, 2, 3, 4]


_GOOD = bytes([0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 3]) + bytes(range(6))


@pytest.mark.parametrize("raw,match", [
    (b"\x01\x00" + _GOOD[2:], r"bad IDX magic 01000802.*re-download it or delete it"),
    (b"", r"bad IDX magic empty file"),
    (_GOOD[:2] + b"\x07" + _GOOD[3:], r"unknown IDX dtype code 0x07, expected one of 0x08"),
    (_GOOD[:9], r"truncated IDX header: 9 bytes, need 12"),
    (_GOOD[:-1], r"truncated: header says shape \(2, 3\) \(18 bytes\), file has 17"),
    (_GOOD + b"\x00\x00", r"trailing bytes .* file has 20 bytes; re-download"),
    (gzip.compress(_GOOD)[:-6], r"gzip data is truncated or corrupt"),
])
def test_read_idx_rejects_corrupt_files(tmp_path, raw, match):
    path = tmp_path / "bad-idx"
    path.write_bytes(raw)
    with pytest.raises(ValueError, match=match) as err:
        idx.read_idx(path)
    assert str(path) in str(err.value)


def test_label_image_count_mismatch(tmp_path):
    folder = write_idx_set(tmp_path / "m")
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.zeros(19, dtype=np.uint8))
    with pytest.raises(ValueError, match=r"t10k images have shape \(20, 28, 28\) but labels "
                                         r"\(19,\) \(.*t10k-images.*\).*re-download or delete"):
        data.load("mnist", root=folder)


# --- finding IDX folders ----------------------------------------------------------------

@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
@pytest.mark.parametrize("gz", [True, False])
def test_load_idx_from_root(tmp_path, name, gz):
    ds = data.load(name, root=write_idx_set(tmp_path / "x", gz=gz), download=False)
    assert (len(ds.x_train), len(ds.x_val), len(ds.x_test)) == (45, 5, 20)
    assert ds.x_train.shape[1] == 784 and ds.image_shape == (28, 28) and ds.n_classes == 10
    assert abs(ds.x_train.std(unbiased=False).item() - 1) < 1e-4


def test_load_idx_from_root_subfolder_named_after_the_set(tmp_path):
    write_idx_set(tmp_path / "fashion-mnist")
    assert len(data.load("fashion-mnist", root=tmp_path, download=False).x_test) == 20


@pytest.mark.parametrize("sub", ["mnist", ""])
def test_load_idx_from_env(tmp_path, monkeypatch, sub):
    write_idx_set(tmp_path / "store" / sub, n_test=30)
    monkeypatch.setenv("DECAYLAB_DATA", str(tmp_path / "store"))
    assert len(data.load("mnist", download=False).x_test) == 30


def test_missing_without_download_lists_folders_and_remedies(tmp_path, monkeypatch):
    monkeypatch.setenv("DECAYLAB_DATA", str(tmp_path / "env"))
    monkeypatch.setattr(idx, "SYSTEM_DIRS", {"fashion-mnist": (str(tmp_path / "sys"),)})
    with pytest.raises(FileNotFoundError) as err:
        data.load("fashion-mnist", root=tmp_path / "given", download=False)
    msg = str(err.value)
    for folder in ("given", "given/fashion-mnist", "env/fashion-mnist", "env",
                   "cache/decaylab/fashion-mnist", "sys"):
        assert str(tmp_path / folder) in msg
    assert "apt-get install dataset-fashion-mnist" in msg and "$DECAYLAB_DATA" in msg
    assert "download=True" in msg and not (tmp_path / "cache").exists()


def test_cache_respects_home_without_xdg(tmp_path, monkeypatch):
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert idx.search_dirs("mnist")[0] == tmp_path / "home" / ".cache" / "decaylab" / "mnist"


# --- download ---------------------------------------------------------------------------

class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    """Serve a folder of tiny gz IDX files on 127.0.0.1; yields (base URL, folder)."""
    folder = write_idx_set(tmp_path / "served", n_train=30, n_test=10)
    handler = functools.partial(_QuietHandler, directory=str(folder))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/", folder
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def _md5s(folder: Path) -> dict:
    return {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in folder.glob("*.gz")}


def test_download_into_cache_then_load_offline(tmp_path, monkeypatch, server):
    url, folder = server
    dead = idx.MIRRORS["mnist"][0]
    monkeypatch.setattr(idx, "MIRRORS", {"mnist": (dead, url)})  # first mirror is down
    monkeypatch.setattr(idx, "MD5", {"mnist": _md5s(folder)})
    ds = data.load("mnist")
    cache = tmp_path / "cache" / "decaylab" / "mnist"
    assert sorted(os.listdir(cache)) == sorted(_md5s(folder)) and _md5s(cache) == _md5s(folder)
    assert len(ds.x_test) == 10
    monkeypatch.setattr(idx, "MIRRORS", {"mnist": ()})
    assert torch.equal(data.load("mnist", download=False).x_test, ds.x_test)


def test_download_with_wrong_checksum_leaves_nothing_complete(tmp_path, monkeypatch, server):
    url, folder = server
    md5 = _md5s(folder)
    md5["t10k-images-idx3-ubyte.gz"] = "0" * 32
    monkeypatch.setattr(idx, "MIRRORS", {"fashion-mnist": (url,)})
    monkeypatch.setattr(idx, "MD5", {"fashion-mnist": md5})
    with pytest.raises(FileNotFoundError, match=r"MD5 mismatch .*t10k-images.*expected 0{32}; the downloaded file was deleted"):
        data.load("fashion-mnist")
    cache = tmp_path / "cache" / "decaylab" / "fashion-mnist"
    left = sorted(os.listdir(cache))
    assert "t10k-images-idx3-ubyte.gz" not in left and not any(".part" in f for f in left)
    assert all(_md5s(cache)[f] == md5[f] for f in left)  # only verified files were kept


def test_download_failure_names_the_url(monkeypatch):
    with pytest.raises(FileNotFoundError, match=r"Download failed: http://127\.0\.0\.1:\d+/"
                                                r"train-images-idx3-ubyte\.gz"):
        data.load("mnist")


# --- real data --------------------------------------------------------------------------

@pytest.mark.skipif(not (FASHION_SYSTEM / "t10k-labels-idx1-ubyte.gz").exists(),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_real_fashion_mnist_from_the_debian_package(monkeypatch):
    monkeypatch.setattr(idx, "SYSTEM_DIRS", {"fashion-mnist": (str(FASHION_SYSTEM),)})
    ds = data.load("fashion-mnist", download=False)
    assert (len(ds.x_train) + len(ds.x_val), len(ds.x_test)) == (60000, 10000)
    assert ds.x_train.shape[1] == 784 and ds.image_shape == (28, 28) and ds.n_classes == 10
    assert torch.bincount(ds.y_test).tolist() == [1000] * 10


def test_label_noise_flips_that_share_of_training_labels_only():
    clean = data.load("digits", seed=3)
    noisy = data.load("digits", seed=3, label_noise=0.2)
    flipped = clean.y_train != noisy.y_train
    assert int(flipped.sum()) == round(0.2 * len(clean.y_train))
    assert torch.equal(clean.y_val, noisy.y_val) and torch.equal(clean.y_test, noisy.y_test)
    assert torch.equal(clean.x_train, noisy.x_train)
    assert torch.equal(data.load("digits", seed=3, label_noise=0.2).y_train, noisy.y_train)  # seeded


@pytest.mark.parametrize("kwargs,match", [
    ({"name": "digits", "label_noise": 1.0}, "label_noise=1.0 must be in"),
    ({"name": "digits", "label_noise": -0.1}, "label_noise=-0.1 must be in"),
    ({"name": "diabetes", "label_noise": 0.1}, "needs a classification data set"),
])
def test_bad_label_noise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        data.load(**kwargs)
