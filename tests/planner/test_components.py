"""Each memory component against a value worked out by hand on the tiny model.

tiny: V=10, h=8, I=16, L=2, heads=2 of head_dim 4, 1 kv head (q_dim 8, kv_dim 4).
Settings unless stated: batch 1, seq 3 (T=3 tokens), rank 2, bf16 (c=2), autocast.
"""

from planner import TrainSpec
from planner.memory import terms as C
from planner.memory import layer as M
from planner.memory.variants import NoAdapter, variant

BF16 = "bf16"


def spec(**kw):
    base = dict(method="lora", rank=2, batch_size=1, seq_len=3, dtype=BF16)
    base.update(kw)
    return TrainSpec(**base)


def prec(train):
    return C.precision(train, BF16)


def test_weights_base_16bit_and_4bit(tiny):
    t = spec()
    assert C.weights_base(tiny, t, prec(t)) == 1352 * 2
    q = spec(method="qlora")
    # packed: per layer ceil(n/2) of 64, 32, 32, 64, 128, 128, 128 = 288, x2 layers = 576;
    # everything else (1352 - 2*576 linear weights = 200) in fp32 = 800
    assert C.weights_base(tiny, q, prec(q)) == 576 + 800
    mixed = spec(method="full", precision="mixed")
    assert C.weights_base(tiny, mixed, prec(mixed)) == 1352 * 4


def test_quant_state(tiny):
    # blocks of 64 per weight: q,k,v,o 1 each, gate/up/down 2 each = 10 blocks per layer
    # double quant: 1 byte per block + 4 (absmax of 256 blocks) + 4 (offset) + 1024 (8-bit code)
    # + 64 (4-bit code) per weight
    assert C.weights_quant_state(tiny, spec(method="qlora")) == 2 * (10 + 7 * 1096)
    # single: 4 bytes per block + 64 (code) per weight
    assert C.weights_quant_state(tiny, spec(method="qlora", double_quant=False)) == 2 * (40 + 7 * 64)
    assert C.weights_quant_state(tiny, spec(method="lora")) == 0


def test_quant_state_bits_per_param_match_the_qlora_paper():
    n = 4096 * 4096
    single = (C.quant_state_per_weight(n, False) - C.NF4_CODE_BYTES) * 8 / n
    double = (C.quant_state_per_weight(n, True) - C.NF4_CODE_BYTES - C.DQ_CODE_BYTES) * 8 / n
    assert single == 0.5  # 32 bits per 64 weights
    # 0.127 bits (Dettmers et al. 2023), plus the one fp32 offset per weight (32 bits / n)
    assert abs(double - (8 / 64 + 32 / (64 * 256) + 32 / n)) < 1e-12


def test_adapters_grads_and_optimizer(tiny):
    t = spec()
    p = prec(t)
    assert C.adapter_bytes(tiny, t) == 512 * 4
    assert C.grads(tiny, t, p) == 512 * 4
    assert C.optimizer_states(tiny, t, p) == 2 * 512 * 4
    assert C.optimizer_transient(tiny, t, p) == 512 * 4
    fused = spec(optim="adamw_torch_fused")
    assert C.optimizer_transient(tiny, fused, p) == 0
    full = spec(method="full")
    assert C.grads(tiny, full, prec(full)) == 1352 * 2
    assert C.optimizer_states(tiny, full, prec(full)) == 2 * 1352 * 2
    assert C.optimizer_states(tiny, spec(optim="sgd"), p) == 0
    paged = spec(optim="paged_adamw_32bit")
    assert C.optimizer_states(tiny, paged, p) == 0
    assert C.optimizer_states_paged(tiny, paged, p) == 2 * 512 * 4


def test_adamw_8bit_keeps_small_tensors_in_32bit(tiny):
    # every tiny adapter tensor is under 4096 elements: 32-bit states, 8 bytes per param
    t = spec(optim="adamw_8bit")
    assert C.optimizer_states(tiny, t, prec(t)) == 512 * 8


