from pathlib import Path

from monitor.configdoc import SECTIONS, render

DOC = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"


def test_configuration_reference_is_current() -> None:
    assert DOC.read_text() == render(), "run: python -m monitor.configdoc > docs/configuration.md"


def test_every_setting_has_a_description() -> None:
    missing = [f"{title}.{name}" for title, model, _ in SECTIONS
               for name, field in model.model_fields.items() if not field.description]
    assert missing == []
