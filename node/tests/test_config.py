from pathlib import Path

import pytest

from fabstir_node.config import ConfigError, load_config


def test_defaults_then_file_then_env_then_flags(tmp_path: Path) -> None:
    toml = tmp_path / "node.toml"
    toml.write_text('[node]\nport = 9000\nn_ctx = 1024\nprice = 7\nbootstrap = "/a, /b"\n')
    config = load_config(
        toml,
        env={"FABSTIR_N_CTX": "4096", "FABSTIR_IDLE_TIMEOUT": "1.5"},
        overrides={"price": 9, "port": None},
    )
    assert config.port == 9000  # file (the flag was not given)
    assert config.n_ctx == 4096  # env beats file
    assert config.price == 9  # flag beats everything
    assert config.idle_timeout == 1.5
    assert config.bootstrap_peers == ["/a", "/b"]
    assert config.model == "smollm2-135m-instruct"  # default


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[node]\nport = 70000\n", "port must be 0..65535"),
        ("[node]\nn_ctx = 0\n", "n_ctx must be positive"),
        ("[node]\ncolour = 'red'\n", "unknown keys"),
        ("[node\n", "not valid TOML"),
    ],
)
def test_bad_config_names_the_problem(tmp_path: Path, text: str, message: str) -> None:
    toml = tmp_path / "node.toml"
    toml.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(toml, env={})


def test_env_value_of_the_wrong_type(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="FABSTIR_PORT"):
        load_config(None, env={"FABSTIR_PORT": "eighty"})
