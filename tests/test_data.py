"""The data pipeline: IDX parsing, checksummed atomic downloads (against a local server), batches."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import os
import pickle
import threading
import time
import zlib

import numpy as np
import pytest

from resnet import data
from resnet.data import Batches, bilinear_resize, load_dataset, load_fashion_mnist
from resnet.download import DownloadError, download
from resnet.idx import IDXError, read_idx, write_idx


def fake_fashion_files(directory, n_train=64, n_test=32):
    """Write the four Fashion-MNIST files with small random contents; returns name -> (bytes, md5)."""
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte.gz": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte.gz": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    files = {}
    for name, array in arrays.items():
        write_idx(array, directory / name)
        content = (directory / name).read_bytes()
        files[name] = (content, hashlib.md5(content).hexdigest())
    return files, arrays


class Server:
    """A local HTTP server on 127.0.0.1 serving ``files``; ``mode`` per name: ok, corrupt, truncated."""

    def __init__(self, files):
        self.files, self.mode, self.requests = files, {}, []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                name = self.path.rsplit("/", 1)[-1]
                server.requests.append(name)
                if name not in server.files:
                    self.send_error(404)
                    return
                body = server.files[name]
                mode = server.mode.get(name, "ok")
                if mode == "corrupt":
                    body = body[:-1] + bytes([body[-1] ^ 0xFF])
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                # "truncated": promise the whole file, send half, drop the connection (an interrupted transfer)
                self.wfile.write(body[: len(body) // 2] if mode == "truncated" else body)
                if mode == "truncated":
                    self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/data/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def fashion_server(tmp_path, monkeypatch):
    source = tmp_path / "source"
    source.mkdir()
    files, arrays = fake_fashion_files(source)
    monkeypatch.setattr(data, "FASHION_MNIST_FILES", {name: md5 for name, (_, md5) in files.items()})
    with Server({name: content for name, (content, _) in files.items()}) as server:
        monkeypatch.setattr(data, "FASHION_MNIST_URLS", [server.url])
        monkeypatch.delenv("RESNET_FASHION_MNIST_URL", raising=False)
        yield server, arrays


def test_download_and_parse(fashion_server, tmp_path):
    server, arrays = fashion_server
    dataset = load_fashion_mnist(tmp_path / "cache")
    assert dataset.train_images.shape == (64, 1, 28, 28) and dataset.val_images.shape == (32, 1, 28, 28)
    np.testing.assert_array_equal(dataset.train_images[:, 0], arrays["train-images-idx3-ubyte.gz"])
    np.testing.assert_array_equal(dataset.val_labels, arrays["t10k-labels-idx1-ubyte.gz"])
    assert sorted(os.listdir(tmp_path / "cache" / "fashion-mnist")) == sorted(data.FASHION_MNIST_FILES)
    # cached: a second load downloads nothing
    count = len(server.requests)
    load_fashion_mnist(tmp_path / "cache")
    assert len(server.requests) == count


@pytest.mark.parametrize(
    "mode, message",
    [
        ("corrupt", "checksum mismatch"),
        ("truncated", "(?s)could not get Fashion-MNIST.*\n  train-labels-idx1-ubyte.gz: .*(IncompleteRead|stopped)"),
    ],
)
def test_bad_transfer_leaves_nothing_in_cache(fashion_server, tmp_path, mode, message):
    server, _ = fashion_server
    server.mode["train-labels-idx1-ubyte.gz"] = mode
    with pytest.raises(DownloadError, match=message):
        load_fashion_mnist(tmp_path / "cache")
    left = os.listdir(tmp_path / "cache" / "fashion-mnist")
    assert "train-labels-idx1-ubyte.gz" not in left
    assert not [name for name in left if name.endswith(".tmp")], left
    # once the server is healthy again, the download completes
    server.mode.clear()
    assert load_fashion_mnist(tmp_path / "cache").train_labels.shape == (64,)


def test_corrupt_cached_file_is_replaced(fashion_server, tmp_path):
    load_fashion_mnist(tmp_path / "cache")
    cached = tmp_path / "cache" / "fashion-mnist" / "t10k-images-idx3-ubyte.gz"
    cached.write_bytes(b"garbage")
    assert load_fashion_mnist(tmp_path / "cache").val_images.shape == (32, 1, 28, 28)
    assert hashlib.md5(cached.read_bytes()).hexdigest() == data.FASHION_MNIST_FILES[cached.name]


def test_unreachable_everywhere(tmp_path):
    with pytest.raises(DownloadError, match="(?s)could not download x.gz.*published MD5 abc") as caught:
        download("x.gz", "abc", tmp_path, ["http://127.0.0.1:9/"], timeout=2)
    assert os.listdir(tmp_path) == []
    (attempt,) = caught.value.attempts
    assert attempt.url == "http://127.0.0.1:9/x.gz" and attempt.unreachable and "refused" in attempt.error.lower()
    assert caught.value.details[0] == f"http://127.0.0.1:9/x.gz failed ({attempt.error})"


FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


def test_auto_falls_back_to_digits_loudly(tmp_path, monkeypatch):
    """Offline, the note says why in one line per file (its URL and the error), then names the four files and
    the directory to put them in: nothing is cut off, in the note's details or in the error's message."""
    monkeypatch.setattr(data, "FASHION_MNIST_URLS", ["http://127.0.0.1:9/"])
    monkeypatch.delenv("RESNET_FASHION_MNIST_URL", raising=False)
    dataset = load_dataset("auto", tmp_path)
    assert dataset.name == "digits" and dataset.note.startswith("WARNING: Fashion-MNIST is neither cached")
    *reasons, advice = dataset.details
    assert [line.split(": ", 1)[0] for line in reasons] == list(FILES)
    for name, line in zip(FILES, reasons, strict=True):
        assert f"http://127.0.0.1:9/{name} " in line and "refused" in line.lower(), line
    directory = str(tmp_path / "fashion-mnist")
    assert directory in advice and all(name in advice for name in FILES) and "--dataset digits" in advice
    with pytest.raises(DownloadError) as caught:
        load_dataset("fashion-mnist", tmp_path)
    message = str(caught.value)
    assert message.splitlines() == [
        f"could not get Fashion-MNIST into {directory}:",
        *(f"  {line}" for line in dataset.details),
    ]
    with pytest.raises(ValueError, match="unknown dataset 'cifar'. Known datasets: auto, fashion-mnist, digits"):
        load_dataset("cifar")


def _offline(monkeypatch):
    """No host answers (without touching the network): every URL fails as an unreachable one does."""
    import urllib.error

    from resnet import download as download_module

    def no_answer(url, *args):
        raise urllib.error.URLError(TimeoutError("timed out"))

    monkeypatch.setattr(download_module, "_fetch", no_answer)
    monkeypatch.setattr(data, "FASHION_MNIST_URLS", ["http://a.invalid/"])
    monkeypatch.delenv("RESNET_FASHION_MNIST_URL", raising=False)


#: How a cached file can be corrupt: what is written over it.
CORRUPTIONS = {
    "wrong-bytes": lambda good: b"garbage",
    "truncated": lambda good: good[: len(good) // 2],  # a .gz cut short: never reaches gzip (its MD5 is wrong)
    "empty": lambda good: b"",
}


@pytest.fixture
def corrupt_cache(tmp_path, monkeypatch, request):
    """A data directory holding the four (small, fake) files, the second one corrupted as ``request.param``
    says, with downloading impossible; returns (data dir, the corrupt file's name, its published MD5). Afterwards
    it checks that nothing was parsed and the directory holds exactly what it held."""
    directory = tmp_path / "fashion-mnist"
    directory.mkdir()
    files, _ = fake_fashion_files(directory)
    monkeypatch.setattr(data, "FASHION_MNIST_FILES", {name: md5 for name, (_, md5) in files.items()})
    name = FILES[1]
    (directory / name).write_bytes(CORRUPTIONS[request.param](files[name][0]))
    _offline(monkeypatch)
    parsed = []
    monkeypatch.setattr(data, "read_idx", lambda path, ndim: parsed.append(path))  # nothing may be parsed
    before = {p.name: p.read_bytes() for p in directory.iterdir()}
    yield tmp_path, name, files[name][1]
    assert parsed == []
    assert {p.name: p.read_bytes() for p in directory.iterdir()} == before  # the cache is unchanged


def _corrupt_line(directory, name, md5):
    content = (directory / name).read_bytes()
    found = (
        f"MD5 {hashlib.md5(content).hexdigest()}, published {md5}; {len(content)} bytes"
        if content
        else "empty: 0 bytes"
    )
    return f"{name}: the cached file is corrupt ({found}) and was not used; "


@pytest.mark.parametrize("corrupt_cache", CORRUPTIONS, indirect=True)
def test_corrupt_cached_file_is_named_and_never_used(corrupt_cache):
    """Offline, a corrupt cached file is named with its MD5 against the published one (or as empty), said not
    to be used, and left as it was; the advice says to delete it or copy the right file over it."""
    data_dir, name, md5 = corrupt_cache
    directory = data_dir / "fashion-mnist"
    line = _corrupt_line(directory, name, md5)
    with pytest.raises(DownloadError) as caught:
        load_fashion_mnist(data_dir)
    (reason, advice) = caught.value.details
    assert reason == f"{line}http://a.invalid/{name} failed (no answer within 60 s)"
    assert advice.startswith(
        f"Delete the corrupt {name} from {directory} (a run with a network then downloads it "
        "again) or copy the right file over it; or put the four files"
    )
    assert "--dataset digits" in advice and caught.value.corrupt == (str(directory / name),)
    with pytest.raises(DownloadError) as caught:
        load_fashion_mnist(data_dir, download_missing=False)
    assert caught.value.details[0] == f"{line}downloading was not allowed"


@pytest.mark.parametrize("corrupt_cache", ["truncated"], indirect=True)
def test_auto_names_the_corrupt_cached_file(corrupt_cache):
    data_dir, name, md5 = corrupt_cache
    dataset = load_dataset("auto", data_dir)
    assert dataset.name == "digits"
    assert dataset.note == (
        f"WARNING: Fashion-MNIST's cached {name} is corrupt (not used) and could not be "
        "downloaded again, so this run uses the OFFLINE set (scikit-learn's 8x8 handwritten "
        "digits) instead."
    )
    assert dataset.details[0].startswith(_corrupt_line(data_dir / "fashion-mnist", name, md5))
    with pytest.raises(DownloadError, match=f"(?s)could not get Fashion-MNIST.*{name}: the cached file is corrupt"):
        load_dataset("fashion-mnist", data_dir)


def test_download_names_a_corrupt_file_already_there(tmp_path):
    (tmp_path / "x.gz").write_bytes(b"garbage")
    with pytest.raises(DownloadError) as caught:
        download("x.gz", "abc", tmp_path, ["http://127.0.0.1:9/"], timeout=2)
    found, _, advice = caught.value.details
    assert found == (
        f"the file already there, {tmp_path / 'x.gz'}, is corrupt (MD5 "
        f"{hashlib.md5(b'garbage').hexdigest()}, published abc; 7 bytes) and was not used"
    )
    assert advice.startswith(f"Delete {tmp_path / 'x.gz'} or copy the right file over it (published MD5 abc)")
    assert caught.value.corrupt == (str(tmp_path / "x.gz"),)
    assert pickle.loads(pickle.dumps(caught.value)).corrupt == caught.value.corrupt
    assert (tmp_path / "x.gz").read_bytes() == b"garbage" and os.listdir(tmp_path) == ["x.gz"]


def test_unreachable_host_is_asked_once(tmp_path, monkeypatch):
    """A host that gives no answer at all is not asked for the other three files (offline, each would wait for
    the timeout); their lines say so, with the URL and the error."""
    import urllib.error

    from resnet import download as download_module

    asked = []

    def no_answer(url, *args):
        asked.append(url)
        raise urllib.error.URLError(TimeoutError("timed out"))

    monkeypatch.setattr(download_module, "_fetch", no_answer)
    monkeypatch.setattr(data, "FASHION_MNIST_URLS", ["http://a.invalid/", "http://b.invalid/"])
    monkeypatch.delenv("RESNET_FASHION_MNIST_URL", raising=False)
    with pytest.raises(DownloadError) as caught:
        load_fashion_mnist(tmp_path)
    assert asked == [f"http://{host}.invalid/{FILES[0]}" for host in "ab"]
    lines = caught.value.details
    assert lines[0] == (
        f"{FILES[0]}: http://a.invalid/{FILES[0]} failed (no answer within 60 s); "
        f"http://b.invalid/{FILES[0]} failed (no answer within 60 s)"
    )
    assert lines[3] == (
        f"{FILES[3]}: http://a.invalid/{FILES[3]} not tried (no answer for {FILES[0]}: no answer "
        f"within 60 s); http://b.invalid/{FILES[3]} not tried (no answer for {FILES[0]}: no answer "
        "within 60 s)"
    )


def test_one_missing_file_is_named_and_the_others_kept(fashion_server, tmp_path):
    server, _ = fashion_server
    del server.files["t10k-labels-idx1-ubyte.gz"]  # the server answers 404
    with pytest.raises(DownloadError) as caught:
        load_fashion_mnist(tmp_path / "cache")
    reason, advice = caught.value.details
    assert reason == (
        f"t10k-labels-idx1-ubyte.gz: {server.url}t10k-labels-idx1-ubyte.gz failed (HTTP Error 404: Not Found)"
    )
    assert str(tmp_path / "cache" / "fashion-mnist") in advice
    assert sorted(os.listdir(tmp_path / "cache" / "fashion-mnist")) == sorted(FILES[:3])


def test_digits_offline_set():
    dataset = load_dataset("digits")
    assert dataset.train_images.dtype == np.uint8 and dataset.train_images.shape[1:] == (1, 8, 8)
    assert len(dataset.train_images) + len(dataset.val_images) == 1797
    assert dataset.train_images.max() == 255 and set(np.unique(dataset.train_labels)) == set(range(10))


def test_first_examples_of_a_data_set():
    digits = data.load_digits()
    few = digits.first(10, 3)
    assert (len(few.train_images), len(few.train_labels), len(few.val_images), len(few.val_labels)) == (10, 10, 3, 3)
    np.testing.assert_array_equal(few.train_images, digits.train_images[:10])
    np.testing.assert_array_equal(few.val_labels, digits.val_labels[:3])
    assert (few.name, few.classes, few.note) == (digits.name, digits.classes, digits.note)
    whole = digits.first(None, 10**6)  # None, or more than there are: all of them
    assert len(whole.train_images) == len(digits.train_images) and len(whole.val_images) == len(digits.val_images)


def test_digits_read_without_scikit_learn_are_its_own(monkeypatch):
    """The bundled file read directly gives scikit-learn's arrays exactly, and so does the fallback through
    scikit-learn's loader when the file is not where it was."""
    from sklearn.datasets import load_digits as sklearn_digits

    from resnet import digits

    bunch = sklearn_digits()
    for found in ("direct", "fallback"):
        if found == "fallback":
            monkeypatch.setattr(digits.Path, "is_file", lambda self: False)
        images, labels = digits.bundled_digits()
        np.testing.assert_array_equal(images, bunch.images, err_msg=found)
        np.testing.assert_array_equal(labels, bunch.target, err_msg=found)
        assert labels.dtype == np.int64, found


@pytest.mark.parametrize(
    "content, message",
    [
        (b"\x00\x01\x08\x03", "bad magic number"),
        (b"\x00\x00\x0d\x03" + b"\x00" * 12, "data type code 0x0d"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x05abc", "11 bytes, but dimensions .5,. need 13"),
        (b"\x00\x00\x08\x03\x00\x00", "truncated header"),
        (b"\x00\x00", "too short"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x02abc", "need 10"),
    ],
)
def test_malformed_idx(tmp_path, content, message):
    path = tmp_path / "bad-idx1-ubyte"
    path.write_bytes(content)
    with pytest.raises(IDXError, match=message) as caught:
        read_idx(path)
    assert str(path) in str(caught.value)


def test_idx_wrong_dimensions_and_bad_gzip(tmp_path):
    write_idx(np.zeros((2, 3), np.uint8), tmp_path / "a.gz")
    with pytest.raises(IDXError, match="2 dimensions, expected 3"):
        read_idx(tmp_path / "a.gz", expected_ndim=3)
    (tmp_path / "b.gz").write_bytes(gzip.compress(b"abc")[:-4])
    with pytest.raises(IDXError, match="b.gz: cannot be read as gzip"):
        read_idx(tmp_path / "b.gz")
    # a damaged deflate stream (zlib's error, not gzip's): named too
    damaged = bytearray(gzip.compress(np.random.default_rng(0).bytes(5000) * 3, mtime=0))
    damaged[10] ^= 0xFF
    (tmp_path / "c.gz").write_bytes(bytes(damaged))
    with pytest.raises(IDXError, match="c.gz: cannot be read as gzip .* the file is corrupt: delete it") as caught:
        read_idx(tmp_path / "c.gz")
    assert isinstance(caught.value.__cause__, zlib.error)
    with pytest.raises(IDXError, match="absent.gz: cannot be read"):
        read_idx(tmp_path / "absent.gz")


def test_batches_are_deterministic_and_cover_the_data():
    images = np.arange(10 * 4, dtype=np.uint8).reshape(10, 1, 2, 2)
    labels = np.arange(10)
    a = Batches(images, labels, 4, resize=None, shuffle=True, seed=3)
    b = Batches(images, labels, 4, resize=None, shuffle=True, seed=3)
    for epoch in (0, 1):
        first, second = list(a.epoch(epoch)), list(b.epoch(epoch))
        assert [len(y) for _, y in first] == [4, 4, 2]
        for (x1, y1), (x2, y2) in zip(first, second):
            np.testing.assert_array_equal(x1, x2)
            np.testing.assert_array_equal(y1, y2)
        assert sorted(np.concatenate([y for _, y in first])) == list(range(10))
    assert [y.tolist() for _, y in a.epoch(0)] != [y.tolist() for _, y in a.epoch(1)]
    x, _ = next(iter(Batches(images, labels, 10)))
    assert x.dtype == np.float32 and x.max() == pytest.approx(39 / 255)


def test_bilinear_resize_known_values():
    image = np.array([[[[0.0, 1.0], [2.0, 3.0]]]], dtype=np.float32)
    out = bilinear_resize(image, 4)
    # half-pixel centres: output pixel centres at -0.25, 0.25, 0.75, 1.25 in input coordinates, clamped
    np.testing.assert_allclose(out[0, 0, 0], [0.0, 0.25, 0.75, 1.0])
    np.testing.assert_allclose(out[0, 0, :, 0], [0.0, 0.5, 1.5, 2.0])
    assert bilinear_resize(np.ones((2, 1, 28, 28)), 96).shape == (2, 1, 96, 96)


def test_batches_resize_and_scale():
    images = np.full((3, 1, 28, 28), 255, np.uint8)
    x, _ = next(Batches(images, np.zeros(3), 2, resize=96).epoch(0))
    assert x.shape == (2, 1, 96, 96)
    np.testing.assert_allclose(x, 1.0, atol=1e-6)


def test_temporaries_of_killed_downloads_are_removed(tmp_path):
    """A download killed mid-file leaves ``.NAME.*.tmp``; the next load removes it once it is stale (untouched
    for longer than a live download ever is), and keeps a fresh one, which may be another process's."""
    from resnet import download

    directory = tmp_path / "fashion-mnist"
    directory.mkdir()
    stale, fresh = directory / ".train-images-idx3-ubyte.gz.abc.tmp", directory / ".t10k-labels-idx1-ubyte.gz.xyz.tmp"
    stale.write_bytes(b"partial")
    fresh.write_bytes(b"partial")
    old = time.time() - download.STALE_AFTER - 1
    os.utime(stale, (old, old))
    with pytest.raises(DownloadError):
        load_fashion_mnist(tmp_path, download_missing=False)
    assert not stale.exists() and fresh.exists()
