"""Probes: what a fine-tuning step really uses (the `probe` command).

One builder (:mod:`probes.build`) and one training step (:mod:`probes.step`), three ways to
measure them:

- ``cuda`` (:mod:`probes.cuda`): torch.cuda peak statistics and NVML device memory;
- ``cpu`` (:mod:`probes.cpu`): a real step, measured with the byte tracker
  (:mod:`probes.tracker`);
- ``fake`` (:mod:`probes.fake`): the same step on fake tensors, no memory, any model size;
  equal to the CPU measurement to the byte.

:mod:`probes.run` turns a measurement into a self-describing row with the planner's
prediction; :mod:`probes.store` keeps the rows in data/probes/results.csv.

    >>> from planner import TrainSpec, get_model
    >>> from probes import fake
    >>> m = fake.trace(get_model("7b"), TrainSpec(method="qlora", dtype="bf16"))
    >>> m.peak_allocated_bytes, m.phase_peaks
"""


def quiet_libraries() -> None:
    """Keep library log chatter (bitsandbytes' optional-kernel notice, ...) off the output."""
    import logging

    for name in ("bitsandbytes", "transformers", "peft", "accelerate"):
        logging.getLogger(name).setLevel(logging.ERROR)
