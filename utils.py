"""Loading, checking, preprocessing and splitting the data; seeding; starting
TensorFlow quietly. (Writing files safely is common/files.py's job.)

    data = utils.load(config)                        # loaded and checked, once
    splits = data.splits(config.val_split, config.seed)

Everything here but `seeded`, `import_tensorflow_quietly` and the Keras
downloader needs only numpy, so the command line can reject bad data quickly.
"""

import contextlib
import gzip
import hashlib
import io
import os
import sys
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

IMAGE_SIDE = 28  # MNIST and Fashion-MNIST images are 28x28
PAD = 2  # LeNet-5 takes 32x32: MNIST padded by 2 px, as in LeCun et al. (1998)
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
LOCAL_DATA_HINT = (
    "pass a local copy with --data PATH (a Keras-format .npz such as mnist.npz, or a folder with the four IDX files)"
)


class UsageError(Exception):
    """Input a run cannot use; the message says what is wrong and how to fix it."""


def one_line(error, otherwise=None):
    """An exception in one line: its message's first line, else `otherwise`
    (by default the exception's type)."""
    first = next(iter(str(error).splitlines()), "")
    return first or otherwise or type(error).__name__


class DataError(UsageError):
    """Data that cannot be used."""


@dataclass(frozen=True)
class Splits:
    """Preprocessed images (N, 32, 32, 1) float32 in [0, 1] and int labels."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


@dataclass(frozen=True)
class RawData:
    """The data as loaded and checked (uint8 images, int labels): what a run
    keeps, and what travels to Dask workers (a quarter of the preprocessed
    float32 arrays' size)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    record: dict  # data_record: how summary.json names the data

    @property
    def key(self):
        """Tells data sets apart (in a worker's cache): their SHA-256, or a download's name."""
        return self.record["data_sha256"] or self.record["data"]

    def splits(self, val_split, seed):
        return prepare(self.x_train, self.y_train, self.x_test, self.y_test, val_split=val_split, seed=seed)


# ---------------------------------------------------------------- loading


def load(config):
    """config.data (or config.dataset, downloaded), loaded and checked
    against config.output_size classes: the one way every command loads."""
    raw = load_raw(config.data, config.dataset)
    check_raw(*raw, num_classes=config.output_size)
    return RawData(*raw, record=data_record(config.data, config.dataset))


def load_raw(data=None, dataset="mnist"):
    """(x_train, y_train, x_test, y_test) as stored: uint8 images (N, 28, 28), labels (N,).

    `data` is a Keras-format .npz or a folder of the four IDX files; without it,
    Keras's downloader for `dataset` ("mnist" or "fashion_mnist") is used.
    """
    if data is None:
        return _download(dataset)
    path = Path(data)
    if not path.exists():
        raise DataError(f"--data {data}: no such file or folder; {LOCAL_DATA_HINT}")
    if path.is_dir():
        return _load_idx_folder(path)
    return _load_npz(path)


def _download(dataset):
    import keras  # only here: everything else in this module runs without TensorFlow

    loader = {"mnist": keras.datasets.mnist, "fashion_mnist": keras.datasets.fashion_mnist}
    # Keras makes its cache folders before it fetches; a failed fetch must not leave them empty.
    cache = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "datasets"
    made_here = [folder for folder in (cache, cache / "fashion-mnist") if not folder.exists()]
    try:
        (x_train, y_train), (x_test, y_test) = loader[dataset].load_data()
    except Exception as error:  # Keras wraps network errors in a bare Exception
        for folder in reversed(made_here):
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if empty
        reason = one_line(error)
        raise DataError(f"could not download {dataset} ({reason}); without network access, {LOCAL_DATA_HINT}") from None
    return x_train, y_train, x_test, y_test


# What numpy, zipfile, gzip and zlib raise on a damaged file: cut short
# (EOFError, zipfile.BadZipFile), corrupt compression (zlib.error,
# gzip.BadGzipFile), bytes changed inside (BadZipFile's bad CRC-32), a header
# that promises more than the file holds (ValueError from numpy's reshape),
# or an unreadable disk (OSError).
DAMAGED_FILE_ERRORS = (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error)


@contextlib.contextmanager
def reading(path):
    """Every read of a data file happens inside this block: a damaged file
    becomes one DataError that names it, never a traceback from numpy,
    zipfile, gzip or zlib."""
    try:
        yield
    except DataError:
        raise
    except DAMAGED_FILE_ERRORS as error:
        kind = type(error).__qualname__
        kind = kind if type(error).__module__ == "builtins" else f"{type(error).__module__}.{kind}"
        reason = one_line(error, "no details")
        raise DataError(
            f"{path}: cannot be read ({kind}: {reason}); the file is damaged, cut "
            "short or not what its name says: get a fresh copy"
        ) from None


def _load_npz(path):
    """The four arrays of a Keras-format .npz, each member read whole through
    zipfile, which checks it against its CRC-32: numpy's own reader stops at
    an array's last byte, before that check, so bytes changed inside a
    stored (uncompressed) member went unnoticed."""
    with reading(path):
        if not zipfile.is_zipfile(path):  # numpy would try to unpickle it and talk of allow_pickle
            _not_an_npz(path)
        with zipfile.ZipFile(path) as archive:
            members = {name.removesuffix(".npy"): name for name in archive.namelist()}
            missing = [key for key in NPZ_KEYS if key not in members]
            if missing:
                raise DataError(
                    f"--data {path}: the .npz lacks {', '.join(missing)}; it needs the arrays "
                    f"{', '.join(NPZ_KEYS)}, as Keras's mnist.npz has"
                )
            return tuple(
                np.lib.format.read_array(io.BytesIO(archive.read(members[key])), allow_pickle=False) for key in NPZ_KEYS
            )


ZIP_MAGIC = b"PK\x03\x04"  # a zip archive's first member starts with it


def _not_an_npz(path):
    with open(path, "rb") as stream:
        if stream.read(len(ZIP_MAGIC)) == ZIP_MAGIC:  # its directory, at the end, is missing
            raise DataError(
                f"--data {path}: a zip archive cut short or damaged (its directory at the end is "
                "missing); get a fresh copy"
            )
    if _looks_like_idx(path):
        raise DataError(
            f"--data {path}: an IDX file; pass the folder that holds all four IDX files "
            f"({', '.join(IDX_FILES.values())}), not one of them"
        )
    raise DataError(f"--data {path}: not a .npz file (a .npz is a zip archive of numpy arrays); {LOCAL_DATA_HINT}")


# IDX file stems as MNIST and Fashion-MNIST are distributed; some mirrors name
# them "train-images.idx3-ubyte", which is accepted too.
# An IDX file of unsigned bytes starts with two zero bytes and type code 0x08.
IDX_UBYTE_MAGIC = b"\0\0\x08"
IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}