def test_activation_terms(tiny):
    t = spec()
    p = prec(t)
    assert C.norm_saved(tiny, t, p) == 3 * 8 * 4 + 3 * 4  # fp32 input copy + rsqrt
    full = spec(method="full")
    assert C.norm_saved(tiny, full, prec(full)) == 108 + 3 * 8 * 2  # + normalized bf16 input
    gemma_norm = tiny.with_traits(norm="rms_fp32_out")
    assert C.norm_saved(gemma_norm, full, prec(full)) == 108 + 3 * 8 * 4  # + normalized fp32 product
    assert C.norm_saved(gemma_norm, t, p) == 108
    # q_rot, k_rot, v, out: 3 * (2*8 + 2*4) * 2 = 144; logsumexp 1 * 2 heads * 3 * 4 = 24
    assert C.attention_core_saved(tiny, t, p) == 168
    assert C.mlp_core_saved(tiny, t, p) == 3 * 3 * 16 * 2
    assert C.linear_inputs_saved(tiny, t, p) == 0
    assert C.linear_inputs_saved(tiny, full, prec(full)) == 3 * (8 + 8 + 16) * 2
    # per module: T*in*2 (input copy) + T*r*2 (lora_A out); six with in=8, down with in=16
    assert [variant(t).adapter.saved(lin, t, p) for lin in tiny.linears] == [48 + 12] * 6 + [96 + 12]
    pure = spec(precision="pure")
    assert [variant(pure).adapter.saved(lin, pure, prec(pure)) for lin in tiny.linears] == [96 + 24] * 6 + [192 + 24]
    assert C.layer_saved(tiny, t, p) == 2 * 108 + 168 + 288 + 468
    assert C.model_level_saved(tiny, t, p) == 2 * 3 * 4 * 2 + 108  # RoPE cos+sin, final norm
    # the first layer's input norm keeps nothing: the frozen embedding's output needs no gradient
    assert C.first_norm_unrecorded(tiny, t, p) == 108
    assert C.activations_saved(tiny, t, p) == 2 * 1140 - 108 + 156
    batch2 = spec(batch_size=2)
    # RoPE's cos and sin are (1, seq, head_dim): 2*3*4*2 = 48 at any batch; final norm 6*8*4 + 6*4
    assert C.model_level_saved(tiny, batch2, prec(batch2)) == 48 + 216
    gc = spec(gradient_checkpointing=True)
    assert C.activations_saved(tiny, gc, prec(gc)) == 2 * 3 * 8 * 2 + 156
    assert C.first_norm_unrecorded(tiny, gc, prec(gc)) == 0  # enable_input_require_grads
    assert C.first_norm_unrecorded(tiny, full, prec(full)) == 0  # the embedding trains
    assert C.recompute_transient(tiny, gc, prec(gc)) == 1140
    assert C.recompute_transient(tiny, t, p) == 0


def test_mixed_precision_keeps_an_fp32_residual_stream(tiny):
    mixed = spec(method="full", precision="mixed")
    p = prec(mixed)
    assert (p.compute, p.weight, p.hidden, p.stream) == (2, 4, 2, 4)
    q = spec(method="qlora")
    assert (prec(q).hidden, prec(q).stream) == (4, 4)
    assert (prec(spec()).hidden, prec(spec()).stream) == (2, 2)
    # the norm's fp32 input (96) and rsqrt (12), and the normalized input kept in fp32 (96)
    assert C.norm_saved(tiny, mixed, p) == 96 + 12 + 96
    # q, k, v, gate and up each keep their own bf16 cast of the fp32 norm output, + down's input
    assert C.linear_inputs_saved(tiny, mixed, p) == 3 * (5 * 8 + 16) * 2
    # RoPE in the stream's dtype: 2 * 3 * 4 * 4; the final norm as above
    assert C.model_level_saved(tiny, mixed, p) == 96 + 204 + 3 * 8 * 2
    gc = spec(method="full", precision="mixed", gradient_checkpointing=True)
    # checkpointed layers keep their fp32 inputs: 2 layers * 3 * 8 * 4
    assert C.activations_saved(tiny, gc, prec(gc)) == 2 * 96 + 96 + 204 + 48


