"""Loading (.npz and IDX folders), checking, splitting and preprocessing."""

import hashlib

import numpy as np
import pytest

import utils
from common import files
from conftest import mnist_like, write_idx, write_npz
from utils import DataError

IDX_NAMES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}


# As some mirrors (Kaggle's, for one) name the same files.
DOTTED_IDX_NAMES = {
    "x_train": "train-images.idx3-ubyte",
    "y_train": "train-labels.idx1-ubyte",
    "x_test": "t10k-images.idx3-ubyte",
    "y_test": "t10k-labels.idx1-ubyte",
}


def idx_folder(folder, arrays, compress, names=IDX_NAMES):
    folder.mkdir()
    for stem, array in zip(names.values(), arrays):
        write_idx(folder / stem, array, compress)
    return folder


@pytest.mark.parametrize(
    "compress, names",
    [(True, IDX_NAMES), (False, IDX_NAMES), (False, DOTTED_IDX_NAMES)],
    ids=["gz", "raw", "dotted names"],
)
def test_npz_and_idx_folders_load_the_same_arrays(tmp_path, compress, names):
    arrays = mnist_like(num_train=30, num_test=12)
    from_npz = utils.load_raw(write_npz(tmp_path / "data.npz", *arrays))
    from_idx = utils.load_raw(idx_folder(tmp_path / "idx", arrays, compress, names))
    for expected, got_npz, got_idx in zip(arrays, from_npz, from_idx):
        np.testing.assert_array_equal(got_npz, expected)
        np.testing.assert_array_equal(got_idx, expected)
        assert got_idx.dtype == np.uint8


def test_split_is_seeded_disjoint_and_keeps_the_official_test_set():
    arrays = mnist_like(num_train=100, num_test=40)
    first = utils.prepare(*arrays, val_split=0.15, seed=4)
    again = utils.prepare(*arrays, val_split=0.15, seed=4)
    other = utils.prepare(*arrays, val_split=0.15, seed=5)
    assert (len(first.y_train), len(first.y_val), len(first.y_test)) == (85, 15, 40)
    np.testing.assert_array_equal(first.x_val, again.x_val)
    assert not np.array_equal(first.x_val, other.x_val)
    np.testing.assert_array_equal(first.x_test, utils.preprocess(arrays[2]))
    np.testing.assert_array_equal(first.y_test, arrays[3])
    train, val = utils.split_train_val(100, 0.15, seed=4)
    assert sorted([*train, *val]) == list(range(100))


def test_preprocess_pads_to_32_and_scales_to_unit_interval():
    images = np.full((2, 28, 28), 255, np.uint8)
    out = utils.preprocess(images)
    assert out.shape == (2, 32, 32, 1) and out.dtype == np.float32
    assert out[:, 2:30, 2:30].min() == 1.0
    assert out[:, :2].max() == 0.0 and out[:, :, 30:].max() == 0.0


def test_the_full_mnist_split_matches_the_earlier_projects_validation_size():
    train, val = utils.split_train_val(60_000, 0.15, seed=0)
    assert (len(train), len(val)) == (51_000, 9_000)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: (a[0][:, :20], *a[1:]), r"x_train has shape \(200, 20, 28\)"),
        (lambda a: (a[0], a[1][:-1], *a[2:]), r"y_train has shape \(199,\)"),
        (lambda a: (*a[:3], a[3] + 5), r"y_test has labels from 5 to 14, outside 0..9"),
        (lambda a: (a[0], a[1].astype(np.float32), *a[2:]), "y_train must hold integer"),
        (lambda a: (a[0].astype(np.int32) - 1, *a[1:]), "pixels outside 0..255"),
        (lambda a: (a[0] / np.float32(255), *a[1:]), "x_train holds floats in 0..1, already scaled"),
        (
            lambda a: (*a[:2], np.where(np.arange(a[2].size).reshape(a[2].shape) < 3, np.nan, a[2]), a[3]),
            "x_test has 3 pixels that are NaN or infinite",
        ),
        (
            lambda a: (np.where(np.arange(a[0].size).reshape(a[0].shape) == 7, np.inf, a[0]), *a[1:]),
            "x_train has 1 pixel that is NaN or infinite",
        ),
    ],
    ids=[
        "image shape",
        "label count",
        "label range",
        "label type",
        "pixel range",
        "already scaled",
        "NaN pixels",
        "infinite pixel",
    ],
)
def test_bad_arrays_are_named(change, message):
    with pytest.raises(DataError, match=message):
        utils.check_raw(*change(mnist_like()))


def test_labels_must_fit_the_output_size():
    with pytest.raises(DataError, match="outside 0..4; fix the labels or raise --output_size"):
        utils.check_raw(*mnist_like(), num_classes=5)


@pytest.mark.parametrize("val_split", [0.001, 0.999])
def test_a_split_that_empties_a_set_is_rejected(val_split):
    with pytest.raises(DataError, match="leaves both sets non-empty"):
        utils.split_train_val(200, val_split, seed=0)


