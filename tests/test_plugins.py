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
        value = "fake_plugin"
        dist = None

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


class _EntryPoint:
    """An entry point of the ``poise.plugins`` group, as importlib.metadata lists it."""

    def __init__(self, value: str, load: object) -> None:
        self.name, self.value, self.dist, self._load = "review", value, None, load

    def load(self) -> object:
        return self._load() if callable(self._load) else self._load


def _with_plugins(monkeypatch: pytest.MonkeyPatch, *entries: _EntryPoint) -> None:
    monkeypatch.setattr("importlib.metadata.entry_points", lambda *, group: list(entries))
    monkeypatch.setattr(poise.plugins, "_loaded", False)
    monkeypatch.setattr(poise.plugins, "_failures", {})


def test_every_registry_plugins_fill_loads_them_first(monkeypatch: pytest.MonkeyPatch) -> None:
    # only the model resolver and the judges loaded plugins: a plugin's attack, merge method or
    # kind of evaluation was unknown to the CLI ("unknown attack", "unknown kind")
    from poise.attacks import attacks
    from poise.merge.methods import METHODS
    from poise.tasks import Metric, Task, kinds, register_task, unregister_task

    def register() -> None:
        attacks.add("review_attack", attacks.get("greedy"))
        METHODS.add("review_method", METHODS.get("linear"))
        register_task(Task(kind="review-kind", meaning="m", metrics=(
            Metric("review_rate", ("review-kind",), "lower", "r", "{value}"),)))  # fmt: skip

    _with_plugins(monkeypatch, _EntryPoint("review.plugin:register", lambda: register))
    try:
        assert "review_attack" in attacks.names()  # a function entry point is called
        assert "review_method" in METHODS and "review-kind" in kinds()
    finally:
        attacks._entries.pop("review_attack", None)
        METHODS._entries.pop("review_method", None)
        unregister_task("review-kind")


