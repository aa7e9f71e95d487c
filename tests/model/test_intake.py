"""Media intake (longvu.model.video): only regular files, formats chosen by content, nothing else read, limits."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import av
import numpy as np
import pytest
from conftest import FIXTURES
from media_fuzz import seed_videos
from media_util import patch_mp4_u32, pattern, write_clip

from longvu.errors import MediaLimitError, VideoError
from longvu.model import intake as video
from longvu.model.intake import MediaLimits, probe_video
from longvu.model.video import Sampling, StreamInfo, count_frames, iter_frames, load_video

VIDEO = FIXTURES / "videos" / "video1.mp4"


def decode_all(path, **kw) -> list[tuple[int, float, np.ndarray]]:
    return list(iter_frames(path, Sampling(fps=100), **kw))


def refused(path, match: str | None = None) -> VideoError:
    """Every entry point refuses ``path`` with a one-line VideoError; returns the error."""
    errors = []
    for fn in (probe_video, count_frames, load_video, decode_all):
        with pytest.raises(VideoError) as e:
            fn(path)
        errors.append(e.value)
    for e in errors:
        assert "\n" not in str(e) and "\n" not in e.public_message
        if match:
            assert match in str(e), str(e)
    return errors[0]


@pytest.fixture(scope="module")
def seeds(tmp_path_factory) -> dict[str, Path]:
    return {p.name: p for p in seed_videos(tmp_path_factory.mktemp("seeds"))}


# ---------------------------------------------------------------- what is a file
def test_not_regular_files_are_refused(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "loop1").symlink_to(tmp_path / "loop2")
    (tmp_path / "loop2").symlink_to(tmp_path / "loop1")
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "zero.mp4").symlink_to("/dev/zero")
    (tmp_path / "dir.mp4").symlink_to(tmp_path)
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "sock.mp4"))
    cases = {
        str(tmp_path): "is a directory",
        str(tmp_path / "fifo"): "is a fifo",  # opening it must not block
        "/dev/null": "is a device",
        "/dev/zero": "is a device",
        str(tmp_path / "loop1"): "too many levels of symbolic links",
        str(tmp_path / "zero.mp4"): "is a device",
        str(tmp_path / "dir.mp4"): "is a directory",
        str(tmp_path / "sock.mp4"): "is not a regular file",
        str(tmp_path / "missing.mp4"): "no such file",
        str(tmp_path / "empty.mp4"): "empty file",
        str(tmp_path / "a\x00b.mp4"): "NUL byte",
        str(tmp_path / ("x" * 300 + ".mp4")): "file name too long",
        str(tmp_path / ("d" * 300) / "v.mp4"): "file name too long",
    }
    for path, reason in cases.items():
        e = refused(path, reason)
        assert str(tmp_path) not in e.public_message and reason in e.public_message
    assert len(str(refused(str(tmp_path / ("x" * 300 + ".mp4"))))) < 250  # the name is shortened
    sock.close()


def test_symlink_to_a_video_is_followed(tmp_path):
    (tmp_path / "link.mp4").symlink_to(VIDEO)
    assert probe_video(tmp_path / "link.mp4").codec == "h264"


def test_messages_name_the_file_as_given_and_public_messages_name_none(tmp_path):
    bad = tmp_path / "sub dir" / "bad\nname.mp4"
    bad.parent.mkdir()
    bad.write_bytes(b"\x00\x01" * 100)
    e = refused(bad)
    assert str(e).startswith(str(bad.parent) + "/bad\\nname.mp4: ")
    assert "sub dir" not in e.public_message and "bad" not in e.public_message
    assert e.path == str(bad)


# ---------------------------------------------------------------- formats by content
@pytest.mark.parametrize(
    "ext,codec,fmt",
    [
        ("mkv", "mpeg4", "matroska"),
        ("webm", "libvpx-vp9", "webm"),
        ("avi", "mpeg4", "avi"),
        ("ts", "mpeg2video", "mpegts"),
        ("mpg", "mpeg2video", "vob"),
        ("flv", "flv", "flv"),
        ("wmv", "wmv2", "asf"),
        ("ivf", "libvpx-vp9", "ivf"),
        ("h264", "libx264", "h264"),
        ("hevc", "libx265", "hevc"),
        ("m4v", "mpeg4", "m4v"),
    ],
)
def test_allowed_containers_decode(tmp_path, ext, codec, fmt):
    frames = pattern(12)
    path = write_clip(tmp_path / f"v.{ext}", frames, codec=codec, fmt=fmt)
    got = decode_all(path)
    assert len(got) >= 10 and got[0][2].shape == frames[0].shape
    assert np.abs(got[0][2].astype(int) - frames[0]).mean() < 12


@pytest.mark.parametrize("name", ["clip.m3u8", "clip.txt", "clip", "concat:clip.mp4", "data:video,mp4", "clip.sdp"])
def test_the_name_does_not_choose_the_demuxer(tmp_path, name):
    path = tmp_path / name
    shutil.copy(VIDEO, path)
    assert probe_video(path).format.startswith("mov,mp4")
    assert len(load_video(path)) == 21


@pytest.mark.parametrize("ext,fmt", [("y4m", "yuv4mpegpipe"), ("nut", "nut")])
def test_containers_outside_the_list_are_refused(tmp_path, ext, fmt):
    path = write_clip(tmp_path / f"v.{ext}", pattern(5), codec="rawvideo" if ext == "y4m" else "mpeg4", fmt=fmt)
    with av.open(str(path)) as c:  # FFmpeg itself reads it
        assert c.format.name == fmt
    refused(path, "not a readable video file (accepted: mp4/mov")


def test_images_and_text_are_refused(tmp_path):
    from PIL import Image

    Image.fromarray(pattern(1)[0]).save(tmp_path / "still.png")
    Image.fromarray(pattern(1)[0]).save(tmp_path / "still.jpg")
    (tmp_path / "notes.mp4").write_text("just some text\n" * 20)
    refused(tmp_path / "still.png", "not a readable video file (accepted: mp4/mov")
    refused(tmp_path / "still.jpg", "not a readable video file (accepted: mp4/mov")
    refused(tmp_path / "notes.mp4", "not a readable video file (it is text)")


# ---------------------------------------------------------------- references to other files
@pytest.fixture()
def outside(tmp_path, seeds, monkeypatch) -> tuple[Path, Path]:
    """An ``allowed/`` folder and a real video outside it, in MP4 and MPEG-TS; the cwd is the outside folder."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "allowed").mkdir()
    (tmp_path / "outside").mkdir()
    shutil.copy(VIDEO, tmp_path / "outside" / "secret.mp4")
    shutil.copy(seeds["video1.ts"], tmp_path / "outside" / "secret.ts")
    os.chdir(tmp_path / "outside")  # relative references resolve to the secret (restored by monkeypatch)
    return tmp_path / "allowed", tmp_path / "outside"


