"""Variable-length data: the time of padded batches and of packed sequences, and the hours for a
data set of N tokens.

Users think in data set tokens; a step's shape depends on how samples become batches. With a
mean sample length ``m`` below the longest ``s`` (``--seq-len``):

- **padded** (``--no-packing``): each batch is padded to its longest sample (HF's
  DataCollatorWithPadding and DataCollatorForSeq2Seq, padding="longest", their default).
  Sample lengths are taken as exponentially distributed with mean m, truncated at s (a
  one-number description of a skewed length distribution); the expected longest of b samples
  is then m * H_b (H_b the b-th harmonic number: the expected maximum of b exponential draws,
  Renyi's representation), at most s. A step runs b rows of that padded length and trains on
  b * m real tokens.
- **packed** (``--packing``): samples are concatenated into full rows of s tokens (TRL's
  SFTTrainer packing, or DataCollatorWithFlattening): b * s real tokens a step, every token
  real. With flash_attention_2 the packed documents attend one by one (the variable-length
  kernel, fed position ids: s/m documents of m tokens, each with m^2/2 causal pairs); with
  SDPA or eager the row attends as one sequence of s tokens.

Memory is planned for the longest batch (b x s) either way: this module only times steps.
Pure arithmetic over frozen dataclasses.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from planner.model.specs import GpuSpec, ModelSpec, TrainSpec
from planner.time import roofline as R
from planner.time.timing import StepTime, step_time


@dataclass(frozen=True)
class Data:
    """How the data fills a step: the samples' mean length (None: every sample is seq_len
    long) and whether samples are packed into full rows."""

    mean_len: int | None = None
    packing: bool = False

    def check(self, train: TrainSpec) -> None:
        if self.mean_len is not None and not 1 <= self.mean_len <= train.seq_len:
            raise ValueError(f"--mean-len must be between 1 and --seq-len ({train.seq_len}), got {self.mean_len}")

    def mean(self, train: TrainSpec) -> int:
        return self.mean_len or train.seq_len

    def padded_len(self, train: TrainSpec) -> int:
        """The rows' length in a step: s when packed (or all samples are s long), else the
        expected longest of the batch's samples, m * H_b, at most s (module docstring)."""
        m, s = self.mean(train), train.seq_len
        if self.packing or m >= s:
            return s
        harmonic = sum(1 / i for i in range(1, train.batch_size + 1))
        return min(s, max(1, math.ceil(m * harmonic)))

    def real_tokens(self, train: TrainSpec) -> int:
        """Data set tokens one step trains on (per GPU): b * s packed, b * m padded."""
        return train.batch_size * (train.seq_len if self.packing else self.mean(train))

    def segment(self, train: TrainSpec) -> int | None:
        """The length of the documents attention sees one by one inside a packed row (the
        variable-length flash kernel), None where a row attends as one sequence."""
        m = self.mean(train)
        if self.packing and m < train.seq_len and train.attn_implementation == "flash_attention_2":
            return m
        return None


@dataclass(frozen=True)
class DataTime:
    """A step of real data: its planned time, its rows' length, the real tokens it trains on."""

    step: StepTime
    padded_len: int
    real_tokens: int  # per step and GPU
    num_gpus: int

    @property
    def real_tokens_per_second(self) -> float:
        return self.real_tokens / self.step.step_seconds

    @property
    def padding_fraction(self) -> float:
        """Share of the step's token slots that are padding."""
        slots = self.step.tokens_per_second * self.step.step_seconds
        return max(0.0, 1 - self.real_tokens / slots)

    def hours(self, dataset_tokens: int, epochs: int = 1) -> float:
        """Hours for ``epochs`` passes over ``dataset_tokens`` tokens: ceil(tokens * epochs /
        (real tokens per step x GPUs)) steps of the planned step time."""
        if dataset_tokens < 1:
            raise ValueError(f"dataset tokens must be at least 1, got {dataset_tokens}")
        if epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {epochs}")
        steps = math.ceil(dataset_tokens * epochs / (self.real_tokens * self.num_gpus))
        return steps * self.step.step_seconds / 3600

    def to_dict(self) -> dict:
        return {"padded_len": self.padded_len, "real_tokens_per_step": self.real_tokens,
                "step_seconds": self.step.step_seconds, "real_tokens_per_second": self.real_tokens_per_second,
                "padding_fraction": self.padding_fraction}


def data_step(model: ModelSpec, gpu: GpuSpec, train: TrainSpec, dtype: str, eff: R.Efficiency,
              data: Data) -> DataTime | None:
    """The planned step of ``train`` on real data (module docstring); None in fp32."""
    data.check(train)
    padded = data.padded_len(train)
    st = step_time(model, gpu, train.with_(seq_len=padded), dtype, eff, segment=data.segment(train))
    if st is None:
        return None
    return DataTime(st, padded, data.real_tokens(train), train.num_gpus)
