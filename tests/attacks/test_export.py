import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from chat_templates import QWEN25_DEFAULT, QWEN25_TEMPLATE
from poise.attacks.export import preference_pairs, write_pairs
from poise.errors import PoiseError


def rec(
    item: str, config: str, text: str, harmful: bool, refused: bool, kind: str = "harmful"
) -> dict:
    return {
        "item_id": item,
        "kind": kind,
        "category": "fraud",
        "request_id": config,
        "prompt": f"prompt {item}",
        "completion": text,
        "verdict": {"harmful": harmful, "refused": refused},
    }


def test_pairs_need_both_a_refusal_and_a_harmful_completion(tmp_path: Path) -> None:
    records = [
        rec("a", "greedy", "No.", False, True),
        rec("a", "t=1", "Sure: step 1", True, False),
        rec("a", "t=0.5", "Sure: step 1", True, False),
        rec("b", "greedy", "No.", False, True),  # never broken: no pair
        rec("c", "t=1", "Sure", True, False),  # never refused: no pair
        rec("d", "greedy", "No.", False, True, kind="borderline"),
    ]
    pairs = preference_pairs(records)
    assert len(pairs) == 1
    [pair] = pairs
    assert pair["prompt"] == [{"role": "user", "content": "prompt a"}]
    assert pair["chosen"] == [{"role": "assistant", "content": "No."}]
    assert pair["rejected"] == [{"role": "assistant", "content": "Sure: step 1"}]
    assert pair["meta"]["chosen_request"] == "greedy" and pair["meta"]["rejected_request"] == "t=1"
    path = tmp_path / "sub" / "pairs.jsonl"
    assert write_pairs(pairs, path) == 1
    assert json.loads(path.read_text()) == pair
    assert not list(path.parent.glob(".*tmp*"))


def test_write_pairs_refuses_a_folder_or_a_file_on_the_way_and_writes_nothing(
    tmp_path: Path,
) -> None:
    import pytest

    from poise.errors import PoiseError

    pair = {"prompt": [], "chosen": [], "rejected": []}
    with pytest.raises(PoiseError, match="is a folder; give a file path"):
        write_pairs([pair], tmp_path)
    (tmp_path / "notes").write_text("x")
    with pytest.raises(PoiseError, match="is a file"):  # was a FileExistsError traceback
        write_pairs([pair], tmp_path / "notes" / "pairs.jsonl")
    assert write_pairs([pair, pair], tmp_path / "new" / "pairs.jsonl") == 2
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == ["pairs.jsonl"]


def test_write_pairs_writes_a_home_relative_path_where_its_folder_was_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the folder was made under the expanded '~', the file written under a literal '~'
    monkeypatch.setenv("HOME", str(tmp_path))
    pair = {"prompt": [], "chosen": [], "rejected": []}
    assert write_pairs([pair], "~/out/pairs.jsonl") == 1
    assert (tmp_path / "out" / "pairs.jsonl").is_file()


@pytest.mark.parametrize("per_prompt", [0, -1])
def test_pairs_per_prompt_below_one_is_one_clear_error(per_prompt: int) -> None:
    # 0 gave no pair ("no harmful item has both a safe and a harmful answer" in the CLI), and -1
    # dropped the last pair of every prompt without a word
    records = [
        rec("a", "greedy", "No.", False, True),
        rec("a", "t=1", "Sure: step 1", True, False),
        rec("a", "t=0.5", "I won't.", False, True),
        rec("a", "t=0.7", "Sure: step 2", True, False),
    ]
    assert len(preference_pairs(records, per_prompt=2)) == 2
    with pytest.raises(PoiseError, match=r"per_prompt must be an integer >= 1, got -?\d"):
        preference_pairs(records, per_prompt=per_prompt)