def _looks_like_idx(path):
    """Whether `path` starts like an IDX file, raw or gzip-compressed."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as stream:
            head = stream.read(3)
    except DAMAGED_FILE_ERRORS:
        return False
    return head == IDX_UBYTE_MAGIC


def _find_idx(folder, stem):
    for name in (stem, stem.replace("-idx", ".idx")):
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    raise DataError(
        f"--data {folder}: no {stem} or {stem}.gz in this folder; it needs the four IDX files "
        f"{', '.join(IDX_FILES.values())} (raw or .gz)"
    )


def read_idx(path):
    """An IDX file (raw or gzip) as a uint8 numpy array.

    Format (LeCun's MNIST page): two zero bytes, a type code (0x08 = unsigned
    byte), the number of dimensions, each dimension as a big-endian uint32, then
    the data.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    with reading(path), opener(path, "rb") as stream:
        content = stream.read()
    if len(content) < 4 or content[:3] != IDX_UBYTE_MAGIC:
        raise DataError(f"{path}: not an IDX file of unsigned bytes (bad magic number)")
    ndim = content[3]
    header_size = 4 + 4 * ndim
    shape = tuple(int(size) for size in np.frombuffer(content[4:header_size], dtype=">u4"))
    data = np.frombuffer(content[header_size:], dtype=np.uint8)
    expected = int(np.prod(shape)) if len(shape) == ndim else None
    if data.size != expected:
        if len(shape) != ndim:
            promised = f"{ndim} dimensions it does not give"
        elif ndim > 1:
            promised = f"{' x '.join(map(str, shape))} = {expected} bytes of data"
        else:
            promised = f"{expected} bytes of data"
        raise DataError(
            f"{path}: its header promises {promised} but the file holds {data.size}: it is truncated or "
            "damaged; download it again"
        )
    return data.reshape(shape)


