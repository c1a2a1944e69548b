"""`build-sd pack` and `build-sd push`: move bundles to boards, deterministically and atomically.

pack: a .tar.gz whose bytes depend only on the bundle's files (sorted entries, mtime 0, uid/gid
0, no user names, fixed modes, gzip header without name or time): same bundle -> same archive.

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
import tarfile
from pathlib import Path

from .errors import UserError
from .fsutil import sha256_file
from .runtime.session import read_manifest, recover_interrupted_swap


# ---- pack ------------------------------------------------------------------------------------------
def pack(bundle: str | Path, out: str | Path, log=print) -> Path:
    bundle, out = Path(bundle), Path(out)
    man = read_manifest(bundle)
    from .runtime.session import check_files
    bad = check_files(bundle, man)
    if bad:
        raise UserError(f"{bundle}: {bad[0]} (run build-sd verify)")
    files = sorted(man["files"]) + ["manifest.json"]
    root = bundle.name
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        with open(tmp, "wb") as raw:
            with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) as gz:
                with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
                    dirs = sorted({str(Path(f).parent) for f in files if str(Path(f).parent) != "."})
                    for d in [""] + dirs:
                        ti = tarfile.TarInfo(f"{root}/{d}".rstrip("/"))
                        ti.type, ti.mode = tarfile.DIRTYPE, 0o755
                        _normalise(ti)
                        tar.addfile(ti)
                    for f in files:
                        data = (bundle / f).read_bytes()
                        ti = tarfile.TarInfo(f"{root}/{f}")
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
    log(f"packed {bundle} -> {out} ({out.stat().st_size / 1e6:.1f} MB, sha256 {sha256_file(out)[:16]}...)")
    return out


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

    def read_manifest(self) -> dict | None:
        p = self.dest / "manifest.json"
        try:
            return json.loads(p.read_text()) if p.exists() else None
        except (OSError, ValueError):
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

    def read_manifest(self) -> dict | None:
        r = self._run(f"cat {shlex.quote(self.dest)}/manifest.json 2>/dev/null", check=False)
        try:
            return json.loads(r.stdout) if r.returncode == 0 and r.stdout.strip() else None
        except ValueError:
            return None

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
    man = read_manifest(bundle)
    from .runtime.session import check_files
    bad = check_files(bundle, man)
    if bad:
        raise UserError(f"{bundle}: {bad[0]} (run build-sd verify)")
    if ":" in dest and not dest.startswith(("/", ".")) and not Path(dest).exists():
        host, folder = dest.split(":", 1)
        t = Remote(host, folder or bundle.name)
    else:
        t = Local(Path(dest))
    old = t.read_manifest() or {}
    old_files = old.get("files", {}) if old.get("kind") == "build_sd.bundle" else {}
    t.prepare()
    sent = kept = 0
    sent_bytes = 0
    for rel, info in sorted(man["files"].items()):
        if old_files.get(rel, {}).get("sha256") == info["sha256"] and t.link_existing(rel, info["sha256"]):
            kept += 1
            continue
        t.send(bundle / rel, rel)
        sent += 1
        sent_bytes += info["bytes"]
    if isinstance(t, Remote):
        t.link_all()
    t.send(bundle / "manifest.json", "manifest.json")      # last: the partial copy is complete
    t.swap()
    log(f"pushed {bundle} -> {dest}: {sent} files sent ({sent_bytes / 1e6:.2f} MB), {kept} unchanged")
    return {"sent": sent, "kept": kept, "bytes": sent_bytes}
