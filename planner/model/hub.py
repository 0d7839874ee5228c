"""Models by Hugging Face Hub id (``ORG/NAME``): their config.json and the checkpoint's
parameter counts, read through huggingface_hub. Weights are never downloaded.

    >>> from planner.model.hub import resolve
    >>> spec = resolve("HuggingFaceTB/SmolLM2-1.7B")          # doctest: +SKIP

How a model is resolved (huggingface_hub is imported here only, when a Hub id is used):

- config.json at ``revision`` comes from the local HF cache first (``try_to_load_from_cache``),
  so a model downloaded once plans offline; else from the Hub: ``/api/models/{id}/revision/{rev}``
  (the model's commit, gated and missing repos answered at once, no retries), then
  ``hf_hub_download`` of config.json into the cache.
- the checkpoint's parameter counts per dtype come from its safetensors headers
  (``HfApi.get_safetensors_metadata``: HTTP range requests of the first bytes of each file,
  and the index of a sharded checkpoint). Their summary is kept beside the HF cache, in the
  assets folder (``<HF_HOME>/assets/ftmem/safetensors/``), keyed by commit, so that a cached
  model plans offline with its count checked.
- ``HF_ENDPOINT``, ``HF_TOKEN``, ``HF_HUB_OFFLINE``, ``HF_HOME`` / ``HF_HUB_CACHE`` /
  ``HF_ASSETS_CACHE``, ``HF_HUB_ETAG_TIMEOUT`` and ``HF_HUB_DOWNLOAD_TIMEOUT`` are read when a
  model is resolved (not when huggingface_hub was imported), with huggingface_hub's defaults.
- a repo with its own modelling code (``auto_map``) is planned from its config fields when
  its ``model_type`` is one the planner knows; nothing from it is run. ``auto_map`` and
  ``quantization_config`` are left out of the config the planner (and ``probe``) builds from.

Every failure is a :class:`HubError`, one line: a gated repo (accept the licence, set
HF_TOKEN), a missing repo, revision or config.json, offline and not cached, a time-out.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path

from planner.model.catalog import CatalogError, model_from_config
from planner.model.specs import ModelSpec

# huggingface_hub's rules for a repo id (utils/_validators.py: validate_repo_id): a namespace
# and a name of letters, digits, '-', '_', '.', at most 96 characters, no '--' nor '..'.
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]{0,95}/[\w.\-]{1,96}$")
DEFAULT_TIMEOUT = 10.0  # seconds: huggingface_hub constants.DEFAULT_ETAG_TIMEOUT / DEFAULT_DOWNLOAD_TIMEOUT
SUMMARY_VERSION = 1

# Safetensors dtypes of checkpoints that do not train as stored (the planner plans 16-bit
# weights, or bitsandbytes 4-bit for QLoRA): FP8 and FP4 (MXFP4 blocks are stored as U8).
LOW_PRECISION_DTYPES = frozenset({"F8_E4M3", "F8_E5M2", "F8_E8M0", "F4", "F6_E2M3", "F6_E3M2"})


class HubError(CatalogError):
    """A Hub id that cannot be resolved: one line saying why and what to do."""


def is_repo_id(name: str) -> bool:
    """``ORG/NAME`` as the Hub spells a model id (not a local path, not a .json file)."""
    return (bool(_REPO_ID.match(name)) and "--" not in name and ".." not in name
            and not name.endswith(".json"))


@dataclass(frozen=True)
class Settings:
    """The Hub client settings, read from the environment when a model is resolved."""

    endpoint: str | None  # None: huggingface_hub's default Hub
    token: str | None
    offline: bool
    cache_dir: str
    assets_dir: str
    etag_timeout: float
    download_timeout: float

    @property
    def where(self) -> str:
        """The Hub, named in messages."""
        return f"the Hub ({self.endpoint})" if self.endpoint else "the Hub"

    @classmethod
    def from_env(cls, env=None) -> "Settings":
        env = os.environ if env is None else env
        home = os.path.expanduser(env.get("HF_HOME") or os.path.join(
            env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface"))
        return cls(
            endpoint=env.get("HF_ENDPOINT", "").rstrip("/") or None,
            token=env.get("HF_TOKEN") or None,
            offline=(env.get("HF_HUB_OFFLINE") or env.get("TRANSFORMERS_OFFLINE") or "").upper()
            in ("1", "ON", "YES", "TRUE"),
            cache_dir=os.path.expanduser(env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE")
                                         or os.path.join(home, "hub")),
            assets_dir=os.path.expanduser(env.get("HF_ASSETS_CACHE") or os.path.join(home, "assets")),
            etag_timeout=_seconds(env, "HF_HUB_ETAG_TIMEOUT"),
            download_timeout=_seconds(env, "HF_HUB_DOWNLOAD_TIMEOUT"),
        )


def _seconds(env, key: str) -> float:
    value = env.get(key)
    try:
        return float(value) if value else DEFAULT_TIMEOUT
    except ValueError:
        raise HubError(f"{key}={value!r} must be a number of seconds") from None


@dataclass(frozen=True)
class Checkpoint:
    """What the checkpoint's safetensors headers say: parameters per safetensors dtype."""

    parameter_count: dict
    files: int

    @property
    def total(self) -> int:
        return sum(self.parameter_count.values())

    @property
    def main_dtype(self) -> str:
        return max(self.parameter_count, key=self.parameter_count.get)

    def describe(self) -> str:
        parts = ", ".join(f"{dtype} {n:,}" for dtype, n in
                          sorted(self.parameter_count.items(), key=lambda kv: -kv[1]))
        return f"{parts}; {self.files} safetensors file{'s' if self.files != 1 else ''}"


