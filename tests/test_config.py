from pathlib import Path

import pytest

from monitor.config import ConfigError, load_config, parse_config

ROOT = Path(__file__).resolve().parent.parent


def test_shipped_feeds_toml_is_valid() -> None:
    config = load_config(ROOT / "feeds.toml", env={})
    assert len(config.feeds) >= 7
    assert all(f.url.startswith("https://") for f in config.feeds)


def test_unknown_key_and_bad_values_are_named() -> None:
    text = """
[settings]
fetch_timeout = 3
[[feeds]]
url = "ftp://example.org/rss"
[[feeds]]
url = "http://example.org:80:80/rss"
[[feeds]]
url = "http://0177.0.0.1/rss"
"""
    with pytest.raises(ConfigError) as e:
        parse_config(text, "x.toml", env={})
    msg = str(e.value)
    assert "settings.fetch_timeout: unknown key" in msg
    assert "feeds[1].url: must be an http:// or https:// URL" in msg
    assert "feeds[2].url: is not a valid URL" in msg and "feeds[3].url: is not a valid URL" in msg


def test_values_longer_than_their_database_column_are_named() -> None:
    """PostgreSQL refuses a string longer than its column (SQLite stores it): say so at load, on both."""
    text = f"""
[[feeds]]
url = "https://example.org/{'x' * 2048}"
name = "{'n' * 513}"
[[subscribers]]
email = "{'a' * 250}@example.org"
[[channels]]
name = "{'c' * 513}"
kind = "slack"
url_env = "SLACK_URL"
"""
    with pytest.raises(ConfigError) as e:
        parse_config(text, "x.toml", env={})
    msg = str(e.value)
    for field, limit in (("feeds[1].url", 2048), ("feeds[1].name", 512), ("subscribers[1].email", 254),
                         ("channels[1].name", 512)):
        assert f"{field}: String should have at most {limit} characters" in msg, msg


def test_invalid_toml_names_the_file() -> None:
    with pytest.raises(ConfigError, match="x.toml: not valid TOML"):
        parse_config("[settings\n", "x.toml", env={})


def test_missing_file_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--config FILE"):
        load_config(tmp_path / "nope.toml", env={})


def test_environment_overrides_database_and_port() -> None:
    c = parse_config("", env={"MONITOR_DATABASE_URL": "sqlite:///tmp/x.db", "MONITOR_PORT": "9999"})
    assert c.settings.database_url == "sqlite:///tmp/x.db"
    assert c.settings.port == 9999


def test_subscription_with_unknown_topic_is_rejected() -> None:
    text = """
[[subscribers]]
email = "a@example.org"
topics = ["nope"]
"""
    with pytest.raises(ConfigError, match="unknown topic"):
        parse_config(text, env={})


def test_relative_paths_follow_the_config_file_not_the_working_directory(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "conf").mkdir()
    f = tmp_path / "conf" / "feeds.toml"
    f.write_text('[settings]\ndatabase_url = "sqlite:///var/m.db"\noutbox_dir = "var/outbox"\n')
    monkeypatch.chdir(tmp_path)
    s = load_config(f, env={}).settings
    assert s.database_url == f"sqlite:///{tmp_path / 'conf' / 'var' / 'm.db'}"
    assert s.outbox_dir == str(tmp_path / "conf" / "var" / "outbox")
    # An explicit override is the user's own path, taken as given.
    assert load_config(f, env={"MONITOR_DATABASE_URL": "sqlite:///x.db"}).settings.database_url == "sqlite:///x.db"


def test_smtp_login_without_tls_is_refused() -> None:
    text = '[settings.smtp]\nhost = "smtp.example.org"\nsecurity = "none"\nusername = "u"\npassword_env = "P"\n'
    with pytest.raises(ConfigError, match="password in clear"):
        parse_config(text, env={})
