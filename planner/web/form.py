"""The page's settings: what a request may hold, its bounds, the link and the `plan` command.

Pure Python (no gradio): the page and its API turn what they receive into one settings dict
(``from_query`` for a link or an API call, ``from_values`` for the page's widgets), and every
check lives here:

- The names are ``plan``'s: a setting is the ``plan`` option of the same name (the link's key
  is the flag without its dashes, ``batch-size``), and its default is the option's default,
  read from the command itself. Two page defaults differ from ``plan``'s, and the command box
  says so by spelling them out: the largest batch and sequence are searched
  (``--max-batch-size --max-seq-len``), and one model is planned at a time.
- No request reads a path on the server: a model is a catalog name (resolved against the
  catalog's names only) or the text of a pasted config.json, at most ``MAX_CONFIG_BYTES``.
- Every number is bounded (``LIMITS``; a pasted config's numbers too), so that no request
  makes a search run away; below the bound the planner's own checks apply, with its words.
- A bad request raises :class:`PageError`, whose ``line`` is the one line ``plan`` prints
  (``plan: error: ...``).
"""
from __future__ import annotations

import difflib
import json
import math
import re
import shlex
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode

from . import engine

MAX_CONFIG_BYTES = 64 * 1024  # a config.json is a few KiB; the largest catalog one is under 4 KiB
MAX_QUERY_BYTES = 4 * MAX_CONFIG_BYTES  # a link: the settings and a percent-encoded paste
MAX_TEXT = 200  # a model name, a comma list of module names
MAX_GPUS = 4  # GPUs planned at once (each adds a panel and its searches)
MAX_CONFIG_NUMBER = 1 << 40  # any number in a pasted config.json (layers, widths, context)

# Upper bounds of the page's numbers (the lower bounds are the planner's: "batch size must be
# at least 1"). The sliders span the same ranges.
LIMITS = {
    "rank": 1024,
    "batch_size": 1024,
    "seq_len": 131072,  # the longest context in the catalog
    "num_gpus": 1024,
    "alpha": 65536.0,
    "dataset_tokens": 10 ** 15,
    "epochs": 1000,
    "mean_len": 131072,
}


class PageError(ValueError):
    """A request the page refuses; ``line`` is what the page shows, as ``plan`` prints it."""

    def __init__(self, message: str):
        first = (str(message).splitlines() or [""])[0]
        super().__init__(first)
        self.line = f"plan: error: {first}"


@dataclass(frozen=True)
class Field:
    """One setting: ``name`` is the ``plan`` parameter, ``key`` its flag without dashes."""

    name: str
    key: str
    kind: str  # int, float, bool, choice, text, list
    default: object
    choices: tuple = ()
    optional: bool = False  # may be empty (None): alpha, dataset_tokens


def _fields() -> tuple[Field, ...]:
    """The page's settings, from the ``plan`` command's own options (names, flags, defaults,
    choices), in the order of ``plan --help``; the page's two own defaults set apart."""
    opts, given = engine.command_options(), engine.command_defaults()

    def flag(name):
        return max((o for o in opts[name].opts if o.startswith("--")), key=len)[2:]

    def choices(name):
        return tuple(getattr(opts[name].type, "choices", ()))

    out = [
        Field("models", "model", "text", given["models"][0]),
        Field("config", "config", "text", ""),  # the page's own: a pasted config.json
        Field("gpus", "gpu", "list", tuple(given["gpus"])),
        Field("methods", "method", "list", tuple(engine.METHODS), tuple(engine.METHODS)),
    ]
    kinds = {"rank": "int", "alpha": "float", "target_modules": "text", "target_parameters": "text",
             "lora_dropout": "float", "modules_to_save": "text", "batch_size": "int", "seq_len": "int",
             "gradient_checkpointing": "bool", "precision": "choice", "quant_type": "choice",
             "double_quant": "bool", "attn_implementation": "choice", "kernels": "choice", "num_gpus": "int",
             "sharding": "choice", "offload": "choice", "dtype": "choice", "optim": "choice",
             "search_batch": "bool", "search_seq": "bool", "dataset_tokens": "int", "epochs": "int",
             "mean_len": "int", "packing": "bool", "host": "choice", "calibrated": "bool"}
    page_defaults = {"search_batch": True, "search_seq": True}  # the page shows the largest batch and seq
    for name, kind in kinds.items():
        default = page_defaults.get(name, given[name])
        out.append(Field(name, flag(name), kind, default, choices(name) if kind == "choice" else (),
                         optional=name in ("alpha", "dataset_tokens", "mean_len")))
    return tuple(out)


