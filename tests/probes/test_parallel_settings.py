"""One rank of several GPUs (FSDP2, DDP) under the autocast and pure precision schemes: the
planner's per-GPU moments against rank 0 traced with torch's fake process group, on tiny
models (a few seconds each)."""

import pytest

from planner import TrainSpec
from planner.memory import sharding as S
from planner.model.catalog import model_from_config
from planner.memory.moments import step_memory

# Qwen2 layout with tied embeddings and a vocabulary large enough that the embedding's
# backward (lm_head's gradient, the embedding's and their sum, beside the unsharded root) is
# the backward peak of full fine-tuning.
QWEN_TIED = {
    "model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "vocab_size": 4096,
    "hidden_size": 64, "intermediate_size": 160, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512,
    "rms_norm_eps": 1e-6, "tie_word_embeddings": True, "hidden_act": "silu",
}
# What the tracer counts and the plan does not: the step's input ids (B*S int64), the loss
# scalars and the [1, 1, h] sums of the norm gradients; a few hundred bytes.
UNPLANNED = 512


@pytest.fixture(scope="module")
def qwen_tied(torch_stack):
    return model_from_config(dict(QWEN_TIED), "qwen-tied")


@pytest.mark.parametrize("num_gpus,checkpointing", [(2, True), (4, False)])
def test_fsdp_embedding_backward_has_every_layer_gradient_shard(qwen_tied, num_gpus, checkpointing):
    """FSDP full fine-tuning with a tied embedding: when the embedding's backward runs, every
    decoder layer's gradient shard exists, the first layer's too (its reduce-scatter ran when
    its backward ended)."""
    from probes import parallel

    train = TrainSpec(method="full", batch_size=1, seq_len=16, dtype="bf16", precision="pure", optim="sgd",
                      gradient_checkpointing=checkpointing, num_gpus=num_gpus, sharding="fsdp")
    traced = parallel.trace(qwen_tied, train, num_gpus, "fsdp").phase_peaks["backward"]
    memory = step_memory(qwen_tied, train, "bf16")
    assert memory.moments["backward"] == "embedding"
    planned = memory.total("backward")
    assert 0 <= traced - planned <= UNPLANNED
    # negative control: without the first layer's shard (the gradients of the first layer's
    # backward, one layer fewer) the plan is off by far more than the tolerance
    one_shard = S.fsdp_grads_after_layers(qwen_tied, train, 2) // qwen_tied.num_layers
    assert one_shard > 20 * UNPLANNED
    assert traced - (planned - one_shard) > UNPLANNED


def test_ddp_first_layer_backward_lacks_the_embedding_gradient(torch_stack):
    """DDP full fine-tuning, untied embedding, no checkpointing: DDP's gradients are whole, as
    on one GPU, so while the first layer's backward runs the embedding's gradient is not made
    yet; by the embedding's backward the first layer's saved set is gone. The backward peak is
    the embedding's backward (every gradient, the embedding's being made), not the first
    layer's saved set beside every gradient."""
    from planner.memory.terms import layer_saved, precision
    from probes import parallel

    spec = model_from_config({**QWEN_TIED, "tie_word_embeddings": False}, "qwen-untied")
    train = TrainSpec(method="full", batch_size=1, seq_len=16, dtype="bf16", precision="pure", optim="sgd",
                      num_gpus=2, sharding="ddp")
    traced = parallel.trace(spec, train, 2, "ddp").phase_peaks["backward"]
    memory = step_memory(spec, train, "bf16")
    assert memory.moments["backward"] == "embedding"
    planned = memory.total("backward")
    # not planned besides: the gradient flowing into the embedding's backward, T*h*c
    tolerance = train.tokens * spec.hidden_size * 2 + UNPLANNED
    assert 0 <= traced - planned <= tolerance
    # negative control: the first layer's saved set beside every gradient (the embedding's
    # included) is more than the tolerance over
    over = planned + layer_saved(spec, train, precision(train, "bf16"))
    assert over - traced > tolerance


def test_fsdp_full_fine_tuning_peaks_in_the_last_layer_but_one(torch_stack):
    """Three layers wide beside their tokens (h 512, I 2048, batch 2 x 64), full fine-tuning in
    fp32 on 2 GPUs: the backward peaks in layer 1's backward, where the last layer's
    reduce-scatter input still lingers beside its gradient shard and the layers below keep their
    saved sets (moments._layer_end, which walks each later layer's backward block by block).
    Planned within 0.5% of the trace; negative control: without that moment the plan is more than
    5% under (the first layer's walk is what remains)."""
    from planner import plan
    from planner.memory import moments
    from probes import parallel

    config = {"model_type": "llama", "pad_token_id": 0, "vocab_size": 256, "hidden_size": 512,
              "intermediate_size": 2048, "num_hidden_layers": 3, "num_attention_heads": 4,
              "num_key_value_heads": 2, "head_dim": 128, "max_position_embeddings": 4096}
    spec = model_from_config(config, "llama-wide-3l")
    train = TrainSpec(method="full", batch_size=2, seq_len=64, dtype="fp32", precision="pure", num_gpus=2,
                      sharding="fsdp")
    traced = parallel.trace(spec, train, 2, "fsdp").phase_peaks["backward"]
    planned = plan(spec, "a100-80gb", train, calibrations={})
    assert planned.peak_moment == "layer_end"
    assert abs(planned.phases["backward"] / traced - 1) < 0.005
    registry = moments.REGISTRY["backward"]
    kept = [(name, fn) for name, fn in registry if name != "layer_end"]
    try:
        moments.REGISTRY["backward"] = kept
        moments.clear_caches()
        without = plan(spec, "a100-80gb", train, calibrations={}).phases["backward"]
    finally:
        moments.REGISTRY["backward"] = registry
        moments.clear_caches()
    assert without / traced - 1 < -0.05
