"""`--precision pure` (a plain loop on a 16-bit model, no autocast), `--dtype fp32` and the
one-GPU adapter settings around them: the planner's phases against the exact tracer.

Bound: the backward phase within 0.1% of the trace, on a tiny Llama whose vocabulary (4096)
dwarfs its 16-token batch, so that a trained lm_head's backward is the backward peak. The
negative controls show the plan without the moment under test missing the trace by more.
"""
import pytest

from planner import TrainSpec, plan
from planner.memory.moments import step_memory
from planner.model.catalog import model_from_config
from probe_traces import traced
from planner.memory.moments import clear_caches

BOUND = 0.001
HEAD = dict(pad_token_id=0, vocab_size=4096, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=4096,
            tie_word_embeddings=False)
HEAD_CASES = [  # (method, precision): the lm_head's gradient in the compute dtype, in fp32, and cast
    ("lora", "pure"),
    ("qlora", "pure"),
    ("qlora", "autocast"),
]


def big_vocab():
    return model_from_config({"model_type": "llama", **HEAD}, "tiny-llama-4k-vocab")


def head_train(method, precision):
    return TrainSpec(method=method, rank=8, batch_size=1, seq_len=16, dtype="bf16", precision=precision,
                     optim="sgd", target_modules=("q_proj", "v_proj"), modules_to_save=("lm_head",))


@pytest.mark.slow
@pytest.mark.parametrize("method,precision", HEAD_CASES)
def test_lm_head_backward_planned_equals_traced(torch_stack, method, precision):
    """A saved lm_head's backward: its weight gradient, the logits gradient and (fp32 weight
    under autocast) the gradient's cast, beside every activation (components.lm_head_backward)."""
    spec, train = big_vocab(), head_train(method, precision)
    p = plan(spec, "a100-80gb", train, calibrations={})
    assert step_memory(spec, train, "bf16").moments["backward"] == "lm_head"
    size = traced(spec, train)["backward"]
    assert abs(p.phases["backward"] / size - 1) < BOUND, (p.phases["backward"], size)


@pytest.mark.slow
@pytest.mark.parametrize("method,precision", HEAD_CASES)
def test_lm_head_backward_bound_can_fail(torch_stack, monkeypatch, method, precision):
    """Negative control: the plan without the lm_head moment misses the traced backward."""
    from planner.memory import terms as C

    spec, train = big_vocab(), head_train(method, precision)
    monkeypatch.setattr(C, "lm_head_backward", lambda *a: ())
    clear_caches()
    try:
        planned = plan(spec, "a100-80gb", train, calibrations={}).phases["backward"]
    finally:
        clear_caches()
    size = traced(spec, train)["backward"]
    assert planned / size - 1 < -BOUND, (planned, size)


# Without autocast: an fp32 attention (4-bit methods in pure, or dtype fp32), the adapters
# sharing one fp32 norm output (and o_proj the SDPA output), eager probabilities with no cast
# copy, fp32 logits with no upcast copy. A tiny Llama (vocabulary 512) at batch 2 x 64, so that
# activations are most of the step. Bound: forward and backward within 0.15%, calibrated on
# these cases (worst 0.093%; the optimizer phase, 0.12% off, is the 4-bit quant states' small
# constants, not this class).
PHASE_BOUND = 0.0015
SMALL = dict(HEAD, vocab_size=512)
PHASE_CASES = {
    "qlora-pure-shared-input": dict(method="qlora", precision="pure", dtype="bf16"),
    "lora-fp32-eager": dict(method="lora", precision="pure", dtype="fp32", attn_implementation="eager"),
    "qlora-pure-eager": dict(method="qlora", precision="pure", dtype="bf16", attn_implementation="eager"),
}
# DoRA with dropout, pure: the saved set (the start of backward, logits and every activation)
# within the bound; the forward's in-layer DoRA moment is not all modelled (a plan note).
# (16-bit DoRA pure with dropout is still 1.3% under at the start of backward on this toy: not
# explained yet, covered by the note.)
DORA_CASES = {
    "qdora-pure-dropout": dict(method="qdora", precision="pure", dtype="bf16", lora_dropout=0.05),
}
DORA_BOUND = 0.004  # 0.33% off, against more with the old rules


def small():
    return model_from_config({"model_type": "llama", **SMALL}, "tiny-llama-512-vocab")


def phase_train(name):
    return TrainSpec(rank=8, batch_size=2, seq_len=64, optim="sgd", **{**PHASE_CASES, **DORA_CASES}[name])


@pytest.mark.slow
@pytest.mark.parametrize("name", list(PHASE_CASES))
def test_no_autocast_phases_planned_equal_traced(torch_stack, name):
    spec, train = small(), phase_train(name)
    planned = plan(spec, "a100-80gb", train, calibrations={}).phases
    trace = traced(spec, train)
    for phase in ("forward", "backward"):
        assert abs(planned[phase] / trace[phase] - 1) < PHASE_BOUND, (phase, planned[phase], trace[phase])


@pytest.mark.slow
@pytest.mark.parametrize("name", list(DORA_CASES))
def test_dora_dropout_saved_set_planned_equals_traced(torch_stack, name):
    spec, train = small(), phase_train(name)
    p = plan(spec, "a100-80gb", train, calibrations={})
    assert step_memory(spec, train, "bf16").moments["backward"] == "logits_grad"
    size = traced(spec, train)["backward"]
    assert abs(p.phases["backward"] / size - 1) < DORA_BOUND, (p.phases["backward"], size)
    assert any("DoRA with lora_dropout and no autocast" in n for n in p.notes)


def _old_rules(monkeypatch):
    """The rules before these fixes: attention in the compute dtype, the eager probabilities
    with their cast copy, every adapter its own input copy, DoRA's dropout weight copy and
    base output as under autocast."""
    from planner.memory import terms as C
    from planner.memory import variants as V

    monkeypatch.setattr(C.Precision, "attention", property(lambda prec: prec.compute))
    monkeypatch.setattr(C.Precision, "eager_probabilities", property(lambda prec: prec.compute + 4))
    monkeypatch.setattr(C, "shared_input_bytes", lambda *a: 0)

    def autocast_rule(self, lin, train, prec):
        if not train.lora_dropout:
            return 0
        t = train.tokens
        saved = t * lin.in_features + lin.in_features * lin.out_features * prec.compute
        return saved - (2 * t * lin.out_features if train.is_quantized and lin.role != "o" else 0)

    monkeypatch.setattr(V.Dora, "dropout_saved", autocast_rule)
    monkeypatch.setattr(V.Dora, "base_output_bytes", lambda self, lin, prec: prec.compute if lin.role == "o" else prec.hidden)
    clear_caches()


@pytest.mark.slow
@pytest.mark.parametrize("name", list(PHASE_CASES) + list(DORA_CASES))
def test_no_autocast_bound_can_fail(torch_stack, monkeypatch, name):
    """Negative control: with the old rules the checked phases miss the trace by more than the bounds."""
    spec, train = small(), phase_train(name)
    trace = traced(spec, train)
    _old_rules(monkeypatch)
    try:
        planned = plan(spec, "a100-80gb", train, calibrations={}).phases
    finally:
        clear_caches()
    if name in DORA_CASES:
        assert abs(planned["backward"] / trace["backward"] - 1) > DORA_BOUND
    else:
        assert max(abs(planned[p] / trace[p] - 1) for p in ("forward", "backward")) > PHASE_BOUND