def test_a_plugin_that_fails_to_load_is_one_warning_and_the_rest_works(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # one broken plugin stopped every command: now it is a warning, the other plugins load, and
    # a name it would have registered is unknown with an error that names the plugin
    from poise.errors import UnknownNameError

    def broken() -> object:
        raise RuntimeError("deliberate import failure")

    def register() -> None:
        judges.add("review_judge", judges.get("refusal"), help="a judge a plugin registered")

    _with_plugins(
        monkeypatch,
        _EntryPoint("review.broken", broken),
        _EntryPoint("review.fine:register", lambda: register),
    )
    try:
        with caplog.at_level("WARNING", logger="poise.plugins"):
            judges.get("refusal")  # the built-in judges work
            assert judges.get("review_judge") is judges.get("refusal")  # so does the next plugin
            judges.get("refusal")
        [warning] = [r for r in caplog.records if r.name == "poise.plugins"]  # once
        assert warning.levelname == "WARNING"
        assert warning.getMessage().startswith(
            "plugin 'review' (review.broken) failed to load: RuntimeError: deliberate import "
            "failure; poise goes on without it"
        )
        assert "\n" not in warning.getMessage()
        with pytest.raises(UnknownNameError) as caught:
            judges.get("from_the_broken_plugin")
        assert str(caught.value).endswith(
            "; plugin 'review' (review.broken) failed to load (RuntimeError: deliberate import "
            "failure), so nothing it registers is known"
        )
        # an unknown option is no name a plugin registers: no word of it there
        with pytest.raises(UnknownNameError) as option:
            judges.check_options("refusal", {"nope": 1})
        assert "failed to load" not in str(option.value)
        assert poise.plugins.failed_plugins() == {
            "plugin 'review' (review.broken)": "RuntimeError: deliberate import failure"
        }
    finally:
        judges._entries.pop("review_judge", None)

    # an entry point naming a registered factory (it takes arguments) is imported, not called
    calls: list[str] = []

    def factory(items: object, sampling: object) -> object:
        calls.append("called")
        return items

    _with_plugins(monkeypatch, _EntryPoint("review.attack:factory", lambda: factory))
    judges.get("refusal")
    assert calls == []
    # a clash says who registered the name first
    with pytest.raises(
        ValueError, match=r"judge 'refusal' is already registered \(by poise\.scoring"
    ):
        judges.add("refusal", lambda: None)  # type: ignore[arg-type, return-value]


def test_a_wrapper_name_in_two_registries_or_under_another_kind_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from poise.decoding import strategies
    from poise.errors import PoiseError
    from poise.models import load_model
    from poise.models.wrapped import WrappedModel

    # a strategy named as the built-in guard stood in for it unseen
    monkeypatch.setitem(strategies._entries, "guarded", strategies._entries["logit_temperature"])
    with pytest.raises(PoiseError, match=r"'guarded' names a decoding strategy .*, a guard"):
        load_model("guarded(mock, monitor=organism-monitor)")
    monkeypatch.delitem(strategies._entries, "guarded")

    class Polite(WrappedModel):
        kind = "polite_v1"

    # its spec would be written polite_v1(...), which no registry knows
    with pytest.raises(ValueError, match="registered as 'polite' but its kind is 'polite_v1'"):
        strategies.add("polite", Polite)


def test_an_installed_plugin_that_fails_is_one_warning_and_commands_still_work(
    tmp_path: pytest.TempPathFactory,
) -> None:
    # a real entry point (a .dist-info folder on the path), in a fresh interpreter: a broken
    # plugin stopped every command (a 47-line traceback, then one line); now each command works
    # and says once which plugin it runs without, and a name only the plugin has names it
    import os
    import subprocess
    from pathlib import Path

    site = Path(str(tmp_path))
    (site / "broken_review_plugin.py").write_text("raise RuntimeError('deliberate failure')\n")
    info = site / "broken_review_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: broken-review-plugin\nVersion: 0.1\n"
    )
    (info / "entry_points.txt").write_text("[poise.plugins]\nbroken = broken_review_plugin\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), *sys.path]), "COLUMNS": "200"}

    def poise_cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "poise.cli", *args], capture_output=True, text=True, env=env,
            timeout=120, cwd=site,
        )  # fmt: skip

    named = "plugin 'broken' (broken_review_plugin, from broken-review-plugin) failed to load"
    assert poise_cli("--help").returncode == 0
    for command in (("judges", "ls"), ("suites", "ls")):
        listed = poise_cli(*command)
        assert listed.returncode == 0, listed.stderr
        assert "refusal" in listed.stdout or "harmful" in listed.stdout
        lines = listed.stderr.strip().splitlines()
        assert len(lines) == 1, listed.stderr  # one line, said once
        assert lines[0].startswith(f"{named}: RuntimeError: deliberate failure; poise goes on")
        assert "Traceback" not in listed.stderr
    # what needs the plugin's registrations fails with an error that names it
    audit = poise_cli("audit", "--model", "mock", "--judge", "broken_judge", "--limit", "2")
    assert audit.returncode == 2, audit.stderr
    error = audit.stderr.strip().splitlines()[-1]
    assert error.startswith("error: unknown judge 'broken_judge'")
    assert error.endswith(f"{named} (RuntimeError: deliberate failure), so nothing it registers "
                          "is known")  # fmt: skip
    assert not (site / "runs").exists()


