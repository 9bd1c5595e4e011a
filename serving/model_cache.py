"""Local copies of the model versions a worker loaded from MLflow, so that a worker started while
MLflow is down can serve the version of the served record. No Flask and no MLflow here: files only.

    <root>/<model name>/<version>/
        manifest.json   name, version, run id, feature names, backend (+ note), when it was saved,
                        and the sha256 of every other file
        reference.csv   the run's drift reference (drift/reference.csv)
        model.onnx      backend "onnx": the ONNX artifact the worker serves
        model/          backend "sklearn": the MLflow model directory as MLflow downloaded it

A copy is written into a temporary directory beside its final place and renamed there, so it is
complete or absent (a crash leaves a `.tmp-*` directory, removed later, never a half copy under a
version's name). Directories are 0700, files 0600: the copy is as private as the state file.

A copy is used only when the manifest is readable, the files on disk are exactly the listed ones and
every digest matches; anything else makes it unusable (`CopyUnusable`, never served). The digests
catch damage (a partial write, a full disk, an edited file), not an attacker who can write the state
directory: they could rewrite the manifest too, like the state file itself.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args
from urllib.parse import quote

from serving.timestamps import iso_utc

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
REFERENCE = "reference.csv"
ONNX_FILE = "model.onnx"
SKLEARN_DIR = "model"
FORMAT = 1
Backend = Literal["onnx", "sklearn"]  #: what predicts: onnxruntime or the scikit-learn estimator
BACKENDS: tuple[Backend, ...] = get_args(Backend)
_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")


class CopyUnusable(Exception):
    """A local copy exists but must not be served (damaged, incomplete, not what it claims)."""


@dataclass(frozen=True)
class CopyFiles:
    """What a loader downloaded for one version: enough to rebuild the served model without MLflow."""

    reference: Path
    backend: Backend
    artifact: Path  # the ONNX file, or the sklearn model directory


@dataclass(frozen=True)
class VerifiedCopy:
    """A copy whose files matched their digests when it was opened."""

    path: Path
    name: str
    version: str
    run_id: str
    feature_names: tuple[str, ...]
    backend: Backend
    backend_note: str | None
    saved_at: str

    @property
    def reference(self) -> Path:
        return self.path / REFERENCE

    @property
    def artifact(self) -> Path:
        return self.path / (ONNX_FILE if self.backend == "onnx" else SKLEARN_DIR)


def _component(value: str) -> str:
    """A model name or version as one safe path component (no separators, no '..')."""
    value = str(value)
    return value if _SAFE.fullmatch(value) else "~" + quote(value, safe="")[:200]


def _sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _files_under(root: Path) -> dict[str, Path]:
    """Every regular file under `root` by its relative POSIX path (the manifest excluded)."""
    found = {}
    for dirpath, _dirs, names in os.walk(root):
        for fname in names:
            full = Path(dirpath) / fname
            rel = full.relative_to(root).as_posix()
            if rel != MANIFEST:
                found[rel] = full
    return found


class ModelCopies:
    """The copies of one serving state directory; several workers share it (each write is a rename)."""

    def __init__(self, root: str | os.PathLike[str], keep: int = 3):
        self.root = Path(root)
        self.keep = max(1, int(keep))

    def dir_for(self, name: str, version: str) -> Path:
        return self.root / _component(name) / _component(version)

    # -- writing -----------------------------------------------------------------------------------
    def save(
        self,
        name: str,
        version: str,
        run_id: str,
        feature_names: Sequence[str],
        files: CopyFiles,
        backend_note: str | None = None,
    ) -> Path:
        """Keep a copy of a version that was just loaded from MLflow; returns its directory. An
        existing copy that verifies is kept (and marked as used); a damaged one is replaced."""
        if files.backend not in BACKENDS:
            raise ValueError(f"unknown backend {files.backend!r}")
        final = self.dir_for(name, version)
        parent = final.parent
        for d in (self.root, parent):
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(d, 0o700)
        if self._usable(final, name, version):
            os.utime(final)  # most recently used: pruned last
            return final
        tmp = parent / f".tmp-{final.name}-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            tmp.mkdir(mode=0o700)
            shutil.copyfile(files.reference, tmp / REFERENCE)
            if files.backend == "onnx":
                shutil.copyfile(files.artifact, tmp / ONNX_FILE)
            else:
                shutil.copytree(files.artifact, tmp / SKLEARN_DIR, copy_function=shutil.copyfile)
            digests = {}
            for rel, path in sorted(_files_under(tmp).items()):
                os.chmod(path, 0o600)
                digests[rel] = _sha256(path)
            for dirpath, _dirs, _names in os.walk(tmp):
                os.chmod(dirpath, 0o700)
            manifest = {
                "format": FORMAT,
                "name": str(name),
                "version": str(version),
                "run_id": str(run_id),
                "feature_names": [str(f) for f in feature_names],
                "backend": files.backend,
                "backend_note": backend_note,
                "saved_at": iso_utc(),
                "files": digests,
            }
            fd = os.open(tmp / MANIFEST, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                json.dump(manifest, fh, indent=1)
                fh.flush()
                os.fsync(fh.fileno())
            self._place(tmp, final, name, version)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        self.prune(name, protect=final)
        return final

    def _place(self, tmp: Path, final: Path, name: str, version: str) -> None:
        try:
            os.rename(tmp, final)
            return
        except OSError:
            pass  # a directory is there: another worker's copy, or a damaged one
        if self._usable(final, name, version):
            return  # another worker saved the same version first: keep that one, drop ours
        aside = final.parent / f".tmp-bad-{final.name}-{secrets.token_hex(4)}"
        try:
            os.rename(final, aside)
            os.rename(tmp, final)
            log.warning("replaced the damaged local copy %s", final)
        except OSError:
            pass  # lost a race with another worker doing the same: its copy stands
        shutil.rmtree(aside, ignore_errors=True)

    def prune(self, name: str, protect: Path | None = None, stale_seconds: float = 3600.0) -> None:
        """Keep the `keep` most recently used copies of the model name (and `protect`); drop
        temporary directories left by a crash."""
        parent = self.root / _component(name)
        try:
            entries = list(parent.iterdir())
        except FileNotFoundError:
            return
        now = time.time()
        copies = []
        for entry in entries:
            try:
                mtime = entry.stat().st_mtime
            except FileNotFoundError:
                continue
            if entry.name.startswith(".tmp-"):
                if now - mtime > stale_seconds:
                    shutil.rmtree(entry, ignore_errors=True)
            elif entry.is_dir():
                copies.append((mtime, entry))
        copies.sort(reverse=True)
        for _mtime, entry in copies[self.keep :]:
            if protect is None or entry != protect:
                shutil.rmtree(entry, ignore_errors=True)

    # -- reading -----------------------------------------------------------------------------------
    def open(self, name: str, version: str) -> VerifiedCopy | None:
        """The verified copy of the version; None when there is none; CopyUnusable when there is one
        that must not be served."""
        path = self.dir_for(name, version)
        try:
            if not path.exists():
                return None
            return self._verify(path, name, version)
        except OSError as exc:  # unreadable: as good as damaged
            raise CopyUnusable(f"{path}: cannot be read ({exc})") from exc

    def _usable(self, path: Path, name: str, version: str) -> bool:
        try:
            return path.exists() and self._verify(path, name, version) is not None
        except (CopyUnusable, OSError):
            return False

    @staticmethod
    def _verify(path: Path, name: str, version: str) -> VerifiedCopy:
        try:
            manifest = json.loads((path / MANIFEST).read_text())
        except (OSError, ValueError) as exc:
            raise CopyUnusable(f"{path}: no readable {MANIFEST} ({exc})") from exc
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise CopyUnusable(f"{path}: {MANIFEST} is not a manifest of format {FORMAT}")
        if manifest.get("name") != str(name) or manifest.get("version") != str(version):
            raise CopyUnusable(
                f"{path}: holds {manifest.get('name')!r} version {manifest.get('version')!r}, "
                f"not {name!r} version {version!r}"
            )
        backend, files, names = manifest.get("backend"), manifest.get("files"), manifest.get("feature_names")
        if backend not in BACKENDS or not isinstance(files, dict) or not isinstance(names, list) or not names:
            raise CopyUnusable(f"{path}: {MANIFEST} lacks backend, files or feature names")
        needed = {REFERENCE, ONNX_FILE} if backend == "onnx" else {REFERENCE}
        has_model_dir = any(f.startswith(SKLEARN_DIR + "/") for f in files)
        if not needed <= set(files) or (backend == "sklearn" and not has_model_dir):
            raise CopyUnusable(f"{path}: {MANIFEST} does not list the files a {backend} model needs")
        on_disk = _files_under(path)
        if set(on_disk) != set(files):
            missing, extra = sorted(set(files) - set(on_disk)), sorted(set(on_disk) - set(files))
            raise CopyUnusable(
                f"{path}: files differ from the manifest (missing {missing[:5]}, unexpected {extra[:5]})"
            )
        for rel, expected in files.items():
            if _sha256(on_disk[rel]) != expected:
                raise CopyUnusable(f"{path}: {rel} does not match its sha256 in {MANIFEST} (damaged or edited)")
        return VerifiedCopy(
            path,
            str(name),
            str(version),
            str(manifest.get("run_id") or ""),
            tuple(str(n) for n in names),
            backend,
            manifest.get("backend_note"),
            str(manifest.get("saved_at") or ""),
        )
