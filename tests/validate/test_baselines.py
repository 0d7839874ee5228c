"""The baseline matrix: its size by hand, unique keys, and rows that round-trip to their config."""
from types import SimpleNamespace

from validate import baselines as B


def test_matrix_size_by_hand():
    configs = B.matrix()
    # tier 1: 11 models x 5 methods x (2 batches x 2 seqs x 2 checkpointing) = 440
    # tier 2: 11 models x 4 adapter methods x 3 rank/target pairs x 8 = 1056
    # tier 3: 2 large models x QLoRA x 2 ranks x 8 = 32
    # tier 4: 3 models x (4 adapter methods in fp16 + full mixed + full pure) x 8 = 144
    # tier 5: 9 architectures x 5 methods x 8 = 360, less DoRA and QDoRA on the two MoE families
    #         whose all-linear peft converts to fused experts (2 x 2 x 8 = 32) = 328
    # tier 6: 2 models x 2 checkpointing x (3 methods x 2 dropouts x 2 seqs + 4 methods x 4 eager seqs
    #         + 3 methods x 2 module sets x 2 batches) = 4 x (12 + 16 + 12) = 160
    # tier 7: one rank of 2, 4 and 8 GPUs, 3 models x 3 GPU counts x (FSDP x 5 methods + DDP x 5 methods)
    #         = 90, and Llama-2-70B QLoRA under FSDP x 3 GPU counts x 2 checkpointing = 6: 96
    # tier 8: today's dense families, one model each x 5 methods x 8
    tier8 = len(B.DENSE_FAMILY_MODELS) * 5 * 8
    # tier 9: today's mixtures of experts x 5 methods x 8, less DoRA and QDoRA (2 x 8) on each
    # whose all-linear peft converts to fused experts (OLMoE, GLM-4.5-Air, GLM-4.5, DeepSeek-V3,
    # Kimi-K2, DeepSeek-V3.2-Exp): 11 x 40 - 6 x 16 = 344 (Llama 4, Phi-3.5-MoE and Gemma-4-26B-A4B keep
    # DoRA: all-linear reaches no expert there)
    tier9 = len(B.MOE_FAMILY_MODELS) * 5 * 8 - 6 * 2 * 8
    # tier 10: the hybrids, 3 models x 5 methods x 2 kernel paths x 2 checkpointing x 3 seqs at batch 1 = 180,
    # less QLoRA and QDoRA on the fused path of the two Mamba-2 families (2 x 2 x 2 x 3 = 24): 156
    tier10 = len(B.HYBRID_FAMILY_MODELS) * 5 * 2 * 2 * 3 - 2 * 2 * 2 * 3
    # tier 11: the Gated DeltaNet hybrids x 5 methods x 2 kernel paths x 2 checkpointing x 3 seqs,
    # less DoRA and QDoRA on Qwen3-Next, whose all-linear peft converts to fused experts (2 x 12)
    tier11 = len(B.DELTANET_FAMILY_MODELS) * 5 * 12 - 2 * 12
    # tier 12: the eagerly attending models x 2 seqs x 2 checkpointing x 3 methods (full, LoRA, QLoRA)
    tier12 = len(B.EAGER_LONG_MODELS) * 2 * 2 * 3
    assert len(configs) == 440 + 1056 + 32 + 144 + 328 + 160 + 96 + tier8 + tier9 + tier10 + tier11 + tier12 == 3296
    assert len({c.key() for c in configs}) == len(configs)


def test_hybrid_tier_cuts_hold_every_kind():
    """A hybrid cut to a few layers keeps one of each kind (the first 2 layers of Granite-4.0-H
    are both Mamba-2; its first attention layer is layer 5)."""
    for model, kinds in (("granite-4.0-h-tiny@2L", ["mamba2", "attention"]),
                         ("nemotron-h-8b@3L", ["mamba2", "mlp", "attention"]),
                         ("lfm2-1.2b@2L", ["short_conv", "attention"])):
        assert [k.name for k in B.spec_for(model).kinds] == kinds
    assert [k.name for k in B.with_layers(B.get_model("llama-3.2-1b"), 2, "x").kinds] == ["decoder"]
    kernels = {c.train.kernels for c in B.hybrid_families_tier()}
    assert kernels == {"torch", "fused"} and {c.train.kernels for c in B.matrix()[:2360]} == {"auto"}


def test_a_cut_gemma4_keeps_valid_kv_shared_layers():
    """Gemma 4's KV-shared layers end the model: a cut keeps their share, rounded down, and fewer
    where a shared layer's attention type would have no earlier layer (E2B: 4 sliding : 1 full)."""
    kinds = {k.name: k.indices for k in B.spec_for("gemma-4-e2b@10L").kinds}
    assert kinds == {"sliding_attention": (0, 1, 2, 3), "full_attention": (4,),
                     "shared_kv_sliding_attention": (5, 6, 7, 8), "shared_kv_full_attention": (9,)}
    # 20 of 35 shared gives 1 of 2, whose full layer would read from no earlier full layer: none
    assert [k.name for k in B.spec_for("gemma-4-e2b@2L").kinds] == ["sliding_attention", "full_attention"]


def test_precision_tier():
    tier4 = [c for c in B.matrix() if (c.train.dtype, c.train.precision) != ("bf16", "autocast")]
    assert {(c.train.dtype, c.train.precision) for c in tier4} == {
        ("fp16", "autocast"), ("fp16", "mixed"), ("bf16", "pure")}
    assert {c.model for c in tier4} == set(B.PRECISION_MODELS)
    assert {c.train.method for c in tier4 if c.train.precision != "autocast"} == {"full"}
    assert "full" not in {c.train.method for c in tier4 if c.train.precision == "autocast"}


def test_rows_round_trip_to_their_config():
    measurement = SimpleNamespace(peak_allocated_bytes=3, phase_peaks={"forward": 1, "backward": 3, "optimizer": 2},
                                  peak_phase="backward")
    for cfg in B.matrix()[::97] + B.regression_configs():
        row = B.row_from_trace(cfg, measurement, {})
        assert B.config_of(row).key() == cfg.key()


def test_key_tells_precisions_apart():
    cfg = B.matrix()[0]
    other = B.Config(cfg.model, cfg.train.with_(dtype="fp16"))
    assert other.key() != cfg.key()


def test_parallel_tier_and_legacy_tables(tmp_path):
    tier7 = B.parallel_tier()
    assert {(c.train.num_gpus, c.train.sharding) for c in tier7} == {(n, s) for n in (2, 4, 8) for s in ("fsdp", "ddp")}
    assert {c.train.method for c in tier7 if c.train.sharding == "fsdp"} == set(B.METHODS)
    one = B.matrix()[0]
    assert (one.train.num_gpus, one.train.sharding) == (1, "none")
    assert B.Config(one.model, one.train.with_(num_gpus=2, sharding="ddp")).key() != one.key()
    legacy = tmp_path / "legacy.csv"  # a table from before several GPUs reads as one GPU
    legacy.write_text(",".join(B.LEGACY_FIELDS) + "\n" + "m,lora,1,8,8,all-linear,0,bf16,autocast,adamw_torch,"
                      "3,1,3,2,backward,t,t,p,b\n")
    row = B.load(str(legacy))[0]
    assert (row["num_gpus"], row["sharding"], row["lora_dropout"], row["attn_implementation"]) == ("1", "none", "0.0", "auto")
    assert B.config_of(row).train.num_gpus == 1
