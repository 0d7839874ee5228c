"""Full fine-tuning with checkpointing where the first layer's backward is not walked block by
block (mixtures of experts, multi-head latent attention): its recomputation beside every other
layer's gradient, and its backward as the larger of two blocks (planner.memory.moments
._first_layer_recompute): the MLP block (the whole recomputed set beside the MLP's or experts'
gradients) and the attention block (the set but what was saved after attention, beside all of the
layer's gradients), the layer's tensors split by role (planner.model.inventory.attention_block).

Bounds, calibrated on the tracer:

- DeepSeek-V3.2 cut to 2 layers, full bf16 pure, SGD, batch 1 x 2048: the backward phase within
  0.5% of the trace (calibrated: 0.9995; 1.0177 when layer 0's gradients were counted at its
  recomputation, the negative control of the fix).
- FSDP on 4 GPUs (Qwen3-30B-A3B, Gemma-4-26B-A4B cut to 2 layers, full bf16 autocast, batch
  1 x 512): the experts' moments count the layer's unsharded MLP/experts gradients only (see
  FSDP_BOUND below; 1.0094 and 1.0165 with its attention's too, the negative control).
- Tiny Llama and Phi-3 layouts at batch 1 x 128 (the layer's gradients outweigh its activations)
  with the walk left out: never under the trace (calibrated: 1.052 to 1.088). Negative control:
  with no attention block (the recomputed set beside every gradient but the layer's own) the
  plan is more than 5% under (calibrated: about 8% on Phi-3), so that alone is no bound.
"""
import pytest

from planner import TrainSpec
from planner.memory import layer as M
from planner.memory import moments as MM
from planner.memory import terms as C
from planner.memory.moments import clear_caches, step_memory

from test_first_layer_backward import spec_of, traced_backward, train_of

DEEPSEEK_BOUND = 0.005


@pytest.mark.slow
def test_deepseek_v32_full_pure_recomputation(torch_stack):
    from probes.fake import trace
    from validate.baselines import spec_for

    spec = spec_for("deepseek-v3.2-exp@2L")
    train = TrainSpec(method="full", batch_size=1, seq_len=2048, gradient_checkpointing=True, optim="sgd",
                      dtype="bf16", precision="pure")
    planned, traced = step_memory(spec, train, "bf16").total("backward"), trace(spec, train).phase_peaks["backward"]
    assert abs(planned / traced - 1) < DEEPSEEK_BOUND, (planned, traced)


def _unwalked(monkeypatch, spec, train, dtype):
    monkeypatch.setattr(M, "first_layer_backward_walk", lambda *a: ())
    clear_caches()
    try:
        return step_memory(spec, train, dtype).total("backward")
    finally:
        clear_caches()


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["llama", "phi3"])
@pytest.mark.parametrize("dtype,precision,num_gpus,sharding", [("fp16", "pure", 1, "none"), ("bf16", "autocast", 2, "ddp")])
def test_two_blocks_not_under_unwalked(torch_stack, monkeypatch, layout, dtype, precision, num_gpus, sharding):
    spec, train = spec_of(layout), train_of(dtype, precision, num_gpus, sharding, batch_size=1, seq_len=128)
    planned = _unwalked(monkeypatch, spec, train, dtype)
    assert planned >= traced_backward(spec, train), planned


@pytest.mark.slow
def test_mlp_block_alone_is_under(torch_stack, monkeypatch):
    """Negative control: without the attention block the plan is well under the trace."""
    spec, train = spec_of("phi3"), train_of("fp16", "pure", 1, "none", batch_size=1, seq_len=128)
    monkeypatch.setattr(C, "saved_after_attention", lambda *a: 1 << 50)
    monkeypatch.setattr(MM.Step, "attention_grads", property(lambda s: s.layer_grads))
    planned = _unwalked(monkeypatch, spec, train, "fp16")
    assert planned / traced_backward(spec, train) < 0.95, planned


# FSDP on 4 GPUs, full bf16 autocast with checkpointing, batch 1 x 512: the first layer with
# experts' moments count its unsharded gradients of the MLP/experts block only (the reduce-scatter
# term). Calibrated: Qwen3-30B-A3B 1.0051 (1.0094 with the whole layer's), Gemma-4-26B-A4B 1.0107
# (1.0165): the bound, never under and at most FSDP_BOUND over.
FSDP_BOUND = {"qwen3-30b-a3b@2L": 0.007, "gemma-4-26b-a4b@2L": 0.013}


@pytest.mark.slow
@pytest.mark.parametrize("model", sorted(FSDP_BOUND))
def test_fsdp_first_experts_layer_gradients(torch_stack, model):
    from probes.parallel import trace
    from validate.baselines import spec_for

    spec = spec_for(model)
    train = TrainSpec(method="full", batch_size=1, seq_len=512, gradient_checkpointing=True, dtype="bf16",
                      precision="autocast", num_gpus=4, sharding="fsdp")
    planned = step_memory(spec, train, "bf16").total("backward")
    traced = trace(spec, train, 4, "fsdp").phase_peaks["backward"]
    assert 0 <= planned / traced - 1 < FSDP_BOUND[model], (planned, traced)
