"""The methods as variants: a base treatment of the weights and an adapter kind.

peft composes a LoRA layer from the base layer it wraps and a variant that owns what differs
(``LoraVariant``, ``DoraLinearVariant``); the methods compose the same way here:

=========  ============  ============
method     base          adapter
=========  ============  ============
full       16-bit        none
lora       16-bit        LoRA
rslora     16-bit        rsLoRA
qlora      4-bit         LoRA
dora       16-bit        DoRA
qdora      4-bit         DoRA
=========  ============  ============

Each part owns its formulas: the base treatment what the weights are stored as and what a
matmul on them makes (bitsandbytes' dequantized weight); the adapter kind the tensors it adds
to a targeted Linear, what it keeps for backward, what it forms while it runs, and its
transients (DoRA's weight norm). The formulas and their evidence are the ones the tracer
checked (tests/probes); a term that is the same for every method stays in
:mod:`planner.memory.terms`.
"""
from __future__ import annotations

from dataclasses import dataclass

from planner.model.architectures import Linear
from planner.model.specs import TrainSpec
from planner.time import roofline as R
from planner.time.roofline import Work
from planner.units import FP32

# Eager ops one adapted Linear adds to a layer's forward (planner.time.timing.dispatched_ops):
# the input cast, autocast's casts, A, B, the scaling and the sum; dropout 2 more; DoRA's weight
# norm and scaling 15; a 4-bit Linear's dequantization and casts 3.
OPS_ADAPTER, OPS_DROPOUT, OPS_DORA, OPS_QUANT = 8, 2, 15, 3


def lora_input_bytes(train: TrainSpec, prec) -> int:
    """Bytes per element of the input copy each LoRA module keeps for its A gradient.

    peft casts the layer input to the adapter dtype (fp32) per module (`_cast_input_dtype`).
    Without autocast that fp32 copy is what lora_A keeps: 4 bytes. Under autocast, lora_A's
    matmul casts it back to the compute dtype and keeps that copy instead: c bytes.
    """
    return prec.compute if prec.autocast else FP32


# ---------------------------------------------------------------- base treatments

@dataclass(frozen=True)
class BaseTreatment:
    """The base model's weights in the compute or stored dtype (16-bit methods)."""

    name: str = "16-bit"
    quantized: bool = False

    def hidden_bytes(self, compute: int) -> int:
        """Bytes of a Linear's output and the MLP between the matmuls: the compute dtype."""
        return compute

    def parameter_bytes(self, weight: int) -> int:
        """Bytes of a base parameter as stored (``weight``: the stored weight dtype's bytes)."""
        return weight

    def dequant_transient(self, lin: Linear, prec, backward: bool = False) -> int:
        """The dense copy of the weight a matmul makes: none."""
        return 0

    ops = 0  # eager ops a base Linear adds beside its matmul

    def dequant_bytes(self, lin: Linear, train: TrainSpec, c: int) -> float:
        """Bytes one dequantization of ``lin``'s weight moves: none."""
        return 0

    def work(self, lin: Linear, train: TrainSpec, prec, layers: int) -> list[Work]:
        """Work beside ``lin``'s matmul in ``layers`` layers: none."""
        return []


