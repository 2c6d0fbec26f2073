"""``poise models ls``: what a model spec can name."""

from __future__ import annotations

from typer.testing import CliRunner

from poise.cli import app


def test_ls_lists_every_backend_strategy_and_guard_with_what_it_does() -> None:
    # strategies and guards were listed nowhere: a plugin strategy showed up only in the
    # "known:" list of an unknown-name error
    from poise.decoding import strategies
    from poise.guards import guards
    from poise.models.resolve import backends

    result = CliRunner().invoke(app, ["models", "ls"], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    for registry, form in ((backends, "{}:..."), (strategies, "{}(MODEL, ...)"), (guards, "{}(MODEL, ...)")):  # fmt: skip
        for name in registry:
            row = next(line for line in result.output.splitlines() if f" {name} " in line)
            assert form.format(name) in row and registry.help(name)[:40] in row
            reference = registry.reference(name)
            assert reference is None or reference in row


def test_ls_prints_a_help_with_brackets_as_written(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # a plugin's help is text, not rich markup: "[/x]" raised MarkupError, "[ref]" vanished
    from poise.decoding import strategies

    text = "see [/x] and [ref]"
    monkeypatch.setattr(strategies, "help", lambda name: text)
    result = CliRunner().invoke(app, ["models", "ls"], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    assert text in result.output