def resolve(repo_id: str, revision: str | None = None, env=None) -> ModelSpec:
    """The planner's model of Hub repo ``repo_id`` at ``revision`` (default main), with notes
    on where its config came from, its parameter count against the checkpoint's, and its
    checkpoint dtype. Raises :class:`HubError` (one line)."""
    revision = revision or "main"
    settings = Settings.from_env(env)
    hf = _import_hub()

    cached = hf.try_to_load_from_cache(repo_id, "config.json", cache_dir=settings.cache_dir, revision=revision)
    if isinstance(cached, str):
        path, source = cached, "the local HF cache"
    elif settings.offline:
        raise HubError(f"{repo_id}@{revision}: HF_HUB_OFFLINE is set and its config.json is not in the local HF "
                       f"cache ({settings.cache_dir}): run once online, or unset HF_HUB_OFFLINE")
    else:
        path, source = _download_config(hf, repo_id, revision, settings), "the Hub"
    commit = Path(path).parent.name
    config = _read_config(path, repo_id)
    checkpoint, why_not = _checkpoint(hf, repo_id, commit, settings)
    planned = {k: v for k, v in config.items() if k not in ("auto_map", "quantization_config")}
    spec = model_from_config(planned, repo_id, hf_id=repo_id,
                             published_params=checkpoint.total if checkpoint else None)
    notes = (f"{repo_id}: config.json at revision {revision} (commit {commit[:12]}) from {source}; "
             "no weights downloaded",)
    notes += _count_note(spec, config, checkpoint, why_not)
    notes += _dtype_notes(config, checkpoint)
    if "auto_map" in config:
        notes += (f"{repo_id} ships its own modelling code (auto_map): planned from its config fields as "
                  f"model_type {spec.model_type!r}; none of its code is run",)
    return replace(spec, notes=notes)


def _read_config(path: str, repo_id: str) -> dict:
    try:
        config = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HubError(f"{repo_id}: config.json is not readable JSON ({exc.__class__.__name__}: {exc})") from None
    if not isinstance(config, dict):
        raise HubError(f"{repo_id}: config.json must hold a JSON object")
    return config


def _import_hub():
    """huggingface_hub, imported without the time-out variables this module reads itself
    (:class:`Settings`, seconds, passed to every call): the library parses them as integers
    when it is imported (huggingface_hub/constants.py, HF_HUB_ETAG_TIMEOUT and
    HF_HUB_DOWNLOAD_TIMEOUT via int()), so HF_HUB_ETAG_TIMEOUT=0.5 failed the import itself."""
    import sys

    if "huggingface_hub.constants" not in sys.modules:
        kept = {key: os.environ.pop(key) for key in ("HF_HUB_ETAG_TIMEOUT", "HF_HUB_DOWNLOAD_TIMEOUT")
                if key in os.environ}
        try:
            import huggingface_hub.constants  # noqa: F401 - the import that reads them
        finally:
            os.environ.update(kept)
    import huggingface_hub

    return huggingface_hub


