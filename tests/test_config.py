"""Settings: env, TOML, aliases, precedence, masked output and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bot.config import SettingsError, load_settings, masked


def test_defaults_match_the_contract() -> None:
    s = load_settings()
    assert s.lm.model == "local"
    assert (s.lm.timeout_s, s.lm.max_tokens, s.lm.temperature) == (60, 1024, 0.2)
    assert (s.breaker.failure_threshold, s.breaker.reset_timeout_s, s.breaker.success_threshold) == (5, 30, 1)
    assert (s.agent.max_iters, s.agent.mode) == (6, "react")
    assert s.db.path == Path("data/parley.db")
    assert (s.http.host, s.http.port) == ("127.0.0.1", 8080)
    assert s.slack.api_url == "https://slack.com/api/"
    assert s.platforms == []


def test_nested_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARLEY_LM__MODEL", "openai/gpt-4o-mini")
    monkeypatch.setenv("PARLEY_LM__TIMEOUT_S", "12.5")
    monkeypatch.setenv("PARLEY_AGENT__MODE", "vote")
    s = load_settings()
    assert (s.lm.model, s.lm.timeout_s, s.agent.mode) == ("openai/gpt-4o-mini", 12.5, "vote")


def test_toml_in_working_directory_and_explicit_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    Path("parley.toml").write_text('[lm]\nmodel = "ollama_chat/llama3.2"\n[db]\npath = "x.db"\n')
    assert load_settings().lm.model == "ollama_chat/llama3.2"
    other = tmp_path / "other.toml"
    other.write_text('[lm]\nmodel = "anthropic/claude"\n')
    monkeypatch.setenv("PARLEY_CONFIG", str(other))
    s = load_settings()
    assert s.lm.model == "anthropic/claude"
    assert s.db.path == Path("data/parley.db")  # the cwd file is not read when PARLEY_CONFIG names another


def test_precedence_env_over_alias_over_file(monkeypatch: pytest.MonkeyPatch) -> None:
    Path("parley.toml").write_text('[slack]\nbot_token = "xoxb-from-file"\nsigning_secret = "file-secret"\n')
    assert load_settings().slack.bot_token.get_secret_value() == "xoxb-from-file"  # type: ignore[union-attr]
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-from-alias")
    s = load_settings()
    assert s.slack.bot_token.get_secret_value() == "xoxb-from-alias"  # type: ignore[union-attr]
    assert s.slack.signing_secret.get_secret_value() == "file-secret"  # type: ignore[union-attr]
    monkeypatch.setenv("PARLEY_SLACK__BOT_TOKEN", "xoxb-from-env")
    assert load_settings().slack.bot_token.get_secret_value() == "xoxb-from-env"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("alias", "section", "field"),
    [
        ("SLACK_BOT_TOKEN", "slack", "bot_token"),
        ("SLACK_SIGNING_SECRET", "slack", "signing_secret"),
        ("SLACK_APP_TOKEN", "slack", "app_token"),
        ("DISCORD_BOT_TOKEN", "discord", "token"),
        ("SENTRY_DSN", "sentry", "dsn"),
    ],
)
def test_conventional_aliases(monkeypatch: pytest.MonkeyPatch, alias: str, section: str, field: str) -> None:
    prefix = {"SLACK_BOT_TOKEN": "xoxb-", "SLACK_APP_TOKEN": "xapp-"}.get(alias, "")
    monkeypatch.setenv(alias, prefix + "secret-value-123")
    if alias == "SLACK_BOT_TOKEN":
        monkeypatch.setenv("SLACK_SIGNING_SECRET", "signing")
    value = getattr(getattr(load_settings(), section), field)
    assert value.get_secret_value() == prefix + "secret-value-123"


@pytest.mark.parametrize(
    ("env", "field", "message"),
    [
        ({"SLACK_BOT_TOKEN": "xoxp-user-token", "SLACK_SIGNING_SECRET": "s"}, "PARLEY_SLACK__BOT_TOKEN", "xoxb-"),
        ({"SLACK_BOT_TOKEN": "xoxb-1", "SLACK_APP_TOKEN": "xoxb-2"}, "PARLEY_SLACK__APP_TOKEN", "xapp-"),
        ({"SLACK_BOT_TOKEN": "xoxb-1"}, "PARLEY_SLACK", "needs PARLEY_SLACK__SIGNING_SECRET"),
        ({"PARLEY_SLACK__COMMAND": "parley"}, "PARLEY_SLACK__COMMAND", "pattern"),
    ],
)
def test_slack_settings_that_cannot_work_stop_start_up(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], field: str, message: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as error:
        load_settings()
    assert field in str(error.value) and message in str(error.value)


def test_masked_output_hides_every_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-very-secret")
    monkeypatch.setenv("SLACK_SIGNING_SECRET", "signing-very-secret")
    monkeypatch.setenv("PARLEY_LM__API_KEY", "sk-very-secret")
    monkeypatch.setenv("DISCORD_BOT_TOKEN", "discord-very-secret")
    text = json.dumps(masked(load_settings()))
    assert "very-secret" not in text
    assert masked(load_settings())["slack"]["bot_token"] == "**********"
    assert load_settings().platforms == ["slack", "discord"]


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("PARLEY_LM__TIMEOUT_S", "-1", "PARLEY_LM__TIMEOUT_S"),
        ("PARLEY_LM__TEMPERATURE", "hot", "PARLEY_LM__TEMPERATURE"),
        ("PARLEY_AGENT__MODE", "chaos", "PARLEY_AGENT__MODE"),
        ("PARLEY_HTTP__PORT", "70000", "PARLEY_HTTP__PORT"),
    ],
)
def test_invalid_env_is_one_line_naming_the_field(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as err:
        load_settings()
    assert expected in str(err.value)
    assert "\n" not in str(err.value)


def test_invalid_file_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    Path("parley.toml").write_text("[lm]\nmodle = 'typo'\n")
    with pytest.raises(SettingsError, match="PARLEY_LM__MODLE"):
        load_settings()
    Path("parley.toml").write_text("[lm\nmodel=")
    with pytest.raises(SettingsError, match=r"parley\.toml"):
        load_settings()
    monkeypatch.setenv("PARLEY_CONFIG", "missing.toml")
    with pytest.raises(SettingsError, match="PARLEY_CONFIG"):
        load_settings()


def test_cli_stops_with_exit_2_and_one_line(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PARLEY_LM__TIMEOUT_S": "-1"}
    proc = subprocess.run(
        [sys.executable, "-m", "bot", "chat"], env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "PARLEY_LM__TIMEOUT_S" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_approvals_and_dispatch_settings_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    from bot.config import load_settings

    monkeypatch.setenv("PARLEY_APPROVALS__APPROVERS", '{"slack": ["U1", "U2"]}')
    monkeypatch.setenv("PARLEY_APPROVALS__EXPIRY_S", "60")
    monkeypatch.setenv("PARLEY_DISPATCH__RATE_LIMIT", "off")
    settings = load_settings()
    assert settings.approvals.approvers == {"slack": ["U1", "U2"]} and settings.approvals.expiry_s == 60
    assert settings.dispatch.rate_limit is None


def test_an_unparseable_rate_limit_stops_start_up_naming_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    from bot.config import SettingsError, load_settings

    monkeypatch.setenv("PARLEY_DISPATCH__RATE_LIMIT", "ten a minute")
    with pytest.raises(SettingsError, match=r"PARLEY_DISPATCH__RATE_LIMIT .*is not a rate such as 10/minute"):
        load_settings()


def test_discord_shards_come_from_env_as_a_comma_list_or_from_toml(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from bot.config import load_settings

    monkeypatch.setenv("PARLEY_DISCORD__SHARD_COUNT", "4")
    monkeypatch.setenv("PARLEY_DISCORD__SHARD_IDS", "2, 3")
    assert (load_settings().discord.shard_count, load_settings().discord.shard_ids) == (4, [2, 3])
    monkeypatch.delenv("PARLEY_DISCORD__SHARD_IDS")
    (tmp_path / "parley.toml").write_text("[discord]\nshard_ids = [0]\n")
    assert load_settings().discord.shard_ids == [0]
    (tmp_path / "parley.toml").unlink()
    assert load_settings().discord.shard_ids is None  # every shard in this process


@pytest.mark.parametrize(
    ("count", "ids", "problem"),
    [
        ("2", "0,2", r"PARLEY_DISCORD__SHARD_IDS .*shard 2 does not exist: shard_count 2 has ids 0 to 1"),
        ("2", "1,1", r"PARLEY_DISCORD__SHARD_IDS .*lists a shard twice"),
        ("2", "one", r"PARLEY_DISCORD__SHARD_IDS .*'one' is not a list of shard ids such as 0,1"),
        (None, "0", r"PARLEY_DISCORD__SHARD_IDS .*needs PARLEY_DISCORD__SHARD_COUNT"),
        ("0", None, r"PARLEY_DISCORD__SHARD_COUNT .*greater than or equal to 1"),
    ],
)
def test_inconsistent_discord_shards_stop_start_up_naming_the_field(
    monkeypatch: pytest.MonkeyPatch, count: str | None, ids: str | None, problem: str
) -> None:
    from bot.config import SettingsError, load_settings

    for name, value in (("PARLEY_DISCORD__SHARD_COUNT", count), ("PARLEY_DISCORD__SHARD_IDS", ids)):
        if value is not None:
            monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=problem) as error:
        load_settings()
    assert "\n" not in str(error.value)
