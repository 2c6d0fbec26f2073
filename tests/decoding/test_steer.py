"""``steer(MODEL, direction=PROBE, ...)``: activation addition and directional ablation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from poise.config import Sampling
from poise.errors import PoiseError
from poise.models import load_model
from poise.probes.linear import LinearProbe, Standardiser

CHATS = [
    [{"role": "user", "content": "Hello there, the cat!"}],
    [{"role": "user", "content": "Tell me a story about a dragon in the mountains."}],
    [{"role": "user", "content": "hi"}],
]
GREEDY = Sampling(max_new_tokens=10)


def write_direction(
    folder: Path, hidden: int, *, layer: int = 1, scale: float = 4.0, model: str | None = None
) -> Path:
    """A probe folder with a random direction of norm ``scale`` (steering reads only the
    direction, the layer and the hidden size)."""
    g = torch.Generator().manual_seed(3)
    direction = torch.randn(hidden, generator=g, dtype=torch.float64)
    probe = LinearProbe(
        layer=layer,
        standardiser=Standardiser(
            torch.zeros(hidden, dtype=torch.float64), torch.ones(hidden, dtype=torch.float64)
        ),
        weights=direction.clone(),
        bias=0.0,
        difference_of_means=direction / direction.norm() * scale,
        model=model,
    )
    return probe.save(folder)


@pytest.fixture(scope="module")
def direction(tiny_hf_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    hidden = json.loads((tiny_hf_model_dir / "config.json").read_text())["hidden_size"]
    return write_direction(tmp_path_factory.mktemp("steer") / "probe", hidden)


def _steer(folder: Path, direction: Path, **options: object) -> Any:
    written = ", ".join(f"{k}={v}" for k, v in options.items())
    return load_model(f"steer({folder}, direction={direction}, {written})")


def test_zero_strength_is_the_inner_model(tiny_hf_model_dir: Path, direction: Path) -> None:
    inner = load_model(str(tiny_hf_model_dir))
    base = [[c.text for c in row] for row in inner.generate(CHATS, GREEDY)]
    for mode in ("add", "ablate"):
        steered = _steer(tiny_hf_model_dir, direction, mode=mode, strength=0.0)
        assert [[c.text for c in row] for row in steered.generate(CHATS, GREEDY)] == base
    # and the hooks are gone after the call: the inner model answers as before
    assert [[c.text for c in row] for row in inner.generate(CHATS, GREEDY)] == base


def test_addition_moves_the_stream_by_strength_times_the_direction(
    tiny_hf_model_dir: Path, direction: Path
) -> None:
    inner: Any = load_model(str(tiny_hf_model_dir))
    steered = _steer(tiny_hf_model_dir, direction, mode="add", strength=2.5, layer=1)
    vector = steered.vector.double()
    before = inner.hidden_states(CHATS)  # [rows, layers + 1, hidden]
    after = steered.hidden_states(CHATS)
    assert torch.allclose(after[:, 0], before[:, 0], atol=1e-5)  # below the layer: untouched
    assert torch.allclose(after[:, 1].double(), before[:, 1].double() + 2.5 * vector, atol=1e-4)
    assert not torch.allclose(after[:, 2], before[:, 2], atol=1e-3)  # and it carries on
    assert steered.generate(CHATS, GREEDY) != inner.generate(CHATS, GREEDY)


def test_addition_at_the_last_layer_edits_the_stream_after_the_final_norm(
    tiny_hf_model_dir: Path, direction: Path
) -> None:
    """``hidden_states[L]`` (L = the number of blocks) is after the final norm, where probes
    read it; the addition was made to the last block's output, before the norm, which scaled
    it away (on organism-small a shift of norm 0.63 for 2.0 asked, in another direction)."""
    inner: Any = load_model(str(tiny_hf_model_dir))
    last = len(inner.decoder_layers())
    steered = _steer(tiny_hf_model_dir, direction, mode="add", strength=2.5, layer=last)
    vector = steered.vector.double()
    before = inner.hidden_states(CHATS).double()  # [rows, layers + 1, hidden]
    after = steered.hidden_states(CHATS).double()
    assert torch.allclose(after[:, :last], before[:, :last], atol=1e-5)  # blocks untouched
    assert torch.allclose(after[:, last], before[:, last] + 2.5 * vector, atol=1e-4)
    # and the next-token distribution moves with it
    steered_scores = steered.score(CHATS, ["a"] * len(CHATS))
    plain_scores = inner.score(CHATS, ["a"] * len(CHATS))
    assert [s.logprobs for s in steered_scores] != [s.logprobs for s in plain_scores]


def test_ablation_removes_the_direction_at_every_layer(
    tiny_hf_model_dir: Path, direction: Path
) -> None:
    steered = _steer(tiny_hf_model_dir, direction, mode="ablate", strength=1.0)
    states = steered.hidden_states(CHATS).double()  # [rows, layers + 1, hidden]
    along = states[:, :-1] @ steered.unit.double()  # the last entry is after the final norm
    assert along.abs().max() < 1e-4
    half = _steer(tiny_hf_model_dir, direction, mode="ablate", strength=0.5)
    inner: Any = load_model(str(tiny_hf_model_dir))
    raw = inner.hidden_states(CHATS).double()[:, 0] @ half.unit.double()
    assert torch.allclose(
        half.hidden_states(CHATS).double()[:, 0] @ half.unit.double(), raw / 2, atol=1e-4
    )


def test_ablation_hooks_the_stream_as_the_authors_code_does(
    tiny_hf_model_dir: Path, direction: Path
) -> None:
    """The authors' code (arXiv 2406.11717, ``hook_utils.py``) ablates every block's input and
    its attention and MLP outputs. Ablating only each block's output left in the component
    that attention writes, which the block's MLP then reads: the logits differed."""
    steered = _steer(tiny_hf_model_dir, direction, mode="ablate", strength=1.0)
    backend: Any = steered.inner
    model = backend.model
    unit = steered.unit

    def ablate(hidden: torch.Tensor) -> torch.Tensor:
        return hidden - (hidden @ unit).unsqueeze(-1) * unit

    def pre(module: Any, args: Any, kwargs: Any) -> Any:
        if args:
            return (ablate(args[0]), *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": ablate(kwargs["hidden_states"])}

    def post(module: Any, args: Any, output: Any) -> Any:
        if isinstance(output, tuple):
            return (ablate(output[0]), *output[1:])
        return ablate(output)

    ids = torch.tensor([[5, 17, 42, 9, 33, 8]])
    with torch.no_grad():
        plain = model(ids).logits
        with steered.steering():
            ours = model(ids).logits
        handles = []
        for block in model.model.layers:
            handles.append(block.register_forward_pre_hook(pre, with_kwargs=True))
            handles.append(block.self_attn.register_forward_hook(post))
            handles.append(block.mlp.register_forward_hook(post))
        try:
            theirs = model(ids).logits
        finally:
            for handle in handles:
                handle.remove()
    assert not torch.allclose(plain, theirs, atol=1e-3)  # the ablation does something
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


def test_stream_and_engine_are_steered_too(tiny_hf_model_dir: Path, direction: Path) -> None:
    steered = _steer(tiny_hf_model_dir, direction, mode="add", strength=3.0)
    generated = [row[0].text for row in steered.generate(CHATS, GREEDY)]
    streamed = {
        int(e.key): e.completion.text for e in steered.stream(CHATS, GREEDY) if e.completion
    }
    assert [streamed[i] for i in range(len(CHATS))] == generated
    engine = steered.engine()
    for i, chat in enumerate(CHATS):
        engine.add(i, chat, GREEDY)
    finals: dict[int, str] = {}
    while not engine.idle:
        for event in engine.step():
            if event.completion is not None:
                finals[int(event.key)] = event.completion.text
    assert [finals[i] for i in range(len(CHATS))] == generated


def test_spec_round_trip_and_name(tiny_hf_model_dir: Path, direction: Path) -> None:
    steered = _steer(tiny_hf_model_dir, direction, mode="ablate", strength=1)
    assert steered.spec.startswith("steer(")
    again = load_model(steered.spec)
    assert again.name == steered.name
    assert "mode=ablate" in steered.name and "strength=1.0" in steered.name


def test_bad_options_say_what(tiny_hf_model_dir: Path, direction: Path, tmp_path: Path) -> None:
    with pytest.raises(PoiseError, match="mode must be one of"):
        _steer(tiny_hf_model_dir, direction, mode="subtract")
    with pytest.raises(PoiseError, match="not a probe folder"):
        _steer(tiny_hf_model_dir, tmp_path, mode="add")
    with pytest.raises(PoiseError, match="past the model"):
        _steer(tiny_hf_model_dir, direction, layer=99)
    wrong = write_direction(tmp_path / "wrong", 7)
    with pytest.raises(PoiseError, match="hidden size"):
        _steer(tiny_hf_model_dir, wrong, mode="add")
    with pytest.raises(PoiseError, match="direction must be a probe folder, got 5"):
        load_model(f"steer({tiny_hf_model_dir}, direction=5)")
    damaged = write_direction(tmp_path / "damaged", 7)
    (damaged / "probe.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(PoiseError, match="not a readable safetensors file"):
        _steer(tiny_hf_model_dir, damaged, mode="add")


def test_a_direction_read_from_another_model_is_warned_about(
    tiny_hf_model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # probe score warned, steer did not: the hidden sizes matched, so nothing else told
    hidden = json.loads((tiny_hf_model_dir / "config.json").read_text())["hidden_size"]
    own = load_model(str(tiny_hf_model_dir)).spec
    other = write_direction(tmp_path / "other", hidden, model="organism-large")
    mine = write_direction(tmp_path / "mine", hidden, model=own)
    with caplog.at_level("WARNING", logger="poise.decoding.steer"):
        _steer(tiny_hf_model_dir, mine, mode="add")
        assert caplog.text == ""
        _steer(tiny_hf_model_dir, other, mode="add")
    assert "read from 'organism-large'" in caplog.text and own in caplog.text


def test_a_probe_folder_given_by_a_relative_path_is_recorded_by_its_absolute_one(
    tiny_hf_model_dir: Path, direction: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The spec recorded the direction as typed: rebuilt from another directory it read another
    probe folder, or none, and two folders of one spelling gave two steered models one name."""
    monkeypatch.chdir(direction.parent)
    model = load_model(f"steer({tiny_hf_model_dir}, direction={direction.name}, strength=2)")
    assert f"direction={direction.resolve()}," in str(model.spec)
    assert f"direction={direction.resolve()}," in model.name
    monkeypatch.chdir(tiny_hf_model_dir)
    assert load_model(str(model.spec)).name == model.name


def test_a_layer_given_to_ablation_is_refused_not_ignored(
    tiny_hf_model_dir: Path, direction: Path
) -> None:
    """Ablation edits every layer: ``layer=1`` beside ``mode=ablate`` was accepted, written into
    the spec (another name for the same model) and ignored."""
    with pytest.raises(
        PoiseError, match=r"steer: mode=ablate removes the direction at every layer, so layer=1 "
    ):
        _steer(tiny_hf_model_dir, direction, mode="ablate", layer=1)
    # the default (the probe's layer) and mode=add's layer are as before
    ablated = _steer(tiny_hf_model_dir, direction, mode="ablate")
    assert "layer=-1" in ablated.spec and "mode=ablate" in ablated.spec
    assert "layer=1" in _steer(tiny_hf_model_dir, direction, mode="add", layer=1).spec


def test_use_probe_steers_along_the_probes_normal_in_raw_space(
    tiny_hf_model_dir: Path, tmp_path: Path
) -> None:
    """The probe scores ``w . (x - mu) / std``, so its normal in raw activation space is
    ``w / std``; ``use=probe`` rescales it to the difference of means' norm, the default
    direction."""
    hidden = json.loads((tiny_hf_model_dir / "config.json").read_text())["hidden_size"]
    g = torch.Generator().manual_seed(4)
    weights = torch.randn(hidden, generator=g, dtype=torch.float64)
    std = torch.rand(hidden, generator=g, dtype=torch.float64) * 3 + 0.2
    means = torch.randn(hidden, generator=g, dtype=torch.float64) * 2
    folder = LinearProbe(
        layer=1,
        standardiser=Standardiser(torch.zeros(hidden, dtype=torch.float64), std),
        weights=weights,
        bias=0.0,
        difference_of_means=means,
        model=None,
    ).save(tmp_path / "probe")
    normal = weights / std
    expected = normal / normal.norm() * means.norm()
    steered = _steer(tiny_hf_model_dir, folder, mode="add", use="probe")
    assert torch.allclose(steered.vector.double(), expected, atol=1e-5)
    default = _steer(tiny_hf_model_dir, folder, mode="add")
    assert torch.allclose(default.vector.double(), means, atol=1e-5)