def test_eager_attention_keeps_probabilities(tiny):
    eager = tiny.with_traits(eager_attention=True)
    t = spec()
    # q's copy and k, v expanded to both heads, 3 * 3 * 8 * 2 = 144 (no output, no
    # logsumexp) + 1 * 2 heads * 3 * 3 scores, each kept as softcapped bf16 (2), fp32 softmax
    # (4) and bf16 probabilities (2)
    assert C.attention_core_saved(eager, t, prec(t)) == 144 + 18 * 8
    full = spec(method="full")
    # and a trainable o_proj keeps the copy of the output transformers makes: 3 * 8 * 2 more
    assert C.linear_inputs_saved(eager, full, prec(full)) == 3 * (8 + 8 + 16) * 2 + 48


def test_final_logit_softcapping_keeps_tanh(tiny):
    capped = tiny.with_traits(logit_softcapping=True)
    t = spec()
    assert C.softcap_saved(capped, t, prec(t)) == 3 * 10 * 2
    assert C.logits_forward(capped, t, prec(t)) == 300 + 60 + 48
    assert C.logits_backward(capped, t, prec(t)) == 360 + 60
    assert C.softcap_saved(tiny, t, prec(t)) == 0


def test_logits_and_copies(tiny):
    t = spec()
    p = prec(t)
    # + the final norm's output, lm_head's input, T*h*c
    assert C.logits_forward(tiny, t, p) == 3 * 10 * (2 + 4 + 4) + 3 * 8 * 2
    full = spec(method="full")
    assert C.logits_forward(tiny, full, prec(full)) == 300  # counted as lm_head's saved input
    q = spec(method="qlora")
    assert C.logits_forward(tiny, q, prec(q)) == 300 + 3 * 8 * 4  # fp32 hidden stream
    assert C.logits_backward(tiny, t, p) == 3 * 10 * 12
    assert C.autocast_weight_copies(tiny, t, p) == 512 * 2
    assert C.autocast_weight_copies(tiny, spec(method="dora"), p) == 512 * 2
    pure = spec(precision="pure")
    assert C.autocast_weight_copies(tiny, pure, prec(pure)) == 0


def test_recompute_incoming_grads(tiny):
    assert C.recompute_incoming_grads(tiny, spec(), prec(spec())) == 0  # no checkpointing, no recomputation
    gc = spec(gradient_checkpointing=True)
    assert C.recompute_incoming_grads(tiny, gc, prec(gc)) == 3 * 8 * 2  # the layer output's bf16 gradient
    dora = spec(method="dora", gradient_checkpointing=True)
    # + DoRA on down_proj: the magnitude scale's and the cast's fp32 gradients, 2 * T*h*4, and
    # the base output's gradient cast back to bf16, T*h*2
    assert C.recompute_incoming_grads(tiny, dora, prec(dora)) == 48 + 2 * 3 * 8 * 4 + 48
    qdora = spec(method="qdora", gradient_checkpointing=True)
    # fp32 hidden stream: an fp32 output gradient and no cast: T*h*4 + T*h*4
    assert C.recompute_incoming_grads(tiny, qdora, prec(qdora)) == 96 + 96
    attention_only = spec(method="dora", gradient_checkpointing=True, target_modules=("q_proj", "v_proj"))
    assert C.recompute_incoming_grads(tiny, attention_only, prec(attention_only)) == 48


def test_backward_autocast_copies_under_checkpointing_are_one_layers(tiny):
    t = spec()
    p = prec(t)
    # all layers' copies, kept by the matmuls, but the first layer's q/k/v lora_A (3 * 2 * 8), whose
    # input needs no gradient
    assert C.backward_autocast_copies(tiny, t, p) == (512 - 3 * 2 * 8) * 2
    gc = spec(gradient_checkpointing=True)
    assert C.backward_autocast_copies(tiny, gc, prec(gc)) == 512 * 2 // 2  # the recomputed layer's (L=2)
    pure = spec(precision="pure", gradient_checkpointing=True)
    assert C.backward_autocast_copies(tiny, pure, prec(pure)) == 0


def test_transients(tiny):
    q = spec(method="qlora")
    assert C.dequant_transient(tiny, q, prec(q)) == 128 * 2
    assert C.dequant_transient(tiny, spec(), prec(spec())) == 0
    d = spec(method="dora")
    # down_proj 16 -> 8: bf16 identity 16*16*2 + four dense 8x16 fp32 = 512 + 2048, larger than
    # the product moment: fp32 + bf16 identity 16*16*6 + B's output 16*8*2 = 1792
    down = tiny.linears[-1]
    assert variant(d).adapter.norm_transient(down, d, prec(d)) == 2560
    pure = spec(method="dora", precision="pure")
    assert variant(pure).adapter.norm_transient(down, pure, prec(pure)) == 16 * 16 * 4 + 2048  # fp32 identity


