"""Who may ask the Serve app for what (reslstm.distributed.serve.access), without Serve: the
token, and the normalisation and prefix check of every location a request names."""

import pytest

from reslstm.distributed.serve.access import Locations, Token
from reslstm.distributed.serve.request_body import BadRequest
from reslstm.errors import ConfigError


def refused(locations: Locations, named: str) -> BadRequest:
    with pytest.raises(BadRequest) as info:
        locations.check(named)
    return info.value


def test_without_prefixes_no_location_is_read(tmp_path):
    err = refused(Locations(), str(tmp_path / "clip.mp4"))
    assert (err.status, err.error) == (403, "paths_disabled")
    assert not Locations() and Locations([str(tmp_path)])


def test_local_paths_are_resolved_before_the_check(tmp_path):
    allowed, outside = tmp_path / "videos", tmp_path / "private"
    (allowed / "sub").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret.mp4").write_bytes(b"x")
    (allowed / "sub" / "clip.mp4").write_bytes(b"x")
    (allowed / "link.mp4").symlink_to(outside / "secret.mp4")
    (allowed / "dir_link").symlink_to(outside)
    (allowed / "inner.mp4").symlink_to(allowed / "sub" / "clip.mp4")
    loc = Locations([str(allowed) + "/"])
    clip = str(allowed / "sub" / "clip.mp4")
    assert loc.check(clip) == (clip, clip)
    assert loc.check("file://" + clip) == (clip, "file://" + clip)
    assert loc.check(str(allowed / "sub" / ".." / "sub" / "clip.mp4"))[0] == clip
    assert loc.check(str(allowed / "inner.mp4"))[0] == clip  # a link that stays inside
    assert loc.check(str(allowed / "nowhere.mp4"))[0] == str(allowed / "nowhere.mp4")
    for named in (str(allowed / ".." / "private" / "secret.mp4"),   # traversal
                  str(allowed / "link.mp4"),                         # a link out of the prefix
                  str(allowed / "dir_link" / "secret.mp4"),          # through a linked folder
                  "file://" + str(outside / "secret.mp4"),
                  str(tmp_path / "videos_other" / "clip.mp4"),       # a sibling sharing the name
                  "relative/clip.mp4", "/etc/passwd"):
        err = refused(loc, named)
        assert (err.status, err.error) == (403, "location_not_allowed"), named
        assert named not in str(err) and "exist" not in str(err)
    # Whether a refused file exists or not, the answer is the same.
    assert str(refused(loc, str(outside / "secret.mp4"))) == \
        str(refused(loc, str(outside / "missing.mp4")))


def test_uris_must_be_plain_and_under_a_prefix():
    loc = Locations(["s3://bucket/in/?endpoint_override=http://127.0.0.1:9000&region=x",
                     "gs://other"])
    assert loc.describe() == ["s3://bucket/in", "gs://other"]
    opened, shown = loc.check("s3://bucket/in/a/clip.mp4")
    assert shown == "s3://bucket/in/a/clip.mp4"
    assert opened == "s3://bucket/in/a/clip.mp4?endpoint_override=http://127.0.0.1:9000&region=x"
    assert loc.check("s3://bucket/in/x/../clip.mp4")[1] == "s3://bucket/in/clip.mp4"
    assert loc.check("S3://bucket/in/clip.mp4")[1] == "s3://bucket/in/clip.mp4"
    assert loc.check("gs://other/any/clip.mp4")[0] == "gs://other/any/clip.mp4"
    for named in ("s3://bucket/in/../secret.mp4", "s3://bucket/inside/clip.mp4",
                  "s3://bucket/clip.mp4", "s3://other-bucket/in/clip.mp4",
                  "s3://bucket/in/clip.mp4?endpoint_override=http://evil:9000",
                  "s3://key:secret@bucket/in/clip.mp4", "s3://bucket/in/../../x",
                  "gs://bucket/in/clip.mp4", "/bucket/in/clip.mp4"):
        assert refused(loc, named).status == 403, named
    with pytest.raises(ConfigError, match="absolute"):
        Locations(["videos/"])
    with pytest.raises(ConfigError, match="bucket"):
        Locations(["s3://"])


def test_a_local_prefix_never_admits_a_uri_and_the_other_way(tmp_path):
    loc = Locations([str(tmp_path)])
    assert refused(loc, f"s3://bucket{tmp_path}/clip.mp4").status == 403
    assert refused(Locations(["s3://bucket/"]), "/bucket/clip.mp4").status == 403


def test_the_token(tmp_path, monkeypatch):
    monkeypatch.delenv("RESLSTM_TOKEN", raising=False)
    assert not Token().required
    Token().check(None)  # no token: every request passes
    (tmp_path / "token").write_text("s3cr3t-token\n")
    token = Token(str(tmp_path / "token"))
    assert token.required and "s3cr3t" not in repr(token)
    token.check("Bearer s3cr3t-token")
    token.check("bearer  s3cr3t-token ")
    for header in (None, "", "Bearer", "Bearer ", "Basic s3cr3t-token", "Bearer s3cr3t-toke",
                   "Bearer s3cr3t-token2", "s3cr3t-token"):
        with pytest.raises(BadRequest) as info:
            token.check(header)
        err = info.value
        assert (err.status, err.error) == (401, "unauthorized"), header
        assert err.headers["WWW-Authenticate"].startswith("Bearer realm=")
        assert "s3cr3t" not in str(err)
    monkeypatch.setenv("RESLSTM_TOKEN", "from-env")
    Token().check("Bearer from-env")
    with pytest.raises(BadRequest):
        Token().check("Bearer s3cr3t-token")
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match="empty"):
        Token(str(tmp_path / "empty"))
    with pytest.raises(ConfigError, match="cannot read"):
        Token(str(tmp_path / "missing"))


def test_the_comparison_is_constant_time(monkeypatch):
    """The token is compared with hmac.compare_digest, not ==, whose time tells how much of a
    guess was right."""
    import hmac

    calls = []
    real = hmac.compare_digest
    monkeypatch.setattr(hmac, "compare_digest", lambda a, b: calls.append((a, b)) or real(a, b))
    monkeypatch.setenv("RESLSTM_TOKEN", "abc")
    Token().check("Bearer abc")
    assert calls == [(b"abc", b"abc")]