@dataclass(frozen=True)
class FourBit(BaseTreatment):
    """bitsandbytes' 4-bit weights (QLoRA, QDoRA)."""

    name: str = "4-bit"
    quantized: bool = True

    def hidden_bytes(self, compute: int) -> int:
        """fp32: prepare_model_for_kbit_training casts the norm weights to fp32, so each norm's
        output is fp32, and Linear4bit casts its output back to its input's dtype: every
        Linear4bit fed by a norm, and the MLP between them, produces fp32 tensors (tracer:
        Llama-2-7B's gate/up/act outputs take twice LoRA's bytes)."""
        return FP32

    def parameter_bytes(self, weight: int) -> int:
        """fp32 for every base parameter but the packed Linear weights (embeddings, norms,
        lm_head, biases, a mixture of experts' fused experts and routers, modules_to_save
        copies): prepare_model_for_kbit_training casts all 16-bit parameters that are not
        Params4bit to fp32, and bitsandbytes swaps nn.Linear modules only."""
        return FP32

    def dequant_transient(self, lin: Linear, prec, backward: bool = False) -> int:
        """bitsandbytes' training matmul dequantizes the whole 4-bit weight to the compute dtype:
        out*in*c, one module at a time, in forward and again in ``backward``, where
        MatMul4Bit.backward runs ``dequantize_4bit(B, state).to(grad_output.dtype)``: the weight
        comes out in the quant state's dtype, the dtype the model was loaded in, and is then
        cast to the compute dtype, both alive at the cast: c + 4 bytes per element under
        `mixed`, whose model is loaded in fp32 (the forward's gemm_4bit dequantizes straight to
        the input's dtype: c). Tracer, Phi-3-mini 2 layers, QLoRA mixed bf16: an fp32 and a bf16
        [16384, 3072] gate_up weight live at the backward peak."""
        per = prec.compute + (prec.weight if backward and prec.weight != prec.compute else 0)
        return lin.in_features * lin.out_features * per

    ops = OPS_QUANT

    def dequant_bytes(self, lin: Linear, train: TrainSpec, c: int) -> float:
        """One dequantization of an n-element 4-bit weight: its codes (half a byte each) read,
        n*c bytes written, and one fp32 absmax per 64-weight block read (Dettmers et al. 2023,
        QLoRA; bitsandbytes MatMul4Bit: the backward's functional.dequantize_4bit, the forward's
        dequantize-then-linear path for more than 1,536 tokens). Double-quantized, the absmax
        is first rebuilt per pass: its 8-bit codes read and fp32 written (dequantize_blockwise),
        the offset added (fp32 read and written), then read by the 4-bit kernel: 1 + 4 + 8 + 4
        = 17 bytes per block instead of 4."""
        absmax = 17 if train.double_quant else FP32
        return lin.in_features * lin.out_features * (0.5 + absmax / 64 + c)

    def work(self, lin: Linear, train: TrainSpec, prec, layers: int) -> list[Work]:
        """qlora/dequant: the weight dequantized in forward and again in backward
        (:meth:`dequant_bytes`), and the fp32 hidden stream cast to and from the compute dtype,
        T*(in + out)*(4 + c) bytes per pass."""
        c = prec.compute
        per_pass = self.dequant_bytes(lin, train, c) + train.tokens * (lin.in_features + lin.out_features) * (FP32 + c)
        return [Work("qlora/dequant", 0, layers * per_pass, R.MEMORY, layer=True),
                Work("qlora/dequant", 0, layers * per_pass, R.MEMORY)]


# ---------------------------------------------------------------- adapter kinds

@dataclass(frozen=True)
class NoAdapter:
    """Full fine-tuning: no adapter; every base weight trains."""

    name: str = "none"
    trains_base: bool = True
    dora: bool = False

    def tensors(self, lin: Linear, rank: int) -> tuple:
        """(name, shape, role) of the tensors the adapter adds to ``lin``: none."""
        return ()

    def scaling(self, alpha: float, rank: int) -> float:
        return 0.0

    def trained_bytes(self, weight: int) -> int:
        """Bytes of a trained parameter: the base weight's own dtype."""
        return weight

    def saved(self, lin: Linear, train: TrainSpec, prec) -> int:
        """What the adapter of ``lin`` keeps for backward: nothing."""
        return 0

    def dropout_saved(self, lin: Linear, train: TrainSpec, prec) -> int:
        return 0

    def dropout_unrecorded(self, lin: Linear, train: TrainSpec, prec) -> int:
        """The part of :meth:`dropout_saved` kept only when the module's input needs a gradient
        (what the first layer's q/k/v adapters do not keep, terms.first_norm_unrecorded): all of it."""
        return self.dropout_saved(lin, train, prec)

    def input_live(self, lin: Linear, train: TrainSpec, prec) -> int:
        """A module's input while it runs: T*in*hidden."""
        return train.tokens * lin.in_features * prec.hidden

    def dropout_live(self, lin: Linear, train: TrainSpec, prec) -> int:
        """A dropout output live beside the module's input while it runs: none."""
        return 0

    def working_set(self, lin: Linear, train: TrainSpec, prec) -> int:
        """The outputs a module is forming while it runs: its base output (T*out*hidden)."""
        return train.tokens * lin.out_features * prec.hidden

    def backward_workspace(self, lin: Linear, train: TrainSpec, prec, stops: bool = False) -> int:
        """What the adapter's backward makes beyond the layer's gradients: nothing (``stops``:
        a checkpointed layer's recomputation stops inside this module)."""
        return 0

    def running_kept(self, lin: Linear, train: TrainSpec, prec) -> int:
        """What the module has kept for backward while its last op runs: nothing."""
        return 0

    def norm_transient(self, lin: Linear, train: TrainSpec, prec) -> int:
        """A weight-norm computation in the module's forward: none."""
        return 0

    def ops(self, train: TrainSpec) -> int:
        """Eager ops the adapter adds to one Linear's forward: none."""
        return 0

    def work(self, lin: Linear, train: TrainSpec, prec, layers: int, base: BaseTreatment) -> list[Work]:
        """The adapter's own work on ``lin`` in ``layers`` layers: none."""
        return []

    def norm_context(self, lin: Linear, train: TrainSpec, prec) -> int:
        """What the module has made when its weight-norm computation runs: nothing."""
        return 0