@contextlib.contextmanager
def _online(s: Settings):
    """huggingface_hub's offline switch as ``s`` reads it now, while the block runs: the library
    reads HF_HUB_OFFLINE once, when it is imported (huggingface_hub/constants.py, HF_HUB_OFFLINE,
    which is_offline_mode returns), so an environment set after that import would not reach it."""
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = s.offline
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def _download_config(hf, repo_id: str, revision: str, s: Settings) -> str:
    """config.json into the HF cache: the model's info first (a gated, missing or slow repo
    fails there at once, with no retry), then the file itself."""
    api = hf.HfApi(endpoint=s.endpoint, token=s.token)
    try:
        with _online(s):
            api.model_info(repo_id, revision=revision, timeout=s.etag_timeout)
            return hf.hf_hub_download(repo_id, "config.json", revision=revision, cache_dir=s.cache_dir,
                                      endpoint=s.endpoint, token=s.token, etag_timeout=s.etag_timeout)
    except Exception as exc:  # noqa: BLE001 - every failure becomes one line
        raise _hub_error(hf, exc, repo_id, revision, s) from None


def _timed_out(exc: BaseException) -> bool:
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if any("Timeout" in cls.__name__ for cls in type(exc).__mro__):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _hub_error(hf, exc: Exception, repo_id: str, revision: str, s: Settings) -> HubError:
    from huggingface_hub import errors

    if isinstance(exc, errors.GatedRepoError):
        return HubError(f"{repo_id} is a gated model: accept its licence on its Hub page, then set HF_TOKEN to a "
                        "token of that account")
    if isinstance(exc, errors.RevisionNotFoundError):
        return HubError(f"{repo_id} has no revision {revision!r} on the Hub")
    if isinstance(exc, errors.RepositoryNotFoundError):
        return HubError(f"no model {repo_id!r} on the Hub (a private repo needs HF_TOKEN); catalog models: "
                        "plan --list-models")
    if isinstance(exc, errors.RemoteEntryNotFoundError):
        return HubError(f"{repo_id}@{revision} has no config.json: not a transformers model")
    if isinstance(exc, errors.OfflineModeIsEnabled):
        return HubError(f"{repo_id}@{revision}: offline mode is on and its config.json is not in the local HF cache")
    if _timed_out(exc):
        return HubError(f"{s.where} did not answer for {repo_id} within {s.etag_timeout:g} s "
                        "(HF_HUB_ETAG_TIMEOUT): retry, raise HF_HUB_ETAG_TIMEOUT, or set HF_HUB_OFFLINE=1 to "
                        "plan from the local cache")
    if isinstance(exc, errors.HfHubHTTPError) and exc.response is not None:
        return HubError(f"{s.where} answered HTTP {exc.response.status_code} for {repo_id}@{revision}")
    cause = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
    return HubError(f"cannot reach {s.where} for {repo_id}, and it is not in the local HF cache: "
                    f"{exc.__class__.__name__}: {cause}")


def _summary_path(s: Settings, repo_id: str, commit: str) -> Path:
    return Path(s.assets_dir) / "ftmem" / "safetensors" / repo_id.replace("/", "--") / f"{commit}.json"