def test_file_problems_are_named(tmp_path):
    with pytest.raises(DataError, match="no such file or folder"):
        utils.load_raw(tmp_path / "missing.npz")
    not_npz = tmp_path / "notes.txt"
    not_npz.write_text("hello")
    with pytest.raises(DataError, match=r"notes.txt: not a .npz file \(a .npz is a zip archive"):
        utils.load_raw(not_npz)
    partial = tmp_path / "partial.npz"
    np.savez(partial, x_train=np.zeros((1, 28, 28)), y_train=np.zeros(1), y_test=np.zeros(1))
    with pytest.raises(DataError, match="lacks x_test"):
        utils.load_raw(partial)
    empty_folder = tmp_path / "idx"
    empty_folder.mkdir()
    with pytest.raises(DataError, match="no train-images-idx3-ubyte"):
        utils.load_raw(empty_folder)
    (empty_folder / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x0d\x03junk")
    with pytest.raises(DataError, match="bad magic number"):
        utils.read_idx(empty_folder / "train-images-idx3-ubyte")


def test_atomic_path_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "history.csv"
    target.write_text("old")
    with pytest.raises(KeyboardInterrupt), files.atomic_path(target) as temporary:
        temporary.write_text("half")
        raise KeyboardInterrupt
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["history.csv"]
    files.write_text(target, "new")
    assert target.read_text() == "new"


def test_one_idx_file_instead_of_its_folder_says_to_pass_the_folder(tmp_path):
    folder = idx_folder(tmp_path / "idx", mnist_like(num_train=10, num_test=5), compress=True)
    with pytest.raises(DataError, match="an IDX file; pass the folder that holds all four IDX files") as error:
        utils.load_raw(folder / "train-images-idx3-ubyte.gz")
    assert "pickle" not in str(error.value)


def test_a_truncated_idx_file_says_so_in_plain_numbers(tmp_path):
    folder = idx_folder(tmp_path / "idx", mnist_like(num_train=10, num_test=5), compress=False)
    path = folder / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError) as error:
        utils.read_idx(path)
    assert str(error.value) == (
        f"{path}: its header promises 10 x 28 x 28 = 7840 bytes of data but the file holds 7740: "
        "it is truncated or damaged; download it again"
    )


def test_a_failed_download_leaves_no_empty_cache_folder(tmp_path, monkeypatch):
    import keras

    cache = tmp_path / "keras"
    monkeypatch.setenv("KERAS_HOME", str(cache))

    def refuse_after_making_the_folder():
        (cache / "datasets" / "fashion-mnist").mkdir(parents=True)  # as Keras's get_file does
        raise Exception("URL fetch failure: Connection refused")

    monkeypatch.setattr(keras.datasets.fashion_mnist, "load_data", refuse_after_making_the_folder)
    with pytest.raises(DataError, match="could not download fashion_mnist"):
        utils.load_raw(None, "fashion_mnist")
    assert not (cache / "datasets").exists()


def test_a_truncated_label_file_names_its_size(tmp_path):
    folder = idx_folder(tmp_path / "idx", mnist_like(num_train=10, num_test=5), compress=False)
    path = folder / "train-labels-idx1-ubyte"
    path.write_bytes(path.read_bytes()[:-4])
    with pytest.raises(DataError, match="its header promises 10 bytes of data but the file holds 6: it is truncated"):
        utils.read_idx(path)


def test_the_data_record_names_data_portably_with_its_sha256(tmp_path, monkeypatch):
    arrays = mnist_like(num_train=10, num_test=5)
    (tmp_path / "work" / "data").mkdir(parents=True)
    npz = write_npz(tmp_path / "work" / "data" / "mnist.npz", *arrays)
    folder = idx_folder(tmp_path / "idx", arrays, compress=True)
    monkeypatch.chdir(tmp_path / "work")

    inside = utils.data_record("data/mnist.npz")
    assert inside == {"data": "data/mnist.npz", "data_sha256": hashlib.sha256(npz.read_bytes()).hexdigest()}
    assert utils.data_record(str(npz)) == inside  # an absolute path inside the working folder: the same record
    assert utils.data_record("data/../data/mnist.npz")["data"] == "data/mnist.npz"

    outside = utils.data_record(str(folder))  # outside the working folder: its name alone
    idx_bytes = b"".join((folder / f"{IDX_NAMES[key]}.gz").read_bytes() for key in utils.NPZ_KEYS)
    assert outside == {"data": "idx", "data_sha256": hashlib.sha256(idx_bytes).hexdigest()}
    assert utils.data_record("../idx") == outside
    assert utils.data_record(None, "fashion_mnist") == {"data": "keras.datasets.fashion_mnist", "data_sha256": None}


# ---------------------------------------------------------------- damaged files


