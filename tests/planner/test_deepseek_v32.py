"""DeepSeek-V3.2 (deepseek_v32) in the architecture table: DeepSeek-V3's layer with the
sparse-attention indexer (transformers 5.23 modeling_deepseek_v32.DeepseekV32Indexer). Its
Linears and norm, what peft's all-linear and full fine-tuning do to them (trainable, never a
gradient: the indexer runs under torch.no_grad), the mask the attention kernel keeps and the
indexer's scoring workspace, each against a hand sum; bad configs refused naming the field."""
import json

import pytest
from click.testing import CliRunner

from planner import plan
from planner.memory import layer as M
from planner.memory import terms as C
from planner.model import counts
from planner.model import inventory as inv
from planner.model import targets
from tiny_layouts import spec, train

MOE = dict(moe_intermediate_size=48, n_routed_experts=8, num_experts_per_tok=2, n_shared_experts=1,
           first_k_dense_replace=1, n_group=2, topk_group=1, norm_topk_prob=True, routed_scaling_factor=2.5)
MLA = dict(MOE, num_key_value_heads=4, q_lora_rank=48, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8,
           v_head_dim=16, head_dim=None)
DSA = dict(MLA, index_n_heads=4, index_head_dim=32, index_topk=16)
INDEXER = {"indexer.wq_b": ("index_q", 48, 128), "indexer.wk": ("index_k", 128, 32),
           "indexer.weights_proj": ("index_w", 128, 4)}


def v32(**fields):
    return spec("deepseek_v32", **{**DSA, **fields})


def test_layout_is_deepseek_v3_with_the_indexer_after_the_latent_projections():
    m, v3 = v32(), spec("deepseek_v3", **MLA)
    for kind, kind3 in zip(m.kinds, v3.kinds):
        lins = kind.layer.linears
        assert [lin.name for lin in lins[:4]] == [lin.name for lin in kind3.layer.linears[:4]]
        assert {lin.name: (lin.role, lin.in_features, lin.out_features) for lin in lins[4:7]} == INDEXER
        assert lins[7].name == "o_proj" and lins[8:] == kind3.layer.linears[5:]
        k_norm = kind.layer.norms_at("index_k")
        assert [(n.name, n.size, n.bias) for n in k_norm] == [("indexer.k_norm", 32, True)]
        assert (kind.layer.indexer.heads, kind.layer.indexer.head_dim, kind.layer.indexer.topk) == (4, 32, 16)
    assert [k.name for k in m.kinds] == ["dense", "moe"]


def test_count_adds_each_layer_indexer_to_deepseek_v3():
    indexer = 48 * 128 + 128 * 32 + 2 * 32 + 128 * 4
    assert counts.total_params(v32()) - counts.total_params(spec("deepseek_v3", **MLA)) == 2 * indexer


def test_all_linear_adapts_the_indexer_linears_but_no_gradient_reaches_them():
    """peft 0.21's all-linear puts LoRA on wq_b, wk and weights_proj (traced: their lora_A / lora_B
    exist), beside DeepSeek-V3's targets; the indexer runs under torch.no_grad, so those adapters
    (and, fully fine-tuned, the indexer's weights and k_norm) require grad but get no gradient:
    peft's trainable count has them, the gradients and AdamW's states do not."""
    m, t = v32(), train()
    moe = m.by_kind()[1]
    assert targets.targeted_names(moe, t) == {"q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj",
                                              *INDEXER}
    tensors = inv.inventory(m, t, 2)
    gradless = {x.path for x in tensors if x.requires_grad and not x.trained}
    assert gradless == {f"layers.*.{n}.{ab}.weight" for n in INDEXER for ab in ("lora_A", "lora_B")}
    indexer_lora = 2 * 8 * sum(i + o for _, i, o in INDEXER.values())  # two layers
    trained = sum(x.stored_bytes for x in tensors if x.trained)
    assert C.grads(m, t, C.precision(t, "bf16")) == trained == C.adapter_bytes(m, t) - 4 * indexer_lora
    assert counts.trainable_params(m, t) == counts.adapter_params(m, t)  # peft's count has them
    full = train(method="full")
    p = C.precision(full, "bf16")
    gradless_full = {x.path for x in inv.inventory(m, full, 2) if not x.trained}
    assert gradless_full == {f"layers.*.{n}.weight" for n in INDEXER} | {"layers.*.indexer.k_norm.weight",
                                                                         "layers.*.indexer.k_norm.bias"}
    indexer = 2 * (48 * 128 + 128 * 32 + 2 * 32 + 128 * 4)
    assert C.optimizer_states(m, full, p) == 2 * (counts.total_params(m) - indexer) * 2
    # negative control: DeepSeek-V3's layout trains every tensor it has
    v3 = spec("deepseek_v3", **MLA)
    assert all(x.trained for x in inv.inventory(v3, full, 2))


