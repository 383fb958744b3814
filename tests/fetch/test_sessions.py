"""The bounded transfer through both HTTP clients huggingface_hub may hand medret: ``requests`` (hub 0.x, the
Search-R1 environment) and httpx (hub 1.x and later). Each runs here whatever the installed hub is, so both paths
are exercised in every environment: a silent host, a body that stalls, an endless body, a good file."""
from __future__ import annotations

import hashlib
import importlib
import time

import pytest

from medret import compat
from medret.errors import CorpusError
from medret.fetch.settings import FetchOptions
from medret.fetch.transfer import fetch_url, remote_size
from tests.hubfake import EndlessServer, FakeHub, SilentServer

DATA = bytes(range(256)) * 200


def sessions():
    out = []
    try:
        out.append(pytest.param(importlib.import_module("requests").Session, id="requests"))
    except ImportError:
        pass
    for mod in ("httpx", "httpx2"):
        try:
            out.append(pytest.param(importlib.import_module(mod).Client, id=mod))
        except ImportError:
            pass
    return out


@pytest.fixture(params=sessions())
def session(request):
    make = request.param
    if make.__module__.startswith("requests"):
        s = make()
        s.trust_env = False  # no proxy for loopback
    else:
        s = make(trust_env=False)
    assert compat.is_httpx_session(s) != make.__module__.startswith("requests")
    yield s
    s.close()


OPTS = FetchOptions(timeout=1.0)


def test_good_file(session, tmp_path):
    with FakeHub(static={"f.bin": DATA}) as hub:
        url = f"{hub.endpoint}/mirror/f.bin"
        assert remote_size(session, url, "fix", OPTS) == len(DATA)
        out = fetch_url(url, tmp_path / "f.bin", expected_size=len(DATA), sha256=hashlib.sha256(DATA).hexdigest(),
                        session=session, options=OPTS)
        assert out.read_bytes() == DATA


def test_silent_host(session, tmp_path):
    with SilentServer() as silent:
        start = time.monotonic()
        with pytest.raises(CorpusError, match=rf"127.0.0.1:{silent.port} did not answer within 1 s.*; FIX"):
            remote_size(session, f"{silent.endpoint}/f.bin", "FIX", OPTS)
        with pytest.raises(CorpusError, match=rf"127.0.0.1:{silent.port} did not answer within 1 s.*FIX"):
            fetch_url(f"{silent.endpoint}/f.bin", tmp_path / "f.bin", expected_size=None, session=session,
                      options=OPTS, fix="FIX")
        assert time.monotonic() - start < 8
        assert list(tmp_path.iterdir()) == []


def test_body_that_stalls(session, tmp_path):
    with FakeHub(static={"f.bin": DATA}) as hub:
        hub.stall["/blob/f.bin"] = 16384  # a whole block of requests' reader on urllib3 1.x
        start = time.monotonic()
        with pytest.raises(CorpusError, match=rf"localhost:{hub.port} did not answer within 1 s.*to resume"):
            fetch_url(f"{hub.endpoint}/mirror/f.bin", tmp_path / "f.bin", expected_size=len(DATA), session=session,
                      options=OPTS)
        assert time.monotonic() - start < 10
        assert (tmp_path / ".f.bin.part").read_bytes() == DATA[:16384]


def test_endless_body(session, tmp_path):
    with EndlessServer() as endless:
        with pytest.raises(CorpusError, match=r"announced no size .* --max-download-bytes=300000"):
            fetch_url(f"{endless.endpoint}/f.bin", tmp_path / "f.bin", expected_size=None, session=session,
                      options=FetchOptions(timeout=5.0, max_download_bytes=300_000))
        assert list(tmp_path.iterdir()) == []
