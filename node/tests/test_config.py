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


def test_the_unpaid_http_api_is_off_unless_asked(tmp_path: Path) -> None:
    assert load_config(None, env={}).http_api is False
    assert load_config(None, env={"FABSTIR_HTTP_API": "1"}).http_api is True
    toml = tmp_path / "node.toml"
    toml.write_text("[node]\nhttp_api = true\n")
    assert load_config(toml, env={}).http_api is True
    assert load_config(toml, env={}, overrides={"http_api": False}).http_api is False
    with pytest.raises(ConfigError, match="FABSTIR_HTTP_API"):
        load_config(None, env={"FABSTIR_HTTP_API": "maybe"})


def test_token_prices_are_parsed_and_checked() -> None:
    usd = "0x" + "ab" * 20
    config = load_config(None, env={"FABSTIR_TOKEN_PRICES": f"{usd}=2000, "})
    assert config.token_price_map == {usd: 2000}
    for bad in ("0x12=5", f"{usd}", f"{usd}=cheap", f"{usd}=0"):
        with pytest.raises(ConfigError, match="token_prices"):
            load_config(None, env={"FABSTIR_TOKEN_PRICES": bad})


def test_proven_models_are_parsed_and_checked(tmp_path: Path) -> None:
    model = "0x" + "cd" * 32
    config = load_config(None, env={"FABSTIR_PROVEN_MODELS": f"{model}={tmp_path}, "})
    assert config.proven_model_map == {bytes.fromhex("cd" * 32): tmp_path}
    for bad in ("0x12=/x", model, f"{model[:-2]}zz=/x"):
        with pytest.raises(ConfigError, match="proven_models"):
            load_config(None, env={"FABSTIR_PROVEN_MODELS": bad})
    with pytest.raises(ConfigError, match="proof_price"):
        load_config(None, env={"FABSTIR_PROOF_PRICE": "0"})


def test_config_errors_carry_the_configuration_exit_code() -> None:
    from fabstir_node.errors import EXIT_CONFIG, NodeError

    with pytest.raises(ConfigError) as info:
        load_config(None, env={"FABSTIR_PORT": "eighty"})
    assert isinstance(info.value, NodeError) and info.value.exit_code == EXIT_CONFIG