def test_a_rank_above_the_indexer_widths_is_planned_as_peft_adapts_it():
    """all-linear reaches weights_proj (h -> 4 heads here, 64 in the real model) and wk: peft adapts
    them at any rank, so the rank check lets them through (named targets keep the check)."""
    m = v32()
    targets.check_rank(m, train(rank=16))
    with pytest.raises(ValueError, match="indexer.weights_proj"):
        targets.check_rank(m, train(rank=16, target_modules=("weights_proj",)))


def test_sparse_mask_bias_is_kept_per_layer():
    """The mask SDPA turns into an additive bias (attention dtype), rows padded to 8 keys: seq 40
    is aligned, seq 42 pads to 48; fp32 in QLoRA without autocast; none without an indexer."""
    m, t = v32().by_kind()[1], train()
    p = C.precision(t, "bf16")
    assert C.sparse_mask_bias(m, t, p) == 40 * 40 * 2
    assert C.sparse_mask_bias(m, train(seq_len=42), p) == 42 * 48 * 2
    pure = train(method="qlora", precision="pure")
    assert C.sparse_mask_bias(m, pure, C.precision(pure, "bf16")) == 40 * 40 * 4
    v3 = spec("deepseek_v3", **MLA).by_kind()[1]
    assert C.sparse_mask_bias(v3, t, p) == 0
    assert C.attention_core_saved(m, t, p) == C.attention_core_saved(v3, t, p) + 40 * 40 * 2


def test_indexer_workspace_by_hand():
    """Batch 2 x seq 40, 4 index heads of 32 (8 rotated), bf16 autocast: wq_b's output, the rotated
    slice, q, q.float() and autocast's cast of it, the key broadcast to every query (batch > 1: a
    copy) beside the scores; at batch 1 the broadcast is a view, and the worst instant is the larger
    of that one (here: the queries' copies outweigh a score tensor) and the scaled and rectified
    scores once q's copies are freed."""
    m = v32().by_kind()[1]
    t = train(batch_size=2)
    p = C.precision(t, "bf16")
    q = 80 * 4 * 32
    queries = 2 * q * 2 + 80 * 4 * 8 * 2 + q * (4 + 2)
    assert C.indexer_workspace(m, t, p) == queries + 2 * 40 * 40 * 32 * 2 + 2 * 40 * 40 * 4 * 2
    one = train(batch_size=1)
    q1 = 40 * 4 * 32
    kept = 2 * q1 * 2 + 40 * 4 * 8 * 2  # wq_b's output, the rotated slice, q
    assert C.indexer_workspace(m, one, p) == max(kept + q1 * (4 + 2) + 40 * 40 * 4 * 2, kept + 2 * 40 * 40 * 4 * 2)
    long = train(batch_size=1, seq_len=400)  # longer: the two score tensors win
    assert C.indexer_workspace(m, long, p) == 2 * 400 * 4 * 32 * 2 + 400 * 4 * 8 * 2 + 2 * 400 * 400 * 4 * 2
    pure = train(batch_size=2, precision="pure")  # no autocast: q.float() is the matmul's input, fp32 scores
    assert C.indexer_workspace(m, pure, C.precision(pure, "bf16")) == (
        2 * q * 2 + 80 * 4 * 8 * 2 + q * 4 + 2 * 40 * 40 * 32 * 4 + 2 * 40 * 40 * 4 * 4)
    assert C.indexer_workspace(spec("deepseek_v3", **MLA).by_kind()[1], t, p) == 0


def test_long_sequences_peak_at_the_indexer_in_a_checkpointed_forward():
    """With checkpointing the forward's worst in-layer moment is the indexer's scoring (seq 4096:
    its scores outweigh every module's working set), and without the term the plan would not see it."""
    m, t = v32(), train(method="full", gradient_checkpointing=True, seq_len=4096)
    p = C.precision(t, "bf16")
    moment = M.layer_transient(m.by_kind()[1], t, p)
    assert moment.working == C.indexer_workspace(m.by_kind()[1], t, p)
    assert moment.live == M.latent_attention_made(m.by_kind()[1], t, p) == 4096 * 4 * (3 * 24 + 8 + 16 + 16) * 2
    assert plan(m, "h100", t, calibrations={}).phases["forward"] > moment.working


