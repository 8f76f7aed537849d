"""Server settings (server/config.py): layers, environment names, errors that name the variable."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from server.config import ConfigError, ServerConfig, config_from, env_names, env_table, load_config


def test_layers_file_then_env_then_flags(tmp_path):
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"max_batch": 16, "max_wait_ms": 2.0, "port": 9001}))
    cfg = load_config(f, env={"HEIST_MAX_BATCH": "32", "HEIST_PORT": "9002"}, port=9003)
    assert (cfg.max_batch, cfg.max_wait_ms, cfg.port) == (32, 2.0, 9003)
    # HEIST_CONFIG names the file when no file is passed
    assert load_config(env={"HEIST_CONFIG": str(f)}).max_batch == 16


def test_every_field_has_a_variable_and_a_description():
    rows = {r["field"]: r for r in env_table()}
    assert set(rows) == set(ServerConfig.model_fields)
    assert all(r["description"] for r in rows.values()), [f for f, r in rows.items() if not r["description"]]
    assert env_names("max_batch") == ("HEIST_MAX_BATCH",)
    assert env_names("redis_url") == ("REDIS_URL", "HEIST_REDIS_URL")
    assert rows["admin_token"]["default"] == ""  # secrets never printed


def test_every_variable_is_read():
    """Each listed variable really sets its field (the list cannot drift from the model)."""
    checked = 0
    for name, info in ServerConfig.model_fields.items():
        default = info.get_default(call_default_factory=True)
        if isinstance(default, bool):
            value: object = not default
        elif isinstance(default, int | float):
            value = default * 2 if default else 3
        elif default is None and info.annotation in (int | None, float | None):
            value = 3
        else:
            continue
        if name == "max_image_bytes":
            value = default // 2
        for var in env_names(name):
            text = str(value).lower() if isinstance(value, bool) else str(value)
            extra = {"REDIS_URL": "redis://h:1/0"} if name == "workers" else {}  # several workers need Redis
            assert getattr(load_config(env={var: text, **extra}), name) == value, var
            checked += 1
    assert checked >= 15


def test_structured_fields_take_json_and_redis_alias():
    env = {"HEIST_ALLOWED_FORMATS": '["png"]', "REDIS_URL": "redis://a:1/0",
           "HEIST_TIERS": json.dumps({"gold": {"outputs": ["representation", "projection"]}})}
    cfg = load_config(env=env)
    assert cfg.allowed_formats == ("PNG",) and cfg.redis_url == "redis://a:1/0"
    assert cfg.tiers["gold"].outputs == ("representation", "projection")
    assert load_config(env={**env, "HEIST_REDIS_URL": "redis://b:1/0"}).redis_url == "redis://b:1/0"


@pytest.mark.parametrize("env, needle", [
    ({"HEIST_MAX_BATCH": "zero"}, "max_batch (env HEIST_MAX_BATCH)"),
    ({"REDIS_URL": "http://nope"}, "redis_url (env REDIS_URL)"),
    ({"HEIST_ADMIN_TOKEN": "short"}, "at least 16 characters"),
    ({"HEIST_TIERS": "not json"}, "tiers"),
])
def test_errors_name_the_variable(env, needle):
    with pytest.raises(ConfigError, match="invalid server configuration") as e:
        load_config(env=env)
    assert needle in str(e.value)


def test_secrets_refused_in_a_file(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('admin_token = "0123456789abcdef0123"\n')
    with pytest.raises(ConfigError, match="must come from the environment"):
        load_config(f, env={})


def test_direct_construction_reads_the_environment_and_load_config_isolates(monkeypatch):
    monkeypatch.setenv("HEIST_MAX_BATCH", "5")
    assert ServerConfig().max_batch == 5 and ServerConfig(max_batch=3).max_batch == 3
    assert load_config(env={}).max_batch == 64  # the given mapping is the whole environment layer
    assert ServerConfig.model_validate({}).max_batch == 5  # pydantic-settings reads the environment here too
    assert config_from({"port": 1}).max_batch == 64 and config_from({"port": 1}).port == 1


def test_cli_lists_variables_and_prints_the_effective_config():
    listing = subprocess.run([sys.executable, "-m", "server.cli", "config", "--env"], capture_output=True,
                             text=True, check=True).stdout
    assert all(r["variable"] in listing for r in env_table())
    env = {"HEIST_MAX_BATCH": "9", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-m", "server.cli", "config"], capture_output=True, text=True,
                         env=env, check=True).stdout
    dumped = json.loads(out)
    assert dumped["max_batch"] == 9 and "admin_token" not in dumped
    bad = subprocess.run([sys.executable, "-m", "server.cli", "config"], capture_output=True, text=True,
                         env={**env, "HEIST_MAX_BATCH": "x"})
    assert bad.returncode == 2 and "HEIST_MAX_BATCH" in bad.stderr


def test_config_validation_errors(tmp_path):
    cfg = load_config(env={"REDIS_URL": "redis://h:1/0", "HEIST_MAX_BATCH": "8"})
    assert cfg.redis_url == "redis://h:1/0" and cfg.max_batch == 8 and "free" in cfg.tiers
    with pytest.raises(ConfigError, match=r"max_batch \(env HEIST_MAX_BATCH\)"):
        load_config(env={"HEIST_MAX_BATCH": "zero"})
    with pytest.raises(ConfigError, match="redis_url"):
        load_config(env={"REDIS_URL": "http://nope"})
    f = tmp_path / "c.json"
    f.write_text('{"admin_token": "x"}')
    with pytest.raises(ConfigError, match="must come from the environment"):
        load_config(f, env={})
    f.write_text('{"tiers": {"free": {"rate_limit": {"requests": 0}}}, "bogus": 1}')
    with pytest.raises(ConfigError, match="bogus"):
        load_config(f, env={})
    f2 = tmp_path / "c.toml"
    f2.write_text('max_images_per_request = 4\n[tiers.gold]\noutputs = ["representation", "projection"]\n')
    assert load_config(f2, env={}).tiers["gold"].outputs == ("representation", "projection")
    from server.app import create_app
    f.write_text('{"tiers": {"x": {"defences": [{"name": "no-such-defence"}]}}}')
    with pytest.raises(ConfigError, match="unknown defence 'no-such-defence'"):
        create_app(load_config(f, env={}))
