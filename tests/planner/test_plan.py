"""Plans as a whole: phases, totals, plausibility on Llama-2-7B, dtype resolution."""
import pytest

from planner import TrainSpec, get_gpu, plan
from planner.memory.moments import step_memory
from planner.units import GIB


def test_tiny_phases_by_hand(tiny):
    t = TrainSpec(method="lora", rank=2, batch_size=1, seq_len=3, dtype="bf16")
    step = step_memory(tiny, t, "bf16")
    persistent = 2704 + 2048 + 4096  # weights bf16, adapters fp32, AdamW states
    # activations: 2 layers of 1140, less the first layer's input norm (108: the frozen
    # embedding's output needs no gradient), + RoPE and the final norm (156) = 2328
    # forward at the loss: + adapter copies 1024, logits 300 and the final norm's output 3*8*2
    # = 12548; with this tiny vocabulary the last layer's down_proj beats it: everything but
    # the final norm (2328 - 108), down's input and fp32 cast 288, locals 192, output 144
    assert step.total("forward") == persistent + 2220 + 288 + 1024 + 192 + 144
    # backward: the adapter copies less the first layer's q/k/v lora_A copies (3 * 2 * 8 * 2 = 96),
    # which only autocast's cache held (their input needs no gradient)
    assert step.total("backward") == persistent + 2328 + 1024 - 96 + 360
    assert step.total("optimizer") == persistent + 2048 + 2048
    assert step.peak_phase == "optimizer"


def test_peak_is_a_max_over_phases_not_a_sum():
    p = plan("7b", "a100-80gb", TrainSpec(method="lora"))
    assert p.peak_allocated_bytes == max(p.phases.values())
    assert p.peak_allocated_bytes == p.phases[p.peak_phase]
    runtime = p.components["runtime/allocator"] + p.components["runtime/cuda_context"]
    assert sum(p.components.values()) - runtime == p.peak_allocated_bytes
    assert p.peak_allocated_bytes < sum(p.phases.values())
    assert p.device_used_bytes == p.peak_reserved_bytes + p.components["runtime/cuda_context"]


def test_llama2_7b_on_t4_is_plausible():
    full = plan("7b", "t4", TrainSpec(method="full"))
    lora = plan("7b", "t4", TrainSpec(method="lora"))
    qlora = plan("7b", "t4", TrainSpec(method="qlora"))
    assert qlora.fits and not full.fits
    # 16-bit weights of 6.74B params are 12.55 GiB; 4-bit about a quarter of the linears
    assert 12.5 * GIB < lora.components["weights/base"] < 12.6 * GIB
    assert 3.5 * GIB < qlora.components["weights/base"] < 4.5 * GIB
    assert 6 * GIB < qlora.device_used_bytes < 12 * GIB
    assert full.device_used_bytes > 50 * GIB  # 2 + 2 + 4 bytes/param + foreach temporaries


def test_auto_dtype_falls_back_to_fp16_on_t4():
    p = plan("7b", "t4", TrainSpec(method="lora", dtype="bf16"))
    assert p.settings["dtype"] == "fp16"
    assert any("no bf16" in n for n in p.notes)
    assert plan("7b", "a100-80gb", TrainSpec(method="lora")).settings["dtype"] == "bf16"


def test_fits_and_headroom_are_consistent():
    for gpu in ("t4", "rtx4090", "h100"):
        p = plan("llama-3.1-8b", gpu, TrainSpec(method="qlora"))
        assert p.headroom_bytes == get_gpu(gpu).memory_bytes - p.device_used_bytes
        assert p.fits == (p.headroom_bytes >= 0)


def test_json_contract_keys():
    d = plan("7b", "t4", TrainSpec(method="qlora")).to_dict()
    required = {"model", "gpu", "method", "settings", "components", "peak_allocated_bytes",
                "peak_reserved_bytes", "device_used_bytes", "gpu_memory_bytes", "fits",
                "headroom_bytes", "trainable_params", "total_params", "peak_phase"}
    assert required <= set(d)
    assert set(d["settings"]) >= {"batch_size", "seq_len", "rank", "alpha", "target_modules", "dtype",
                                  "optim", "gradient_checkpointing", "quant_type", "double_quant"}
    assert all(isinstance(v, int) for v in d["components"].values())


