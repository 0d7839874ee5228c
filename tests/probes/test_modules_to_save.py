"""peft's modules_to_save (embed_tokens, lm_head trained whole beside the adapters): the
planner's counts against peft, and its phases against the exact tracer.

Bound: every phase within 0.1% of the trace. Calibrated on a tiny Llama (vocabulary 4096,
hidden 128, 2 layers, batch 2 x 64 tokens), tied and untied, LoRA, QLoRA and DoRA, with and
without checkpointing, saving lm_head, embed_tokens or both: the worst phase was 0.04% off
(the tracer's 4-byte Adam step counters and a 6 KiB constant the planner leaves out); the
copies themselves are 3 to 5 V x h tensors, 30-60% of these toy totals.
"""
import pytest

from planner import TrainSpec, plan
from planner.model import counts
from planner.model.catalog import model_from_config

BASE = dict(pad_token_id=0, vocab_size=4096, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=4096)
BOUND = 0.001
BOTH = ("embed_tokens", "lm_head")
CASES = [  # (tied, method, checkpointing, modules)
    (False, "lora", False, BOTH),
    (True, "qlora", True, ("lm_head",)),
]


def tiny(tied: bool):
    return model_from_config({"model_type": "llama", **BASE, "tie_word_embeddings": tied},
                             "tiny-llama-tied" if tied else "tiny-llama")


def train_for(method, gc, modules=()):
    return TrainSpec(method=method, rank=8, batch_size=2, seq_len=64, dtype="bf16", gradient_checkpointing=gc,
                     modules_to_save=modules)


_traces = {}


def traced(tied, method, gc, modules):
    from probes.fake import trace

    key = (tied, method, gc, modules)
    if key not in _traces:
        _traces[key] = trace(tiny(tied), train_for(method, gc, modules)).phase_peaks
    return _traces[key]


@pytest.mark.parametrize("tied", [False, True])
def test_trainable_counts_equal_peft(torch_stack, tied):
    """Each saved module is a V x h trainable copy, a tied pair two independent ones: the
    planner's trainable and total counts equal peft's on the model peft really wraps."""
    from peft import get_peft_model

    from probes.build import lora_config, random_init

    spec = tiny(tied)
    for modules in (("lm_head",), ("embed_tokens",), BOTH):
        train = TrainSpec(method="lora", rank=8, modules_to_save=modules)
        with torch_stack.device("meta"):
            model = get_peft_model(random_init(spec, torch_stack.float32, "meta"), lora_config(train))
        trainable, everything = model.get_nb_trainable_parameters()
        assert trainable == counts.trainable_params(spec, train), modules
        assert everything == (counts.total_params(spec) + counts.adapter_params(spec, train)
                              + counts.saved_module_params(spec, train)), modules


@pytest.mark.slow
@pytest.mark.parametrize("tied,method,gc,modules", CASES)
def test_every_phase_planned_equals_traced(torch_stack, tied, method, gc, modules):
    planned = plan(tiny(tied), "a100-80gb", train_for(method, gc, modules), calibrations={}).phases
    trace = traced(tied, method, gc, modules)
    for phase, size in trace.items():
        assert abs(planned[phase] / size - 1) < BOUND, (phase, planned[phase], size)


@pytest.mark.slow
def test_the_bound_can_fail(torch_stack):
    """Negative controls: the plan of the same step without modules_to_save, and a plan that
    forgot only the lm_head input a trained lm_head keeps (T x h), both miss the trace."""
    from planner.memory import terms as C

    tied, method, gc, modules = CASES[0]
    trace = traced(tied, method, gc, modules)
    without = plan(tiny(tied), "a100-80gb", train_for(method, gc), calibrations={}).phases
    assert abs(without["backward"] / trace["backward"] - 1) >= BOUND
    train = train_for(method, gc, modules)
    head_input = train.tokens * BASE["hidden_size"] * 2  # bf16
    planned = plan(tiny(tied), "a100-80gb", train, calibrations={}).phases
    assert C.model_level_saved(tiny(tied), train, C.precision(train, "bf16")) >= head_input
    assert abs((planned["backward"] - head_input) / trace["backward"] - 1) >= BOUND


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_a_saved_lm_head_at_the_last_layers_backward(torch_stack, method):
    """Eager attention at seq 512 with a 512-token vocabulary: the backward peak is the last
    layer's softmax backward, after lm_head's. What saving lm_head adds there, planned, equals
    what it adds traced to within Adam's 4-byte step counter: its copy, its optimizer states
    and its gradient (terms.lm_head_grad_kept), its input already freed (moments.Step.final_norm).
    Negative controls: without the gradient, or with the input still kept, the plans miss it by
    V x h or T x h parameter-dtype / compute-dtype elements."""
    from planner.memory import moments, terms as C

    spec = model_from_config({"model_type": "llama", **BASE, "vocab_size": 512}, "tiny-llama-v512")

    def run(modules=(), **patch):
        from probes.fake import trace

        train = TrainSpec(method=method, rank=8, batch_size=2, seq_len=512, dtype="bf16",
                          attn_implementation="eager", modules_to_save=modules)
        owners = {name: C if hasattr(C, name) else moments.Step for name in patch}
        saved = {name: owners[name].__dict__[name] if owners[name] is moments.Step else getattr(C, name)
                 for name in patch}
        try:
            for name, fn in patch.items():
                setattr(owners[name], name, fn)
            moments.clear_caches()
            planned = plan(spec, "a100-80gb", train, calibrations={})
        finally:
            for name, fn in saved.items():
                setattr(owners[name], name, fn)
            moments.clear_caches()
        assert planned.peak_moment == "layer_softmax"
        return planned.phases["backward"], (trace(spec, train).phase_peaks["backward"] if not patch else None)

    planned_without, traced_without = run()
    planned_with, traced_with = run(("lm_head",))
    assert abs((planned_with - planned_without) - (traced_with - traced_without)) <= 8
    forgot_grad, _ = run(("lm_head",), lm_head_grad_kept=lambda *a: 0)
    kept_input, _ = run(("lm_head",), final_norm=property(lambda s: C.norm_saved(s.model, s.train, s.prec)))
    for wrong in (forgot_grad, kept_input):
        assert abs((wrong - planned_without) - (traced_with - traced_without)) > 10_000