def cut_short(content):
    return content[: len(content) * 2 // 3]


def change_bytes_inside(content):
    """Flip the bytes of the middle tenth: inside the data, past any header."""
    start, stop = len(content) * 9 // 20, len(content) * 11 // 20
    return content[:start] + bytes(byte ^ 0xFF for byte in content[start:stop]) + content[stop:]


def compressed_member_offsets(content):
    """Where each member's compressed bytes lie in a zip archive."""
    import io
    import zipfile

    with zipfile.ZipFile(io.BytesIO(content)) as archive:
        members = archive.infolist()
    offsets = []
    for member in members:
        name_length, extra_length = np.frombuffer(content[member.header_offset + 26 : member.header_offset + 30], "<u2")
        start = member.header_offset + 30 + int(name_length) + int(extra_length)
        offsets.append((start, start + member.compress_size))
    return offsets


def corrupt_the_compression(content):
    """Scramble the start of the first compressed stream (deflate in a zip,
    the member after the 10-byte header in a gzip)."""
    start = compressed_member_offsets(content)[0][0] if content[:2] == b"PK" else 10
    return content[:start] + bytes(byte ^ 0x55 for byte in content[start : start + 64]) + content[start + 64 :]


def zero_64_bytes_in_x_train(content):
    """Zero 64 bytes in the middle of x_train's member: in a stored .npz
    numpy reads them as pixels (it stops before the member's CRC-32)."""
    import io
    import zipfile

    with zipfile.ZipFile(io.BytesIO(content)) as archive:
        names = archive.namelist()
    start, stop = compressed_member_offsets(content)[names.index("x_train.npy")]
    middle = (start + stop) // 2
    return content[:middle] + bytes(64) + content[middle + 64 :]


def npz_promising_more(path, arrays, compressed):
    """A .npz whose x_train header promises more images than its data holds."""
    import zipfile

    np.savez(path, **dict(zip(utils.NPZ_KEYS, arrays)))
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    header = members["x_train.npy"][:128].replace(b"(200, 28, 28)", b"(900, 28, 28)")
    members["x_train.npy"] = header + members["x_train.npy"][128:]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED) as archive:
        for name, content in members.items():
            archive.writestr(name, content)


def idx_promising_more(content):
    """An IDX file whose header promises 9 times the images it holds."""
    count = int.from_bytes(content[4:8], "big")
    return content[:4] + (count * 9).to_bytes(4, "big") + content[8:]


def damaged_npz(folder, damage, compressed):
    arrays = mnist_like()
    path = folder / "data.npz"
    if damage == "header promises more":
        npz_promising_more(path, arrays, compressed)
        return path
    (np.savez_compressed if compressed else np.savez)(path, **dict(zip(utils.NPZ_KEYS, arrays)))
    path.write_bytes(DAMAGES[damage](path.read_bytes()))
    return path


def damaged_idx_folder(folder, damage, compressed):
    import gzip

    folder = idx_folder(folder / "idx", mnist_like(), compress=compressed)
    path = folder / (f"{IDX_NAMES['x_train']}.gz" if compressed else IDX_NAMES["x_train"])
    if damage == "header promises more":
        content = gzip.decompress(path.read_bytes()) if compressed else path.read_bytes()
        content = idx_promising_more(content)
        path.write_bytes(gzip.compress(content) if compressed else content)
    else:
        path.write_bytes(DAMAGES[damage](path.read_bytes()))
    return folder


DAMAGES = {
    "64 bytes zeroed in x_train": zero_64_bytes_in_x_train,
    "cut short": cut_short,
    "corrupt compression": corrupt_the_compression,
    "bytes changed inside": change_bytes_inside,
    "header promises more": idx_promising_more,
}
DAMAGED_FILES = [
    (kind, damage, compressed)
    for kind in ("npz", "idx")
    for compressed in (False, True)
    for damage in DAMAGES
    if compressed or damage != "corrupt compression"  # nothing is compressed in a raw file
    if kind == "npz" or damage != "64 bytes zeroed in x_train"
]


@pytest.mark.parametrize(
    "kind, damage, compressed",
    DAMAGED_FILES,
    ids=[f"{kind} {'compressed' if compressed else 'raw'}, {damage}" for kind, damage, compressed in DAMAGED_FILES],
)
def test_every_kind_of_damaged_file_stops_the_run_in_one_line(kind, damage, compressed, tmp_path, capsys):
    import main

    make = damaged_npz if kind == "npz" else damaged_idx_folder
    data = make(tmp_path, damage, compressed)
    if kind == "idx" and damage == "bytes changed inside" and not compressed:
        # A raw IDX file has no checksum: changed pixels are pixels. What the
        # format can check, its header, is checked below.
        assert len(utils.load_raw(data)[0]) == 200
        return
    code = main.main(["--data", str(data), "--results_dir", str(tmp_path / "results"), "--epochs", "1"])
    out, err = capsys.readouterr()
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("main.py: error: "), err
    assert "Traceback" not in out + err
    assert ("data.npz" if kind == "npz" else "train-images-idx3-ubyte") in lines[0]  # names the file
    assert not (tmp_path / "results").exists()
