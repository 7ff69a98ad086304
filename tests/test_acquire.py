import hashlib
import http.server
import io
import os
import threading
from pathlib import Path

import numpy as np
import pytest

from helpers import acquire, data, synthetic
from helpers.errors import DataError, DataLayoutError, DataSourceError
from helpers.labels import CLASS_NAMES

# A port nothing listens on: connections are refused at once, like a machine with no network.
UNREACHABLE = "http://127.0.0.1:9/file.npz"


def _bloodmnist_like_npz() -> bytes:
    rng = np.random.default_rng(0)
    arrays = {}
    for subset, n in [("train", 16), ("val", 8), ("test", 8)]:
        arrays[f"{subset}_images"] = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
        arrays[f"{subset}_labels"] = (np.arange(n) % 8).reshape(-1, 1).astype(np.uint8)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


@pytest.fixture()
def file_server():
    """A loopback HTTP server: /good.npz serves a BloodMNIST-like file, /cut.npz stops halfway."""
    payload = _bloodmnist_like_npz()
    requests = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (the stdlib's name)
            requests.append(self.path)
            if self.path not in ("/good.npz", "/cut.npz"):
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload if self.path == "/good.npz" else payload[: len(payload) // 2])

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", hashlib.md5(payload).hexdigest(), requests
    server.shutdown()


def test_download_is_checksummed_and_skipped_when_present(file_server, tmp_path):
    base, md5, requests = file_server
    target = tmp_path / "bloodmnist_64.npz"
    assert acquire.download_file(f"{base}/good.npz", target, md5) == target
    assert acquire.file_md5(target) == md5
    acquire.download_file(f"{base}/good.npz", target, md5)
    assert requests == ["/good.npz"]  # the second call found a valid file and asked nothing
    assert sorted(path.name for path in tmp_path.iterdir()) == ["bloodmnist_64.npz"]


def test_a_damaged_file_is_downloaded_again(file_server, tmp_path):
    base, md5, requests = file_server
    target = tmp_path / "data.npz"
    target.write_bytes(b"half a file")
    acquire.download_file(f"{base}/good.npz", target, md5)
    assert acquire.file_md5(target) == md5 and len(requests) == 1


def test_wrong_checksum_leaves_nothing(file_server, tmp_path):
    base, _, _ = file_server
    with pytest.raises(DataSourceError, match="MD5"):
        acquire.download_file(f"{base}/good.npz", tmp_path / "data.npz", "0" * 32)
    assert list(tmp_path.iterdir()) == []


def test_interrupted_download_leaves_nothing_that_looks_complete(file_server, tmp_path):
    base, md5, _ = file_server
    with pytest.raises(DataSourceError):
        acquire.download_file(f"{base}/cut.npz", tmp_path / "data.npz", md5)
    assert list(tmp_path.iterdir()) == []


def test_http_error_is_a_clear_error(file_server, tmp_path):
    base, md5, _ = file_server
    with pytest.raises(DataSourceError, match="Not Found"):
        acquire.download_file(f"{base}/missing.npz", tmp_path / "data.npz", md5)


def test_no_network_names_the_other_sources(tmp_path):
    with pytest.raises(DataSourceError) as error:
        acquire.download_file(UNREACHABLE, tmp_path / "data.npz", "0" * 32, source="medmnist")
    message = str(error.value)
    # In the words every place that takes a source uses: the study has no --source.
    assert "kaggle (a public dataset" in message and "--data-dir PATH" in message
    assert "--set DATA_SOURCE=NAME for python -m helpers.study" in message
    assert "medmnist (" not in message
    assert list(tmp_path.iterdir()) == []


def test_medmnist_source_unpacks_to_class_folders(file_server, tmp_path, monkeypatch):
    base, md5, requests = file_server
    monkeypatch.setitem(acquire.MEDMNIST_FILES, 64, (f"{base}/good.npz", md5))
    root = acquire.acquire("medmnist", cache_dir=tmp_path, medmnist_size=64)
    assert root == tmp_path / "bloodmnist_64"
    assert sorted(path.name for path in root.iterdir()) == list(CLASS_NAMES)
    assert len(list(root.glob("*/*.png"))) == 32
    assert sorted(path.name for path in (root / "basophil").iterdir()) == [
        "test_00000.png", "train_00000.png", "train_00008.png", "val_00000.png"]
    assert acquire.acquire("medmnist", cache_dir=tmp_path, medmnist_size=64) == root
    assert len(requests) == 1


def test_medmnist_size_must_be_published(tmp_path):
    with pytest.raises(DataSourceError, match="64, 128, 224"):
        acquire.acquire("medmnist", cache_dir=tmp_path, medmnist_size=32)


def test_a_server_that_answers_with_an_error_status_is_reachable(file_server):
    base, _, requests = file_server
    # The server has no HEAD (501) and no such file: an answer all the same, so the network
    # works and the download itself reports what went wrong, not "no network".
    acquire.check_reachable(f"{base}/missing.npz", "kaggle")
    with pytest.raises(DataSourceError, match="Cannot reach .*no network"):
        acquire.check_reachable(UNREACHABLE, "kaggle")
    assert requests == []  # HEAD never reached do_GET


def test_kaggle_offline_fails_fast_naming_the_other_sources(monkeypatch):
    monkeypatch.setattr(acquire, "KAGGLE_URL", UNREACHABLE)
    with pytest.raises(DataSourceError) as error:
        acquire.acquire("kaggle")
    assert "medmnist (BloodMNIST" in str(error.value) and "--data-dir PATH" in str(error.value)
    assert "--source NAME for python -m helpers.data" in str(error.value)


def test_kaggle_download_is_located_inside_the_nested_download(monkeypatch, tmp_path):
    import kagglehub

    root = tmp_path / "versions" / "1" / "bloodcells_dataset"
    for label in CLASS_NAMES:
        (root / label).mkdir(parents=True)
    calls = []
    monkeypatch.setattr(acquire, "check_reachable", lambda url, source: None)
    monkeypatch.setattr(kagglehub, "dataset_download",
                        lambda handle: calls.append(handle) or str(tmp_path))
    assert acquire.acquire("kaggle") == root
    assert calls == [acquire.KAGGLE_DATASET]


def test_kaggle_needs_no_account_for_the_public_dataset(monkeypatch, tmp_path):
    import kagglehub

    for name in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_CONFIG_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.kaggle/kaggle.json either
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "cache" / "datasets" / "unclesamulus" / "bloodcells_dataset"
    for label in CLASS_NAMES:
        (root / label).mkdir(parents=True)
    monkeypatch.setattr(acquire, "check_reachable", lambda url, source: None)
    # The stub stands for kagglehub's download, which puts the files in KAGGLEHUB_CACHE.
    monkeypatch.setattr(kagglehub, "dataset_download",
                        lambda handle: str(Path(os.environ["KAGGLEHUB_CACHE"]) / "datasets"))
    assert acquire.acquire("kaggle") == root
    assert "no Kaggle account needed" in acquire._other_sources("medmnist")


def test_kaggle_failure_explains_credentials_without_echoing_the_key(monkeypatch):
    import kagglehub

    monkeypatch.setenv("KAGGLE_KEY", "s3cr3t-key-value")
    monkeypatch.setattr(acquire, "check_reachable", lambda url, source: None)

    def refuse(handle):
        raise PermissionError("401 Client Error: Unauthorized")

    monkeypatch.setattr(kagglehub, "dataset_download", refuse)
    with pytest.raises(DataSourceError) as error:
        acquire.acquire("kaggle")
    assert "credentials" in str(error.value) and "401" in str(error.value)
    assert "s3cr3t-key-value" not in str(error.value)


def test_local_source(synthetic_source, tmp_path):
    root, _ = synthetic_source
    assert acquire.acquire("local", data_dir=root.parent) == root
    with pytest.raises(DataSourceError, match="--data-dir"):
        acquire.acquire("local")
    with pytest.raises(DataLayoutError):
        acquire.acquire("local", data_dir=tmp_path)
    for unknown in ("zenodo", "Synthetic"):  # the choices listed include synthetic
        with pytest.raises(DataSourceError, match="Unknown data source.*local, synthetic"):
            acquire.acquire(unknown)


def test_prepare_command_writes_audit_and_split_into_the_run_folder(synthetic_source, tmp_path,
                                                                    capsys):
    root, _ = synthetic_source
    run_dir = tmp_path / "run"
    arguments = ["prepare", "--source", "local", "--data-dir", str(root), "--run-dir",
                 str(run_dir)]
    assert data.main(arguments) == 0
    files = sorted(path.name for path in (run_dir / "data").iterdir())
    assert files == ["audit.json", "audit_index.csv", "split.csv", "split.json", "split_files.csv"]
    assert "Wrote a new split" in capsys.readouterr().out
    assert data.main(arguments) == 0
    assert "Reused the saved split" in capsys.readouterr().out


def test_prepare_command_offline_exits_nonzero_with_one_message(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(acquire, "KAGGLE_URL", UNREACHABLE)
    assert data.main(["prepare", "--run-dir", str(tmp_path)]) == 1
    error = capsys.readouterr().err
    assert error.startswith("error: Cannot reach") and error.count("\n") == 1


def test_synthetic_command(tmp_path, capsys):
    assert data.main(["synthetic", str(tmp_path / "syn"), "--images-per-class", "2",
                      "--image-size", "24"]) == 0
    assert len(list(Path(tmp_path / "syn").glob("*/*.jpg"))) >= 16
    assert "not_image" in capsys.readouterr().out


def test_a_synthetic_dataset_is_a_function_of_its_seed(tmp_path):
    def drawn(folder, seed):
        synthetic.make_synthetic_dataset(tmp_path / folder, images_per_class=2, image_size=24,
                                         seed=seed)
        return {path.relative_to(tmp_path / folder): path.read_bytes()
                for path in sorted((tmp_path / folder).rglob("*")) if path.is_file()}

    first = drawn("a", 3)
    assert drawn("b", 3) == first
    other = drawn("c", 4)
    assert other.keys() == first.keys()
    assert all(other[path] != first[path] for path in first
               if path.suffix == ".jpg" and "DS_" not in path.name)


def test_a_synthetic_dataset_of_a_negative_seed_is_refused_before_anything_is_drawn(tmp_path):
    with pytest.raises(DataError, match="seed must be 0 or more, got -1"):
        synthetic.make_synthetic_dataset(tmp_path / "cells", seed=-1)
    assert not (tmp_path / "cells").exists()