def test_paged_optimizer_states_are_reported_apart():
    p = plan("7b", "a100-80gb", TrainSpec(method="full", optim="paged_adamw_32bit"))
    assert p.components["optimizer/states"] == 0
    assert p.components["optimizer/states_paged"] == 2 * 6_738_415_616 * 2 * 2


def test_config_json_path(tmp_path):
    from planner.model.catalog import CatalogError

    cfg = tmp_path / "config.json"
    cfg.write_text('{"model_type": "llama", "vocab_size": 100, "hidden_size": 64, '
                   '"intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4}')
    p = plan(str(cfg), "t4", TrainSpec(method="lora", rank=4))
    assert p.model == tmp_path.name
    assert p.total_params == 100 * 64 * 2 + 2 * (4 * 64 * 64 + 3 * 64 * 128 + 2 * 64) + 64
    cfg.write_text('{"model_type": "llama", "vocab_size": "many"}')
    with pytest.raises(CatalogError, match="vocab_size"):
        plan(str(cfg), "t4")
    cfg.write_text("{not json")
    with pytest.raises(CatalogError, match="not a readable JSON config"):
        plan(str(cfg), "t4")
    cfg.write_text('{"model_type": "bert"}')
    with pytest.raises(CatalogError, match="'bert' is not a decoder-only language model"):
        plan(str(cfg), "t4")


def test_small_vocabulary_note(tmp_path):
    import json

    config = {"model_type": "llama", "vocab_size": 512, "hidden_size": 1024, "intermediate_size": 3584,
              "num_hidden_layers": 3, "num_attention_heads": 8, "num_key_value_heads": 2,
              "max_position_embeddings": 4096, "tie_word_embeddings": False}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    p = plan(str(path), "a100-80gb", TrainSpec(method="lora"))
    assert any("vocabulary (512) is smaller than its MLP width (3584)" in n for n in p.notes)
    # every catalog model has a vocabulary wider than its MLP: no note
    for name in ("llama-2-70b", "mistral-7b", "qwen2.5-0.5b"):
        assert not any("vocabulary" in n for n in plan(name, "a100-80gb", TrainSpec(method="lora")).notes)


def test_a_breakdown_refuses_an_unknown_component():
    from planner.memory.moments import COMPONENT_KEYS, _breakdown

    assert _breakdown("loss", weights__base=3).terms["weights/base"] == 3
    assert set(_breakdown("loss").terms) == set(COMPONENT_KEYS)
    with pytest.raises(KeyError, match="activations/typo"):
        _breakdown("loss", activations__typo=1)


def test_the_plan_names_the_moment_that_peaked():
    """Each phase's peak is one named moment (planner.memory.moments.MOMENTS), and the plan's
    breakdown is that moment's terms. Hand-checked cases on Llama-2-7B at bs1 x 512, bf16:
    full fine-tuning peaks at the optimizer step (its AdamW states and foreach temporaries);
    LoRA at the start of backward, the fp32 logits gradients beside every saved activation;
    DoRA inside the last layer's forward, its dense weight-norm transient."""
    from planner.memory.moments import MOMENTS

    expected = {"full": ("optimizer", "step"), "lora": ("backward", "logits_grad"),
                "dora": ("forward", "layer_module")}
    for method, (phase, moment) in expected.items():
        p = plan("7b", "a100-80gb", TrainSpec(method=method))
        assert (p.peak_phase, p.peak_moment) == (phase, moment)
        assert p.peak_moment in MOMENTS[p.peak_phase]
        assert p.to_dict()["peak_moment"] == moment
    # negative control: with checkpointing, LoRA's saved set shrinks to the layer inputs, and the
    # peak moves off the logits' moment
    p = plan("7b", "a100-80gb", TrainSpec(method="dora", gradient_checkpointing=True, seq_len=4096))
    assert p.peak_moment != "layer_module"
