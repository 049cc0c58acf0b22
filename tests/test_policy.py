"""Safe mode (vlutils.policy): schemes, allowed roots, private addresses, caps.

The unit tests exercise the policy object directly. The integration tests go through
``process_vision_info`` and need the library hooks (``.notes-policy-hooks.diff``);
they are skipped, with that reason, until the hooks are applied.

No test contacts anything but 127.0.0.1: refusals of other addresses are checked
before any connection (``urllib3.util.connection.create_connection`` is watched).
"""

from __future__ import annotations

import base64
import inspect
import io
import os
import threading
import time

import pytest
from PIL import Image

import vlutils
import vlutils.image
import vlutils.sources
import vlutils.vision_process
from vlutils import policy
from vlutils.errors import FetchError, InvalidOptionError, SizeLimitError, UnsafeSourceError, VisionInputError
from vlutils.policy import SafetyPolicy
from vlutils.sources import FetchSettings

from _faulty_server import FaultyServer, answer, redirect

HOOKS = "_policy" in inspect.getsource(vlutils.sources)
needs_hooks = pytest.mark.skipif(not HOOKS, reason="library hooks from .notes-policy-hooks.diff not applied yet")
LOOPBACK_ONLY = ("127.0.0.1/32",)


@pytest.fixture(autouse=True)
def _clean_policy(monkeypatch):
    """Each test starts permissive, whatever the environment of the test run says."""
    for name in policy.ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    policy.reset_policy()
    yield
    policy.reset_policy()