def _load_idx_folder(folder):
    return tuple(read_idx(_find_idx(folder, IDX_FILES[key])) for key in NPZ_KEYS)


def data_record(data=None, dataset="mnist"):
    """How summary.json names the data, the same on every machine.

    The path as given, relative to the working folder where it lies inside it,
    else the file or folder name (never an absolute path of this machine); and
    a SHA-256 of its bytes, so that a rerun can tell the same data from other
    data under the same name: `sha256sum FILE` gives it for a .npz, `cat` of
    the four IDX files in NPZ_KEYS order piped to `sha256sum` for a folder.
    Keras's downloads are named by their dataset (Keras checks their hashes).
    """
    if data is None:
        return {"data": f"keras.datasets.{dataset}", "data_sha256": None}
    path = Path(os.path.abspath(data))
    try:
        name = path.relative_to(os.path.abspath(os.getcwd())).as_posix()
    except ValueError:
        name = path.name
    files = [_find_idx(path, IDX_FILES[key]) for key in NPZ_KEYS] if path.is_dir() else [path]
    digest = hashlib.sha256()
    for file in files:
        with reading(file), open(file, "rb") as stream:
            while block := stream.read(1 << 20):
                digest.update(block)
    return {"data": name, "data_sha256": digest.hexdigest()}


# ---------------------------------------------------------------- checking


def check_raw(x_train, y_train, x_test, y_test, num_classes=10):
    """Raise DataError unless images are (N, 28, 28) in 0..255 with N labels in 0..num_classes-1."""
    for part, images, labels in (("train", x_train, y_train), ("test", x_test, y_test)):
        if images.ndim != 3 or images.shape[1:] != (IMAGE_SIDE, IMAGE_SIDE):
            raise DataError(
                f"x_{part} has shape {images.shape}; expected (N, {IMAGE_SIDE}, {IMAGE_SIDE}) "
                "grayscale images as in MNIST"
            )
        if not (np.issubdtype(images.dtype, np.number) and images.size):
            raise DataError(f"x_{part} must hold numeric pixels; got {images.dtype} with {images.size} values")
        if np.issubdtype(images.dtype, np.floating):
            not_finite = int(np.count_nonzero(~np.isfinite(images)))
            if not_finite:
                pixels = "1 pixel that is" if not_finite == 1 else f"{not_finite} pixels that are"
                raise DataError(f"x_{part} has {pixels} NaN or infinite; fix or drop those images")
        if images.min() < 0 or images.max() > 255:
            raise DataError(f"x_{part} has pixels outside 0..255; store images as MNIST does (uint8)")
        if np.issubdtype(images.dtype, np.floating) and images.max() <= 1:
            raise DataError(
                f"x_{part} holds floats in 0..1, already scaled; store pixels in 0..255 as MNIST does, "
                "e.g. (x * 255).round().astype('uint8'): this project divides by 255 itself"
            )
        if labels.shape != (len(images),):
            raise DataError(f"y_{part} has shape {labels.shape}; expected ({len(images)},), one label per image")
        if not np.issubdtype(labels.dtype, np.integer):
            raise DataError(f"y_{part} must hold integer class labels; got {labels.dtype}")
        if labels.min() < 0 or labels.max() >= num_classes:
            raise DataError(
                f"y_{part} has labels from {labels.min()} to {labels.max()}, outside 0..{num_classes - 1}; "
                "fix the labels or raise --output_size"
            )