def reference_files(allowed: Path, outside: Path) -> dict[str, str]:
    secret_abs, secret_rel = str(outside / "secret.ts"), "../outside/secret.ts"
    hls = "#EXTM3U\n#EXT-X-TARGETDURATION:30\n#EXTINF:20.0,\n{}\n#EXT-X-ENDLIST\n"
    return {
        "abs.m3u8": hls.format(secret_abs),
        "rel.m3u8": hls.format(secret_rel),
        "file-url.m3u8": hls.format("file://" + secret_abs),
        "data.m3u8": hls.format("data:video/mp2t;base64,R0AAEAAAsA0AAQ=="),
        "abs.ffconcat": f"ffconcat version 1.0\nfile '{outside / 'secret.mp4'}'\n",
        "rel.ffconcat": "ffconcat version 1.0\nfile 'secret.mp4'\n",  # concat refuses ".." itself
        "subfile.ffconcat": f"ffconcat version 1.0\nfile 'subfile,,start,0,end,0,,:{outside / 'secret.mp4'}'\n",
        "list.txt": "file '../outside/secret.mp4'\nfile '../outside/secret.mp4'\n",
        "manifest.mpd": f'<?xml version="1.0"?>\n<MPD xmlns="urn:mpeg:dash:schema:mpd:2011"><Period><AdaptationSet>'
        f"<Representation><BaseURL>{secret_abs}</BaseURL></Representation></AdaptationSet></Period></MPD>\n",
        "stream.sdp": "v=0\no=- 0 0 IN IP4 127.0.0.1\ns=x\nc=IN IP4 127.0.0.1\nt=0 0\nm=video 5004 RTP/AVP 96\n",
        "img%03d.png": "not a pattern, a file",
        "playlist.pls": f"[playlist]\nFile1={secret_abs}\nNumberOfEntries=1\n",
    }