def png_bytes(size=(40, 30), color=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def media_root(tmp_path):
    root = tmp_path / "media"
    root.mkdir()
    (root / "ok.png").write_bytes(png_bytes())
    outside = tmp_path / "secret"
    outside.mkdir()
    (outside / "secret.png").write_bytes(png_bytes(color=(0, 0, 255)))
    return root


@pytest.fixture
def connections(monkeypatch):
    """Every address urllib3 tries to connect to."""
    import urllib3.util.connection as conn

    seen: list = []
    real = conn.create_connection

    def spy(address, *args, **kwargs):
        seen.append(address)
        return real(address, *args, **kwargs)

    monkeypatch.setattr(conn, "create_connection", spy)
    return seen


@pytest.fixture
def server():
    with FaultyServer() as srv:
        srv.route("/img.png", answer(body=png_bytes(), content_type="image/png"))
        yield srv


def expected_size(width: int, height: int) -> tuple[int, int]:
    """(width, height) qwen-vl-utils gives an image of that size with default options."""
    from qwen_vl_utils.vision_process import smart_resize

    h, w = smart_resize(height, width, factor=28)
    return w, h


def image_msg(*values) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image", "image": v} for v in values] + [{"type": "text", "text": "?"}]}]


# ---------------------------------------------------------------- addresses


@pytest.mark.parametrize(
    "url, reason",
    [
        ("http://127.0.0.1/", "loopback"),
        ("http://127.0.0.2:8080/x.png", "loopback"),
        ("http://[::1]/", "loopback"),
        ("http://169.254.169.254/latest/meta-data/", "metadata"),
        ("http://169.254.10.1/", "link-local"),
        ("http://[fe80::1]/", "link-local"),
        ("http://[fd00:ec2::254]/", "metadata"),
        ("http://100.100.100.200/", "metadata"),
        ("http://10.0.0.1/", "private"),
        ("http://172.16.5.4/", "private"),
        ("http://192.168.1.1/", "private"),
        ("http://[fc00::1]/", "private"),
        ("http://100.64.0.1/", "not a public"),
        ("http://0.0.0.0/", "unspecified"),
        ("http://224.0.0.1/", "multicast"),
        ("http://240.0.0.1/", "reserved"),
        ("http://[::ffff:10.0.0.1]/", "private"),
        ("http://[::ffff:127.0.0.1]/", "loopback"),
        ("https://[64:ff9b::a9fe:a9fe]/", "metadata"),  # NAT64 form of 169.254.169.254
        ("http://2130706433/", "loopback"),  # decimal 127.0.0.1, resolved by getaddrinfo
        ("http://0x7f.1/", "loopback"),
        ("http://localhost/", "loopback"),
        ("http://LOCALHOST/", "loopback"),
        ("http://0177.0.0.1/", "loopback"),  # octal
        ("http://127.1/", "loopback"),  # short form
        ("http://[fe80::1%25eth0]/", "link-local"),  # with a zone id
        ("http://[::]/", "unspecified"),
        ("http://[2002:7f00:1::]/", "loopback"),  # 6to4 wrapping 127.0.0.1
        ("http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/", "loopback"),  # Teredo wrapping 127.0.0.1
    ],
)
def test_non_public_addresses_refused(url, reason):
    with pytest.raises(UnsafeSourceError, match=reason) as info:
        SafetyPolicy().check_url(url)
    assert url in str(info.value) and "safe mode" in str(info.value)


def test_public_literal_allowed_without_connecting(connections):
    SafetyPolicy().check_url("https://93.184.216.34/cat.png")
    SafetyPolicy().check_url("http://[2606:4700::6810:84e5]/cat.png")
    assert connections == []


def test_every_resolved_address_is_checked():
    answers = {"cdn.example": ["93.184.216.34"], "sneaky.example": ["93.184.216.34", "10.1.2.3"]}
    p = SafetyPolicy(resolver=lambda host, port: answers[host])
    p.check_url("https://cdn.example/a.png")
    with pytest.raises(UnsafeSourceError, match=r"host 'sneaky.example' resolves to 10.1.2.3, a private address"):
        p.check_url("https://sneaky.example/a.png")


def test_unresolvable_host_is_a_fetch_error():
    def fail(host, port):
        raise OSError("Name or service not known")

    with pytest.raises(FetchError, match="cannot resolve host 'nowhere.invalid'"):
        SafetyPolicy(resolver=fail).check_url("http://nowhere.invalid/x.png")


def test_allowed_and_denied_networks():
    p = SafetyPolicy(allowed_networks=["10.1.2.0/24"], denied_networks=["93.184.216.0/24"])
    p.check_url("http://10.1.2.3/")
    with pytest.raises(UnsafeSourceError, match="private"):
        p.check_url("http://10.1.3.3/")
    with pytest.raises(UnsafeSourceError, match="denied network"):
        p.check_url("http://93.184.216.34/")
    lax = SafetyPolicy(allow_private_addresses=True)
    lax.check_url("http://10.9.9.9/")
    with pytest.raises(UnsafeSourceError, match="metadata"):  # never, even with private allowed
        lax.check_url("http://169.254.169.254/")


def test_scheme_list():
    p = SafetyPolicy(allowed_schemes={"https"})
    p.check_url("https://93.184.216.34/")
    with pytest.raises(UnsafeSourceError, match="scheme 'http' is not allowed"):
        p.check_url("http://93.184.216.34/")
    with pytest.raises(InvalidOptionError, match="unknown scheme"):
        SafetyPolicy(allowed_schemes={"gopher"})


# -------------------------------------------------------------------- paths


def test_paths_inside_root_only(media_root, tmp_path):
    p = SafetyPolicy(allowed_roots=[str(media_root)])
    assert p.check_path(str(media_root / "ok.png")) == os.path.realpath(media_root / "ok.png")
    for bad in (
        "/etc/passwd",
        str(media_root / ".." / "secret" / "secret.png"),
        str(media_root) + "/../../../../etc/passwd",
        str(media_root) + "-evil/x.png",  # a sibling sharing the root's prefix
        str(tmp_path / "secret" / "missing.png"),  # refused whether or not it exists
    ):
        with pytest.raises(UnsafeSourceError, match="outside the allowed roots"):
            p.check_path(bad)


def test_symlinks_are_resolved(media_root, tmp_path):
    (media_root / "escape.png").symlink_to(tmp_path / "secret" / "secret.png")
    (media_root / "alias.png").symlink_to(media_root / "ok.png")
    (media_root / "dir").symlink_to("/etc")
    p = SafetyPolicy(allowed_roots=[str(media_root)])
    with pytest.raises(UnsafeSourceError, match="outside"):
        p.check_path(str(media_root / "escape.png"))
    with pytest.raises(UnsafeSourceError, match="outside"):
        p.check_path(str(media_root / "dir" / "passwd"))
    assert p.check_path(str(media_root / "alias.png")) == os.path.realpath(media_root / "ok.png")


def test_no_roots_or_no_file_scheme_means_no_local_files(media_root):
    with pytest.raises(UnsafeSourceError, match="no allowed roots"):
        SafetyPolicy().check_path(str(media_root / "ok.png"))
    with pytest.raises(UnsafeSourceError, match="scheme 'file'"):
        SafetyPolicy(allowed_roots=[str(media_root)], allowed_schemes={"https"}).check_path(str(media_root / "ok.png"))
    with pytest.raises(InvalidOptionError, match="absolute"):
        SafetyPolicy(allowed_roots=["relative/dir"])


# -------------------------------------------------------- activation and env


def test_default_is_permissive():
    assert policy.current() is None
    settings = FetchSettings()
    assert policy.apply(settings) is settings
    assert policy.check_path("/etc/passwd") == "/etc/passwd"
    assert policy.limit("max_pixels", 123) == 123


def test_env_variables(monkeypatch, media_root):
    monkeypatch.setenv("VLUTILS_SAFE_MODE", "1")
    p = policy.current()
    assert isinstance(p, SafetyPolicy) and p.allowed_roots == () and p == SafetyPolicy()
    monkeypatch.setenv("VLUTILS_ALLOWED_ROOTS", f"{media_root}{os.pathsep}/srv/media")
    monkeypatch.setenv("VLUTILS_ALLOWED_SCHEMES", "https, data")
    monkeypatch.setenv("VLUTILS_SAFE_MAX_PIXELS", "1e6")
    p = policy.current()
    assert p.allowed_roots == (os.path.realpath(media_root), "/srv/media")
    assert p.allowed_schemes == {"https", "data"} and p.max_pixels == 1_000_000
    monkeypatch.delenv("VLUTILS_SAFE_MODE")
    assert policy.current() == p  # naming allowed roots alone turns safe mode on (fail closed)
    monkeypatch.setenv("VLUTILS_SAFE_MODE", "0")
    assert policy.current() is None
    monkeypatch.setenv("VLUTILS_SAFE_MODE", "maybe")
    with pytest.raises(InvalidOptionError, match="VLUTILS_SAFE_MODE"):
        policy.current()
    monkeypatch.setenv("VLUTILS_SAFE_MODE", "1")
    monkeypatch.setenv("VLUTILS_SAFE_MAX_BYTES", "lots")
    with pytest.raises(InvalidOptionError, match="VLUTILS_SAFE_MAX_BYTES"):
        policy.current()


def test_use_is_per_thread_and_overrides_set_policy():
    strict, other = SafetyPolicy(), SafetyPolicy(allow_private_addresses=True)
    policy.set_policy(strict)
    seen = {}
    with policy.use(other):
        t = threading.Thread(target=lambda: seen.setdefault("thread", policy.current()))
        t.start()
        t.join()
        assert policy.current() is other
        with policy.use(None):
            assert policy.current() is None
    assert seen["thread"] is strict  # a new thread sees the global, not this block
    assert policy.current() is strict
    policy.set_policy(None)
    assert policy.current() is None
    with pytest.raises(InvalidOptionError):
        policy.set_policy("strict")


def test_apply_chains_checks_and_caps_bytes():
    calls = []
    p = SafetyPolicy(max_bytes=1000)
    s = p.apply(FetchSettings(max_bytes=10**9, url_check=calls.append))
    assert s.max_bytes == 1000 and p.apply(s).url_check is s.url_check  # idempotent
    s.url_check("https://93.184.216.34/")
    assert calls == ["https://93.184.216.34/"]
    with pytest.raises(UnsafeSourceError):
        s.url_check("http://127.0.0.1/")
    assert SafetyPolicy(max_bytes=None).apply(FetchSettings(max_bytes=5)).max_bytes == 5


# ------------------------------------------------------ through the library


@needs_hooks
def test_ordinary_inputs_still_work(media_root, server):
    png = png_bytes()
    inputs = [
        str(media_root / "ok.png"),
        "file://" + str(media_root / "ok.png"),
        "data:image/png;base64," + base64.b64encode(png).decode(),
        base64.b64encode(png).decode(),
        Image.open(io.BytesIO(png)),
        server.url("img.png"),
    ]
    expected, _ = vlutils.process_vision_info(image_msg(*inputs))
    p = SafetyPolicy(allowed_roots=[str(media_root)], allowed_networks=LOOPBACK_ONLY)
    with policy.use(p):
        images, videos = vlutils.process_vision_info(image_msg(*inputs))
    assert videos is None and len(images) == len(inputs)
    assert [im.tobytes() for im in images] == [im.tobytes() for im in expected]


@needs_hooks
@pytest.mark.parametrize(
    "make_value, reason",
    [
        (lambda root: "file:///etc/passwd", "outside the allowed roots"),
        (lambda root: "/etc/passwd", "outside the allowed roots"),
        (lambda root: str(root) + "/../secret/secret.png", "outside the allowed roots"),
        (lambda root: "file://" + str(root) + "/../secret/secret.png", "outside the allowed roots"),
        (lambda root: str(root / "escape.png"), "outside the allowed roots"),
        (lambda root: str(root) + "/../secret/does-not-exist.png", "outside the allowed roots"),
        (lambda root: "http://127.0.0.1/", "loopback"),
        (lambda root: "http://169.254.169.254/latest/meta-data/", "metadata"),
        (lambda root: "http://[::1]/", "loopback"),
        (lambda root: "http://10.0.0.1/x.png", "private"),
        (lambda root: {"url": "http://192.168.0.1/x.png"}, "private"),
        (lambda root: "FILE:///etc/passwd", "outside the allowed roots"),
        (lambda root: "file://localhost/etc/passwd", "outside the allowed roots"),
        (lambda root: "file:/etc/passwd", "outside the allowed roots"),
        (lambda root: "file://" + str(root) + "/..%2F..%2F..%2F..%2F..%2Fetc%2Fpasswd", "outside the allowed roots"),
        (lambda root: str(root) + "/escape.png\x00.png", "invalid path|outside"),
        (lambda root: "http://user:pw@127.0.0.1:80/x.png", "loopback"),
        (lambda root: "HTTP://[0:0:0:0:0:ffff:a9fe:a9fe]/", "metadata"),
    ],
)
def test_refused_with_position_and_no_connection(media_root, tmp_path, connections, make_value, reason):
    (media_root / "escape.png").symlink_to(tmp_path / "secret" / "secret.png")
    value = make_value(media_root)
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": [
        {"type": "text", "text": "look"}, {"type": "image", "image": value}]}]
    with policy.use(SafetyPolicy(allowed_roots=[str(media_root)])):
        with pytest.raises(UnsafeSourceError, match=reason) as info:
            vlutils.process_vision_info(messages)
    text = str(info.value)
    assert text.startswith("message 1, item 1: ") and "safe mode" in text
    shown = value["url"] if isinstance(value, dict) else value
    shown = shown.replace("user:pw@", "***@")  # credentials are not repeated in errors
    assert shown[:40] in text
    assert "user:pw" not in text
    assert connections == []