# ---------------------------------------------------------------- preparing


def preprocess(images):
    """uint8 (N, 28, 28) -> float32 (N, 32, 32, 1) in [0, 1], zero-padded by 2 px."""
    scaled = np.asarray(images, dtype=np.float32) / 255.0
    padded = np.pad(scaled, ((0, 0), (PAD, PAD), (PAD, PAD)))
    return padded[..., None]


def split_train_val(num_train, val_split, seed):
    """Indices (train, val) of a seeded shuffle of the training set, the last
    round(val_split * num_train) held out for validation."""
    num_val = int(round(val_split * num_train))
    if not 0 < num_val < num_train:
        raise DataError(
            f"--val_split {val_split} leaves {num_val} of {num_train} training images for validation; "
            "choose a fraction that leaves both sets non-empty (e.g. 0.15)"
        )
    order = np.random.default_rng(seed).permutation(num_train)
    return order[: num_train - num_val], order[num_train - num_val :]


def prepare(x_train, y_train, x_test, y_test, val_split, seed):
    """Split the training set into train and validation, keep the official test
    set as the test set, and preprocess all three."""
    train, val = split_train_val(len(x_train), val_split, seed)
    return Splits(
        x_train=preprocess(x_train[train]),
        y_train=y_train[train].astype(np.int64),
        x_val=preprocess(x_train[val]),
        y_val=y_train[val].astype(np.int64),
        x_test=preprocess(x_test),
        y_test=y_test.astype(np.int64),
    )


# ---------------------------------------------------------------- TensorFlow


def import_tensorflow_quietly():
    """Import TensorFlow and find its devices with the process's stderr closed.

    The pip wheel's C++ start-up logs (CUDA probing on a machine without a GPU)
    are written before TF_CPP_MIN_LOG_LEVEL is read, so they can only be
    silenced at the file-descriptor level. A failed import still raises its
    Python exception once stderr is back.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    # TensorFlow's CPU allocator asks malloc for every large tensor afresh,
    # which maps new pages and faults them in on each training step; its BFC
    # allocator keeps freed memory for reuse. Measured on 2 cores without XLA:
    # lenet_fc_bn2 trained at 0.85x plain lenet with the default allocator and
    # 0.97x with BFC, lenet itself no faster (README's Speed).
    os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")
    sys.stderr.flush()
    saved_stderr = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        import tensorflow as tf

        tf.config.list_physical_devices()
        # Its Python logger's warnings are hints for TensorFlow developers
        # (tf.function retracing when a sweep builds model after model).
        tf.get_logger().setLevel("ERROR")
    finally:
        os.dup2(saved_stderr, 2)
        os.close(saved_stderr)
        os.close(devnull)


# ---------------------------------------------------------------- seeding


@contextlib.contextmanager
def seeded(seed):
    """Seed Python, numpy and TensorFlow for the block, in which a model is
    built: the same seed gives the same initial weights.

    Keras draws each initializer's seed from Python's global `random`, which
    other threads of the process share: in a Dask worker its event loop
    draws from it too, at moments of its own, and the same seed gave other
    weights from one training to the next. Inside the block Keras draws from
    a generator of its own, seeded as `random.seed(seed)` seeds the global
    one, so it gets the numbers it would get in a process with no other
    thread.

    On a CPU this network's kernels, TensorFlow's and XLA's alike, are
    deterministic, so the same seed also gives the same history (a test checks
    it). TensorFlow's op-determinism switch stays off: Keras refuses XLA under it.
    """
    import random

    import keras
    from keras.src.random import seed_generator  # where Keras draws its default seeds

    keras.utils.set_random_seed(seed)
    shared, seed_generator.python_random = seed_generator.python_random, random.Random(seed)
    try:
        yield
    finally:
        seed_generator.python_random = shared
