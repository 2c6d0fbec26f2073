"""Loading an HF model prints no "Loading weights" bar (issue 10, item 17)."""

from __future__ import annotations

from pathlib import Path

import pytest

from poise.models import load_model


def test_loading_a_folder_prints_no_weights_bar(
    tiny_hf_model_dir: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.enable_progress_bar()  # as on a user's terminal
    capfd.readouterr()
    model = load_model(f"hf:{tiny_hf_model_dir}")
    captured = capfd.readouterr()
    assert model.name
    assert "Loading weights" not in captured.err + captured.out
    assert hf_logging.set_tqdm_hook(None) is None  # the hook is removed afterwards
