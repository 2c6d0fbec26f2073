"""Probes: linear read-outs of a model's residual stream, and the directions they find.

- :mod:`poise.probes.linear`: standardise the hidden states of one layer, fit an L2 logistic
  regression (the deception-probe recipe of arXiv 2502.03407 that arXiv 2509.18058 uses), save
  and load a probe folder.
- :mod:`poise.probes.metrics`: AUROC with a DeLong 95% interval, a threshold at a chosen false
  positive rate.
- :mod:`poise.probes.data`: labelled sets (harmful vs benign prompts, will-comply vs
  will-refuse from judged answers, honest vs deceptive instructions) and the split by item.
- :mod:`poise.probes.sweep`: collect activations and sweep the layers.
- :mod:`poise.probes.reading`: read a probe's layer during the model's own prefill (no second
  forward pass).
- :mod:`poise.probes.firewall`: the activation-shift query firewall (arXiv 2504.09593).

Probes read a model through ``capabilities.activations`` (the HF backend's ``hidden_states``
and ``decoder_layers``); the steering wrapper that uses a probe's direction lives in
``poise.decoding.steer``.
"""

from __future__ import annotations

from poise.probes.linear import LinearProbe, Standardiser, fit_logistic, load_probe
from poise.probes.metrics import auroc, auroc_interval, threshold_at_fpr

__all__ = [
    "LinearProbe",
    "Standardiser",
    "auroc",
    "auroc_interval",
    "fit_logistic",
    "load_probe",
    "threshold_at_fpr",
]