@needs_hooks
@pytest.mark.parametrize("item", [
    {"type": "image_url", "image_url": {"url": "file:///etc/passwd"}},
    {"type": "image_url", "image_url": "http://169.254.169.254/latest/meta-data/iam/"},
    {"type": "image_url", "image_url": {"url": "http://[::1]:8080/x.png"}},
])
def test_openai_style_items_are_checked(item, connections):
    with policy.use(SafetyPolicy()):
        with pytest.raises(UnsafeSourceError, match="^message 0, item 0: .*safe mode"):
            vlutils.process_vision_info([{"role": "user", "content": [item]}])
    assert connections == []


@needs_hooks
def test_redirect_from_allowed_host_to_private_one_is_refused(server, connections):
    """127.0.0.1 is allowed explicitly; its redirects to 127.0.0.2 (loopback) and to
    10.0.0.1 (private) must be refused before connecting to them."""
    to_loopback = server.route("/hop1", redirect(server.url("img.png", host="127.0.0.2")))
    to_private = server.route("/hop2", redirect("http://10.0.0.1/img.png"))
    relative_ok = server.route("/hop3", redirect("/img.png"))
    scheme_relative = server.route("/hop4", redirect(f"//127.0.0.2:{server.port}/img.png"))
    metadata = server.route("/hop5", redirect("http://169.254.169.254/latest/meta-data/", 301))
    p = SafetyPolicy(allowed_networks=LOOPBACK_ONLY)
    with policy.use(p):
        for url, target in ((to_loopback, "127.0.0.2"), (to_private, "10.0.0.1"), (scheme_relative, "127.0.0.2"),
                            (metadata, "169.254.169.254")):
            with pytest.raises(UnsafeSourceError, match=rf"redirect to http://{target}.*(loopback|private|metadata)") as info:
                vlutils.process_vision_info(image_msg(url))
            assert url in str(info.value)
        images, _ = vlutils.process_vision_info(image_msg(relative_ok))
    assert len(images) == 1
    assert {host for host, _ in connections} == {"127.0.0.1"}
    assert server.requests["/img.png"] == 1  # only the allowed relative redirect reached it


