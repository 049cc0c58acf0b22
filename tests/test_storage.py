"""vlutils.storage on local disk, file:// URIs and a real S3 store (SeaweedFS on loopback)."""

from __future__ import annotations

import io
import multiprocessing
import os
import uuid

import numpy as np
import pytest
from PIL import Image

from vlutils import storage

pa = pytest.importorskip("pyarrow")


def _unique(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture(params=["local", "file", "s3"])
def root(request, tmp_path):
    """A writable folder as each kind of location: a path, a file:// URI, an s3:// prefix."""
    if request.param == "local":
        return str(tmp_path), None
    if request.param == "file":
        return "file://" + str(tmp_path), None
    store = request.getfixturevalue("s3_store")
    return f"{store.bucket('storage-tests')}/{_unique()}", store.storage_options


def test_write_read_list_delete_round_trip(root):
    base, options = root
    data = os.urandom(3 * (1 << 20) + 17)  # spans several read chunks
    target = storage.join(base, "sub", "blob.bin")
    assert not storage.exists(target, storage_options=options)
    storage.write_atomic(target, data, storage_options=options)
    assert storage.exists(target, storage_options=options)
    assert storage.size(target, storage_options=options) == len(data)
    assert storage.read_bytes(target, storage_options=options) == data
    with storage.open_input(target, storage_options=options) as handle:  # random access (ranged GETs on S3)
        handle.seek(len(data) - 10)
        assert handle.read() == data[-10:]
    storage.write_atomic(storage.join(base, "sub", "a.txt"), b"x", storage_options=options)
    listed = storage.list_dir(storage.join(base, "sub"), storage_options=options)
    assert listed == [storage.join(base, "sub", "a.txt"), storage.join(base, "sub", "blob.bin")]
    storage.delete(target, storage_options=options)
    assert not storage.exists(target, storage_options=options)
    assert storage.list_dir(storage.join(base, "nothing-here"), storage_options=options) == []


def test_no_temporaries_left_and_overwrite_is_whole(root):
    base, options = root
    target = storage.join(base, "f.bin")
    storage.write_atomic(target, b"old" * 1000, storage_options=options)
    storage.write_atomic(target, b"new", storage_options=options)
    assert storage.read_bytes(target, storage_options=options) == b"new"
    assert [storage.basename(p) for p in storage.list_dir(base, storage_options=options)] == ["f.bin"]


def test_iter_lines_streams_all_line_endings(root):
    base, options = root
    lines = [f"line {i} ".encode() * (i % 50) for i in range(20000)]
    body = b"\n".join(lines[:10000]) + b"\r\n" + b"\n".join(lines[10000:])  # no trailing newline
    target = storage.join(base, "records.jsonl")
    storage.write_atomic(target, body, storage_options=options)
    assert list(storage.iter_lines(target, storage_options=options)) == lines


def test_put_file_and_download(root, tmp_path):
    base, options = root
    local = tmp_path / "src.bin"
    data = os.urandom(5 << 20)
    local.write_bytes(data)
    target = storage.join(base, "up", "src.bin")
    assert storage.put_file(str(local), target, storage_options=options) == len(data)
    back = tmp_path / "back" / "copy.bin"
    assert storage.download(target, str(back), storage_options=options) == len(data)
    assert back.read_bytes() == data
    assert os.listdir(back.parent) == ["copy.bin"]


def test_missing_objects_raise_not_found_naming_them(root):
    base, options = root
    missing = storage.join(base, "no-such-file.bin")
    for call in (lambda: storage.read_bytes(missing, storage_options=options),
                 lambda: storage.size(missing, storage_options=options),
                 lambda: list(storage.iter_lines(missing, storage_options=options))):
        with pytest.raises(storage.StorageNotFoundError, match="no-such-file.bin"):
            call()


def test_byte_cap(root):
    base, options = root
    target = storage.join(base, "big.bin")
    storage.write_atomic(target, b"x" * 5000, storage_options=options)
    with pytest.raises(storage.StorageError, match="over the 4000-byte limit"):
        storage.read_bytes(target, max_bytes=4000, storage_options=options)


@pytest.mark.parametrize("location", ["gs://bucket/x", "http://host/x", "s3:/bucket/x", "s3://", "hdfs://n/x", ""])
def test_locations_not_understood_are_errors(location):
    with pytest.raises(storage.StorageError):
        storage.check_location(location)
    with pytest.raises(storage.StorageError):
        storage.exists(location)


def test_local_paths_and_file_uris_are_the_same_place(tmp_path):
    storage.write_atomic(str(tmp_path / "a.bin"), b"abc")
    assert storage.read_bytes("file://" + str(tmp_path / "a.bin")) == b"abc"
    assert storage.read_bytes("file://localhost" + str(tmp_path / "a.bin")) == b"abc"
    with pytest.raises(storage.StorageError, match="local path"):
        storage.read_bytes("file://otherhost/etc/passwd")


def test_options_from_the_standard_aws_environment():
    env = {"AWS_ENDPOINT_URL": "http://a:1", "AWS_ENDPOINT_URL_S3": "http://b:2", "AWS_ACCESS_KEY_ID": "k",
           "AWS_SECRET_ACCESS_KEY": "s", "AWS_DEFAULT_REGION": "eu-west-1"}
    assert storage.storage_options_from_env(env) == {"endpoint_url": "http://b:2", "access_key": "k",
                                                     "secret_key": "s", "region": "eu-west-1"}
    env["AWS_REGION"] = "us-west-2"
    assert storage.storage_options_from_env(env)["region"] == "us-west-2"
    assert storage.parse_storage_options(["endpoint_url=http://x:9", "Access-Key=ak"]) == {
        "endpoint_url": "http://x:9", "access_key": "ak"}
    with pytest.raises(storage.StorageError, match="unknown key 'colour'"):
        storage.parse_storage_options(["colour=red"])
    with pytest.raises(storage.StorageError, match="KEY=VALUE"):
        storage.parse_storage_options(["endpoint_url"])


def test_environment_credentials_reach_the_store(s3_store, monkeypatch):
    bucket = s3_store.bucket("storage-env")
    for key, value in s3_store.env.items():
        monkeypatch.setenv(key, value)
    target = f"{bucket}/{_unique()}.bin"
    storage.write_atomic(target, b"via env")
    assert storage.read_bytes(target) == b"via env"


def test_wrong_credentials_fail_quickly_with_the_location(s3_store):
    bucket = s3_store.bucket("storage-auth")
    options = dict(s3_store.storage_options, secret_key="wrong")
    with pytest.raises(storage.StorageError, match="storage-auth"):
        storage.write_atomic(f"{bucket}/x.bin", b"x", storage_options=options)


def test_unreachable_endpoint_times_out(tmp_path):
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    options = {"endpoint_url": f"http://127.0.0.1:{port}", "access_key": "a", "secret_key": "b",
               "connect_timeout": "1", "request_timeout": "2"}
    with pytest.raises(storage.StorageError, match="s3://nowhere/x"):
        storage.read_bytes("s3://nowhere/x", storage_options=options)


def _read_in_child(args):
    location, options = args
    return storage.read_bytes(location, storage_options=options)


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_worker_processes_after_the_parent_used_s3(s3_store, method):
    """pyarrow's S3 client is not fork-safe once used: each process must build its own (cached per pid)."""
    bucket = s3_store.bucket("storage-fork")
    target = f"{bucket}/{_unique()}.bin"
    storage.write_atomic(target, b"shared", storage_options=s3_store.storage_options)
    assert storage.read_bytes(target, storage_options=s3_store.storage_options) == b"shared"  # parent's client
    with multiprocessing.get_context(method).Pool(2) as pool:
        result = pool.map_async(_read_in_child, [(target, s3_store.storage_options)] * 6)
        assert result.get(timeout=60) == [b"shared"] * 6


# ------------------------------------------------------------------ s3:// media in process_vision_info


def _png(seed: int) -> tuple[bytes, np.ndarray]:
    pixels = np.random.default_rng(seed).integers(0, 256, (60, 90, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue(), pixels


def test_s3_images_and_videos_decode_like_local_files(s3_store, monkeypatch, tmp_path):
    from pathlib import Path

    from vlutils import fetch_image, process_vision_info

    for key, value in s3_store.env.items():
        monkeypatch.setenv(key, value)
    bucket = s3_store.bucket("storage-media")
    data, _ = _png(1)
    image_uri = f"{bucket}/{_unique()}.png"
    storage.write_atomic(image_uri, data)
    local = tmp_path / "a.png"
    local.write_bytes(data)
    assert np.array_equal(np.asarray(fetch_image({"image": image_uri})), np.asarray(fetch_image({"image": str(local)})))

    video = Path(__file__).resolve().parent.parent / "fixtures" / "video" / "h264_320x240_30fps.mp4"
    video_uri = f"{bucket}/{_unique()}.mp4"
    storage.put_file(str(video), video_uri)
    messages = lambda v: [{"role": "user", "content": [{"type": "video", "video": v, "fps": 1.0}]}]  # noqa: E731
    import torch

    remote = process_vision_info(messages(video_uri))
    local_frames = process_vision_info(messages(str(video)))
    assert len(remote[1]) == 1
    assert torch.equal(remote[1][0], local_frames[1][0])


def test_s3_media_errors_are_typed_and_named(s3_store, monkeypatch):
    from vlutils import fetch_image
    from vlutils.errors import SizeLimitError, SourceNotFoundError

    for key, value in s3_store.env.items():
        monkeypatch.setenv(key, value)
    bucket = s3_store.bucket("storage-media")
    with pytest.raises(SourceNotFoundError, match="missing.png"):
        fetch_image({"image": f"{bucket}/missing.png"})
    big = f"{bucket}/{_unique()}.png"
    storage.write_atomic(big, _png(2)[0])
    monkeypatch.setenv("VLUTILS_MAX_BYTES", "100")
    with pytest.raises(SizeLimitError, match=big.split("/")[-1]):
        fetch_image({"image": big})


def test_safe_mode_refuses_s3_unless_allowed(s3_store, monkeypatch):
    import vlutils.policy
    from vlutils import SafetyPolicy, fetch_image
    from vlutils.errors import UnsafeSourceError

    for key, value in s3_store.env.items():
        monkeypatch.setenv(key, value)
    uri = f"{s3_store.bucket('storage-media')}/{_unique()}.png"
    storage.write_atomic(uri, _png(3)[0])
    with vlutils.policy.use(SafetyPolicy()):
        with pytest.raises(UnsafeSourceError, match="'s3' is not allowed"):
            fetch_image({"image": uri})
    with vlutils.policy.use(SafetyPolicy(allowed_schemes={"s3"})):
        assert fetch_image({"image": uri}).size[0] > 0
