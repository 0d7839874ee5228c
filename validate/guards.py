"""Guards that turn silent numerical failures of the torch stack into clear errors.

peft's DoRA divides the magnitude vector by the row norm of W + s*B@A without an epsilon
(peft 0.21: ``magnitude / weight_norm`` in the DoRA forward). A row of zeros, as in a
pruned model, gives 0/0 = NaN, and the NaN spreads through attention to every logit,
silently. :func:`check_dora_rows` finds such rows before training and raises
:class:`ZeroNormRowError` naming the module and rows.
"""
from __future__ import annotations

import torch


class ZeroNormRowError(ValueError):
    """A DoRA-adapted layer has output rows whose weight norm is zero."""


def _dense_weight(layer) -> torch.Tensor:
    weight = layer.base_layer.weight
    if weight.__class__.__name__ == "Params4bit":
        import bitsandbytes.functional as F

        return F.dequantize_4bit(weight.data, weight.quant_state)
    return weight.detach()


def dora_zero_norm_rows(model) -> list[tuple[str, list[int]]]:
    """(module name, row indices) of every DoRA layer whose W + s*B@A has zero-norm rows."""
    from peft.tuners.lora import LoraLayer

    found = []
    with torch.no_grad():
        for name, layer in model.named_modules():
            if not isinstance(layer, LoraLayer):
                continue
            for adapter, magnitude in layer.lora_magnitude_vector.items():
                a, b = layer.lora_A[adapter].weight, layer.lora_B[adapter].weight
                combined = _dense_weight(layer).float() + layer.scaling[adapter] * (b.float() @ a.float())
                rows = (torch.linalg.vector_norm(combined, dim=1) == 0).nonzero().flatten().tolist()
                if rows:
                    found.append((name, rows))
    return found


def check_dora_rows(model) -> None:
    """Raise :class:`ZeroNormRowError` if any DoRA layer has a zero-norm row."""
    found = dora_zero_norm_rows(model)
    if found:
        where = "; ".join(f"{name} rows {rows[:8]}{' ...' if len(rows) > 8 else ''}" for name, rows in found)
        raise ZeroNormRowError(f"DoRA cannot normalize zero-norm weight rows ({where}): peft would divide "
                               f"0 by 0 and produce NaN; drop these modules from target_modules or use LoRA")