@dataclass(frozen=True)
class Lora(NoAdapter):
    """LoRA (Hu et al. 2021): A (r x in) and B (out x r) beside the frozen weight, fp32 as peft
    keeps them on a 16-bit base (autocast_adapter_dtype); scaling alpha / r."""

    name: str = "lora"
    trains_base: bool = False

    def tensors(self, lin: Linear, rank: int) -> tuple:
        return (("lora_A.weight", (rank, lin.in_features), "lora_A"),
                ("lora_B.weight", (lin.out_features, rank), "lora_B"))

    def scaling(self, alpha: float, rank: int) -> float:
        return alpha / rank

    def trained_bytes(self, weight: int) -> int:
        """fp32: peft keeps adapter weights in fp32 on a 16-bit base (autocast_adapter_dtype)."""
        return FP32

    def saved(self, lin: Linear, train: TrainSpec, prec) -> int:
        """Its own copy of the input (T*in*e, e from :func:`lora_input_bytes`; q, k and v each
        make one of the same hidden states) and lora_A's output for lora_B's gradient (T*r*e),
        and with dropout :meth:`dropout_saved`."""
        e = lora_input_bytes(train, prec)
        return train.tokens * (lin.in_features + train.rank) * e + self.dropout_saved(lin, train, prec)

    def dropout_saved(self, lin: Linear, train: TrainSpec, prec) -> int:
        """LoRA dropout (peft's lora_dropout > 0, applied to the module input before lora_A):
        its mask, one byte per input element, as CUDA's native_dropout keeps it (T*in; the
        dropped copy replaces the input copy lora_A keeps). Tracer, tiny Llama, dropout 0.05,
        on the native_dropout path: to the byte."""
        return train.tokens * lin.in_features if train.lora_dropout > 0 else 0

    def working_set(self, lin: Linear, train: TrainSpec, prec) -> int:
        """The base output (T*out*hidden), lora_B's output and its scaled copy (T*out*e each), or
        the scaled copy and the sum: T*out*max(hidden + 2e, 2*hidden + e). Tracer: at the toy
        Llama's last down_proj, the base output, lora_B's output and the scaled one are live
        together."""
        e = lora_input_bytes(train, prec)
        return train.tokens * lin.out_features * max(prec.hidden + 2 * e, 2 * prec.hidden + e)

    def running_kept(self, lin: Linear, train: TrainSpec, prec) -> int:
        """While lora_B runs, lora_A has kept its input copy and output: :meth:`saved`."""
        return self.saved(lin, train, prec)

    def ops(self, train: TrainSpec) -> int:
        return OPS_ADAPTER + (OPS_DROPOUT if train.lora_dropout else 0)

    def work(self, lin: Linear, train: TrainSpec, prec, layers: int, base: BaseTreatment) -> list[Work]:
        """adapters/matmul: A and B, 2*T*r*(in + out) forward, twice that backward (input and
        weight gradients), as small matmuls on e-byte tensors (e: :func:`lora_input_bytes`).
        adapters/elementwise: peft's LoRA forward (peft/tuners/lora/layer.py, Linear.forward)
        casts the input to the adapter dtype (fp32: ``_cast_input_dtype``), adds
        ``lora_B(lora_A(dropout(x))) * scaling`` to the base output and casts the sum back to
        the base output's dtype (``result.to(torch_result_dtype)``). Under autocast lora_A casts
        its input back to c and the adapter's outputs are c: T*in*(hidden + 8 + c) + 5*T*out*c
        bytes forward. Without autocast the adapter runs in fp32: the scaled product is fp32, the
        sum promotes to fp32 and is cast back: T*in*(hidden + 4) + T*out*(2*hidden + 20) (no
        casts where the hidden stream is fp32 already, as QLoRA's). The same backward; dropout's
        mask and dropped fp32 input T*in*9 more."""
        t, r, L = train.tokens, train.rank, layers
        i, o = lin.in_features, lin.out_features
        e = lora_input_bytes(train, prec)
        fwd_bytes = e * t * (i + o + 2 * r)
        ew = t * i * self._cast_in_bytes(prec) + t * o * self._sum_bytes(prec)
        if train.lora_dropout:
            ew += t * i * (2 * FP32 + 1)  # the mask (bool) and the dropped fp32 input
        return [Work("adapters/matmul", L * 2 * t * r * (i + o), L * fwd_bytes, R.SMALL_MATMUL, True, r),
                Work("adapters/matmul", L * 4 * t * r * (i + o), L * (2 * fwd_bytes + FP32 * r * (i + o)),
                     R.SMALL_MATMUL, narrow=r),
                Work("adapters/elementwise", 0, L * ew, R.MEMORY, layer=True),
                Work("adapters/elementwise", 0, L * ew, R.MEMORY)]

    @staticmethod
    def _cast_in_bytes(prec) -> int:
        """Bytes per input element of the adapter's input casts (:meth:`work`)."""
        if prec.autocast:
            return prec.hidden + 2 * FP32 + prec.compute
        return prec.hidden + FP32 if prec.hidden != FP32 else 0

    @staticmethod
    def _sum_bytes(prec) -> int:
        """Bytes per output element of scaling the adapter's output, adding it to the base output
        and casting the sum back (:meth:`work`)."""
        if prec.autocast:
            return 5 * prec.compute
        cast_back = prec.hidden + FP32 if prec.hidden != FP32 else 0
        return 2 * FP32 + (prec.hidden + 2 * FP32) + cast_back

    def input_live(self, lin: Linear, train: TrainSpec, prec) -> int:
        """The module's input with peft's fp32 cast of it for the adapter (_cast_input_dtype; no
        copy when the hidden stream is already fp32): T*in*(hidden [+ 4])."""
        cast = FP32 if prec.hidden != FP32 else 0
        return train.tokens * lin.in_features * (prec.hidden + cast)

    def dropout_live(self, lin: Linear, train: TrainSpec, prec) -> int:
        """With lora_dropout, the dropped fp32 input while lora_A casts it to the compute dtype
        under autocast (T*in*4; without autocast it is lora_A's saved input, :meth:`saved`).
        Tracer, EXAONE-4.0-32B cut to 4 layers, LoRA bf16 autocast, dropout 0.1, checkpointing,
        batch 2 x 1792 on 2 GPUs (FSDP): down_proj's fp32 [2, 1792, 27392] dropout output beside
        its bf16 copy at the backward peak, in the recomputation."""
        if train.lora_dropout <= 0 or lora_input_bytes(train, prec) == FP32:
            return 0
        return train.tokens * lin.in_features * FP32