def test_dora_product_moment_wins_when_in_is_much_larger_than_out():
    from planner.model.specs import Linear

    lin = Linear("down_proj", 64, 4)
    t = spec(method="dora")
    # at the norm: 64*64*2 + 4*4*64*4 = 12288; at the product: 64*64*(4+2) + 64*4*2 = 25088
    assert variant(t).adapter.norm_transient(lin, t, prec(t)) == 25088


def test_checkpoint_input_leaf(tiny):
    gc = spec(gradient_checkpointing=True)
    assert C.checkpoint_input_leaf(tiny, gc, prec(gc)) == 2 * 3 * 8 * 2
    q = spec(method="qlora", gradient_checkpointing=True)
    assert C.checkpoint_input_leaf(tiny, q, prec(q)) == 2 * 3 * 8 * 4  # fp32 hidden stream
    assert C.checkpoint_input_leaf(tiny, spec(), prec(spec())) == 0
    full = spec(method="full", gradient_checkpointing=True)
    assert C.checkpoint_input_leaf(tiny, full, prec(full)) == 0


def test_allocator_reserve():
    assert C.allocator_reserve(100) == 5
    assert C.allocator_reserve(101) == 6  # rounds up


def test_fused_qkv_keeps_the_whole_qkv_output(tiny):
    from planner.model.catalog import model_from_config

    fused = model_from_config({**tiny.hf_config(), "model_type": "phi3"}, "tiny-phi3")
    t = spec()
    # as the Llama layout (168) + the q and k parts of the fused output kept behind v: 3 * (8 + 4) * 2
    assert C.attention_core_saved(fused, t, prec(t)) == 168 + 72


def test_rotary_concat_makes_o_proj_keep_a_copy_of_the_attention_output(tiny):
    from planner.model.catalog import model_from_config

    phi3 = model_from_config({**tiny.hf_config(), "model_type": "phi3"}, "tiny-phi3")
    assert phi3.traits.rotary_concat and not tiny.traits.rotary_concat
    full = spec(method="full")
    # the Llama layout's 3 * (8 + 8 + 16) * 2, and the contiguous copy before o_proj: 3 * 8 * 2
    assert C.linear_inputs_saved(phi3, full, prec(full)) == 192 + 48
    assert C.linear_inputs_saved(phi3, spec(), prec(spec())) == 0  # a frozen o_proj keeps no input


def test_layer_transient_worst_moment(tiny):
    d = spec(method="dora")
    p = prec(d)
    # down_proj's moment wins: its input (16) and fp32 cast live, 3*16*(2+4) = 288; what the
    # layer kept before it: norm 108, q 156, k 108, v 108, attention 168, o 156, norm 108,
    # gate 252, up 252, MLP 288 = 1704; the locals, 4 * 3*8*2 = 192 (the embedding output, the
    # layer's input, the attention block's sum, the post-attention norm output); its DoRA
    # transient 2560 (see test_transients), and the base output peft made before it, 3*8*2
    assert M.layer_transient(tiny, d, p) == M.LayerMoment(live=288 + 48, before=1704, locals=192, dora=2560)
    assert C.layer_saved(tiny, d, p) == 1704 + 204  # + down's own: 3*16*2 + 3*2*2 + 3*8*(2+2)
    # LoRA: down_proj forming its output, the base output, lora_B's and the scaled one
    # 3 * 3*8*2 = 144, after it kept the whole layer: 1032 before it + its own 3*16*2 + 3*2*2
    assert M.layer_transient(tiny, spec(), prec(spec())) == M.LayerMoment(live=288, before=1140, locals=192,
                                                                          working=144)
    gc = spec(gradient_checkpointing=True)
    # checkpointed: nothing kept in the layer, and up_proj wins: its input and fp32 cast
    # 3*8*6 = 144, the attention sum 48 and act(gate) 3*16*2 = 96, its three outputs 3*16*6 =
    # 288 (down_proj: 288 + 96 + 144 = 528 < 576)
    assert M.layer_transient(tiny, gc, prec(gc)) == M.LayerMoment(live=144, locals=48 + 96, working=288)
    # recomputed in backward: the whole saved prefix, and no working set (see the docstring)
    assert M.layer_transient(tiny, gc, prec(gc), recompute=True) == M.LayerMoment()


