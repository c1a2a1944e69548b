"""`build-sd pack` and `build-sd push`: move bundles to boards, deterministically and atomically.

pack: a .tar.gz whose bytes depend only on the bundle's files (sorted entries, mtime 0, uid/gid
0, no user names, fixed modes, gzip header without name or time): same bundle -> same archive.
With --wheels PLATFORM it also holds wheels/ (the runner and its dependencies for the board,
wheels.py) and pack.json (contract.PackManifest): same bundle and wheels -> same archive.

push DEST (a folder, or host:folder over ssh/scp): only files whose sha256 differs from the
destination's manifest are sent. The new bundle is assembled beside the old one (DEST.partial,
unchanged files hard-linked from DEST, changed files sent, manifest last) and swapped in with
two renames, so an interrupted push leaves the previous bundle usable (the runner puts a
bundle back if a swap was cut between the renames).
"""
from __future__ import annotations

import gzip
import io
import json
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from ..contract import BundleManifest
from ..errors import UserError
from ..fsutil import sha256_file
from ..runtime.checks import check_files, read_bundle_manifest, recover_interrupted_swap


# ---- pack ------------------------------------------------------------------------------------------
def pack(bundle: str | Path, out: str | Path, wheels: str | None = None, python: str | None = None,
         find_links: list[str] = (), log=print) -> Path:
    """bundle -> a deterministic .tar.gz. wheels: a pip platform tag (manylinux_2_28_aarch64):
    the archive also holds wheels/ (build_sd and its core dependencies for that platform and
    Python) and pack.json (their sha256), for a board without a package index."""
    bundle, out = Path(bundle), Path(out)
    man = _checked(bundle)
    root = bundle.name
    entries = [(f"{root}/{f}", bundle / f) for f in sorted(man.files) + ["manifest.json"]]
    with tempfile.TemporaryDirectory() as tmp:
        if wheels:
            entries += _wheel_entries(root, wheels, python or "{}.{}".format(*sys.version_info[:2]),
                                      list(find_links), Path(tmp), log)
        _write_archive(out, root, entries)
    log(f"packed {bundle} -> {out} ({out.stat().st_size / 1e6:.1f} MB, sha256 {sha256_file(out)[:16]}...)")
    return out


def _wheel_entries(root: str, platform: str, python: str, find_links: list[str], tmp: Path, log) -> list:
    from ..contract import PackManifest, WheelFile
    from .wheels import collect
    found = collect(platform, python, find_links, tmp / "wheels", log)
    record = PackManifest(bundle=root, platform=platform, python=python,
                          install="pip install --no-index --find-links wheels/ build_sd",
                          wheels={w.name: WheelFile(sha256_file(w), w.stat().st_size) for w in found})
    record.write(tmp / "pack.json")
    log(f"{len(found)} wheels for {platform}, Python {python}: "
        f"{sum(w.stat().st_size for w in found) / 1e6:.1f} MB")
    return [(f"{root}/wheels/{w.name}", w) for w in found] + [(f"{root}/pack.json", tmp / "pack.json")]


def _write_archive(out: Path, root: str, entries: list[tuple[str, Path]]) -> None:
    """Entries in the given (deterministic) order after their sorted folders, mtime 0, uid/gid 0,
    no user names, fixed modes, gzip header without name or time: same files, same bytes."""
    tmp = out.with_name(f".{out.name}.tmp")
    names = list(entries)
    dirs = sorted({str(Path(n).parent) for n, _ in names} - {root})
    try:
        with open(tmp, "wb") as raw:
            with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) as gz:
                with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
                    for d in [root] + dirs:
                        ti = tarfile.TarInfo(d)
                        ti.type, ti.mode = tarfile.DIRTYPE, 0o755
                        _normalise(ti)
                        tar.addfile(ti)
                    for name, path in names:
                        data = path.read_bytes()
                        ti = tarfile.TarInfo(name)
                        ti.size, ti.mode = len(data), 0o644
                        _normalise(ti)
                        tar.addfile(ti, io.BytesIO(data))
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, out)
    except OSError as e:
        raise UserError(f"cannot write {out}: {e.strerror or e}") from None
    finally:
        tmp.unlink(missing_ok=True)


def _checked(bundle: Path) -> BundleManifest:
    """The bundle's manifest, once every file matches it."""
    man = read_bundle_manifest(bundle)
    bad = check_files(bundle, man)
    if bad:
        raise UserError(f"{bundle}: {bad[0]} (run build-sd verify)")
    return man


def _parse_manifest(text: str | bytes | None) -> BundleManifest | None:
    """A destination's manifest if it is one this build_sd reads (else: send every file)."""
    if not text:
        return None
    try:
        return BundleManifest.from_obj(json.loads(text))
    except (ValueError, UserError):
        return None


def _normalise(ti: tarfile.TarInfo):
    ti.mtime = 0
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    ti.pax_headers = {}