@dataclass(frozen=True)
class RsLora(Lora):
    """rsLoRA (Kalajdzievski 2023): LoRA's tensors and memory, scaling alpha / sqrt(r)."""

    name: str = "rslora"

    def scaling(self, alpha: float, rank: int) -> float:
        return alpha / rank ** 0.5


@dataclass(frozen=True)
class Dora(Lora):
    """DoRA (Liu et al. 2024): LoRA plus a magnitude per output row (peft's
    lora_magnitude_vector, W.norm(dim=1)), the output rescaled by m / ||W + s*B@A||_row."""

    name: str = "dora"
    dora: bool = True

    def tensors(self, lin: Linear, rank: int) -> tuple:
        return super().tensors(lin, rank) + (("lora_magnitude_vector.weight", (lin.out_features,), "magnitude"),)

    def saved(self, lin: Linear, train: TrainSpec, prec) -> int:
        """LoRA's, and for the magnitude's gradient the base output and the LoRA output
        (T*out*e), both as products of its forward m/||W + s*BA|| * (...) (peft
        DoraLinearLayer.forward). The base output is in the dtype of the Linear's input: the
        hidden stream for every Linear but o_proj, which reads the attention output (compute
        dtype, :attr:`Precision.attention`)."""
        base = self.base_output_bytes(lin, prec)
        return super().saved(lin, train, prec) + train.tokens * lin.out_features * (base + lora_input_bytes(train, prec))

    def base_output_bytes(self, lin: Linear, prec) -> int:
        """Bytes per element of the base output the module keeps without dropout: the dtype of
        the Linear's input, the hidden stream's for every Linear but o_proj, which reads the
        attention output."""
        return prec.attention if lin.role == "o" else prec.hidden

    def dropout_saved(self, lin: Linear, train: TrainSpec, prec) -> int:
        """LoRA's mask; DoRA then computes the base output again on the dropped input and keeps
        a copy of the (dequantized) weight in the dtype of peft's cast input (out*in*e, e from
        :func:`lora_input_bytes`: DoraLinearLayer.forward casts the weight to x.dtype, fp32
        after _cast_input_dtype, and F.linear keeps it; autocast makes it c bytes; tracer,
        Llama-3.1-8B 2 layers, QDoRA pure bf16, dropout 0.05: fp32 [14336, 4096] copies, the plan
        was 10% under with c bytes). The base output it keeps is then F.linear's on the dropped
        input, in e bytes rather than the input's (:meth:`base_output_bytes`): under autocast
        QDoRA keeps 2*T*out less where the module reads the fp32 stream (every module but
        o_proj); pure bf16 DoRA 2*T*out more (tracer, tiny Llama DoRA pure, dropout 0.05: two
        fp32 T x out tensors per module). Tracer, tiny Llama, dropout 0.05: to the byte for dora
        and qdora under autocast."""
        if train.lora_dropout <= 0:
            return 0
        e = lora_input_bytes(train, prec)
        saved = super().dropout_saved(lin, train, prec) + self.dropout_weight_copy(lin, train, prec)
        return saved + train.tokens * lin.out_features * (e - self.base_output_bytes(lin, prec))

    def dropout_weight_copy(self, lin: Linear, train: TrainSpec, prec) -> int:
        """The weight F.linear keeps on the dropout path, out*in*e (:meth:`dropout_saved`); none
        where weight.to(x.dtype) returns the frozen fp32 parameter itself (a 16-bit method on an
        fp32 model without autocast: tracer, Phi-3-mini 2 layers, DoRA fp32 pure, dropout 0.05,
        batch 2 x 1600, one GPU and 4 x DDP: no [out, in] copy of any weight kept, the plan 12%
        over with one per module)."""
        e = lora_input_bytes(train, prec)
        if not train.is_quantized and not prec.autocast and prec.weight == e:
            return 0
        return lin.in_features * lin.out_features * e

    def dropout_unrecorded(self, lin: Linear, train: TrainSpec, prec) -> int:
        """LoRA's mask and the weight copy F.linear keeps for its input's gradient (out*in*e);
        the base output the magnitude's product keeps is kept anyway (tracer, Granite-3.3-8B 2
        layers, QDoRA autocast, dropout 0.05, k_proj: layer 0 keeps no mask and no bf16
        [1024, 4096] weight copy, but its bf16 base output, 2*T*out less than the fp32 one)."""
        if train.lora_dropout <= 0:
            return 0
        return super().dropout_saved(lin, train, prec) + self.dropout_weight_copy(lin, train, prec)

    def working_set(self, lin: Linear, train: TrainSpec, prec) -> int:
        """DoRA combines base and LoRA outputs with its fp32 magnitude scale: three fp32 T*out
        temporaries beside the base output and lora_B's, while the two dense fp32 casts of its
        norm computation are still referenced (tracer, toy Llama DoRA with checkpointing,
        up_proj: three fp32 [4, 2048, 3584] products, two fp32 [3584, 1024])."""
        t, out = train.tokens, lin.out_features
        return t * out * (prec.hidden + lora_input_bytes(train, prec) + 3 * FP32) + 2 * out * lin.in_features * FP32

    def running_kept(self, lin: Linear, train: TrainSpec, prec) -> int:
        """lora_A's input copy and output (DoRA's kept base and LoRA outputs are the working
        set's own)."""
        return train.tokens * (lin.in_features + train.rank) * lora_input_bytes(train, prec)

    def ops(self, train: TrainSpec) -> int:
        return super().ops(train) + OPS_DORA

    def work(self, lin: Linear, train: TrainSpec, prec, layers: int, base: BaseTreatment) -> list[Work]:
        """LoRA's, and dora/weight_norm: every forward peft's DoRA builds the dense W + s*B@A
        (through an identity matrix: 2*r*in*(in + out) FLOPs) and its row norms: in*in*(4 + c) +
        in*out*(c + 24) bytes (the weight cast to fp32, B@A, the scaled sum, the norm; a 4-bit
        weight is dequantized once more), plus its magnitude scaling of the outputs, 4*T*out*c
        bytes forward and backward (Liu et al. 2024; peft's DoraLinearLayer). dora/dropout_matmul:
        with lora_dropout > 0 the dropped input is not the base layer's, so peft runs the base
        matmul again on it (F.linear(x, W)), 2*T*n forward, and its input gradient."""
        t, c, r, L = train.tokens, prec.compute, train.rank, layers
        i, o = lin.in_features, lin.out_features
        dense = i * o * (c + 24) + base.dequant_bytes(lin, train, c)
        out = super().work(lin, train, prec, layers, base)
        out += [Work("dora/weight_norm", L * 2 * r * i * (i + o), L * (i * i * (FP32 + c) + i * o * FP32),
                     R.SMALL_MATMUL, True, r),
                Work("dora/weight_norm", 0, L * (dense + 4 * t * o * c), R.MEMORY, layer=True),
                Work("dora/weight_norm", 0, L * 4 * t * o * c, R.MEMORY)]
        if train.lora_dropout:
            flops, nbytes = L * 2 * t * i * o, L * (i * o * c + t * (i + o) * c)
            out += [Work("dora/dropout_matmul", flops, nbytes, R.MATMUL, layer=True),
                    Work("dora/dropout_matmul", flops, nbytes, R.MATMUL)]
        return out

    def backward_workspace(self, lin: Linear, train: TrainSpec, prec, stops: bool = False) -> int:
        """peft's DoRA output (m/||W + s*BA|| - 1) * base + m/||W + s*BA|| * lora * s multiplies
        by an fp32 scale, so its backward makes fp32 gradients the size of the module's output:
        the incoming one and those for the base and LoRA results, 3*T*out*4.

        With checkpointing the worst moment is the module's DoRA output in the recomputation,
        three fp32 T*out products ((m/n - 1)*base, m/n*lora and its scaled copy) while the
        forward's locals live: the recomputed module's input (:meth:`recomputed_input_live`),
        the two dense fp32 out*in casts of its norm computation and get_lora_weight's identity
        (:meth:`recomputed_identity`) (tracer, Phi-3-mini 2 layers, DoRA fp16 pure with
        checkpointing, batch 3 x 1280, at gate_up: three fp32 [3, 1280, 16384] products, fp32
        [16384, 3072] and [3072, 16384] casts, an fp32 [3072, 3072] eye). Where the
        recomputation ``stops`` in this module (the layer's last, torch's checkpoint early stop
        at the layer's last saved tensor, which autograd packs before the op runs: m/n *
        lora's inputs) only the first product exists (tracer, Mistral-7B 2 layers, DoRA bf16
        autocast, batch 4 x 2048: one fp32 [4, 2048, 4096] product at down_proj's DoRA output)."""
        workspace = (1 if stops and train.gradient_checkpointing else 3) * train.tokens * lin.out_features * FP32
        if train.gradient_checkpointing:
            workspace += self.recomputed_input_live(lin, train, prec) + 2 * lin.out_features * lin.in_features * FP32
            workspace += self.recomputed_identity(lin, prec)
        return workspace

    def recomputed_input_live(self, lin: Linear, train: TrainSpec, prec) -> int:
        """The recomputed module's input and peft's fp32 cast of it (:meth:`input_live`) less
        the copy lora_A keeps, which :meth:`saved` counts already: without autocast that copy
        is the fp32 cast itself (or, on an fp32 hidden stream, the input), T*in*4 fewer; under
        autocast lora_A keeps its own c-byte copy and the fp32 cast is a separate local.
        Tracer, Phi-3-mini 2 layers, DoRA fp16 pure with checkpointing, batch 3 x 1280: at
        gate_up's DoRA output in the recomputation, the fp16 [3, 1280, 3072] norm output and one
        fp32 cast of it (lora_A's saved input), not two."""
        kept_copy = 0 if prec.autocast else train.tokens * lin.in_features * FP32
        return self.input_live(lin, train, prec) - kept_copy

    def recomputed_identity(self, lin: Linear, prec) -> int:
        """The identity of get_lora_weight, in*in*(4, or c under autocast): in a recomputation
        torch's checkpoint hooks let the new graph keep what it saves, so lora_A's saved input
        (the fp32 identity, or autocast's c-byte copy of it) lives as long as the lora_weight
        local that holds that graph, through the DoRA forward (peft DoraLinearLayer.forward;
        torch.utils.checkpoint _recomputation_hook's pack_hook returns the tensor). Tracer,
        Phi-3-mini 2 layers, DoRA fp16 pure with checkpointing, batch 3 x 1280: an fp32 [3072,
        3072] eye live at gate_up's DoRA output in the recomputation."""
        return lin.in_features * lin.in_features * (prec.compute if prec.autocast else FP32)

    def norm_context(self, lin: Linear, train: TrainSpec, prec) -> int:
        """The base layer's output, T*out*hidden: peft's lora.Linear.forward runs
        ``result = self.base_layer(x)`` before the DoRA variant's forward, whose weight norm
        comes first, and holds it through (tracer, Mistral-7B 2 layers, DoRA bf16 autocast with
        checkpointing: down_proj's bf16 [8192, 4096] base output live beside the fp32 identity
        of its weight norm in the recomputation). With lora_dropout the DoRA variant's forward
        holds the dropped fp32 input and its mask through the norm computation, T*in*(4 + 1)
        (peft DoraLinearVariant.forward, ``x = dropout(x)``; tracer, EXAONE-4.0-32B cut to 4
        layers, DoRA bf16 mixed, dropout 0.1, checkpointing, batch 1 x 1088 on 2 GPUs (DDP): an
        fp32 and a bool [1, 1088, 27392] at down_proj's weight norm, the plan 0.8% under without
        them)."""
        dropped = train.tokens * lin.in_features * (FP32 + 1) if train.lora_dropout > 0 else 0
        return train.tokens * lin.out_features * prec.hidden + dropped

    def norm_transient(self, lin: Linear, train: TrainSpec, prec) -> int:
        """peft's DoRA forward materializes dense matrices to compute ||W + s*B@A|| per row.

        get_lora_weight runs lora_B(lora_A(eye(in))): lora_A keeps its input for A's gradient
        while the product lives, the fp32 identity itself (in*in*4) or, under autocast, the
        c-byte copy autocast made of it (the fp32 one is then freed: the tracer shows one
        11008 x 11008 bf16 identity live at Llama-2-7B's DoRA peak). Then four dense out*in
        fp32 tensors coexist: the LoRA product cast to the input dtype, the (dequantized) base
        weight cast to fp32, s*(B@A) and their sum (peft DoraLinearLayer). Under autocast the
        product itself is a moment too: the fp32 identity, its c-byte copy and lora_B's c-byte
        output (in*out) live together; when in >> out (Qwen2.5-7B's 18944 -> 3584 down_proj)
        it is the larger one (tracer: 1.337 GiB fp32 identity and 0.668 GiB bf16 copy live at
        the peak). The larger of the moments counts. The base weight's fp32 cast is the weight
        itself where it is stored in fp32 (`mixed`, or dtype fp32, 16-bit methods): three dense
        tensors then (tracer, Phi-3-mini 2 layers, DoRA mixed bf16, batch 1 x 64: three fp32
        [16384, 3072] at gate_up_proj's norm, where four planned it 9% over).
        """
        n_in, n_out = lin.in_features, lin.out_features
        eye = n_in * n_in * (prec.compute if prec.autocast else FP32)
        weight_cast = 0 if prec.weight == FP32 and not train.is_quantized else 1
        at_norm = eye + (3 + weight_cast) * n_out * n_in * FP32
        if not prec.autocast:
            return at_norm
        at_product = n_in * n_in * FP32 + eye + n_in * n_out * prec.compute
        return max(at_norm, at_product)


@dataclass(frozen=True)
class Variant:
    """A method: its base treatment and its adapter kind."""

    base: BaseTreatment
    adapter: NoAdapter


SIXTEEN_BIT, FOUR_BIT = BaseTreatment(), FourBit()
VARIANTS = {
    "full": Variant(SIXTEEN_BIT, NoAdapter()),
    "lora": Variant(SIXTEEN_BIT, Lora()),
    "rslora": Variant(SIXTEEN_BIT, RsLora()),
    "qlora": Variant(FOUR_BIT, Lora()),
    "dora": Variant(SIXTEEN_BIT, Dora()),
    "qdora": Variant(FOUR_BIT, Dora()),
}


def variant(train: TrainSpec) -> Variant:
    """The variant of ``train.method``."""
    return VARIANTS[train.method]