@needs_hooks
def test_policy_reaches_every_worker_thread(media_root):
    """Several items run in a thread pool: the `use` block must apply to all of them."""
    good = str(media_root / "ok.png")
    with policy.use(SafetyPolicy(allowed_roots=[str(media_root)])):
        with pytest.raises(UnsafeSourceError, match="message 0, item 3"):
            vlutils.process_vision_info(image_msg(good, good, good, "/etc/hostname", good))


@needs_hooks
def test_schemes_and_caps_apply(media_root, server):
    png = png_bytes((64, 64))
    data_uri = "data:image/png;base64," + base64.b64encode(png).decode()
    with policy.use(SafetyPolicy(allowed_schemes={"https"})):
        for value, scheme in ((data_uri, "data"), (base64.b64encode(png).decode(), "base64"),
                              (server.url("img.png"), "http"), (str(media_root / "ok.png"), "file")):
            with pytest.raises(UnsafeSourceError, match=f"scheme '{scheme}'"):
                vlutils.process_vision_info(image_msg(value))
        images, _ = vlutils.process_vision_info(image_msg(Image.open(io.BytesIO(png))))  # in-memory: always
        assert images[0].size == (56, 56)
    roots = [str(media_root)]
    with policy.use(SafetyPolicy(allowed_roots=roots, max_pixels=32 * 32)):
        with pytest.raises(SizeLimitError, match="pixel"):
            vlutils.process_vision_info(image_msg(data_uri))
    with policy.use(SafetyPolicy(allowed_roots=roots, max_bytes=100, allowed_networks=LOOPBACK_ONLY)):
        for value in (str(media_root / "ok.png"), server.url("img.png")):
            with pytest.raises(SizeLimitError, match="100-byte limit"):
                vlutils.process_vision_info(image_msg(value))