@pytest.mark.parametrize("field", ["index_n_heads", "index_head_dim", "index_topk"])
def test_a_missing_indexer_field_is_named(field, tmp_path):
    """A config without an indexer field is refused in one line naming it, exit 2 (transformers
    defaults them, but a DeepSeek-V3.2 checkpoint's config always sets them)."""
    from planner.cli.command import main
    from planner.model.catalog import CatalogError

    fields = {k: v for k, v in DSA.items() if k != field}
    with pytest.raises(CatalogError, match=f"lacks the field '{field}'"):
        spec("deepseek_v32", **fields)
    from tiny_layouts import TINY

    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"model_type": "deepseek_v32", **TINY, **{k: v for k, v in fields.items()
                                                                          if v is not None}}))
    result = CliRunner().invoke(main, ["--model", str(cfg), "--gpu", "h100", "--method", "lora"])
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and f"'{field}'" in result.stderr


@pytest.mark.parametrize("fields,message", [
    (dict(index_head_dim=4), "'index_head_dim' 4 must be at least qk_rope_head_dim 8"),
    (dict(index_n_heads=0), "'index_n_heads' must be a positive integer"),
    (dict(q_lora_rank=None), "'q_lora_rank' must be a positive integer"),
])
def test_bad_indexer_fields_are_refused(fields, message):
    from planner.model.catalog import CatalogError

    with pytest.raises(CatalogError, match=message):
        v32(**fields)


def test_adapters_no_gradient_reaches_are_refused():
    """LoRA on the indexer alone trains nothing (the loss has no grad_fn: backward fails): refused
    in one line; with another target, a fused parameter or a saved module it is planned."""
    from planner.model.targets import UnsupportedMethod

    m = v32()
    with pytest.raises(UnsupportedMethod, match="no gradient reaches the adapters on indexer.wk"):
        targets.check_rank(m, train(target_modules=("wk",)))
    targets.check_rank(m, train(target_modules=("wk", "q_a_proj")))
    targets.check_rank(m, train(target_modules=("wk", "down_proj")))  # converted to the experts' down
    targets.check_rank(m, train(target_modules=("wk",), modules_to_save=("lm_head",)))
    result = CliRunner().invoke(__import__("planner.cli.command", fromlist=["main"]).main,
                                ["--model", "deepseek-v3.2-exp", "--gpu", "h200", "--method", "lora",
                                 "--target-modules", "wk,weights_proj"])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1 and "no gradient reaches" in result.stderr


def test_time_model_runs_the_indexer_forward_only_and_adds_its_scoring():
    """DeepSeek-V3.2-Exp against DeepSeek-V3 (the same main model): the indexer's Linears add
    forward matmuls only (torch.no_grad: no input or weight gradient, even under full
    fine-tuning), and its scoring adds 2*b*s^2*heads*head_dim FLOPs a layer forward, by hand:
    61 layers, 64 heads of 128. Negative control: counting the indexer's Linears backward
    (as every other Linear) changes the backward sums."""
    from planner import TrainSpec, get_model
    from planner.time import timing

    v3, v32 = get_model("deepseek-v3"), get_model("deepseek-v3.2-exp")
    tr = TrainSpec(method="full", batch_size=2, seq_len=1024)
    prec = C.precision(tr, "bf16")

    def flops(model, term, fn):
        return sum(w.flops for w in fn(model, tr, prec) if w.term == term)

    t, h, q_rank = tr.tokens, 7168, 1536
    indexer_linears = q_rank * 64 * 128 + h * 128 + h * 64  # wq_b, wk, weights_proj
    for term in ("backward/input_grad", "backward/weight_grad"):
        assert flops(v32, term, timing.base_matmuls) == flops(v3, term, timing.base_matmuls), term
    assert (flops(v32, "forward/matmul", timing.base_matmuls) - flops(v3, "forward/matmul", timing.base_matmuls)
            == 61 * 2 * t * indexer_linears)
    scoring = 61 * 2 * tr.batch_size * tr.seq_len ** 2 * 64 * 128
    assert (flops(v32, "attention/core", timing.attention_work)
            - flops(v3, "attention/core", timing.attention_work)) == scoring

    real = timing.INDEXER_ROLES
    try:
        timing.INDEXER_ROLES = frozenset()
        assert flops(v32, "backward/input_grad", timing.base_matmuls) > flops(v3, "backward/input_grad",
                                                                              timing.base_matmuls)
    finally:
        timing.INDEXER_ROLES = real
