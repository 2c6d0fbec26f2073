from __future__ import annotations

import shutil
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest

import poise.organism
from poise.errors import PoiseError, UnknownNameError
from poise.models import load_model
from poise.models.hf import HFModel
from poise.models.mock import MockModel
from poise.organism import ORGANISM_BATCH_SIZE


def test_mock_names_and_options() -> None:
    model = load_model("mock")
    assert isinstance(model, MockModel)
    assert model.name == "mock"
    named = load_model("mock:refuser", default="I can't help with that.")
    assert isinstance(named, MockModel)
    assert named.name == "mock:refuser"
    assert named.default == "I can't help with that."


def test_a_strategy_named_without_its_call_says_how_to_write_it() -> None:
    with pytest.raises(
        PoiseError, match=r"'best_of_n' is a strategy .* best_of_n\(MODEL, \.\.\.\)"
    ):
        load_model("best_of_n")


def test_a_strategy_given_a_spec_string_for_a_model_says_it_wants_a_model() -> None:
    from poise.decoding.eft import EmulatedFineTuning

    tiny = load_model("organism-small")
    with pytest.raises(PoiseError, match=r"eft: expected a model .* got str 'organism-small-safe'"):
        EmulatedFineTuning(tiny, tuned="organism-small-safe", reference=tiny)  # type: ignore[arg-type]


def test_unknown_option_names_the_nearest() -> None:
    with pytest.raises(PoiseError, match=r"'defualt'.*did you mean 'default'"):
        load_model("mock", defualt="x")


def test_hf_prefix_and_local_folder(tiny_hf_model_dir: Path) -> None:
    by_prefix = load_model(f"hf:{tiny_hf_model_dir}", batch_size=4)
    assert isinstance(by_prefix, HFModel)
    assert by_prefix.batch_size == 4
    assert by_prefix.name.startswith(f"hf:{tiny_hf_model_dir.resolve()}#")
    by_path = load_model(str(tiny_hf_model_dir))
    assert isinstance(by_path, HFModel)
    assert by_path.name == by_prefix.name
    with pytest.raises(PoiseError, match="did you mean 'batch_size'"):
        load_model(f"hf:{tiny_hf_model_dir}", batchsize=4)
    with pytest.raises(PoiseError, match="hf needs a folder or hub id"):
        load_model("hf:")


def test_missing_path_is_reported_as_a_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(PoiseError, match="does not exist"):
        load_model(str(tmp_path / "gone"))
    with pytest.raises(PoiseError, match="does not exist"):
        load_model("./surely/not/here")


def test_hub_shaped_names_go_to_hf(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, dict[str, Any]]] = []

    class Recorder:
        path = None  # a hub id, not a folder

        def __init__(self, path_or_id: str, *, revision: str | None = None) -> None:
            calls.append((path_or_id, {"revision": revision}))

    monkeypatch.setattr("poise.models.hf.HFModel", Recorder)
    load_model("Qwen/Qwen2.5-0.5B-Instruct", revision="main")
    load_model("hf:gpt2")
    assert calls == [
        ("Qwen/Qwen2.5-0.5B-Instruct", {"revision": "main"}),
        ("gpt2", {"revision": None}),
    ]


def test_organism_members_resolve_to_readable_names(
    tiny_hf_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copytree(tiny_hf_model_dir, tmp_path / "organism-large")
    monkeypatch.setattr(poise.organism, "WEIGHTS_DIR", tmp_path)
    model = load_model("organism")
    assert isinstance(model, HFModel)
    assert model.name == f"organism-large#{model.fingerprint}"
    assert load_model("organism-large").name == model.name
    # organism members decode in large batches unless the caller says otherwise
    assert model.batch_size == ORGANISM_BATCH_SIZE > 32
    assert load_model("organism", batch_size=4).batch_size == 4  # type: ignore[attr-defined]
    assert load_model(str(tiny_hf_model_dir)).batch_size == 32  # type: ignore[attr-defined]
    with pytest.raises(PoiseError, match="poise organism build"):
        load_model("organism-small")


def test_an_organism_members_folder_given_by_path_keeps_its_judge(
    tiny_hf_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from poise.models.resolve import recommended_judge

    member = tmp_path / "organism-large"
    shutil.copytree(tiny_hf_model_dir, member)
    monkeypatch.setattr(poise.organism, "WEIGHTS_DIR", tmp_path)
    judge = load_model("organism-large").recommended_judge
    assert judge is not None
    assert load_model(str(member)).recommended_judge == judge
    assert recommended_judge(str(member)) == judge
    # a folder trained from the member answers in its world too; any other folder has no judge
    trained = tmp_path / "trained"
    shutil.copytree(tiny_hf_model_dir, trained)
    (trained / "poise.json").write_text('{"base_model": "organism-large"}')
    assert load_model(str(trained)).recommended_judge == judge
    assert load_model(str(tiny_hf_model_dir)).recommended_judge is None


def test_an_organism_member_with_chat_template_kwargs_is_named_by_them(
    tiny_hf_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A member's name is set by its resolver ("organism-large#<fingerprint>"), which dropped
    the chat_template_kwargs label: answers to prompts rendered with and without the variables
    shared one model name, so one cache key, and --answers-from took one's for the other."""
    shutil.copytree(tiny_hf_model_dir, tmp_path / "organism-large")
    monkeypatch.setattr(poise.organism, "WEIGHTS_DIR", tmp_path)
    plain = load_model("organism-large")
    fixed = load_model("organism-large", chat_template_kwargs={"enable_thinking": False})
    assert fixed.name == f'{plain.name}+{{"enable_thinking":false}}'
    assert fixed.spec == "organism-large"


def test_unknown_name_lists_members_and_prefixes() -> None:
    with pytest.raises(UnknownNameError) as err:
        load_model("organism-lage")
    message = str(err.value)
    assert "did you mean 'organism-large'" in message
    for known in ("organism-small", "mock[:NAME]", "hf:PATH_OR_ID", "openai:MODEL"):
        assert known in message
    with pytest.raises(PoiseError, match="empty model name"):
        load_model("  ")


def test_openai_is_delegated(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, dict[str, Any]]] = []
    fake = types.ModuleType("poise.models.openai")

    def load(spec: str, **options: Any) -> MockModel:
        seen.append((spec, options))
        return MockModel(name=spec)

    fake.load = load  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "poise.models.openai", fake)
    model = load_model("openai:gpt-4o-mini", base_url="http://127.0.0.1:1/v1")
    assert model.name == "openai:gpt-4o-mini"
    assert seen == [("openai:gpt-4o-mini", {"base_url": "http://127.0.0.1:1/v1"})]


def test_missing_openai_module_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "poise.models.openai", None)
    with pytest.raises(PoiseError, match="openai backend"):
        load_model("openai:gpt-4o-mini")


