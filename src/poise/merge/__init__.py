"""Merging models: per-tensor methods, a streaming executor, mergekit-style configs.

- :mod:`poise.merge.methods`: the registry (:data:`METHODS`) and the method contract.
- :mod:`poise.merge.task_arithmetic`: linear and the task-arithmetic family (TIES, DARE,
  breadcrumbs, DELLA) as one generalised function.
- :mod:`poise.merge.interpolation`: SLERP, NuSLERP and Model Stock.
- :mod:`poise.merge.singular`: TSV-M and RESM.

Importing this package registers every method.
"""

from __future__ import annotations

from poise.merge import interpolation, singular, task_arithmetic
from poise.merge.methods import METHODS, MergeMethod, get_method, merge_method
from poise.merge.singular import resm, tsv_m
from poise.merge.task_arithmetic import generalized_task_arithmetic, linear, tensor_seed

__all__ = [
    "METHODS",
    "MergeMethod",
    "generalized_task_arithmetic",
    "get_method",
    "interpolation",
    "linear",
    "merge_method",
    "resm",
    "singular",
    "task_arithmetic",
    "tensor_seed",
    "tsv_m",
]
