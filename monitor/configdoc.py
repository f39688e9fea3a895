"""The configuration reference (docs/configuration.md) is generated from the pydantic models, so a setting
cannot exist undocumented: tests/test_config_doc.py fails when the file is stale
(regenerate with `python -m monitor.configdoc > docs/configuration.md`)."""

from __future__ import annotations

from pydantic import BaseModel

from monitor.config import ChannelConfig, FeedConfig, Settings, SmtpSettings, SubscriberConfig, TopicConfig

SECTIONS: tuple[tuple[str, type[BaseModel], str], ...] = (
    ("[settings]", Settings, ""),
    ("[settings.smtp]", SmtpSettings, ""),
    ("[[feeds]]", FeedConfig, ""),
    ("[[topics]]", TopicConfig, ""),
    ("[[subscribers]]", SubscriberConfig, ""),
    ("[[channels]]", ChannelConfig, ""),
)


def _default(field) -> str:  # type: ignore[no-untyped-def]
    if field.is_required():
        return "required"
    if field.default_factory is not None:
        return "`[]`"
    if field.default is None:
        return "—"
    return f"`{field.default}`"


def render() -> str:
    out = [
        "# Configuration reference",
        "",
        "Generated from `monitor/config.py` by `python -m monitor.configdoc`; do not edit by hand.",
        "Keys ending in `_env` name an environment variable that holds a secret; the secret itself never",
        "goes in the file. `MONITOR_CONFIG` names the file, `MONITOR_DATABASE_URL` and `MONITOR_PORT`",
        "override `database_url` and `port`. Unknown keys are errors.",
    ]
    for title, model, _ in SECTIONS:
        out += ["", f"## {title}", "", "| key | default | meaning |", "|---|---|---|"]
        for name, field in model.model_fields.items():
            desc = (field.description or "").replace("|", "\\|")
            out.append(f"| `{name}` | {_default(field)} | {desc} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    import sys

    sys.stdout.write(render())
