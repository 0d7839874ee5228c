"""The validator: numerical invariants of LoRA, DoRA and NF4 / FP4, checked on real peft and
bitsandbytes objects (small random models, CPU), each with a negative control.

    validate                      # every invariant: name / measured / bound / pass / control
    validate --only dora --json   # one group, machine-readable

Parts: :mod:`validate.result` (InvariantResult, Outcome), :mod:`validate.reference` (the
pure-torch NF4 / FP4 reference quantizer), :mod:`validate.invariants` (the registry and the
lora, dora, quant and planner groups), :mod:`validate.models` (tiny model builders),
:mod:`validate.guards` (the DoRA zero-norm-row guard), :mod:`validate.calibrate` (tolerance
bands from repeated seeds) and :mod:`validate.cli` (the `validate` command).

Importing this package imports no torch; the groups import it when they run.
"""
from .result import InvariantResult, Outcome

__all__ = ["InvariantResult", "Outcome"]
