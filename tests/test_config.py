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


def test_errors_name_entries_by_their_id_and_unknown_keys_get_the_nearest_known_one() -> None:
    text = """
[settings]
fetch_timeout = 3
[settings.smtp]
host = "smtp.example.org"
prot = 25
[[feeds]]
url = "https://example.org/rss"
interval = 0
[[topics]]
id = "doha-talks"
name = "Doha talks"
description = "Qatar-mediated talks."
examples = ["Talks resume in Doha"]
[[topics]]
id = "prisoner-exchange"
name = "Prisoner exchange"
description = "Hostages and prisoners released."
examples = ["Hostages freed"]
threshold = 1.5
tresholds = 0.5
[[topics]]
id = "Bad Id"
name = "x"
description = "x"
examples = ["x"]
[[subscribers]]
email = "ana@example.org"
cadense = "daily"
"""
    with pytest.raises(ConfigError) as e:
        parse_config(text, "x.toml", env={})
    msg = str(e.value)
    assert "topics['prisoner-exchange'].threshold: Input should be less than or equal to 1" in msg
    assert "topics['prisoner-exchange'].tresholds: unknown key; did you mean 'threshold'?" in msg
    assert "topics[3].id: must be lower-case" in msg  # the id itself is wrong: its position names it
    assert "feeds['https://example.org/rss'].interval:" in msg
    assert "subscribers['ana@example.org'].cadense: unknown key; did you mean 'cadence'?" in msg
    assert "settings.fetch_timeout: unknown key; did you mean 'fetch_timeout_s'?" in msg
    assert "settings.smtp.prot: unknown key; did you mean 'port'?" in msg
    assert "topics[2]" not in msg


def test_an_unknown_key_with_no_near_match_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError) as e:
        parse_config('[[feeds]]\nurl = "https://example.org/rss"\ncolour = "red"\n', "x.toml", env={})
    assert "colour: unknown key (known keys here: url, name, interval, enabled, aggregator)" in str(e.value)
