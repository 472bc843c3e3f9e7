"""The README's settings reference is generated from the settings model: it must list every setting as it is."""

from __future__ import annotations

from bot import settings_doc
from bot.config import Settings


def test_the_readme_settings_reference_is_current() -> None:
    readme = settings_doc.README.read_text()
    assert settings_doc.current(readme) == settings_doc.table(), "run `python -m bot.settings_doc` and commit README.md"


def test_every_setting_is_in_the_reference_with_a_meaning() -> None:
    rows = settings_doc.rows()
    assert all(not row.rstrip().endswith("|  |") for row in rows), "a setting has no description"
    text = "\n".join(rows)
    for section, field in Settings.model_fields.items():
        model = field.annotation
        if section in ("tools", "schedules", "models", "channels"):
            continue
        assert isinstance(model, type)
        for name in model.model_fields:  # type: ignore[attr-defined]
            assert f"`PARLEY_{section.upper()}__{name.upper()}`" in text
    assert "`[[schedules]] cron`" in text and "`PARLEY_TOOLS__READ_FILE__ROOT`" in text
    assert "`PARLEY_MODELS__<NAME>__MODEL`" in text and '`[channels."KEY"] tools`' in text


def test_a_changed_model_makes_the_reference_stale() -> None:
    readme = settings_doc.README.read_text()
    stale = readme.replace("`PARLEY_LOG__LEVEL`", "`PARLEY_LOG__LEVELS`")
    assert settings_doc.current(stale) != settings_doc.table()
    assert settings_doc.current(settings_doc.rewrite(stale)) == settings_doc.table()