FIELDS = _fields()
BY_NAME = {f.name: f for f in FIELDS}
BY_KEY = {f.key: f for f in FIELDS}
TRAIN_FIELDS = ("rank", "alpha", "target_modules", "target_parameters", "lora_dropout", "modules_to_save",
                "batch_size", "seq_len", "gradient_checkpointing", "dtype", "precision", "optim", "quant_type",
                "double_quant", "attn_implementation", "kernels", "num_gpus", "sharding", "offload")
TRUE, FALSE = ("1", "true", "on", "yes"), ("0", "false", "off", "no")
INTEGER = re.compile(r"[+-]?\d{1,30}")


def defaults() -> dict:
    """The page's settings before anything is changed."""
    return {f.name: f.default for f in FIELDS}


def _int(field: Field, value) -> int | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        if field.optional:
            return None
        raise PageError(f"Invalid value for '--{field.key}': an integer is needed")
    if isinstance(value, bool):
        raise PageError(f"Invalid value for '--{field.key}': {value!r} is not a valid integer.")
    if isinstance(value, float):
        if not value.is_integer():
            raise PageError(f"Invalid value for '--{field.key}': {value!r} is not a valid integer.")
        value = int(value)
    if isinstance(value, str):
        if not INTEGER.fullmatch(value.strip()):
            raise PageError(f"Invalid value for '--{field.key}': {value[:40]!r} is not a valid integer.")
        value = int(value.strip())
    if not isinstance(value, int):
        raise PageError(f"Invalid value for '--{field.key}': {value!r} is not a valid integer.")
    high = LIMITS.get(field.name)
    if high is not None and value > high:
        raise PageError(f"--{field.key} must be at most {high:,} on this page, got {value:,}")
    return value


