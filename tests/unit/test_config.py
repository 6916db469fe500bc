"""Configuration: sources in order, and errors that name key, value, source and expectation."""

from __future__ import annotations

from pathlib import Path

import pytest

from jarvis_kernel.config import load_config
from jarvis_kernel.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "swarm.toml"
    path.write_text(text)
    return path


def test_defaults_mean_in_memory_bus() -> None:
    config = load_config(env={})
    assert config.bus.redis_url is None
    assert config.market.window_s == 0.5 and config.liveness.dead_after_s == 3.0


def test_file_then_env_then_overrides(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[bus]
namespace = "from-file"
[market]
window_s = 0.2
max_rounds = 5
[[workers]]
id = "w1"
model = "gemini:pro"
expertise = { react = 0.9 }
""",
    )
    env = {"JARVIS_MARKET_WINDOW_S": "0.3", "JARVIS_REDIS_URL": "redis://localhost:1/0"}
    config = load_config(path, env=env, overrides={"bus.namespace": "from-cli"})
    assert config.market.window_s == 0.3 and config.market.max_rounds == 5
    assert config.bus.redis_url == "redis://localhost:1/0" and config.bus.namespace == "from-cli"
    assert config.workers[0].expertise == {"react": 0.9}


@pytest.mark.parametrize(
    ("toml", "env", "needles"),
    [
        ("[market]\nwindow_s = -1\n", {}, ["market.window_s = -1", "> 0.0", "swarm.toml"]),
        ("[market]\nwindow_s = 'soon'\n", {}, ["market.window_s = 'soon'", "Expected `float`"]),
        ("[market]\nwindw_s = 1\n", {}, ["market.windw_s", "unknown setting"]),
        (
            "",
            {"JARVIS_MARKET_MAX_ROUNDS": "many"},
            ["market.max_rounds = 'many'", "JARVIS_MARKET_MAX_ROUNDS"],
        ),
        ("", {"JARVIS_BOGUS_THING": "1"}, ["JARVIS_BOGUS_THING", "section"]),
        ("", {"JARVIS_NAMESPACE": "a b"}, ["bus.namespace = 'a b'", "JARVIS_NAMESPACE"]),
        ("[[workers]]\nid = 'w 1'\n", {}, ["workers[0].id", "'w 1'"]),
        (
            "[[workers]]\nid = 'w'\nruntime = 'kubernetes'\n",
            {},
            ["workers[0].runtime", "'kubernetes'"],
        ),
        ("[[workers]]\nid = 'w'\n[[workers]]\nid = 'w'\n", {}, ["duplicate worker id 'w'"]),
        ("[liveness]\nheartbeat_s = 5\ndead_after_s = 3\n", {}, ["dead_after_s", "heartbeat_s"]),
        ("[market\n", {}, ["cannot read config file"]),
    ],
)
def test_wrong_values_fail_clearly(
    tmp_path: Path, toml: str, env: dict[str, str], needles: list[str]
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, toml), env=env)
    message = str(caught.value)
    for needle in needles:
        assert needle in message, message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml", env={})


def test_test_only_variables_are_not_settings() -> None:
    env = {"JARVIS_REQUIRE_REDIS": "1", "JARVIS_TEST_REDIS_URL": "redis://x"}
    assert load_config(env=env).bus.redis_url is None


def test_base_is_overridden_key_by_key(tmp_path: Path) -> None:
    from jarvis_kernel.config import Config, MarketConfig

    base = Config(market=MarketConfig(window_s=0.25, max_rounds=7))
    path = write(tmp_path, "[market]\nwindow_s = 0.1\n")
    config = load_config(path, env={"JARVIS_MARKET_EARLY_CLOSE": "false"}, base=base)
    assert config.market.window_s == 0.1  # from the file
    assert config.market.max_rounds == 7  # kept from the base
    assert config.market.early_close is False  # from the environment
