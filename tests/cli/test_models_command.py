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

    result = CliRunner().invoke(app, ["models", "ls"], env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    for registry, form in ((backends, "{}:..."), (strategies, "{}(MODEL, "), (guards, "{}(MODEL, ")):  # fmt: skip
        for name in registry:
            row = next(line for line in result.output.splitlines() if f" {name} " in line)
            assert form.format(name) in row and registry.help(name)[:40] in row
            reference = registry.reference(name)
            assert reference is None or reference in row


def test_ls_gives_each_wrappers_options_with_their_defaults() -> None:
    # the spec column said NAME(MODEL, ...): what eft or guarded take was in the docs only
    # (poise.registry.spec_form)
    result = CliRunner().invoke(app, ["models", "ls"], env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    rows = {line.split("│")[1].strip(): line for line in result.output.splitlines() if "│" in line}
    assert (
        "best_of_n(MODEL, n=4, reward=…, cost=…, lam=…, calibrate=false, transform=none, t=…, "
        "worst=false)" in rows["best_of_n"]
    )
    # model options, numbered copies
    assert (
        "eft(MODEL, tuned=MODEL, reference=MODEL, beta=1.0, speculative=0, draft=MODEL, "
        in (rows["eft"])
    )
    assert "tuned_N=…, beta_N=…)" in rows["eft"]
    # a default that is no bare word is quoted; a required option has no default
    assert "refusal=\"I'm sorry, I can't continue with this answer.\")" in rows["guarded"]
    assert "steer(MODEL, direction=…, layer=-1, strength=1.0, mode=add, use=means)" in rows["steer"]


def test_ls_prints_a_help_with_brackets_as_written(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # a plugin's help is text, not rich markup: "[/x]" raised MarkupError, "[ref]" vanished
    from poise.decoding import strategies

    text = "see [/x] and [ref]"
    monkeypatch.setattr(strategies, "help", lambda name: text)
    result = CliRunner().invoke(app, ["models", "ls"], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    assert text in result.output
