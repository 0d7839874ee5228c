"""Runtime terms calibrated from CUDA rows, and their fallback to the estimates."""

from planner import TrainSpec, plan
from planner.memory import calibration
from planner.memory import terms as C
from planner.units import MIB

FIELDS = ["device", "device_name", "status", "peak_allocated_bytes", "peak_reserved_bytes", "cuda_context_bytes"]


def cuda_row(allocated, reserved, context, name="NVIDIA H100 80GB HBM3", status="ok", device="cuda"):
    return dict(device=device, device_name=name, status=status, peak_allocated_bytes=allocated,
                peak_reserved_bytes=reserved, cuda_context_bytes=context)


def test_medians_per_family(results_csv):
    path = results_csv(FIELDS, [
        cuda_row(1000 * MIB, 1100 * MIB, 500 * MIB),  # 10% reserve
        cuda_row(2000 * MIB, 2060 * MIB, 520 * MIB),  # 3%
        cuda_row(4000 * MIB, 4200 * MIB, 530 * MIB),  # 5%
        cuda_row(1000 * MIB, 9000 * MIB, 9000 * MIB, status="oom"),  # ignored: not a success
        cuda_row(1000 * MIB, 9000 * MIB, 9000 * MIB, device="fake"),  # ignored: not CUDA
        cuda_row(1000 * MIB, 1000 * MIB, 300 * MIB, name="Tesla T4"),
    ])
    cals = calibration.load(path)
    assert set(cals) == {"hopper", "turing"}
    h = cals["hopper"]
    assert (h.rows, h.cuda_context_bytes) == (3, 520 * MIB)
    assert abs(h.allocator_fraction - 0.05) < 1e-12
    assert cals["turing"].allocator_fraction == 0.0


def test_plan_uses_a_calibration_and_says_so(results_csv):
    cals = calibration.load(results_csv(FIELDS, [cuda_row(1000 * MIB, 1100 * MIB, 600 * MIB)]))
    t = TrainSpec(method="qlora")
    p = plan("7b", "h100", t, cals)
    assert p.components["runtime/cuda_context"] == 600 * MIB
    assert p.components["runtime/allocator"] == C.allocator_reserve(p.peak_allocated_bytes, 0.1)
    assert p.device_used_bytes == p.peak_allocated_bytes + p.components["runtime/allocator"] + 600 * MIB
    assert any("calibrated from 1 CUDA row(s) of the hopper family" in n for n in p.notes)
    # another family keeps the estimates (negative control: the calibration is per family)
    a100 = plan("7b", "a100-80gb", t, cals)
    assert a100.components["runtime/cuda_context"] == 500 * MIB
    assert not any("calibrated" in n for n in a100.notes)
    off = plan("7b", "h100", t, {})
    assert off.components["runtime/allocator"] == C.allocator_reserve(off.peak_allocated_bytes)


def test_missing_or_foreign_tables_give_no_calibration(tmp_path):
    assert calibration.load(str(tmp_path / "absent.csv")) == {}
    (tmp_path / "junk.csv").write_text("a,b\n1,2\n")
    assert calibration.load(str(tmp_path / "junk.csv")) == {}


def test_family_of_device_names():
    assert calibration.family_of("NVIDIA H100 80GB HBM3") == "hopper"
    assert calibration.family_of("NVIDIA A100-SXM4-80GB") == "ampere"
    assert calibration.family_of("Tesla T4") == "turing"
    assert calibration.family_of("NVIDIA GeForce RTX 4090") == "ada"
    assert calibration.family_of("Some Accelerator") is None