def test_playlists_and_reference_lists_are_refused(outside):
    allowed, out = outside
    for name, text in reference_files(allowed, out).items():
        for saved_as in (name, name + ".mp4", "upload.bin"):
            (allowed / saved_as).write_text(text)
            e = refused(allowed / saved_as)
            assert "secret" not in str(e) and str(out) not in str(e), str(e)
            kind = {".m3u8": "HLS", ".ffconcat": "concat list", ".mpd": "manifest", ".sdp": "SDP"}.get(
                Path(name).suffix
            )
            assert kind is None or kind in e.public_message, e.public_message


def test_a_playlist_hidden_behind_a_binary_prefix_is_refused(outside):
    allowed, out = outside
    for name, text in reference_files(allowed, out).items():
        (allowed / name).write_bytes(b"\x00\x00\x01" + text.encode())
        refused(allowed / name)


def test_protocol_names_as_paths_are_just_missing_files(outside):
    _, out = outside
    for path in (
        f"concat:{out / 'secret.mp4'}|{out / 'secret.mp4'}",
        f"subfile,,start,0,end,0,,:{out / 'secret.mp4'}",
        f"file:{out / 'secret.mp4'}",
        "http://127.0.0.1:9/x.mp4",
        "data:video/mp4;base64,AAAAIGZ0eXBpc29t",
        f"tee:{out / 'secret.mp4'}",
        f"{out}/img%03d.png",
    ):
        e = refused(path, "no such file")
        assert "secret" not in e.public_message


# Each layer alone stops the nested reads (the tests above run all of them together).
def open_layered(path: Path, *, format: str | None = None, options: dict, io_open=None) -> int:
    with (
        open(path, "rb") as f,
        av.open(video._Unnamed(f), format=format, container_options=options, io_open=io_open) as c,
    ):
        return sum(1 for _ in c.decode(video=0))


def test_layer_format_allow_list(outside):
    allowed, out = outside
    (allowed / "rel.ffconcat").write_text(reference_files(allowed, out)["rel.ffconcat"])
    permissive = {"protocol_whitelist": "file"}
    assert open_layered(allowed / "rel.ffconcat", options=permissive) == 601  # FFmpeg alone reads the secret
    with pytest.raises(video._einval_errors()):
        open_layered(
            allowed / "rel.ffconcat", options={**permissive, **video._container_options(video.CONTAINER_FORMATS)}
        )


def test_layer_protocol_whitelist(outside):
    allowed, out = outside
    files = reference_files(allowed, out)
    for name in ("rel.ffconcat", "abs.ffconcat", "subfile.ffconcat"):
        (allowed / name).write_text(files[name])
        with pytest.raises(av.error.FFmpegError):
            open_layered(allowed / name, options=video._container_options(None))
    (allowed / "abs.m3u8").write_text(files["abs.m3u8"])
    secret_frames = count_frames(out / "secret.ts")[0]
    assert open_layered(allowed / "abs.m3u8", format="hls", options={}) == secret_frames  # forced HLS reads it
    with pytest.raises(av.error.FFmpegError):
        open_layered(allowed / "abs.m3u8", format="hls", options=video._container_options(None))


def test_layer_nested_open_callback(outside):
    allowed, out = outside
    (allowed / "abs.m3u8").write_text(reference_files(allowed, out)["abs.m3u8"])
    with pytest.raises(video._NestedOpen):
        open_layered(allowed / "abs.m3u8", format="hls", options={}, io_open=video._refuse_nested_open)


# ---------------------------------------------------------------- limits while decoding
def test_limits_validate():
    with pytest.raises(VideoError, match="max_pixels must be positive"):
        MediaLimits(max_pixels=0)
    with pytest.raises(VideoError, match="max_seconds must be positive"):
        MediaLimits(max_seconds=-1)


