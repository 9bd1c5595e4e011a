"""Secrets and endpoint files of the embedded stack."""

import stat

from stack.config import StackConfig, load_or_create_secrets, read_env_file, write_secret_file


def test_secret_files_are_0600_and_round_trip(tmp_path):
    path = tmp_path / "endpoints.env"
    write_secret_file(path, {"A": "1", "TOKEN": "x=y"})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_env_file(path) == {"A": "1", "TOKEN": "x=y"}


def test_secrets_are_generated_once(tmp_path):
    cfg = StackConfig(root=tmp_path)
    first = load_or_create_secrets(cfg)
    assert len(first["SERVING_ADMIN_TOKEN"]) >= 32 and first["AIRFLOW_USER"] == "admin"
    assert load_or_create_secrets(cfg) == first
    assert stat.S_IMODE((tmp_path / "secrets.env").stat().st_mode) == 0o600


def test_service_names_match_the_specs(tmp_path):
    from stack.services import SERVICE_NAMES, service_specs

    cfg = StackConfig(root=tmp_path)
    assert tuple(s.name for s in service_specs(cfg, load_or_create_secrets(cfg))) == SERVICE_NAMES
