"""`--config FILE.yaml` on every command: every flag is a key, flags override the file, and the
resolved config is what run.json records (issue 10, item 12)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from typer.testing import CliRunner, Result

from poise.cli import app

REFUSE = "I'm sorry, but I can't help with that."


def invoke(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def one_line(result: Result) -> str:
    """The output of a command refused with exit code 2 and one line, no traceback."""
    assert result.exit_code == 2, result.output
    line = result.output.strip()
    assert len(line.splitlines()) == 1 and "Traceback" not in line, result.output
    return line


def only_run(out: Path) -> dict:
    (run,) = [p for p in out.iterdir() if (p / "run.json").is_file()]
    return json.loads((run / "run.json").read_text())


def test_every_command_takes_config() -> None:
    root = typer.main.get_command(app)
    missing = []

    def walk(command: Any, path: str) -> None:
        if getattr(command, "commands", None) is not None:  # a group
            assert not any("--config" in p.opts for p in command.params), path
            for name, sub in command.commands.items():
                walk(sub, f"{path} {name}")
            return
        if not any("--config" in p.opts for p in command.params):
            missing.append(path)

    walk(root, "poise")
    assert not missing, missing


def test_audit_reads_its_fields_from_the_file_and_run_json_records_them(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    config = tmp_path / "audit.yaml"
    config.write_text(
        f"model: mock\n"
        f"suites: [harmful, benign]\n"
        f"limit: 2\n"
        f"sampling: {{temperature: 1.0, n: 2, max_new_tokens: 16}}\n"
        f"model_options: {{default: {json.dumps(REFUSE)}}}\n"
        f"out: {out}\n"
        f"html: false\n"
    )
    result = invoke("audit", "--config", str(config))
    assert result.exit_code == 0, result.output
    recorded = only_run(out)["config"]
    assert recorded["model"] == "mock"
    assert recorded["suites"] == ["harmful", "benign"]
    assert recorded["limit"] == 2
    assert recorded["sampling"]["temperature"] == 1.0 and recorded["sampling"]["n"] == 2
    assert recorded["sampling"]["max_new_tokens"] == 16
    assert recorded["model_options"] == {"default": REFUSE}
    assert recorded["html"] is False


def test_a_run_json_config_block_is_a_config_file(tmp_path: Path) -> None:
    # the module's promise; a block holding judge_options was "unknown key 'judge_options'"
    import yaml

    out = tmp_path / "runs"
    first = invoke("audit", "-m", "mock", "-s", "harmful", "--limit", "2", "--out", str(out))
    assert first.exit_code == 0, first.output
    block = only_run(out)["config"]
    block["judge_options"] = {}
    config = tmp_path / "again.yaml"
    config.write_text(yaml.safe_dump({**block, "out": str(tmp_path / "again")}))
    again = invoke("audit", "--config", str(config))
    assert again.exit_code == 0, again.output


def test_flags_override_the_file(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    config = tmp_path / "audit.yaml"
    config.write_text(f"model: mock\nsuite: [harmful]\nlimit: 2\ntemperature: 0.5\nout: {out}\n")
    result = invoke("audit", "--config", str(config), "--limit", "3", "--no-html")
    assert result.exit_code == 0, result.output
    recorded = only_run(out)["config"]
    assert recorded["limit"] == 3  # the flag
    assert recorded["sampling"]["temperature"] == 0.5  # the file, by its flag name
    assert recorded["suites"] == ["harmful"]


def test_an_unknown_key_is_one_line_naming_the_file_and_key(tmp_path: Path) -> None:
    config = tmp_path / "audit.yaml"
    config.write_text("model: mock\ntemprature: 0.5\n")
    result = invoke("audit", "--config", str(config))
    assert result.exit_code == 2
    assert str(config) in result.output and "temprature" in result.output
    assert "temperature" in result.output  # the nearest key
    assert len(result.output.strip().splitlines()) == 1, result.output


def test_a_value_of_the_wrong_type_is_blamed_on_the_file_not_on_a_flag(tmp_path: Path) -> None:
    # typer's own message named '--temperature', a flag the user never typed
    config = tmp_path / "audit.yaml"
    config.write_text("model: mock\nsampling: {temperature: hot}\n")
    line = one_line(invoke("audit", "--config", str(config)))
    # and on its line, as a value out of range is (it was the file alone)
    assert f"{config}:2: sampling.temperature: " in line and "valid number" in line
    assert "--temperature" not in line
    train = tmp_path / "train.yaml"
    train.write_text("# a comment\nepochs: many\n")
    result = invoke("train", "dpo", "--config", str(train))
    assert result.exit_code == 2 and f"{train}:2: epochs: " in result.output


def test_a_broken_file_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("model: [mock\n")
    result = invoke("runs", "ls", "--config", str(config))
    assert result.exit_code == 2
    assert str(config) in result.output and "invalid YAML" in result.output
    result = invoke("runs", "ls", "--config", str(tmp_path / "none.yaml"))
    assert result.exit_code == 2 and "no such file" in result.output


def test_other_commands_read_the_file_too(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    invoke("audit", "--model", "mock", "--suite", "harmful", "--limit", "2", "--out", str(out))
    config = tmp_path / "runs.yaml"
    config.write_text(f"out: {out}\n")
    result = invoke("runs", "ls", "--config", str(config))
    assert result.exit_code == 0, result.output
    assert "mock" in result.output


def test_gate_reads_its_fields_from_the_file(tmp_path: Path) -> None:
    config = tmp_path / "gate.yaml"
    config.write_text(
        f"model: mock\njudge: refusal\nlimit: 6\nmodel_options: {{default: {json.dumps(REFUSE)}}}\n"
        f"output: {tmp_path / 'gate.json'}\n"
    )
    result = invoke("gate", "--config", str(config))
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "gate.json").read_text())["n"] == 6
    failed = invoke("gate", "--config", str(config), "--model-option", "default=Sure, here is how.")
    assert failed.exit_code == 1, failed.output


def test_a_value_the_command_refuses_names_the_file_and_key_it_came_from(tmp_path: Path) -> None:
    # was "gate config: delta: Input should be less than 1": the file's value, blamed on nothing
    gate = tmp_path / "gate.yaml"
    gate.write_text("model: mock\ndelta: 2\n")
    line = one_line(invoke("gate", "--config", str(gate)))
    assert "delta" in line and f"from {gate}:2, key 'delta'" in line
    audit = tmp_path / "audit.yaml"
    audit.write_text("model: mock\nlimit: 0\nsampling:\n  top_p: 0\n")
    result = invoke("audit", "--config", str(audit), "--top-p", "0.5")
    assert result.exit_code == 2 and f"from {audit}:2, key 'limit'" in result.output
    result = invoke("audit", "--config", str(audit), "--limit", "1")  # the nested block's key
    assert result.exit_code == 2 and f"from {audit}:4, key 'sampling.top_p'" in result.output


def test_a_refused_flag_typed_on_the_command_line_is_not_blamed_on_the_file(
    tmp_path: Path,
) -> None:
    gate = tmp_path / "gate.yaml"
    gate.write_text("model: mock\ndelta: 2\n")
    result = invoke("gate", "--config", str(gate), "--delta", "3")
    assert result.exit_code == 2 and "delta" in result.output
    assert str(gate) not in result.output, result.output
    audit = tmp_path / "audit.yaml"
    audit.write_text("model: mock\nlimit: 0\n")
    result = invoke("audit", "--config", str(audit), "--limit", "-1")
    assert result.exit_code == 2 and "limit" in result.output
    assert str(audit) not in result.output, result.output


def one_line_error(tmp_path: Path, text: str, *args: str) -> str:
    config = tmp_path / "c.yaml"
    config.write_text(text)
    line = one_line(invoke(*(args or ("audit",)), "--config", str(config)))
    assert line.startswith(f"error: {config}"), line
    return line


def test_a_nested_block_that_is_not_a_mapping_is_named_as_such(tmp_path: Path) -> None:
    # was "unknown key 'sampling'", a key the command does take
    for value in ("null", "5", "[1, 2]"):
        line = one_line_error(tmp_path, f"model: mock\nsampling: {value}\n")
        assert "sampling: expected a mapping" in line and "unknown key" not in line


def test_a_mapping_for_a_single_valued_flag_is_one_line(tmp_path: Path) -> None:
    # was an AttributeError traceback ('TyperOption' object has no attribute 'type')
    line = one_line_error(tmp_path, "model: {name: mock}\n")
    assert "model: expected a single value, got a mapping" in line


def test_a_list_for_a_single_valued_flag_or_nested_in_a_repeatable_one_is_one_line(
    tmp_path: Path,
) -> None:
    """A list for a flag of one value was joined with commas and run (``name: [a, b]`` named
    the run "a,b", ``temperature: [0.5]`` ran at 0.5); a list inside a repeatable flag's list
    reached it as its str() ("unknown suite \"['harmful']\"", no line)."""
    for text, key in (
        ("model: mock\nname: [a, b]\n", "name"),
        ("model: mock\nsampling: {temperature: [0.5]}\n", "sampling.temperature"),
        ("model: [mock, other]\n", "model"),
    ):
        line = one_line_error(tmp_path, text)
        assert f"{key}: expected a single value, got a list" in line, line
        assert ":2:" in line or ":1:" in line
    line = one_line_error(tmp_path, "model: mock\nsuites: [[harmful]]\n")
    assert "suites: expected a list of single values, got a list ['harmful']" in line


def test_null_for_a_flag_with_a_default_is_refused_not_taken_as_the_default(
    tmp_path: Path,
) -> None:
    # `model: null` audited the organism, `temperature: null` decoded greedily, silently
    line = one_line_error(tmp_path, "model: null\n")
    assert "model: null" in line and "'organism'" in line
    line = one_line_error(tmp_path, "model: mock\ntemperature: null\n")
    assert "temperature: null" in line
    line = one_line_error(tmp_path, "model: mock\nsuite: [harmful, null]\n")
    assert "suite: null" in line
    # null stays the value of a flag whose default is none (a run.json block holds such keys)
    out = tmp_path / "runs"
    config = tmp_path / "ok.yaml"
    config.write_text(f"model: mock\nsuite: harmful\nlimit: 2\nname: null\nout: {out}\n")
    result = invoke("audit", "--config", str(config), "--no-html")
    assert result.exit_code == 0, result.output
    assert only_run(out)["config"]["limit"] == 2


def test_a_yaml_boolean_for_a_flag_that_is_no_switch_is_refused(tmp_path: Path) -> None:
    # `name: yes` named the run "True"; `n: true` sampled 1 completion
    line = one_line_error(tmp_path, "model: mock\nname: yes\n")
    assert "name: true is not a value" in line and "quote" in line
    line = one_line_error(tmp_path, "model: mock\nn: true\n")
    assert "n: true is not a value" in line
    line = one_line_error(tmp_path, "model: mock\nstop: [off]\n")
    assert "stop: false is not a value" in line


def test_a_key_given_twice_is_one_line_naming_its_line(tmp_path: Path) -> None:
    # the second value won silently
    line = one_line_error(tmp_path, "model: mock\nout: a\nout: b\n", "runs", "ls")
    assert ":3:" in line and "'out' is given twice" in line
    line = one_line_error(tmp_path, "sampling:\n  n: 2\n  n: 3\n")
    assert ":3:" in line and "'n' is given twice" in line


def test_a_file_that_is_not_a_mapping_says_what_it_is(tmp_path: Path) -> None:
    line = one_line_error(tmp_path, "- model: mock\n- limit: 2\n", "runs", "ls")
    assert "expected a mapping" in line and "got a list" in line
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing yet\n")
    result = invoke("runs", "ls", "--config", str(empty), "--out", str(tmp_path / "none"))
    assert result.exit_code == 0, result.output


def test_a_train_value_refused_after_the_file_names_the_file(tmp_path: Path) -> None:
    """poise train named the flag (`lr (--lr)`) of a value the user gave in the file only."""
    config = tmp_path / "dpo.yaml"
    config.write_text(f"model: organism-small\ndata: x.jsonl\noutput: {tmp_path / 'o'}\nlr: -1\n")
    result = invoke("train", "dpo", "--config", str(config))
    assert result.exit_code == 2, result.output
    text = result.output.replace("\n", "")
    assert "lr (--lr): Input should be greater than 0, got -1.0" in text
    assert f"from {config}:4, key 'lr'" in text
    result = invoke("train", "dpo", "--config", str(config), "--lr", "-2")  # typed: the flag's
    assert result.exit_code == 2 and "from " not in result.output


def test_a_key_of_another_flag_inside_the_sampling_block_is_refused(tmp_path: Path) -> None:
    # `sampling: {limit: 3}` audited 3 items a suite, as if `limit` stood at the top
    line = one_line_error(tmp_path, "model: mock\nsampling: {limit: 3}\n")
    assert "unknown key 'sampling.limit'" in line and "keys of sampling:" in line
    line = one_line_error(tmp_path, "model: mock\nsampling: {temprature: 1.0}\n")
    assert "'sampling.temprature'" in line and "did you mean temperature?" in line


def test_one_flag_given_by_two_keys_is_refused(tmp_path: Path) -> None:
    # the later key won silently: max_new_tokens 7, temperature 0.7, suites [benign]
    for text, keys in [
        ("max_new_tokens: 5\nmax-new-tokens: 7\n", "'max_new_tokens' and 'max-new-tokens'"),
        ("temperature: 0.5\nsampling: {temperature: 0.7}\n", "'temperature' and "),
        ("suite: [harmful]\nsuites: [benign]\n", "'suite' and 'suites' both give --suite"),
    ]:
        line = one_line_error(tmp_path, f"model: mock\n{text}")
        assert keys in line and "keep one" in line, line


def test_a_config_path_with_a_quoted_tilde_is_in_the_home_folder(
    tmp_path: Path, monkeypatch: Any
) -> None:
    # `--config "~/audit.yaml"` (quoted, or from a script) was "no such file"
    monkeypatch.setenv("HOME", str(tmp_path))
    out = tmp_path / "runs"
    (tmp_path / "audit.yaml").write_text(f"model: mock\nsuite: harmful\nlimit: 2\nout: {out}\n")
    result = invoke("audit", "--config", "~/audit.yaml", "--no-html")
    assert result.exit_code == 0, result.output
    assert only_run(out)["config"]["limit"] == 2


def test_a_json_config_file_indented_with_tabs_is_read(tmp_path: Path) -> None:
    # json.dump(..., indent="\t") wrote a file refused as "invalid YAML (found character '\t')"
    out = tmp_path / "runs"
    config = tmp_path / "audit.json"
    block = {"model": "mock", "suite": ["harmful"], "limit": 2, "out": str(out), "html": False}
    config.write_text(json.dumps(block, indent="\t"))
    result = invoke("audit", "--config", str(config))
    assert result.exit_code == 0, result.output
    assert only_run(out)["config"]["limit"] == 2
    config.write_text(json.dumps({"limit": 0, "model": "mock"}, indent="\t"))  # blamed on its line
    line = one_line(invoke("audit", "--config", str(config)))
    assert f"from {config}:2, key 'limit'" in line, line
    config.write_text('{\n\t"model": "mock",\n\t"model": "mock"\n}')
    line = one_line(invoke("audit", "--config", str(config)))
    assert f"{config}:3: key 'model' given twice" in line, line


def test_a_relative_path_in_the_file_is_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: Any
) -> None:
    # as the README and --help say: the file's values are read as the flags' values
    (tmp_path / "configs").mkdir()
    config = tmp_path / "configs" / "audit.yaml"
    config.write_text("model: mock\nsuite: harmful\nlimit: 2\nout: runs\nhtml: false\n")
    monkeypatch.chdir(tmp_path)
    result = invoke("audit", "--config", str(config))
    assert result.exit_code == 0, result.output
    assert only_run(tmp_path / "runs")["config"]["limit"] == 2


def test_an_empty_config_path_is_refused_not_skipped(tmp_path: Path) -> None:
    # `--config "$CONFIG"` with CONFIG unset ran the command on its defaults without a word
    for blank in ("", " "):
        line = one_line(invoke("runs", "ls", "--out", str(tmp_path), "--config", blank))
        assert line == "error: --config is empty; give a YAML or JSON file, or leave the flag out"


def test_a_refused_flag_typed_with_the_files_own_value_is_still_the_flags(tmp_path: Path) -> None:
    # typed on the command line, the value is the flag's even when the file holds the same one
    gate = tmp_path / "gate.yaml"
    gate.write_text("model: mock\ndelta: 2\n")
    result = invoke("gate", "--config", str(gate), "--delta", "2")
    assert result.exit_code == 2 and "delta" in result.output
    assert str(gate) not in result.output, result.output


def test_an_alias_spelling_of_a_flag_is_a_key_too(tmp_path: Path) -> None:
    # `--n` is also `--samples-per-prompt`: either spelling is a key, with - or _
    for key in ("samples_per_prompt", "samples-per-prompt"):
        out = tmp_path / key
        config = tmp_path / f"{key}.yaml"
        config.write_text(
            f"model: mock\nsuite: harmful\nlimit: 2\ntemperature: 1.0\n{key}: 3\nout: {out}\n"
        )
        result = invoke("audit", "--config", str(config), "--no-html")
        assert result.exit_code == 0, result.output
        assert only_run(out)["config"]["sampling"]["n"] == 3


def test_a_dashed_key_inside_the_sampling_block_is_taken(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    config = tmp_path / "audit.yaml"
    config.write_text(
        f"model: mock\nsuite: harmful\nlimit: 2\nsampling: {{max-new-tokens: 16}}\nout: {out}\n"
    )
    result = invoke("audit", "--config", str(config), "--no-html")
    assert result.exit_code == 0, result.output
    assert only_run(out)["config"]["sampling"]["max_new_tokens"] == 16


def test_null_for_a_required_flag_is_refused_naming_the_file(tmp_path: Path) -> None:
    line = one_line_error(tmp_path, "model: null\njudge: refusal\n", "gate")
    assert line == (
        f"error: {tmp_path / 'c.yaml'}:1: model: null is not a value of this key; leave the key "
        "out for its default"
    )


def test_a_mappings_values_reach_the_flag_as_their_json(tmp_path: Path) -> None:
    # `model_options: {scores: false}` gave the mock scores="False", a string (and true)
    out = tmp_path / "runs"
    config = tmp_path / "audit.yaml"
    config.write_text(
        f"model: mock\nsuite: harmful\nlimit: 2\nout: {out}\n"
        f"model_options: {{default: {json.dumps(REFUSE)}, scores: false}}\n"
    )
    result = invoke("audit", "--config", str(config), "--no-html")
    assert result.exit_code == 0, result.output
    assert only_run(out)["config"]["model_options"] == {"default": REFUSE, "scores": False}


def test_an_unknown_key_inside_the_sampling_block_names_its_own_line(tmp_path: Path) -> None:
    line = one_line_error(tmp_path, "model: mock\nsampling:\n  n: 2\n  limit: 3\n")
    assert line.startswith(f"error: {tmp_path / 'c.yaml'}:4: unknown key 'sampling.limit'"), line


def test_a_quoted_number_the_command_refuses_is_blamed_on_the_file(tmp_path: Path) -> None:
    # `limit: '0'` is a string in YAML that its flag converts to 0: still the file's value
    config = tmp_path / "audit.yaml"
    config.write_text("model: mock\nlimit: '0'\n")
    line = one_line(invoke("audit", "--config", str(config)))
    assert f"from {config}:2, key 'limit'" in line, line


def test_verbose_true_in_the_file_turns_debug_logging_on(tmp_path: Path) -> None:
    # --verbose is read before the other flags: the file must be read before it, or its
    # `verbose: true` was no one's default yet
    import logging

    logger = logging.getLogger("poise")
    config = tmp_path / "runs.yaml"
    config.write_text(f"verbose: true\nout: {tmp_path / 'runs'}\n")
    logger.setLevel(logging.WARNING)
    result = invoke("runs", "ls", "--config", str(config))
    assert result.exit_code == 0, result.output
    assert logger.level == logging.DEBUG
