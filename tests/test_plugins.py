"""Plugins register with the core on import: listed modules and ``poise.plugins`` entry points."""

from __future__ import annotations

import sys
import types

import pytest

import poise.plugins
from poise.scoring.judges import get_judge, judges


def test_entry_point_plugins_are_imported_once_and_register(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loads: list[str] = []

    def register() -> None:
        loads.append("loaded")
        if "from_plugin" not in judges:
            judges.add("from_plugin", judges.get("refusal"), help="a judge a plugin registered")

    class FakeEntryPoint:
        name = "fake"

        def load(self) -> object:
            register()
            return types.ModuleType("fake_plugin")

    def fake_entry_points(*, group: str) -> list[FakeEntryPoint]:
        assert group == "poise.plugins"
        return [FakeEntryPoint()]

    monkeypatch.setattr("importlib.metadata.entry_points", fake_entry_points)
    monkeypatch.setattr(poise.plugins, "_loaded", False)
    monkeypatch.setitem(judges._entries, "refusal", judges.entry("refusal"))  # restored after
    try:
        assert get_judge("from_plugin").name == "refusal"  # loading plugins registered it
        get_judge("refusal")
        assert loads == ["loaded"]  # once per process
    finally:
        judges._entries.pop("from_plugin", None)


def test_listed_plugins_are_imported_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("poise_test_plugin")
    imported: list[str] = []
    monkeypatch.setitem(sys.modules, "poise_test_plugin", module)
    monkeypatch.setattr(poise.plugins, "PLUGINS", ("poise_test_plugin", "poise_not_installed"))
    monkeypatch.setattr(poise.plugins, "_loaded", False)
    monkeypatch.setattr("importlib.metadata.entry_points", lambda *, group: [])
    real_import = poise.plugins.importlib.import_module

    def recording_import(name: str) -> types.ModuleType:
        imported.append(name)
        return real_import(name)

    monkeypatch.setattr(poise.plugins.importlib, "import_module", recording_import)
    poise.plugins.load_plugins()  # a listed plugin that is not installed is skipped
    assert imported == ["poise_test_plugin", "poise_not_installed"]