def test_a_poise_error_a_plugin_raises_names_the_plugin(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # a plugin reading a misspelt name got "unknown attack 'greedi'": no word of the plugin
    from poise.attacks import attacks

    def register() -> None:
        attacks.get("greedi")

    _with_plugins(monkeypatch, _EntryPoint("review.plugin:register", lambda: register))
    with caplog.at_level("WARNING", logger="poise.plugins"):
        judges.get("refusal")
    [warning] = [r.getMessage() for r in caplog.records if r.name == "poise.plugins"]
    assert warning.startswith("plugin 'review' (review.plugin:register) failed to load: ")
    assert "unknown attack 'greedi'; did you mean 'greedy'?" in warning


def test_a_failed_plugin_is_imported_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # importing it again on the next read made what it had registered before failing clash with
    # itself ("attack 'review_partial' is already registered")
    from poise.attacks import attacks

    imports: list[str] = []

    def partial_import() -> object:
        imports.append("import")

        def attack(items: object, sampling: object) -> object:  # a new object per import
            return items

        attacks.add("review_partial", attack)  # type: ignore[arg-type]
        raise RuntimeError("deliberate failure after registering")

    _with_plugins(monkeypatch, _EntryPoint("review.partial", partial_import))
    try:
        with caplog.at_level("WARNING", logger="poise.plugins"):
            for _ in range(2):
                judges.get("refusal")
                assert "greedy" in attacks
        assert imports == ["import"]
        warnings = [r.getMessage() for r in caplog.records if r.name == "poise.plugins"]
        assert len(warnings) == 1 and "RuntimeError: deliberate failure after" in warnings[0]
    finally:
        attacks._entries.pop("review_partial", None)


def test_a_plugin_that_calls_sys_exit_as_it_is_imported_is_one_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # SystemExit is no Exception: a plugin that parsed arguments at import (argparse exits)
    # ended every command at its first registry read, silently, with the plugin's exit status
    import sys

    def exits() -> object:
        sys.exit(2)

    _with_plugins(monkeypatch, _EntryPoint("review.cli", exits))
    with caplog.at_level("WARNING", logger="poise.plugins"):
        assert judges.get("refusal") is not None  # the command goes on
    [warning] = [r.getMessage() for r in caplog.records if r.name == "poise.plugins"]
    assert warning.startswith("plugin 'review' (review.cli) failed to load: SystemExit: 2;")
    assert poise.plugins.failed_plugins() == {"plugin 'review' (review.cli)": "SystemExit: 2"}


def test_a_plugin_backend_prefix_is_known_to_load_model_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the backends registry did not load plugins: load_model("PREFIX:x") read it before any
    # other registry and said "unknown model 'PREFIX:x'; did you mean 'PREFIX:...'?"
    from poise.models import load_model
    from poise.models.mock import MockModel
    from poise.models.resolve import backends

    def backend(spec: str, **options: object) -> MockModel:
        model = MockModel(name=spec)
        model.spec = spec
        return model

    def register() -> None:
        backends.add("review_back", backend, help="a backend a plugin registered")

    _with_plugins(monkeypatch, _EntryPoint("review.backend:register", lambda: register))
    try:
        assert load_model("review_back:x").name == "review_back:x"
    finally:
        backends._entries.pop("review_back", None)


def test_an_entry_point_function_that_takes_arguments_and_is_registered_nowhere_is_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # "pkg.plugin:register" with register(registry) was neither called nor named: the plugin
    # registered nothing, without a word, and its names were just "unknown"
    from poise.attacks import attacks

    calls: list[object] = []

    def register(registry: object) -> None:
        calls.append(registry)

    def attack(items: object, sampling: object, system: object) -> object:
        return items

    attacks.add("review_named", attack)  # type: ignore[arg-type]
    try:
        _with_plugins(
            monkeypatch,
            _EntryPoint("review.plugin:register", lambda: register),
            _EntryPoint("review.attack:attack", lambda: attack),  # a registered factory: quiet
        )
        with caplog.at_level("WARNING", logger="poise.plugins"):
            assert "greedy" in attacks  # the command goes on
        assert calls == []
        [warning] = [r.getMessage() for r in caplog.records if r.name == "poise.plugins"]
        assert warning.startswith(
            "plugin 'review' (review.plugin:register) names "
            "test_an_entry_point_function_that_takes_arguments_and_is_registered_nowhere_is_a_"
            "warning.<locals>.register, which takes arguments (registry) and is registered "
            "nowhere: it was not called"
        )
        assert poise.plugins.failed_plugins() == {}  # what its module registered stays known
    finally:
        attacks._entries.pop("review_named", None)


def test_a_listed_plugin_missing_one_of_its_imports_is_a_failure_not_absent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A listed plugin that is not installed is skipped without a word; one that is installed
    but imports a package that is not, or calls sys.exit() as it is imported, failed to load."""

    def imports(name: str) -> types.ModuleType:
        if name == "poise_needs_a_dep":
            raise ModuleNotFoundError("No module named 'missing_dep'", name="missing_dep")
        if name == "poise_exits":
            raise SystemExit(3)
        raise ModuleNotFoundError(f"No module named {name!r}", name=name)

    plugins = ("poise_needs_a_dep", "poise_not_installed", "poise_exits")
    monkeypatch.setattr(poise.plugins, "PLUGINS", plugins)
    _with_plugins(monkeypatch)
    monkeypatch.setattr(poise.plugins.importlib, "import_module", imports)
    poise.plugins.load_plugins()
    assert poise.plugins.failed_plugins() == {
        "plugin 'poise_needs_a_dep'": "ModuleNotFoundError: No module named 'missing_dep'",
        "plugin 'poise_exits'": "SystemExit: 3",
    }


def test_an_entry_point_register_taking_only_star_args_is_called(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[object, ...]] = []

    def register(*names: object, **options: object) -> None:
        calls.append(names)

    _with_plugins(monkeypatch, _EntryPoint("review.plugin:register", lambda: register))
    poise.plugins.load_plugins()
    assert calls == [()]
    assert poise.plugins.failed_plugins() == {}


def test_a_plugin_may_read_a_registry_while_it_registers(monkeypatch: pytest.MonkeyPatch) -> None:
    """It sees what is there so far; the plugins are not loaded again from inside it."""
    loads: list[str] = []

    def register() -> None:
        loads.append("load")
        judges.add("review_reader", judges.get("refusal"), help="registered after a read")

    _with_plugins(monkeypatch, _EntryPoint("review.reader:register", lambda: register))
    try:
        assert judges.get("review_reader") is judges.get("refusal")
        assert loads == ["load"]
        assert poise.plugins.failed_plugins() == {}
    finally:
        judges._entries.pop("review_reader", None)


def test_what_failed_plugins_returns_is_a_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    from poise.errors import UnknownNameError

    def broken() -> object:
        raise RuntimeError("deliberate")

    _with_plugins(monkeypatch, _EntryPoint("review.broken", broken))
    poise.plugins.load_plugins()
    poise.plugins.failed_plugins().clear()  # a caller's change
    with pytest.raises(UnknownNameError) as caught:
        judges.get("from_the_broken_plugin")
    assert "plugin 'review' (review.broken) failed to load (RuntimeError: deliberate)" in str(
        caught.value
    )


def test_a_plugin_s_own_poise_error_is_told_as_its_message_alone(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # a PoiseError is a sentence for the user; its class name is noise ("UnknownNameError: ...")
    from poise.errors import PoiseError

    def register() -> None:
        raise PoiseError("review.toml: unknown key 'temprature'")

    _with_plugins(monkeypatch, _EntryPoint("review.plugin:register", lambda: register))
    with caplog.at_level("WARNING", logger="poise.plugins"):
        judges.get("refusal")
    [warning] = [r.getMessage() for r in caplog.records if r.name == "poise.plugins"]
    assert warning.startswith(
        "plugin 'review' (review.plugin:register) failed to load: review.toml: unknown key "
        "'temprature'; poise goes on without it"
    )
    assert poise.plugins.failed_plugins() == {
        "plugin 'review' (review.plugin:register)": "review.toml: unknown key 'temprature'"
    }