def test_recompute_stop_extra(tiny):
    assert M.recompute_stop_extra(tiny, spec(), prec(spec())) == 0  # no checkpointing
    gc = spec(gradient_checkpointing=True)
    # down_proj's input and fp32 cast 3*16*6 = 288, the attention sum and the post-attention
    # norm output 2 * 3*8*2 = 96, down's base output 3*8*2 = 48
    assert M.recompute_stop_extra(tiny, gc, prec(gc)) == 288 + 96 + 48
    full = spec(method="full", gradient_checkpointing=True)
    # full fine-tuning stops when down_proj saves its input: no cast, no output yet
    assert M.recompute_stop_extra(tiny, full, prec(full)) == 3 * 16 * 2 + 96


def test_layer_locals(tiny):
    lin = {lin.name: lin for lin in tiny.linears}
    t = spec()
    p = prec(t)
    th = 3 * 8 * 2
    # the embedding output and the layer's input; o_proj also the input norm's output
    assert [M.layer_locals(tiny, t, p, lin[n]) for n in ("q_proj", "o_proj")] == [2 * th, 3 * th]
    # MLP: + the attention block's sum; down_proj also the post-attention norm's output
    assert [M.layer_locals(tiny, t, p, lin[n]) for n in ("gate_proj", "down_proj")] == [3 * th, 4 * th]
    q = spec(method="qlora")
    # fp32 stream: the norms' saved inputs are those tensors themselves: only the embedding
    # output and the norm output remain, 3*8*4 each
    assert M.layer_locals(tiny, q, prec(q), lin["down_proj"]) == 2 * 96
    gc = spec(gradient_checkpointing=True)
    # checkpointed: the attention sum, and act(gate) while up_proj runs (3*16*2)
    assert M.layer_locals(tiny, gc, prec(gc), lin["up_proj"]) == th + 96


def test_module_working_set(tiny):
    lin = {lin.name: lin for lin in tiny.linears}["up_proj"]
    t = spec()
    assert NoAdapter().working_set(lin, t, prec(t)) == 3 * 16 * 2
    assert variant(t).adapter.working_set(lin, t, prec(t)) == 3 * 16 * 6  # base, lora_B, scaled
    q = spec(method="qlora")
    # fp32 base output: the scaled copy and the fp32 sum beside it win, 3*16*(4 + 4 + 2)
    assert variant(q).adapter.working_set(lin, q, prec(q)) == 3 * 16 * 10
    d = spec(method="dora")
    # base and lora_B outputs (2 + 2), three fp32 products of the magnitude scale (12), and
    # the two dense fp32 casts of the norm computation, 2 * 16*8*4
    assert variant(d).adapter.working_set(lin, d, prec(d)) == 3 * 16 * 16 + 1024


def test_dora_backward_moment(tiny):
    d = spec(method="dora")
    # down_proj's backward: the layer keeps all it saved (1908) and three fp32 gradients of
    # down's output, 3 * 3 * 8 * 4 = 288; it beats up_proj: norm..up (1416) + 3 * 3 * 16 * 4 = 576
    assert M.adapter_backward_moment(tiny, d, prec(d)) == (1908, 288)
    gc = spec(method="dora", gradient_checkpointing=True)
    # checkpointed: down_proj's DoRA output in the recomputation, which stops there (the layer's
    # last module) after one fp32 product 3*8*4 = 96, beside down's input and its fp32 cast
    # 3*16*(2+4) = 288, two dense fp32 casts 2*8*16*4 = 1024 and the bf16 identity 16*16*2 = 512;
    # the layer keeps its recomputed locals too, the attention sum and the norm output (2*3*8*2)
    assert M.adapter_backward_moment(tiny, gc, prec(gc)) == (1908 + 96, 96 + 288 + 1024 + 512)
    assert M.adapter_backward_moment(tiny, spec(), prec(spec())) == (0, 0)


