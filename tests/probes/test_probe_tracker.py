"""The byte tracker on hand-sized tensors, and the attention kernel it traces.

Exact byte counts; negative controls: a tracker that ignores frees over-counts, and the
math SDPA backend keeps the seq x seq probabilities that the flash kernel does not.
"""
import pytest


def test_views_are_free_frees_are_counted_and_peaks_are_kept(torch_stack):
    from probes.tracker import ByteTracker

    torch = torch_stack
    tracker = ByteTracker()
    with tracker:
        a = torch.empty(1000, dtype=torch.float32)          # +4000
        view = a[10:].view(10, 99)                           # a view: free
        a.add_(1)                                            # in place: free
        b = torch.empty(500, dtype=torch.bfloat16)           # +1000
        assert tracker.live == 5000
        del a                                                # the view keeps the storage
        assert tracker.live == 5000
        del view                                             # -4000
        assert tracker.live == 1000
        c = b.float()                                        # +2000
    assert (tracker.live, tracker.peak) == (3000, 5000)
    del b, c
    assert tracker.live == 0
    tracker.close()


def test_phase_peaks_and_breakdown_at_the_peak(torch_stack):
    from probes.tracker import ByteTracker

    torch = torch_stack
    weights = torch.empty(256, dtype=torch.float32)  # 1024 bytes, existed before
    tracker = ByteTracker()
    tracker.register([weights, weights[:8]], "weights/base")  # views register once
    tracker.reset()
    assert tracker.baseline == 1024
    with tracker:
        tracker.set_phase("forward")
        act = torch.empty(100, dtype=torch.float32)         # 400
        tmp = torch.empty(300, dtype=torch.float32)         # 1200 -> peak 2624
        del tmp
        tracker.set_phase("backward")
        grad = torch.empty(200, dtype=torch.float32)        # 800 -> 2224
        del act
        tracker.set_phase("optimizer")
        state = torch.empty(50, dtype=torch.float32)        # 200 -> 2024
    result = tracker.result()
    assert result.peak_bytes == 2624 and result.peak_phase == "forward"
    assert result.phase_peaks == {"forward": 2624, "backward": 2224, "optimizer": 2024}
    assert result.peak_breakdown == {"forward/empty": 1600, "weights/base": 1024}
    assert result.phase_breakdowns["optimizer"] == {"weights/base": 1024, "backward/empty": 800,
                                                    "optimizer/empty": 200}
    del grad, state
    tracker.close()


def test_negative_control_a_tracker_without_frees_overcounts(torch_stack):
    from probes.tracker import ByteTracker

    torch = torch_stack
    tracker = ByteTracker(free_tracking=False)
    with tracker:
        for _ in range(3):
            x = torch.empty(100, dtype=torch.float32)
            del x
    assert tracker.peak == 1200  # a correct tracker says 400


def test_a_fake_trace_counts_storages_like_real_tensors(torch_stack):
    from torch._subclasses.fake_tensor import FakeTensorMode

    from probes.tracker import ByteTracker

    torch = torch_stack

    def body():
        x = torch.ones(64, 32, dtype=torch.bfloat16)
        y = (x @ x.t()).float()
        z = y.softmax(-1)
        del y
        return z

    peaks = []
    for mode in (None, FakeTensorMode()):
        tracker = ByteTracker()
        if mode is None:
            with tracker:
                z = body()
        else:
            with mode, tracker:
                z = body()
        peaks.append((tracker.peak, tracker.live))
        del z
        tracker.close()
    assert peaks[0] == peaks[1]


@pytest.mark.parametrize("gqa", [False, True], ids=["mha", "gqa"])
def test_forced_flash_saves_o_seq_and_math_saves_seq_squared(torch_stack, gqa):
    """What SDPA keeps for backward, on fake CPU tensors under the tracker.

    flash (forced): the output and a float32 logsumexp (batch, heads, seq): O(seq).
    math (negative control): the seq x seq attention probabilities.
    """
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from probes import kernels
    from probes.tracker import ByteTracker

    torch = torch_stack
    b, h, kvh, s, d = 2, 8, 2 if gqa else 8, 256, 64
    kept = {}
    for name, backend in (("flash", kernels.force_flash), ("math", lambda: sdpa_kernel([SDPBackend.MATH]))):
        with FakeTensorMode():
            q = torch.empty(b, h, s, d, dtype=torch.bfloat16, requires_grad=True)
            k = torch.empty(b, kvh, s, d, dtype=torch.bfloat16, requires_grad=True)
            v = torch.empty(b, kvh, s, d, dtype=torch.bfloat16, requires_grad=True)
            tracker = ByteTracker()
            tracker.register([q, k, v], "inputs")
            tracker.reset()
            with backend(), tracker:
                out = torch.nn.functional.scaled_dot_product_attention(
                    q, k, v, is_causal=True, enable_gqa=gqa)
            kept[name] = tracker.live - tracker.baseline
            kept[name + "_ops"] = dict(tracker.ops)
            del out
            tracker.close()
    assert kept["flash"] == b * h * s * d * 2 + b * h * s * 4
    assert kernels.attention_kernel_from_ops(kept["flash_ops"]) == "flash"
    assert kept["math"] >= b * h * s * s * 2
    assert kernels.attention_kernel_from_ops(kept["math_ops"]) in ("math", "none")


def test_sdpa_on_cpu_chooses_flash_for_the_model_shapes(torch_stack):
    from probes import kernels

    torch = torch_stack
    assert kernels.sdpa_choice(32, 32, 128, 512, torch.bfloat16, "cpu") == "flash"
    assert kernels.sdpa_choice(32, 8, 128, 512, torch.bfloat16, "cpu") == "flash"


def test_attention_kernel_names():
    from probes.kernels import attention_kernel_from_ops

    assert attention_kernel_from_ops({"_scaled_dot_product_flash_attention_for_cpu": 2}) == "flash"
    assert attention_kernel_from_ops({"_softmax": 2, "bmm": 4}) == "math"
    assert attention_kernel_from_ops({"mm": 3}) == "none"