@needs_hooks
def test_env_safe_mode_without_code_changes(monkeypatch, media_root):
    monkeypatch.setenv("VLUTILS_SAFE_MODE", "1")
    with pytest.raises(UnsafeSourceError, match="no allowed roots"):
        vlutils.process_vision_info(image_msg("file:///etc/passwd"))
    monkeypatch.setenv("VLUTILS_ALLOWED_ROOTS", str(media_root))
    images, _ = vlutils.process_vision_info(image_msg(str(media_root / "ok.png")))
    assert images[0].size == expected_size(40, 30)


def test_no_policy_keeps_reference_behaviour(media_root):
    """Without safe mode a file outside any root is read (and here fails as non-image)."""
    with pytest.raises(VisionInputError) as info:
        vlutils.process_vision_info(image_msg("/etc/hostname" if os.path.exists("/etc/hostname") else "/etc/passwd"))
    assert not isinstance(info.value, UnsafeSourceError)
    images, _ = vlutils.process_vision_info(image_msg(str(media_root.parent / "secret" / "secret.png")))
    assert len(images) == 1


# ------------------------------------------------------------------- videos

try:
    import vlutils.video.fetch as _video_fetch

    VIDEO_HOOKS = "_policy" in inspect.getsource(_video_fetch)
except ImportError:  # video not built yet
    VIDEO_HOOKS = False
needs_video_hooks = pytest.mark.skipif(
    not (HOOKS and VIDEO_HOOKS), reason="hooks from .notes-policy-hooks*.diff not applied yet"
)
BAD = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures", "bad")


def video_msg(value, **options) -> list[dict]:
    return [{"role": "user", "content": [{"type": "video", "video": value, **options}]}]


