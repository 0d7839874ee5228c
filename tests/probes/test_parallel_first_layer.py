"""A parallel layer's first layer (Cohere, Command-R7B: attention and the MLP both read the one
input norm's output) with only attention modules targeted, a frozen embedding and no
checkpointing: the MLP's input needs no gradient, so layer 0's MLP keeps nothing
(terms.first_layer_unrecorded), where a sequential layer's MLP, downstream of attention, keeps
all of it. The planner against the tracer at Command-R7B's real widths cut to 4 layers, QLoRA on
v_proj, fp16 mixed, batch 2 x 768 (a random-tier setting, there on 2 GPUs under FSDP): planned /
traced 1.0000 (one GPU; the 2-GPU row 1.0000), 1.021 (1.018) with layer 0's gate, up and act(gate)
outputs counted."""
import pytest

from planner import TrainSpec
from planner.memory import terms as C

from probe_traces import planned_over_traced

BOUND = 0.001


def _ratio():
    from validate.baselines import spec_for

    spec = spec_for("command-r7b@4L")
    train = TrainSpec(method="qlora", rank=8, target_modules=("v_proj",), batch_size=2, seq_len=768, dtype="fp16",
                      precision="mixed", optim="sgd")
    return planned_over_traced(spec, train)


@pytest.mark.slow
def test_parallel_first_layer_planned_equals_traced(torch_stack):
    assert abs(_ratio() - 1) < BOUND


@pytest.mark.slow
def test_first_layer_mlp_kept_can_fail(torch_stack, monkeypatch):
    """Negative control: layer 0's MLP outputs counted as kept (gate, up, act(gate)) put the plan
    over by more than the bound."""
    original = C.first_layer_unrecorded

    def kept(model, train, prec):
        return original(model, train, prec) - 3 * train.tokens * model.intermediate_size * prec.hidden

    monkeypatch.setattr(C, "first_layer_unrecorded", kept)
    assert _ratio() - 1 > BOUND