def test_max_pixels_from_the_header(tmp_path):
    path = write_clip(tmp_path / "v.mp4", pattern(5, 48, 64))
    assert len(decode_all(path, limits=MediaLimits(max_pixels=64 * 48))) == 5
    for fn in (probe_video, count_frames, lambda p, limits: decode_all(p, limits=limits)):
        with pytest.raises(MediaLimitError, match="64x48 are larger than the limit of 3071 pixels") as e:
            fn(path, limits=MediaLimits(max_pixels=64 * 48 - 1))
        assert e.value.limit == "max_pixels" and "v.mp4" not in e.value.public_message


def test_max_pixels_when_frames_grow_mid_stream(tmp_path):
    small = write_clip(tmp_path / "small.h264", pattern(10, 48, 64), codec="libx264", fmt="h264")
    large = write_clip(tmp_path / "large.h264", pattern(10, 480, 640), codec="libx264", fmt="h264")
    grow = tmp_path / "grow.h264"
    grow.write_bytes(small.read_bytes() + large.read_bytes())
    assert probe_video(grow, MediaLimits(max_pixels=64 * 48)).width == 64  # the header shows the small size
    got = decode_all(grow)  # without a limit, later frames are resized to the first frame's size
    assert len(got) == 20 and {f.shape for _, _, f in got} == {(48, 64, 3)}
    for limit in (64 * 48, 300_000):
        with pytest.raises(MediaLimitError, match="640x480") as e:
            decode_all(grow, limits=MediaLimits(max_pixels=limit))
        assert e.value.limit == "max_pixels"


def test_max_frames_counts_decoded_frames(tmp_path):
    path = write_clip(tmp_path / "v.mp4", pattern(30), fps=10)
    info = StreamInfo()
    with pytest.raises(MediaLimitError, match="more than 20 frames") as e:
        list(iter_frames(path, Sampling(), info, limits=MediaLimits(max_frames=20)))
    assert info.total == 21 and e.value.limit == "max_frames"
    with pytest.raises(MediaLimitError, match="more than 20 frames"):
        count_frames(path, MediaLimits(max_frames=20))
    assert len(decode_all(path, limits=MediaLimits(max_frames=30))) == 30


def test_max_seconds_without_a_duration_in_the_header(tmp_path):
    path = write_clip(tmp_path / "v.h264", pattern(60), codec="libx264", fmt="h264")
    with av.open(str(path)) as c:  # a raw stream: no duration anywhere
        assert c.duration is None and c.streams.video[0].duration is None
    assert probe_video(path, MediaLimits(max_seconds=1)).duration is None  # nothing to refuse yet
    info = StreamInfo()
    with pytest.raises(MediaLimitError, match="lasts more than 1s") as e:
        list(iter_frames(path, Sampling(), info, limits=MediaLimits(max_seconds=1)))
    assert info.avg_fps == 25  # FFmpeg's guess for a raw stream
    assert e.value.limit == "max_seconds" and info.total == 27  # stopped at the first frame past 1 s (26 / 25)


def test_max_seconds_with_a_patched_header(tmp_path):
    path = write_clip(tmp_path / "v.mp4", pattern(60), fps=10)  # 6 s
    with pytest.raises(MediaLimitError, match="lasts more than 2s"):
        probe_video(path, MediaLimits(max_seconds=2))  # an honest header fails fast
    for box in ([b"moov", b"mvhd"], [b"moov", b"trak", b"mdia", b"mdhd"], [b"moov", b"trak", b"tkhd"]):
        patch_mp4_u32(path, box, 28 if box[-1] == b"tkhd" else 24, 1)  # duration -> 1 tick
    assert probe_video(path, MediaLimits(max_seconds=2)).duration < 0.01  # the header now lies
    with pytest.raises(MediaLimitError, match="lasts more than 2s"):
        decode_all(path, limits=MediaLimits(max_seconds=2))


def test_patched_time_scale_is_still_bounded_by_max_frames(tmp_path):
    path = write_clip(tmp_path / "v.mp4", pattern(60), fps=10)
    patch_mp4_u32(path, [b"moov", b"trak", b"mdia", b"mdhd"], 20, 10_240_000)  # 1000x faster clock
    limits = MediaLimits(max_seconds=2, max_frames=40)
    assert probe_video(path, limits).avg_fps > 1000
    with pytest.raises(MediaLimitError, match="more than 40 frames"):
        decode_all(path, limits=limits)