@needs_video_hooks
def test_video_paths_frames_and_caps(tmp_path, media_root):
    clip = media_root / "clip.mp4"
    clip.write_bytes(open(os.path.join(BAD, "ok_video.mp4"), "rb").read())
    p = SafetyPolicy(allowed_roots=[str(media_root)])
    with policy.use(p):
        _, videos = vlutils.process_vision_info(video_msg(str(clip)))
        assert videos[0].shape[0] == 6  # 3 s at the default 2 fps
        with pytest.raises(UnsafeSourceError, match="outside the allowed roots"):
            vlutils.process_vision_info(video_msg(os.path.join(BAD, "ok_video.mp4")))
        # a frame list is read in a thread pool: the `use` block must reach it
        with pytest.raises(UnsafeSourceError, match="outside the allowed roots"):
            vlutils.process_vision_info(video_msg([str(media_root / "ok.png"), "/etc/hostname"]))
        with pytest.raises(UnsafeSourceError, match="loopback"):
            vlutils.process_vision_info(video_msg("http://127.0.0.1:9/clip.mp4"))
    with policy.use(p.replace(max_frames=4)):
        with pytest.raises(SizeLimitError, match="6 frames requested, over the 4-frame limit"):
            vlutils.process_vision_info(video_msg(str(clip)))
        with pytest.raises(SizeLimitError, match="5 frames, over the 4-frame limit"):
            vlutils.process_vision_info(video_msg([str(media_root / "ok.png")] * 5))
        _, videos = vlutils.process_vision_info(video_msg(str(clip), nframes=4))
        assert videos[0].shape[0] == 4


@needs_video_hooks
def test_decode_timeout_is_capped(media_root, monkeypatch):
    from vlutils.errors import DecodeTimeoutError

    clip = media_root / "clip.mp4"
    clip.write_bytes(open(os.path.join(BAD, "ok_video.mp4"), "rb").read())
    with policy.use(SafetyPolicy(allowed_roots=[str(media_root)], decode_timeout=1e-6)):
        with pytest.raises(DecodeTimeoutError, match="longer than"):
            vlutils.process_vision_info(video_msg(str(clip)))


@needs_hooks
def test_asyncio_server_pattern(media_root):
    """A server handling requests as asyncio tasks: each task's `use` block applies to the
    work it hands to a thread with asyncio.to_thread (which copies the context), and
    concurrent tasks with different policies do not see each other's."""
    import asyncio

    inside, outside = str(media_root / "ok.png"), str(media_root.parent / "secret" / "secret.png")
    strict = SafetyPolicy(allowed_roots=[str(media_root)])

    async def handle(path: str, p: SafetyPolicy | None):
        with policy.use(p):
            await asyncio.sleep(0.01)  # let the other tasks interleave
            try:
                images, _ = await asyncio.to_thread(vlutils.process_vision_info, image_msg(path))
                return "ok"
            except UnsafeSourceError:
                return "refused"

    async def main():
        return await asyncio.gather(handle(inside, strict), handle(outside, strict), handle(outside, None),
                                    handle(outside, strict), handle(inside, None))

    assert asyncio.run(main()) == ["ok", "refused", "ok", "refused", "ok"]
    assert policy.current() is None


