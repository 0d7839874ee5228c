"""The tracer's phase peaks of a configuration, traced once per test session (the tests of a
setting class compare several plans with one trace)."""
_traces = {}


def traced(spec, train) -> dict:
    """``probes.fake.trace``'s phase peaks for ``spec`` and ``train`` (one GPU), cached."""
    from probes.fake import trace

    key = (spec.name, spec.hidden_size, spec.num_layers, spec.vocab_size, train)
    if key not in _traces:
        _traces[key] = trace(spec, train).phase_peaks
    return _traces[key]


def planned_over_traced(spec, train, phase: str = "backward") -> float:
    """The plan's ``phase`` (on an H100, no calibration, the moment caches cleared around it:
    a test may patch a term) over the traced phase peak."""
    from planner import plan
    from planner.memory.moments import clear_caches

    clear_caches()
    try:
        planned = plan(spec, "h100", train, calibrations={}).phases[phase]
    finally:
        clear_caches()
    return planned / traced(spec, train)[phase]