def test_modules_to_save_copies_and_their_training_state(tiny):
    """peft's modules_to_save: each saved module a V x h copy (80 here) in the weight dtype
    (fp32 under QLoRA), with its gradient and two AdamW states; the adapters' 512 in fp32."""
    both = spec(modules_to_save=("embed_tokens", "lm_head"))
    p = prec(both)
    assert C.saved_module_bytes(tiny, both, p) == 2 * 80 * 2
    assert C.trainable_bytes(tiny, both, p) == 512 * 4 + 2 * 80 * 2
    assert C.grads(tiny, both, p) == 512 * 4 + 320
    assert C.optimizer_states(tiny, both, p) == 2 * (512 * 4 + 320)
    assert C.optimizer_transient(tiny, both, p) == 512 * 4 + 320  # both dtype groups' sqrt lists
    q = spec(method="qlora", modules_to_save=("lm_head",))
    assert C.saved_module_bytes(tiny, q, prec(q)) == 80 * 4
    assert C.saved_module_bytes(tiny, spec(), p) == 0
    full = spec(method="full", modules_to_save=("lm_head",))
    assert C.saved_module_bytes(tiny, full, prec(full)) == 0  # full trains the module itself
    # 8-bit AdamW: an 80-element copy is below its 4096-element threshold: 32-bit states
    eight = spec(optim="adamw_8bit", modules_to_save=("lm_head",))
    plain = spec(optim="adamw_8bit")
    assert C.optimizer_states(tiny, eight, p) - C.optimizer_states(tiny, plain, p) == 2 * 80 * 4


def test_a_trained_lm_head_keeps_its_input_and_a_trained_embedding_makes_layer_0_record(tiny):
    head = spec(modules_to_save=("lm_head",))
    p = prec(head)
    plain = spec()
    # lm_head's input, T*h*c, kept to the lm_head's backward
    assert C.model_level_saved(tiny, head, p) - C.model_level_saved(tiny, plain, p) == 3 * 8 * 2
    # ... which on a bf16 stream is the final norm's output the logits term counted: not twice
    assert C.logits_forward(tiny, head, p) == 3 * 10 * (2 + 4 + 4)
    q_head = spec(method="qlora", modules_to_save=("lm_head",))
    q = spec(method="qlora")
    # under QLoRA the kept input is autocast's bf16 copy of the fp32 output: both
    assert C.logits_forward(tiny, q_head, prec(q_head)) == C.logits_forward(tiny, q, prec(q))
    embed = spec(modules_to_save=("embed_tokens",))
    assert C.first_norm_unrecorded(tiny, embed, p) == 0
    assert C.first_norm_unrecorded(tiny, plain, p) == C.norm_saved(tiny, plain, p) > 0
    gc_embed = spec(modules_to_save=("embed_tokens",), gradient_checkpointing=True)
    assert C.checkpoint_input_leaf(tiny, gc_embed, prec(gc_embed)) == 0  # the output is no leaf


def test_eager_softmax_moments_by_hand(tiny):
    """Eager attention's softmax: forward (c + 8) bytes per score (masked scores, fp32 upcast,
    fp32 output); backward two fp32 gradients, 8 per score, while the layer keeps what came
    before attention and attention's set but its c-byte probabilities. S = 1*2*3*3 = 18."""
    eager = spec(attn_implementation="eager")
    p = prec(eager)
    assert M.eager_scores(tiny, eager) == 18
    assert M.eager_forward_moment(tiny, eager, p).working == 18 * (2 + 8)
    kept, workspace = M.eager_backward_moment(tiny, eager, p)
    assert workspace == 18 * 8
    assert kept == (M.saved_before(C.layer_saved_sequence(tiny, eager, p), "attention")
                    + C.attention_core_saved(tiny, eager, p) - 18 * 2
                    + eager.tokens * tiny.hidden_size * p.stream)  # the residual gradient (no checkpointing)
    sdpa = spec()
    assert M.eager_forward_moment(tiny, sdpa, prec(sdpa)).total == 0
    assert M.eager_backward_moment(tiny, sdpa, prec(sdpa)) == (0, 0)