def test_the_cli_refuses_per_prompt_below_one_before_reading_the_run(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from poise.cli import app

    output = tmp_path / "pairs.jsonl"
    result = CliRunner().invoke(
        app,
        [
            "attacks",
            "export",
            "no-such-run",
            "--out",
            str(tmp_path),
            "-o",
            str(output),
            "--per-prompt",
            "0",
        ],
    )
    assert result.exit_code == 2
    assert "--per-prompt must be an integer >= 1, got 0" in result.output
    assert not output.exists()


def test_write_pairs_interrupted_leaves_no_temporary_file(tmp_path: Path) -> None:
    """Ctrl-C while the pairs were written left the temporary file beside the output."""

    def pairs() -> Iterator[dict[str, str]]:
        yield {"prompt": "p", "chosen": "a", "rejected": "b"}
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_pairs(pairs(), tmp_path / "pairs.jsonl")
    assert list(tmp_path.iterdir()) == []


def with_setting(record: dict, setting: str) -> dict:
    return {**record, "config": {"system_prompt": setting}}


def test_pairs_share_the_prompt_as_sent_with_its_system_message() -> None:
    # the exploitation grid on a Qwen2.5-style model: sys=on sent the template's default as a
    # system message, sys=off an empty one (the template would insert its default otherwise)
    records = [
        with_setting(rec("a", "greedy/sys=on", "No.", False, True), "default"),
        with_setting(rec("a", "top_k=5/sys=on", "Sure: step 1", True, False), "default"),
        with_setting(rec("a", "greedy/sys=off", "I can't.", False, True), "none"),
        with_setting(rec("a", "top_k=5/sys=off", "Sure: step 2", True, False), "none"),
        # refused only with the system prompt, complied only without: no prompt is shared
        with_setting(rec("b", "greedy/sys=on", "No.", False, True), "default"),
        with_setting(rec("b", "top_k=5/sys=off", "Sure", True, False), "none"),
    ]
    pairs = preference_pairs(
        records, per_prompt=2, system_prompts={"default": QWEN25_DEFAULT, "none": ""}
    )
    user = {"role": "user", "content": "prompt a"}
    assert [
        (p["prompt"], p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in pairs
    ] == [
        ([{"role": "system", "content": QWEN25_DEFAULT}, user], "No.", "Sure: step 1"),
        ([{"role": "system", "content": ""}, user], "I can't.", "Sure: step 2"),
    ]
    assert [p["meta"]["system_prompt"] for p in pairs] == ["default", "none"]
    # per prompt, over its settings
    assert len(preference_pairs(records, system_prompts={"default": QWEN25_DEFAULT})) == 1


def test_pairs_never_mix_the_system_prompt_settings() -> None:
    records = [
        with_setting(rec("b", "greedy/sys=on", "No.", False, True), "default"),
        with_setting(rec("b", "top_k=5/sys=off", "Sure", True, False), "none"),
    ]
    # a pair of these would teach a refusal to a prompt the model never refused
    assert preference_pairs(records) == []


def test_the_cli_writes_the_system_message_a_qwen_style_model_was_sent(
    tmp_path: Path, tiny_hf_model_dir: Path
) -> None:
    import shutil

    from transformers import AutoTokenizer
    from typer.testing import CliRunner

    import poise
    from poise.cli import app

    folder = tmp_path / "qwen-style"
    shutil.copytree(tiny_hf_model_dir, folder)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    tokenizer.chat_template = QWEN25_TEMPLATE  # Qwen/Qwen2.5-*-Instruct's
    tokenizer.save_pretrained(str(folder))
    run = poise.audit(
        model=str(folder),
        suites=["harmful"],
        attack="exploitation",
        attack_options={"families": ["greedy", "top_k"], "top_ks": [5]},
        sampling={"max_new_tokens": 4},
        limit=1,
        out=tmp_path / "runs",
        html=False,
    )
    samples = run.path / "samples.jsonl"
    records = [json.loads(line) for line in samples.read_text().splitlines()]
    assert {r["request_id"] for r in records} == {
        "greedy/sys=on",
        "greedy/sys=off",
        "top_k=5/sys=on",
        "top_k=5/sys=off",
    }
    for r in records:  # greedy refuses, top-k complies (the random model's words, relabelled)
        refused = r["request_id"].startswith("greedy")
        r["completion"] = f"{r['request_id']}: {r['completion']}"
        r["verdict"] |= {"harmful": not refused, "refused": refused}
    samples.write_text("".join(json.dumps(r) + "\n" for r in records))
    output = tmp_path / "pairs.jsonl"
    args = ["attacks", "export", run.path.name, "--out", str(tmp_path / "runs"), "-o", str(output)]
    result = CliRunner().invoke(app, [*args, "--per-prompt", "2"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    user = {"role": "user", "content": records[0]["prompt"]}
    by_flag = {row["meta"]["chosen_request"].split("/")[1]: row for row in rows}
    assert by_flag["sys=on"]["prompt"] == [{"role": "system", "content": QWEN25_DEFAULT}, user]
    assert by_flag["sys=off"]["prompt"] == [{"role": "system", "content": ""}, user]
    # each pair's answers were given to its prompt
    for flag, row in by_flag.items():
        assert row["meta"]["rejected_request"].endswith(flag)
        assert row["rejected"][0]["content"].startswith(row["meta"]["rejected_request"])
        assert row["meta"]["system_prompt"] == {"sys=on": "default", "sys=off": "none"}[flag]
    # the model folder moved since: run.json recorded what the run sent, nothing to load
    moved = folder.rename(tmp_path / "moved")
    output.unlink()
    result = CliRunner().invoke(app, [*args, "--per-prompt", "2"])
    assert result.exit_code == 0, result.output
    assert [json.loads(line) for line in output.read_text().splitlines()] == rows
    # a run recorded without them: one line that says what to give, nothing written
    header = json.loads((run.path / "run.json").read_text())
    del header["system_prompts"]
    (run.path / "run.json").write_text(json.dumps(header))
    output.unlink()
    result = CliRunner().invoke(app, [*args, "--per-prompt", "2"])
    assert result.exit_code != 0
    assert "cannot load the run's model" in result.output and "give --model" in result.output
    assert "Traceback" not in result.output and not output.exists()
    result = CliRunner().invoke(app, [*args, "--per-prompt", "2", "--model", str(moved)])
    assert result.exit_code == 0, result.output
    assert [json.loads(line) for line in output.read_text().splitlines()] == rows


def test_export_pairs_is_the_command_in_one_call(tmp_path: Path) -> None:
    """``poise attacks export`` in Python: the pairs the command writes, each prompt with the
    system message the audit sent. preference_pairs of the records alone leaves it out (the
    run's system prompts are the command's to read), so a script wrote other prompts than the
    command."""
    from typer.testing import CliRunner

    import poise
    from poise.attacks.export import export_pairs
    from poise.cli import app
    from poise.runs import find_run

    audit = poise.audit(
        model="organism-small",
        suites=["harmful"],
        attack="exploitation",
        attack_options={"families": ["temperature"], "temperatures": [1.0, 1.5]},
        limit=10,
        out=tmp_path / "runs",
        html=False,
    )
    by_command, by_call = tmp_path / "command.jsonl", tmp_path / "call.jsonl"
    result = CliRunner().invoke(
        app, ["attacks", "export", audit.path.name, "--out", str(tmp_path / "runs"),
              "-o", str(by_command)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    count = export_pairs(find_run(audit.path.name, tmp_path / "runs"), by_call)
    rows = [json.loads(line) for line in by_call.read_text().splitlines()]
    assert count == len(rows) > 0
    assert by_call.read_text() == by_command.read_text()
    assert {row["prompt"][0]["role"] for row in rows} == {"system"}


def test_which_answers_make_the_two_sides_of_a_pair() -> None:
    """A harmful verdict is the rejected side even where the answer also refuses ("I can't...
    but here is how"); a refusal counts as the chosen side only where the judge read the answer
    (an unparsed verdict's ``refused`` is the refusal detector's fallback); empty answers and
    items other than harmful ones make no side; the meta keeps the item's category."""
    from poise.tasks import UNPARSED

    unparsed_refusal = rec("a", "t=0.7", "No way.", False, True)
    unparsed_refusal["verdict"] |= {"label": UNPARSED, "harmful": None}
    records = [
        unparsed_refusal,
        rec("a", "t=0.9", "   ", False, True),  # blank: no chosen side
        rec("a", "greedy", "I can't. But step 1", True, True),
        rec("a", "t=1", "No.", False, True),
        rec("d", "greedy", "No.", False, True, kind="borderline"),
        rec("d", "t=1", "Sure: step 1", True, False, kind="borderline"),
    ]
    [pair] = preference_pairs(records)
    assert pair["chosen"] == [{"role": "assistant", "content": "No."}]
    assert pair["rejected"] == [{"role": "assistant", "content": "I can't. But step 1"}]
    assert pair["meta"]["item_id"] == "a" and pair["meta"]["category"] == "fraud"


class _Run:
    """What export_pairs reads of a run (poise.attacks.export.RecordedRun)."""

    def __init__(self, path: Path, records: list[dict], header: dict, config: dict) -> None:
        self.path, self._records, self.header, self.config = path, records, header, config

    @property
    def model_to_build(self) -> str | None:
        return self.config.get("model")

    def records(self) -> Iterator[dict]:
        return iter(self._records)


def test_export_sends_each_setting_the_system_message_the_run_sent(tmp_path: Path) -> None:
    """A run whose pairs are all of the "none" setting (sys=off only) still gets the run's
    system messages (an empty one for a template that inserts its default); the model given
    wins over what the run recorded; a run that recorded none loads its model with the run's
    model options, which can set its default system prompt."""
    from poise.attacks.export import export_pairs
    from poise.models import default_system_prompt, load_model

    records = [
        with_setting(rec("a", "greedy/sys=off", "No.", False, True), "none"),
        with_setting(rec("a", "t=1/sys=off", "Sure: step 1", True, False), "none"),
    ]
    sent = {"default": QWEN25_DEFAULT, "none": ""}
    run = _Run(tmp_path / "run", records, {"system_prompts": sent}, {"model": "mock"})
    output = tmp_path / "pairs.jsonl"
    assert export_pairs(run, output) == 1
    [row] = [json.loads(line) for line in output.read_text().splitlines()]
    assert row["prompt"][0] == {"role": "system", "content": ""}

    records = [with_setting(r, "default") for r in records]
    run = _Run(tmp_path / "run", records, {"system_prompts": sent}, {"model": "mock"})
    export_pairs(run, output, model="organism-small")
    [row] = [json.loads(line) for line in output.read_text().splitlines()]
    organism = default_system_prompt(load_model("organism-small"))
    assert organism and row["prompt"][0] == {"role": "system", "content": organism}

    options = {"default_system_prompt": "Be careful."}
    run = _Run(tmp_path / "run", records, {}, {"model": "mock", "model_options": options})
    export_pairs(run, output)
    [row] = [json.loads(line) for line in output.read_text().splitlines()]
    assert row["prompt"][0] == {"role": "system", "content": "Be careful."}
