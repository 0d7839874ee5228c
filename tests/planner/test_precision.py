"""The one precision rule (planner/model/precision.py): dtype resolution and the schemes."""
import pytest

from planner import TrainSpec
from planner.memory import terms as C
from planner.model.precision import Scheme, resolve_dtype, scheme


@pytest.mark.parametrize("asked, bf16, expected, noted", [
    ("auto", True, "bf16", False),
    ("auto", False, "fp16", True),
    ("bf16", True, "bf16", False),
    ("bf16", False, "fp16", True),
    ("fp16", False, "fp16", False),
    ("fp32", True, "fp32", False),
])
def test_resolve_dtype(asked, bf16, expected, noted):
    dtype, notes = resolve_dtype(asked, bf16, "t4")
    assert dtype == expected and bool(notes) == noted
    assert all("t4 has no bf16" in n for n in notes)


@pytest.mark.parametrize("precision, dtype, expected", [
    ("autocast", "bf16", Scheme("bf16", "bf16", autocast=True, grad_scaler=False)),
    ("autocast", "fp16", Scheme("fp16", "fp16", autocast=True, grad_scaler=True)),
    ("autocast", "fp32", Scheme("fp32", "fp32", autocast=False, grad_scaler=False)),
    ("pure", "bf16", Scheme("bf16", "bf16", autocast=False, grad_scaler=False)),
    ("pure", "fp16", Scheme("fp16", "fp16", autocast=False, grad_scaler=False)),
    ("mixed", "bf16", Scheme("bf16", "fp32", autocast=True, grad_scaler=False)),
    ("mixed", "fp16", Scheme("fp16", "fp32", autocast=True, grad_scaler=True)),
])
def test_schemes(precision, dtype, expected):
    assert scheme(TrainSpec(precision=precision), dtype) == expected


def test_an_unresolved_dtype_is_refused():
    with pytest.raises(ValueError, match="resolved"):
        scheme(TrainSpec(), "auto")


@pytest.mark.parametrize("precision", ["autocast", "pure", "mixed"])
@pytest.mark.parametrize("dtype", ["bf16", "fp16", "fp32"])
def test_the_planner_reads_its_bytes_from_the_scheme(precision, dtype):
    train = TrainSpec(precision=precision)
    s, prec = scheme(train, dtype), C.precision(train, dtype)
    sizes = {"bf16": 2, "fp16": 2, "fp32": 4}
    assert (prec.compute, prec.weight, prec.autocast) == (sizes[s.compute], sizes[s.weights], s.autocast)
