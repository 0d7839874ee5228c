"""FSDP on a model whose layer kinds differ (dense first layers before the MoE layers, as in
GLM-4.5 and DeepSeek-V3): each layer is all-gathered, prefetched and reduce-scattered at its
own kind's size. The planner against rank 0 traced with torch's fake process group, at
GLM-4.5-Air's widths cut to 2 dense + 1 MoE layers (a few seconds each)."""

import pytest

from planner import TrainSpec, get_model
from planner.memory import moments as Mo
from planner.memory import sharding as S
from planner.model.catalog import model_from_config


@pytest.fixture(scope="module")
def glm_air_cut(torch_stack):
    """GLM-4.5-Air (first_k_dense_replace 1 in its config) cut to 3 layers, the first two dense:
    a dense layer is 0.45 GiB, the MoE layer 4.4 GiB (bf16)."""
    spec = get_model("glm-4.5-air")
    config = spec.hf_config()
    config.update(num_hidden_layers=3, first_k_dense_replace=2)
    return model_from_config(config, "glm-4.5-air@3L-2dense", spec.hf_id)


def _train(method: str) -> TrainSpec:
    return TrainSpec(method=method, batch_size=1, seq_len=64, dtype="bf16", num_gpus=2, sharding="fsdp")


def _ratio(model, train, traced: int) -> float:
    Mo.clear_caches()
    memory = Mo.step_memory(model, train, "bf16")
    return max(memory.total(p) for p in memory.phases) / traced


@pytest.mark.parametrize("method", ["full", "lora"])
def test_fsdp_plans_each_layer_at_its_kind(glm_air_cut, method, monkeypatch):
    from probes import parallel

    assert len({k.name for k in glm_air_cut.kinds}) == 2
    train = _train(method)
    traced = parallel.trace(glm_air_cut, train, 2, "fsdp").peak_allocated_bytes
    assert abs(_ratio(glm_air_cut, train, traced) - 1) < 0.005
    # negative control: every layer all-gathered, prefetched and reduce-scattered at the
    # largest (MoE) kind's size, as if the dense layers were MoE layers: far over the trace
    largest = S.FSDP.terms
    monkeypatch.setattr(S.FSDP, "terms", lambda self, model, train, prec, kind=None: largest(self, model, train, prec))
    try:
        assert _ratio(glm_air_cut, train, traced) > 1.05
    finally:
        monkeypatch.undo()
        Mo.clear_caches()
