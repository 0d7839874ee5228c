"""The analytic memory planner: pure Python, no torch import (a test asserts it).

    >>> from planner import plan, TrainSpec
    >>> p = plan("7b", "t4", TrainSpec(method="qlora"))
    >>> p.fits, p.peak_phase
"""
from planner.model.catalog import CatalogError, get_gpu, get_gpus, get_model, gpu_names, model_names
from planner.plan import Plan, plan
from planner.model.precision import resolve_dtype
from planner.model.specs import METHODS, GpuSpec, ModelSpec, TrainSpec

__all__ = ["CatalogError", "GpuSpec", "METHODS", "ModelSpec", "Plan", "TrainSpec", "get_gpu",
           "get_gpus", "get_model", "gpu_names", "model_names", "plan", "resolve_dtype"]