def unpack(archive: str | Path, dest: str | Path) -> Path:
    """Extract a packed bundle (data filter: no links, no absolute paths)."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive, "r:gz") as tar:
            names = {m.name.split("/")[0] for m in tar.getmembers()}
            tar.extractall(dest, filter="data")
    except (tarfile.TarError, OSError, EOFError) as e:
        raise UserError(f"{archive}: not a readable bundle archive ({e})") from None
    if len(names) != 1:
        raise UserError(f"{archive}: expected one bundle folder, found {sorted(names)}")
    return dest / names.pop()


# ---- push ------------------------------------------------------------------------------------------
class Local:
    def __init__(self, dest: Path):
        self.dest = dest

    def read_manifest(self) -> BundleManifest | None:
        p = self.dest / "manifest.json"
        try:
            return _parse_manifest(p.read_bytes()) if p.exists() else None
        except OSError:
            return None

    def prepare(self):
        recover_interrupted_swap(self.dest)
        self.partial = self.dest.with_name(f"{self.dest.name}.partial")
        if self.partial.exists():
            shutil.rmtree(self.partial)
        self.partial.mkdir(parents=True)

    def link_existing(self, rel: str, sha: str) -> bool:
        src = self.dest / rel
        if not src.exists() or sha256_file(src) != sha:    # never keep a damaged copy
            return False
        (self.partial / rel).parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(src, self.partial / rel)
        except OSError:
            shutil.copyfile(src, self.partial / rel)
        return True

    def send(self, src: Path, rel: str):
        (self.partial / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, self.partial / rel)

    def swap(self):
        old = self.dest.with_name(f".{self.dest.name}.old")
        if old.exists():
            shutil.rmtree(old)
        if self.dest.exists():
            self.dest.rename(old)
        self.partial.rename(self.dest)
        if old.exists():
            shutil.rmtree(old)


class Remote:
    """host:folder through ssh and scp (BUILD_SD_SSH / BUILD_SD_SCP override the commands)."""

    def __init__(self, host: str, dest: str):
        self.host, self.dest = host, dest.rstrip("/")
        self.ssh = shlex.split(os.environ.get("BUILD_SD_SSH", "ssh -o BatchMode=yes"))
        self.scp = shlex.split(os.environ.get("BUILD_SD_SCP", "scp -q -o BatchMode=yes"))
        self.partial = f"{self.dest}.partial"

    def _run(self, script: str, check=True) -> subprocess.CompletedProcess:
        r = subprocess.run(self.ssh + [self.host, script], capture_output=True, text=True)
        if check and r.returncode != 0:
            raise UserError(f"ssh {self.host}: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else r.returncode}")
        return r

    def read_manifest(self) -> BundleManifest | None:
        r = self._run(f"cat {shlex.quote(self.dest)}/manifest.json 2>/dev/null", check=False)
        return _parse_manifest(r.stdout) if r.returncode == 0 else None

    def prepare(self):
        d, p, old = map(shlex.quote, (self.dest, self.partial, _old_name(self.dest)))
        self._run(f"if [ ! -e {d} ] && [ -d {old} ]; then mv {old} {d}; fi; rm -rf {p} && mkdir -p {p}")
        self._linked: list[str] = []

    def link_existing(self, rel: str, sha: str) -> bool:
        self._linked.append(rel)
        return True

    def send(self, src: Path, rel: str):
        target = f"{self.partial}/{rel}"
        self._run(f"mkdir -p {shlex.quote(os.path.dirname(target))}")
        r = subprocess.run(self.scp + [str(src), f"{self.host}:{target}"], capture_output=True, text=True)
        if r.returncode != 0:
            raise UserError(f"scp {rel} to {self.host}: {r.stderr.strip()}")

    def link_all(self):
        if not self._linked:
            return
        d, p = shlex.quote(self.dest), shlex.quote(self.partial)
        cmds = [f"mkdir -p {shlex.quote(os.path.dirname(f'{self.partial}/{rel}'))} && "
                f"(ln {d}/{shlex.quote(rel)} {p}/{shlex.quote(rel)} 2>/dev/null || cp {d}/{shlex.quote(rel)} {p}/{shlex.quote(rel)})"
                for rel in self._linked]
        self._run(" && ".join(cmds))

    def swap(self):
        d, p, old = map(shlex.quote, (self.dest, self.partial, _old_name(self.dest)))
        self._run(f"rm -rf {old}; if [ -e {d} ]; then mv {d} {old}; fi; mv {p} {d} && rm -rf {old}")


def _old_name(dest: str) -> str:
    head, tail = os.path.split(dest)
    return os.path.join(head, f".{tail}.old")


def push(bundle: str | Path, dest: str, log=print) -> dict:
    bundle = Path(bundle)
    man = _checked(bundle)
    if ":" in dest and not dest.startswith(("/", ".")) and not Path(dest).exists():
        host, folder = dest.split(":", 1)
        t = Remote(host, folder or bundle.name)
    else:
        t = Local(Path(dest))
    old = t.read_manifest()
    old_sha = {rel: f.sha256 for rel, f in old.files.items()} if old else {}
    t.prepare()
    sent = kept = 0
    sent_bytes = 0
    for rel, info in sorted(man.files.items()):
        if old_sha.get(rel) == info.sha256 and t.link_existing(rel, info.sha256):
            kept += 1
            continue
        t.send(bundle / rel, rel)
        sent += 1
        sent_bytes += info.bytes
    if isinstance(t, Remote):
        t.link_all()
    t.send(bundle / "manifest.json", "manifest.json")      # last: the partial copy is complete
    t.swap()
    log(f"pushed {bundle} -> {dest}: {sent} files sent ({sent_bytes / 1e6:.2f} MB), {kept} unchanged")
    return {"sent": sent, "kept": kept, "bytes": sent_bytes}