def _checkpoint(hf, repo_id: str, commit: str, s: Settings) -> tuple[Checkpoint | None, str]:
    """The checkpoint's parameter counts at ``commit``: from the summary kept in the assets
    cache, else from its safetensors headers (online); or None and why not."""
    path = _summary_path(s, repo_id, commit)
    try:
        kept = json.loads(path.read_text())
        if kept.get("version") == SUMMARY_VERSION:
            return Checkpoint(dict(kept["parameter_count"]), int(kept["files"])), ""
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    if s.offline:
        return None, "HF_HUB_OFFLINE is set and its safetensors headers were not read before"
    from huggingface_hub.errors import NotASafetensorsRepoError

    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    api = hf.HfApi(endpoint=s.endpoint, token=s.token)
    quiet = are_progress_bars_disabled()
    disable_progress_bars()  # one line per failure, and no bar on stderr
    try:
        with _online(s):
            meta = api.get_safetensors_metadata(repo_id, revision=commit, timeout=s.download_timeout)
    except NotASafetensorsRepoError:
        return None, "the repo has no safetensors weights (model.safetensors or its index)"
    except Exception as exc:  # noqa: BLE001 - a note, not a failure: the config is planned anyway
        why = "timed out" if _timed_out(exc) else f"{exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        return None, f"its safetensors headers could not be read ({why.rstrip(': ')})"
    finally:
        if not quiet:
            enable_progress_bars()
    counts: dict[str, int] = {}
    for file_meta in meta.files_metadata.values():
        for dtype, n in file_meta.parameter_count.items():
            counts[dtype] = counts.get(dtype, 0) + n
    checkpoint = Checkpoint(counts, len(meta.files_metadata))
    _keep(path, {"version": SUMMARY_VERSION, "repo_id": repo_id, "commit": commit,
                 "parameter_count": counts, "files": checkpoint.files})
    return checkpoint, ""


def _keep(path: Path, summary: dict) -> None:
    """Write the summary atomically (a temporary file renamed), or not at all."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(summary, sort_keys=True))
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only cache: the count is read again next time


def _count_note(spec: ModelSpec, config: dict, checkpoint: Checkpoint | None, why_not: str) -> tuple[str, ...]:
    from planner.model.counts import total_params

    planned = total_params(spec)
    if checkpoint is None:
        return (f"parameters: planned {planned:,}; the checkpoint's count is not checked: {why_not}",)
    held = checkpoint.total
    if held == planned:
        return (f"parameters: planned {planned:,}, equal to the checkpoint's ({checkpoint.describe()})",)
    why = ""
    if isinstance(config.get("text_config"), dict):
        why = ": the checkpoint also holds the towers besides the text decoder (vision, audio), which are not planned"
    elif config.get("quantization_config"):
        why = ": its quantized tensors are packed (several weights per stored element, plus scales)"
    return (f"parameters: planned {planned:,}, the checkpoint holds {held:,} ({checkpoint.describe()}), "
            f"{held - planned:+,}{why}",)


def _dtype_notes(config: dict, checkpoint: Checkpoint | None) -> tuple[str, ...]:
    """Where the checkpoint is stored in a form that does not train as it is (FP8, MXFP4,
    GPTQ, AWQ, ...): the plan is of the model loaded for training."""
    quant = config.get("quantization_config")
    method = str(quant.get("quant_method", "")).lower() if isinstance(quant, dict) else ""
    low = sorted(d for d in (checkpoint.parameter_count if checkpoint else {}) if d in LOW_PRECISION_DTYPES)
    if method in ("gptq", "awq", "aqlm", "hqq", "eetq", "compressed-tensors"):
        bits = quant.get("bits") or quant.get("w_bit") or ""
        return (f"the checkpoint is {method.upper()}-quantized{f' ({bits} bits)' if bits else ''}: peft trains "
                f"LoRA on it through {method.upper()} kernels, which the planner does not model; planned as the "
                "16-bit model (full, LoRA, DoRA) and as bitsandbytes 4-bit (QLoRA, QDoRA)",)
    if method == "bitsandbytes":
        return ("the checkpoint is pre-quantized with bitsandbytes: it loads as the qlora / qdora columns "
                "plan it (4-bit) or in 8 bits, which is not planned",)
    if method in ("fp8", "mxfp4") or low:
        what = method.upper() if method else "/".join(low)
        return (f"the checkpoint stores its weights as {what}"
                + (f" ({checkpoint.describe()})" if checkpoint and low else "")
                + ": they do not train as stored; planned as the model dequantized to the compute dtype "
                  "(full, LoRA, DoRA) or bitsandbytes 4-bit (QLoRA, QDoRA)",)
    if checkpoint is not None and checkpoint.main_dtype == "F32":
        return ("the checkpoint is stored in fp32: planned as loaded in the compute dtype (torch_dtype / dtype "
                "in the training script); --precision mixed plans fp32 master weights",)
    return ()