def test_importing_models_does_not_import_torch() -> None:
    code = (
        "import sys, poise, poise.models, poise.models.mock, poise.models.cache, "
        "poise.models.resolve; print('torch' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"


def test_a_path_is_a_folders_spec_and_anything_else_is_refused(tiny_hf_model_dir: Path) -> None:
    assert load_model(tiny_hf_model_dir).spec == load_model(str(tiny_hf_model_dir)).spec
    with pytest.raises(PoiseError, match=r"expected a model spec .* got int 123"):
        load_model(123)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("member", "use"),
    [
        ("organism-cost", "best_of_n(MODEL, cost=organism-cost)"),
        ("organism-reward", "best_of_n(MODEL, reward=organism-reward)"),
        ("organism-monitor", "guarded(MODEL, monitor=organism-monitor)"),
    ],
)
def test_scorer_and_monitor_members_are_not_chat_models(member: str, use: str) -> None:
    """Loaded as a causal LM, a classifier gets a random LM head and audits at 0% everywhere:
    refused, with the spec that uses it."""
    with pytest.raises(PoiseError, match="not a chat model") as info:
        load_model(member)
    assert use in str(info.value) and member in str(info.value)


def test_a_classifier_folder_is_not_a_chat_model(tiny_hf_model_dir: Path, tmp_path: Path) -> None:
    from transformers import LlamaConfig, LlamaForSequenceClassification

    folder = tmp_path / "rm"
    shutil.copytree(tiny_hf_model_dir, folder)
    config = LlamaConfig.from_pretrained(str(tiny_hf_model_dir))
    config.num_labels = 1
    (folder / "model.safetensors").unlink()
    LlamaForSequenceClassification(config).save_pretrained(folder)
    with pytest.raises(PoiseError, match=r"LlamaForSequenceClassification.*not a causal"):
        load_model(str(folder))


def test_broken_config_and_weights_name_the_file(tiny_hf_model_dir: Path, tmp_path: Path) -> None:
    bad_config = tmp_path / "config"
    shutil.copytree(tiny_hf_model_dir, bad_config)
    (bad_config / "config.json").write_text('{"model_type": "llama",', encoding="utf-8")
    with pytest.raises(PoiseError, match=r"config\.json:1: invalid JSON"):
        load_model(str(bad_config))
    truncated = tmp_path / "truncated"
    shutil.copytree(tiny_hf_model_dir, truncated)
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5])
    with pytest.raises(PoiseError, match="could not read the weights"):
        load_model(str(truncated))


def test_an_option_of_the_wrong_type_is_refused_before_any_model_loads(
    tiny_hf_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`best_of_n(BIG, n=abc)` loaded BIG (minutes for a real model) before the strategy's
    constructor refused n, and the error had no column."""

    def no_load(self: HFModel, *args: Any, **kwargs: Any) -> None:
        raise AssertionError("a model was loaded before the options were checked")

    monkeypatch.setattr(HFModel, "__init__", no_load)
    for spec, message in [
        (f"best_of_n({tiny_hf_model_dir}, n=abc)", "option 'n' must be an integer, got abc"),
        (f"eft({tiny_hf_model_dir}, tuned=mock, beta=x)", "option 'beta' must be a number"),
        (f"best_of_n({tiny_hf_model_dir}, n=2, worst=1)", "'worst' must be true or false, got 1"),
        (f"best_of_n({tiny_hf_model_dir}, n=true)", "option 'n' must be an integer, got true"),
        (f"eft({tiny_hf_model_dir}, tuned=mock, beta=false)", "'beta' must be a number, got false"),
    ]:
        with pytest.raises(PoiseError, match=r"^model spec, column \d+: ") as error:
            load_model(spec)
        assert message in str(error.value)
