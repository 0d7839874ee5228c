"""What a recipe file says, as planner settings: :class:`Recipe`, and the :class:`Draft` each
framework's reader fills in."""
from __future__ import annotations

from dataclasses import dataclass, field

from .keys import Keys, RecipeError

# target_modules left to peft's per-model default (TRL, a peft LoraConfig without them):
# resolved once the model's type is known (planner.recipes.peft_targets)
PEFT_DEFAULT = "peft-default"

# settings, named as the options of `plan` and `probe`, and how each is written as a flag
FLAGS = {
    "rank": "--rank", "alpha": "--alpha", "target_modules": "--target-modules",
    "target_parameters": "--target-parameters", "lora_dropout": "--lora-dropout",
    "modules_to_save": "--modules-to-save", "batch_size": "--batch-size", "seq_len": "--seq-len",
    "dtype": "--dtype", "precision": "--precision", "optim": "--optim", "quant_type": "--quant-type",
    "attn_implementation": "--attn-implementation", "num_gpus": "--num-gpus", "sharding": "--sharding",
    "offload": "--offload",
}
SAVABLE = ("embed_tokens", "lm_head")


@dataclass(frozen=True)
class Recipe:
    """A training recipe read into the planner's settings.

    ``settings`` maps option names of `plan` / `probe` (``methods``, ``rank``, ``seq_len``,
    ...) to values; ``notes`` say which framework defaults filled what the file leaves out,
    which keys change memory in ways not modelled, and which keys were ignored.
    """

    source: str
    framework: str
    model: str | None = None
    revision: str | None = None
    settings: dict = field(default_factory=dict)
    notes: tuple[str, ...] = ()


class Draft:
    """A recipe being read: settings, the defaults used, and notes."""

    def __init__(self, framework: str, keys: Keys):
        self.framework, self.keys = framework, keys
        self.settings: dict = {}
        self.defaulted: list[str] = []
        self.notes: list[str] = []
        self.model: str | None = None
        self.revision: str | None = None

    def set(self, name: str, value, default_from: str | None = None) -> None:
        """A setting; ``default_from`` cites the framework's default when the file is silent."""
        self.settings[name] = value
        if default_from:
            shown = ",".join(value) if isinstance(value, tuple) else ("on" if value is True else "off"
                                                                     if value is False else value)
            self.defaulted.append(f"{name}={shown} ({default_from})")

    def unmodelled(self, key: str, why: str) -> None:
        """A key that changes memory in a way the planner does not model: said in a note."""
        self.keys.used.add(key)
        self.notes.append(f"{key}: {why}")

    def note(self, text: str) -> None:
        self.notes.append(text)

    def modules_to_save(self, key: str, names) -> None:
        names = [n.strip() for n in (names.split(",") if isinstance(names, str) else names) if n.strip()]
        unknown = [n for n in names if n not in SAVABLE]
        if unknown:
            raise RecipeError(f"{self.keys.source}: {key}: the planner trains {' and '.join(SAVABLE)} whole "
                              f"(peft modules_to_save), not {', '.join(unknown)}")
        if names:
            self.set("modules_to_save", ",".join(names))

    def finish(self, no_memory: frozenset) -> Recipe:
        unread = [k for k in self.keys.unread() if not str(k).startswith("_")]  # "_follows": a comment
        ignored = [k for k in unread if k in no_memory]
        unknown = [k for k in unread if k not in no_memory]
        src = self.keys.source
        notes = [f"recipe {src} ({self.framework}): " + n for n in self.notes]
        if self.defaulted:
            notes.append(f"recipe {src}: {self.framework}'s defaults where the file is silent: "
                         + "; ".join(self.defaulted))
        if ignored:
            notes.append(f"recipe {src}: ignored, no effect on a step's memory: {', '.join(ignored)}")
        if unknown:
            notes.append(f"recipe {src}: ignored, not keys ftmem reads for {self.framework}: {', '.join(unknown)}")
        return Recipe(source=src, framework=self.framework, model=self.model, revision=self.revision,
                      settings=dict(self.settings), notes=tuple(notes))


def optimizer(draft: Draft, key: str, value: str | None) -> None:
    """An optimizer name of HF TrainingArguments / axolotl / LLaMA-Factory to the planner's."""
    if value is None:
        return
    name = value.lower()
    known = {"adamw_torch": "adamw_torch", "adamw_hf": "adamw_torch", "adamw": "adamw_torch",
             "adamw_torch_fused": "adamw_torch_fused", "adamw_bnb_8bit": "adamw_8bit", "adamw_8bit": "adamw_8bit",
             "paged_adamw_8bit": "paged_adamw_8bit", "paged_adamw_32bit": "paged_adamw_32bit", "sgd": "sgd",
             "adamw_torch_4bit": None}
    if known.get(name):
        draft.set("optim", known[name])
    else:
        draft.unmodelled(key, f"optimizer {value!r} is not modelled: planned with adamw_torch (two fp32 states "
                              "per trained parameter)")
        draft.set("optim", "adamw_torch")


def attention(draft: Draft, key: str, value: str | None) -> None:
    """transformers' attn_implementation names to the planner's."""
    if value is None:
        return
    name = value.lower()
    mapped = {"eager": "eager", "sdpa": "sdpa", "flash_attention_2": "flash_attention_2",
              "flash_attention_3": "flash_attention_2", "fa2": "flash_attention_2", "fa3": "flash_attention_2",
              "auto": "auto"}.get(name)
    if mapped is None:
        draft.unmodelled(key, f"attention {value!r} is not modelled: planned with transformers' default (auto)")
        return
    if name in ("flash_attention_3", "fa3"):
        draft.unmodelled(key, "flash attention 3 planned as flash_attention_2 (both keep O(seq) per head)")
    draft.set("attn_implementation", mapped)


def targets(draft: Draft, key: str, value) -> None:
    """LoRA target modules: a list, a comma string, 'all-linear' / 'all'; a regular
    expression (peft's str form) is refused with the key named."""
    if isinstance(value, list):
        names = [v.strip() for v in value if v.strip()]
    else:
        text = value.strip()
        if text.lower() in ("all-linear", "all"):
            draft.set("target_modules", "all-linear")
            return
        if any(c in text for c in "*()[]|\\^$?+"):
            raise RecipeError(f"{draft.keys.source}: {key}: a regular expression ({text!r}) is not read; "
                              "list the module names (q_proj,v_proj) or use all-linear")
        names = [v.strip() for v in text.split(",") if v.strip()]
    if not names:
        raise RecipeError(f"{draft.keys.source}: {key} is empty")
    draft.set("target_modules", "all-linear" if "all-linear" in names else ",".join(names))


def as_flags(model: str | None, revision: str | None, methods, settings: dict) -> str:
    """The `plan` flags that give the same plan as a recipe (settings as finally used)."""
    out = [f"--model {model}"] if model else []
    if revision and revision != "main":
        out.append(f"--revision {revision}")
    out += [f"--method {m}" for m in methods or ()]
    for name, flag in FLAGS.items():
        if name in settings and settings[name] is not None:
            value = settings[name]
            out.append(f"{flag} {value:g}" if isinstance(value, float) else f"{flag} {value}")
    if "gradient_checkpointing" in settings:
        out.append("--gradient-checkpointing" if settings["gradient_checkpointing"] else "--no-gradient-checkpointing")
    if "double_quant" in settings:
        out.append("--double-quant" if settings["double_quant"] else "--no-double-quant")
    return " ".join(out)