def _float(field: Field, value) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        if field.optional:
            return None
        raise PageError(f"Invalid value for '--{field.key}': a number is needed")
    try:
        number = float(value.strip()[:40] if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise PageError(f"Invalid value for '--{field.key}': {str(value)[:40]!r} is not a valid float.") from None
    if isinstance(value, bool) or not math.isfinite(number):
        raise PageError(f"Invalid value for '--{field.key}': {str(value)[:40]!r} is not a finite number.")
    high = LIMITS.get(field.name)
    if high is not None and number > high:
        raise PageError(f"--{field.key} must be at most {high:g} on this page, got {number:g}")
    try:
        return engine.check_range(field.name, number)
    except ValueError as exc:
        raise PageError(str(exc)) from None


def _bool(field: Field, value) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in TRUE + FALSE:
        return value.strip().lower() in TRUE
    raise PageError(f"Invalid value for '--{field.key}': {str(value)[:40]!r} is not on or off.")


def _text(field: Field, value) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise PageError(f"Invalid value for '--{field.key}': text is needed")
    if field.name == "config":
        size = len(value.encode("utf-8", "surrogatepass"))
        if size > MAX_CONFIG_BYTES:
            raise PageError(f"the pasted config.json is {size:,} bytes; the page takes at most "
                            f"{MAX_CONFIG_BYTES:,} (a config.json is a few KiB)")
        return value
    if len(value) > MAX_TEXT:
        raise PageError(f"--{field.key} is {len(value):,} characters; the page takes at most {MAX_TEXT}")
    return value.strip()


def _choice(field: Field, value) -> str:
    if not isinstance(value, str) or value not in field.choices:
        shown = ", ".join(repr(c) for c in field.choices)
        raise PageError(f"Invalid value for '--{field.key}': {str(value)[:40]!r} is not one of {shown}.")
    return value


def _list(field: Field, value) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else list(value or ())
    if not all(isinstance(v, str) for v in items):
        raise PageError(f"Invalid value for '--{field.key}': names are needed")
    items = [v.strip() for v in items if v.strip()]
    if field.name == "methods":
        if "all" in items:
            return field.default
        if not items:
            raise PageError("choose at least one method (plan without --method plans every one)")
        bad = next((m for m in items if m not in field.choices), None)
        if bad is not None:
            shown = ", ".join(repr(c) for c in (*field.choices, "all"))
            raise PageError(f"Invalid value for '--method': {bad[:40]!r} is not one of {shown}.")
        return tuple(m for m in field.choices if m in items)  # plan's order, once each
    if not items:
        raise PageError("choose at least one GPU")
    if len(items) > MAX_GPUS or any(v.lower() == "all" for v in items):
        raise PageError(f"the page plans at most {MAX_GPUS} GPUs at once (plan --gpu all plans every one)")
    too_long = next((v for v in items if len(v) > MAX_TEXT), None)
    if too_long:
        raise PageError(f"--gpu is {len(too_long):,} characters; the page takes at most {MAX_TEXT}")
    return tuple(items)


PARSE = {"int": _int, "float": _float, "bool": _bool, "text": _text, "choice": _choice, "list": _list}


def from_values(values: dict) -> dict:
    """Settings from the page's widgets (or any dict of setting names): each value checked and
    bounded; a missing setting keeps its default. Raises PageError."""
    unknown = sorted(set(values) - set(BY_NAME))
    if unknown:
        raise PageError(f"no such setting {unknown[0]!r}")
    out = defaults()
    for name, value in values.items():
        field = BY_NAME[name]
        out[name] = PARSE[field.kind](field, value)
    return out


def from_query(query: str) -> dict:
    """Settings from a link's query string (``model=7b&gpu=t4&batch-size=4``), the flags'
    names without dashes; ``gpu`` and ``method`` may repeat. Raises PageError."""
    if not isinstance(query, str):
        raise PageError("the settings must be a query string")
    size = len(query.encode("utf-8", "surrogatepass"))
    if size > MAX_QUERY_BYTES:
        raise PageError(f"the settings are {size:,} bytes; the page takes at most {MAX_QUERY_BYTES:,}")
    try:
        pairs = parse_qsl(query.lstrip("?"), keep_blank_values=True, max_num_fields=64)
    except ValueError:
        raise PageError("the link holds more than 64 settings") from None
    values: dict = {}
    for key, value in pairs:
        field = BY_KEY.get(key)
        if field is None:
            raise PageError(f"no such setting {key[:40]!r} (the link's settings are plan's option names)")
        if field.kind == "list":
            values.setdefault(field.name, []).append(value)
        elif field.name in values:
            raise PageError(f"--{key} is given twice")
        else:
            values[field.name] = value
    return from_values(values)


def _text_value(field: Field, value) -> str:
    if field.kind == "bool":
        return "on" if value else "off"
    if field.kind == "float":
        return repr(float(value)).removesuffix(".0")
    return str(value)


def to_query(settings: dict) -> str:
    """The link's query string: the settings that differ from the page's defaults, in the
    order of ``plan --help`` (``from_query`` reads it back to the same settings)."""
    pairs = []
    for f in FIELDS:
        value = settings[f.name]
        if value == f.default or (f.name == "models" and settings["config"].strip()):
            continue
        if f.kind == "list":
            pairs += [(f.key, v) for v in value]
        elif value is not None:
            pairs.append((f.key, _text_value(f, value)))
    return urlencode(pairs)


def paste_name(config: dict) -> str:
    """The name of a pasted config's model: its ``_name_or_path``'s last part, as a file name
    (``plan --model NAME.json`` names the model NAME too), else ``pasted-config``."""
    raw = config.get("_name_or_path") if isinstance(config, dict) else None
    name = re.sub(r"[^A-Za-z0-9._-]", "", str(raw or "").replace("\\", "/").split("/")[-1]).lstrip(".-")[:64]
    return name if name and name.lower() not in ("config", "config.json") else "pasted-config"


def command(settings: dict) -> str:
    """The exact ``plan`` command for these settings: --model and --gpu always, the others
    where they differ from ``plan``'s defaults. With a pasted config, --model NAME.json names
    the file to save it as."""
    opts, given = engine.command_options(), engine.command_defaults()
    if settings["config"].strip():
        model = f"{paste_name(_parse_config(settings['config']))}.json"
    else:
        model = settings["models"]
    args = ["plan", "--model", model]
    for gpu in settings["gpus"]:
        args += ["--gpu", gpu]
    for f in FIELDS[3:]:
        value = settings[f.name]
        if f.name == "methods":
            if tuple(value) != tuple(f.choices):
                for m in value:
                    args += ["--method", m]
            continue
        if value == given[f.name]:
            continue
        if f.kind == "bool":  # --x, or --no-x where plan's default is on
            args.append(f"--{f.key}" if value else opts[f.name].secondary_opts[0])
        elif value is not None:
            args += [f"--{f.key}", _text_value(f, value)]
    return " ".join(shlex.quote(a) for a in args)


def _finite(text: str) -> float:
    raise ValueError(f"{text} is not a number JSON allows")


def _parse_config(text: str) -> dict:
    """A pasted config.json's fields; PageError unless a JSON object of bounded numbers."""
    try:
        config = json.loads(text, parse_constant=_finite)
    except RecursionError:
        raise PageError("pasted config.json: not a readable JSON config (nested too deeply)") from None
    except ValueError as exc:
        raise PageError(f"pasted config.json: not a readable JSON config ({exc.__class__.__name__}: {exc})") from None
    if not isinstance(config, dict):
        raise PageError("pasted config.json: a config.json must hold a JSON object")
    stack = [("", config)]
    while stack:
        where, node = stack.pop()
        if isinstance(node, dict):
            stack += [(str(k), v) for k, v in node.items()]
        elif isinstance(node, list):
            stack += [(where, v) for v in node]
        elif isinstance(node, (int, float)) and not isinstance(node, bool) and abs(node) > MAX_CONFIG_NUMBER:
            raise PageError(f"pasted config.json: {where[:40]!r} is {node:.3g}; the page takes numbers up to 2^40")
    return config


def _model_resolver(settings: dict):
    """A zero-argument function that returns the ModelSpec to plan: the pasted config, or a
    catalog name (only catalog names: a name is never looked up as a file)."""
    if settings["config"].strip():
        config = _parse_config(settings["config"])
        return lambda: engine.model_from_paste(config, paste_name(config))
    name = settings["models"]
    keys = engine.catalog_model_keys()
    canonical = keys.get(name.strip().lower())
    if canonical is not None:
        return lambda: engine.resolve_model(canonical)

    def unknown():
        close = difflib.get_close_matches(name.split("/")[-1].lower() if "/" in name or name.endswith(".json")
                                          else name.lower(), list(keys), n=3, cutoff=0.5)
        suggest = f" (did you mean {', '.join(close)}?)" if close else ""
        if not name.strip():
            raise PageError("choose a model, or paste a config.json")
        if "/" in name or "\\" in name or name.endswith(".json"):
            raise PageError(f"unknown model {name!r}: not a catalog HF id (the page reads no files on the "
                            f"server: paste the config.json's text instead){suggest}")
        raise PageError(f"unknown model {name!r}{suggest}; see `plan --list-models`")

    return unknown


def plan(settings: dict) -> engine.Outcome:
    """Plan the settings as ``plan`` does; PageError with ``plan``'s one line on bad input."""
    try:
        resolve = _model_resolver(settings)
        return engine.run([resolve], list(settings["gpus"]),
                          () if tuple(settings["methods"]) == tuple(engine.METHODS) else tuple(settings["methods"]),
                          {k: settings[k] for k in TRAIN_FIELDS}, search_batch=settings["search_batch"],
                          search_seq=settings["search_seq"], dataset_tokens=settings["dataset_tokens"],
                          epochs=settings["epochs"], calibrated=settings["calibrated"],
                          mean_len=settings["mean_len"], packing=settings["packing"], host=settings["host"])
    except PageError:
        raise
    except ValueError as exc:  # CatalogError, the planner's checks: plan's own words
        raise PageError(str(exc)) from None