@needs_video_hooks
def test_video_download_capped_and_cleaned(tmp_path, monkeypatch):
    import tempfile

    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    clip = open(os.path.join(BAD, "ok_video.mp4"), "rb").read()
    with FaultyServer() as srv:
        srv.route("/clip.mp4", answer(body=clip, content_type="video/mp4", content_length=False))
        with policy.use(SafetyPolicy(allowed_networks=LOOPBACK_ONLY, max_bytes=len(clip) // 2)):
            with pytest.raises(SizeLimitError, match="byte limit"):
                vlutils.process_vision_info(video_msg(srv.url("clip.mp4")))
        with policy.use(SafetyPolicy(allowed_networks=LOOPBACK_ONLY)):
            _, videos = vlutils.process_vision_info(video_msg(srv.url("clip.mp4")))
            assert videos[0].shape[0] == 6
    assert list(folder.iterdir()) == []


# ------------------------------------------------ playlists (HLS) pull in other files

def hls_playlist(segment: str) -> bytes:
    return (f"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXT-X-MEDIA-SEQUENCE:0\n#EXTINF:1.0,\n{segment}\n"
            "#EXT-X-ENDLIST\n").encode()


@pytest.fixture
def secret_segment(tmp_path):
    """A media file the server never meant to expose (outside every allowed root)."""
    secret = tmp_path / "private-uploads"
    secret.mkdir()
    target = secret / "other-user.ts"
    target.write_bytes(open(os.path.join(BAD, "vid_segment.ts"), "rb").read())
    return str(target)


@pytest.mark.skipif(not HOOKS, reason="library hooks not applied yet")
@pytest.mark.parametrize("safe", [False, True], ids=["default", "safe-mode"])
def test_url_playlist_cannot_decode_local_files(secret_segment, safe):
    """A stranger's URL ending in .m3u8 lists a local path: the server must not decode
    that local file into frames the model would then describe to the stranger."""
    with FaultyServer() as srv:
        url = srv.route("/clip.m3u8", answer(body=hls_playlist(secret_segment), content_type="application/vnd.apple.mpegurl"))
        p = SafetyPolicy(allowed_networks=LOOPBACK_ONLY) if safe else None
        with policy.use(p):
            with pytest.raises(VisionInputError, match="^message 0, item 0: "):
                vlutils.process_vision_info(video_msg(url))


@needs_video_hooks
def test_playlist_in_allowed_root_cannot_escape_it(media_root, secret_segment):
    (media_root / "clip.m3u8").write_bytes(hls_playlist(secret_segment))
    with policy.use(SafetyPolicy(allowed_roots=[str(media_root)])):
        with pytest.raises(VisionInputError, match="^message 0, item 0: "):
            vlutils.process_vision_info(video_msg(str(media_root / "clip.m3u8")))


# ------------------------------------------------------------------ image formats

FORMAT_HOOK = "check_image_format" in inspect.getsource(vlutils.image)
needs_format_hook = pytest.mark.skipif(not FORMAT_HOOK, reason="hook from .notes-policy-hooks-2.diff not applied yet")
# A minimal EPS: Pillow parses the header on open; load() would run Ghostscript.
EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n%%EndComments\nshowpage\n%%EOF\n"


def encoded(fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (30, 20), (9, 99, 199)).save(buf, fmt)
    return buf.getvalue()


def test_image_format_check_unit():
    p = SafetyPolicy()
    for fmt in ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF", "MPO"):
        p.check_image_format(fmt)
    for fmt in ("EPS", "PSD", "FITS", "PPM", None):
        with pytest.raises(UnsafeSourceError, match="image format"):
            p.check_image_format(fmt, "x")
    SafetyPolicy(image_formats=None).check_image_format("EPS")
    assert SafetyPolicy(image_formats=["jpeg", " png"]).image_formats == {"JPEG", "PNG"}


@needs_format_hook
def test_image_formats_in_safe_mode():
    import vlutils.image  # noqa: F401

    common = {fmt: encoded(fmt) for fmt in ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")}
    exotic = {fmt: encoded(fmt) for fmt in ("PPM", "TGA", "PCX", "SGI")}
    with policy.use(SafetyPolicy()):
        images, _ = vlutils.process_vision_info(image_msg(*common.values()))
        assert len(images) == len(common)
        for fmt, data in [*exotic.items(), ("EPS", EPS)]:
            with pytest.raises(UnsafeSourceError, match=f"image format '{fmt}' is not allowed"):
                vlutils.process_vision_info(image_msg(data))
    with policy.use(SafetyPolicy(image_formats={"PNG"})):
        with pytest.raises(UnsafeSourceError, match="'JPEG'"):
            vlutils.process_vision_info(image_msg(common["JPEG"]))
    images, _ = vlutils.process_vision_info(image_msg(*exotic.values()))  # default: everything Pillow reads
    assert len(images) == len(exotic)


# ----------------------------------------------------------- credentials (netrc)


@pytest.mark.parametrize("safe", [
    True,
    False,
], ids=["safe-mode", "default"])
def test_netrc_credentials_not_sent_in_safe_mode(tmp_path, monkeypatch, safe):
    """The server's ~/.netrc must not authenticate requests a stranger chose. Without
    safe mode they are sent, as by qwen-vl-utils (trainers may rely on it)."""
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login svc password s3cret\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    seen = []
    png = png_bytes()
    with FaultyServer() as srv:
        def record(h):
            seen.append(h.headers.get("Authorization"))
            answer(body=png, content_type="image/png")(h)

        url = srv.route("/x.png", record)
        with policy.use(SafetyPolicy(allowed_networks=LOOPBACK_ONLY) if safe else None):
            vlutils.process_vision_info(image_msg(url))
    assert seen == [None] if safe else seen[0] is not None


@needs_video_hooks
def test_video_source_frames_over_pixel_cap_are_refused(media_root):
    """Images are refused when their decoded size exceeds max_pixels; video frames must
    be too (a 200 KB file can hold 8192x8192 frames). slow_1080p.mp4 has 1920x1080 =
    2.07 Mpx frames; the requested output (max_pixels 200k) is well under the cap."""
    clip = media_root / "big.mp4"
    clip.write_bytes(open(os.path.join(BAD, "slow_1080p.mp4"), "rb").read())
    p = SafetyPolicy(allowed_roots=[str(media_root)], max_pixels=1_000_000)
    with policy.use(p):
        with pytest.raises(SizeLimitError, match="1920x1080"):
            vlutils.process_vision_info(video_msg(str(clip), nframes=2, max_pixels=200_000))
    with policy.use(p.replace(max_pixels=4_000_000)):  # under the cap: fine
        _, videos = vlutils.process_vision_info(video_msg(str(clip), nframes=2, max_pixels=200_000))
        assert videos[0].shape[0] == 2


VIDEO_BYTES_HOOK = "max_video_bytes" in open(os.path.join(os.path.dirname(vlutils.__file__), "video", "resize.py")).read()


@pytest.mark.skipif(not VIDEO_BYTES_HOOK, reason="hook from .notes-policy-hooks-3.diff not applied yet")
@needs_video_hooks
def test_video_output_bytes_capped_in_safe_mode(media_root):
    """In safe mode a message asking for min_pixels=60e6 over 20 frames must not get
    14 GB allocated: max_video_bytes bounds the float32 output of one video."""
    clip = media_root / "clip.mp4"
    clip.write_bytes(open(os.path.join(BAD, "ok_video.mp4"), "rb").read())
    p = SafetyPolicy(allowed_roots=[str(media_root)])
    with policy.use(p):  # 6 x 3 x 280 x 392 x 4 bytes = 7.9 MB: fine under 4 GiB
        _, videos = vlutils.process_vision_info(video_msg(str(clip)))
    with policy.use(p.replace(max_video_bytes=4_000_000)):
        with pytest.raises(SizeLimitError, match="GiB"):
            vlutils.process_vision_info(video_msg(str(clip)))
    with policy.use(p):
        with pytest.raises(SizeLimitError):
            vlutils.process_vision_info(video_msg(str(clip), nframes=20, min_pixels=60e6, max_pixels=60e6))


def test_concurrent_threads_with_different_policies(media_root):
    """24 threads at once, alternating strict and permissive `use` blocks, each with a
    multi-item message (so process_vision_info's own pool runs): every thread gets the
    outcome of its own policy, never its neighbour's."""
    from concurrent.futures import ThreadPoolExecutor

    inside = str(media_root / "ok.png")
    outside = str(media_root.parent / "secret" / "secret.png")
    strict = SafetyPolicy(allowed_roots=[str(media_root)])
    barrier = threading.Barrier(8)

    def call(i: int) -> str:
        p = strict if i % 2 else None
        with policy.use(p):
            barrier.wait(timeout=10) if i < 8 else None
            try:
                vlutils.process_vision_info(image_msg(inside, inside, outside, inside))
                return "ok"
            except UnsafeSourceError as exc:
                assert "message 0, item 2" in str(exc)
                return "refused"

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(call, range(24)))
    assert results == ["refused" if i % 2 else "ok" for i in range(24)]


ITEMS_HOOK = "check_item_count" in inspect.getsource(vlutils.vision_process)


def test_item_count_unit():
    SafetyPolicy(max_items=3).check_item_count(3)
    with pytest.raises(SizeLimitError, match="4 images and videos in one call, over the limit of 3"):
        SafetyPolicy(max_items=3).check_item_count(4)
    SafetyPolicy(max_items=None).check_item_count(10**6)


@pytest.mark.skipif(not ITEMS_HOOK, reason="hook from .notes-policy-hooks-4.diff not applied yet")
def test_item_count_capped():
    """10,000 references to one image would all be decoded before a server counts tokens."""
    tiny = Image.new("RGB", (8, 8))
    with policy.use(SafetyPolicy(max_items=16)):
        images, _ = vlutils.process_vision_info(image_msg(*[tiny] * 16))
        assert len(images) == 16
        start = time.monotonic()
        with pytest.raises(SizeLimitError, match="10000 images and videos"):
            vlutils.process_vision_info(image_msg(*[tiny] * 10_000))
        assert time.monotonic() - start < 1.0  # refused before any decoding
    images, _ = vlutils.process_vision_info(image_msg(*[tiny] * 200))  # no policy: no limit
    assert len(images) == 200
