"""The probe results table: schema, atomic append, typed load (pandas, CSV).

One row per probed configuration, self-describing (docs/design.md, "The results table"):
when, what (model, method and every setting), where (device, driver, library versions, git
commit), the measured figures, the status, and the planner's prediction with the ratio.

Appending never damages what is there:

- the existing file is read as text (every cell a string), so old rows are written back
  exactly as they were, never re-formatted;
- a table of an older schema (1 or 2) is read with the settings its rows were made with
  (:data:`ADDED`), its own cells kept as text; appending writes it back under the current
  header, each old row's cells (schema_version included) unchanged and the added columns filled;
- a file that is not a results table of a known schema (other columns, unreadable, not CSV)
  raises :class:`StoreError` and is left untouched;
- the new table is written to a temporary file in the same folder, flushed and fsynced,
  then renamed over the old one (``os.replace`` is atomic on POSIX and Windows): an
  interrupted write leaves the old table intact.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from pathlib import Path

import data

SCHEMA_VERSION = 3

# (column, type) in file order. Types: str, int, float, bool, json (a JSON text cell).
SCHEMA: tuple[tuple[str, str], ...] = (
    ("schema_version", "int"),
    ("timestamp", "str"),
    ("run_id", "str"),
    # what
    ("model", "str"),
    ("method", "str"),
    ("rank", "int"),
    ("alpha", "float"),
    ("target_modules", "str"),
    ("batch_size", "int"),
    ("seq_len", "int"),
    ("gradient_checkpointing", "bool"),
    ("dtype", "str"),
    ("precision", "str"),
    ("optim", "str"),
    ("quant_type", "str"),
    ("double_quant", "bool"),
    ("target_parameters", "str"),
    ("lora_dropout", "float"),
    ("attn_implementation", "str"),
    ("kernels", "str"),
    ("modules_to_save", "str"),
    ("num_gpus", "int"),
    ("sharding", "str"),
    ("init", "str"),
    ("steps", "int"),
    ("warmup", "int"),
    # where
    ("device", "str"),
    ("device_name", "str"),
    ("driver", "str"),
    ("cuda_version", "str"),
    ("torch_version", "str"),
    ("transformers_version", "str"),
    ("peft_version", "str"),
    ("bitsandbytes_version", "str"),
    ("python_version", "str"),
    ("git_commit", "str"),
    # outcome
    ("status", "str"),
    ("error", "str"),
    ("peak_allocated_bytes", "int"),
    ("peak_reserved_bytes", "int"),
    ("device_used_bytes", "int"),
    ("peak_active_bytes", "int"),
    ("cuda_context_bytes", "int"),
    ("baseline_bytes", "int"),
    ("forward_peak_bytes", "int"),
    ("backward_peak_bytes", "int"),
    ("optimizer_peak_bytes", "int"),
    ("peak_phase", "str"),
    ("step_time_s", "float"),
    ("tokens_per_second", "float"),
    ("attention_kernel", "str"),
    ("peak_breakdown", "json"),
    # the planner's prediction for the same configuration
    ("plan_gpu", "str"),
    ("planned_peak_allocated_bytes", "int"),
    ("planned_peak_reserved_bytes", "int"),
    ("planned_device_used_bytes", "int"),
    ("planned_forward_bytes", "int"),
    ("planned_backward_bytes", "int"),
    ("planned_optimizer_bytes", "int"),
    ("planned_peak_phase", "str"),
    ("ratio", "float"),
)
COLUMNS = tuple(name for name, _ in SCHEMA)
TYPES = dict(SCHEMA)
# The settings each schema added, with the value every row of an older table was made with:
# an older table gets them on reading (as text; its other cells, schema_version included,
# unchanged). Schema 2 added six settings, which schema-1 rows all had at their defaults.
# Schema 3 added kernels (TrainSpec.kernels: the path of the hybrids' Gated DeltaNet, Mamba-2
# and short-convolution layers); a probe without --kernels runs "auto", what transformers picks.
ADDED_IN_2 = {"target_parameters": "", "lora_dropout": "0.0", "attn_implementation": "auto",
              "modules_to_save": "", "num_gpus": "1", "sharding": "none"}
ADDED_IN_3 = {"kernels": "auto"}
ADDED = {2: ADDED_IN_2, 3: ADDED_IN_3}
COLUMNS_2 = tuple(c for c in COLUMNS if c not in ADDED_IN_3)
COLUMNS_1 = tuple(c for c in COLUMNS_2 if c not in ADDED_IN_2)
# The columns of each schema's table, in file order.
COLUMNS_OF = {1: COLUMNS_1, 2: COLUMNS_2, SCHEMA_VERSION: COLUMNS}
STATUSES = ("ok", "oom", "unsupported", "error")


class StoreError(ValueError):
    """The results file is not a table this tool wrote (or cannot be read)."""


def default_path() -> Path:
    return data.path("probes", "results.csv")


# ---------------------------------------------------------------------- cells

def _cell(value, kind: str) -> str:
    """One value as the text written to the CSV ('' for missing)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if kind == "json":
        return json.dumps(value, sort_keys=False, separators=(",", ":"))
    if kind == "bool":
        return "true" if value else "false"
    if kind == "int":
        return str(int(value))
    if kind == "float":
        return repr(float(value))
    return str(value)


def _parse(text: str, kind: str):
    """A CSV cell back to its value (None for '')."""
    if text == "":
        return None
    if kind == "int":
        return int(text)
    if kind == "float":
        return float(text)
    if kind == "bool":
        if text not in ("true", "false"):
            raise ValueError(f"not a boolean: {text!r}")
        return text == "true"
    if kind == "json":
        return json.loads(text)
    return text


def check_row(row: dict) -> None:
    """A row has exactly the schema's keys, a known status and values of the right types."""
    missing = [c for c in COLUMNS if c not in row]
    extra = [k for k in row if k not in TYPES]
    if missing or extra:
        raise StoreError(f"row does not match the schema: missing {missing}, unknown {extra}")
    if row["status"] not in STATUSES:
        raise StoreError(f"unknown status {row['status']!r} (one of {', '.join(STATUSES)})")
    for name, kind in SCHEMA:
        value = row[name]
        if value is None:
            continue
        ok = {"int": lambda v: isinstance(v, int) and not isinstance(v, bool),
              "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
              "bool": lambda v: isinstance(v, bool),
              "str": lambda v: isinstance(v, str),
              "json": lambda v: isinstance(v, (dict, list))}[kind](value)
        if not ok:
            raise StoreError(f"column {name!r} must be {kind}, got {value!r}")


def to_record(row: dict) -> dict[str, str]:
    check_row(row)
    return {name: _cell(row[name], kind) for name, kind in SCHEMA}


# ---------------------------------------------------------------------- files

def _read_text_table(path: Path):
    """The existing table as strings, or StoreError if it is not one of ours."""
    import pandas as pd

    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise StoreError(f"{path.name}: not a readable probe results table "
                         f"({exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                         "left unchanged (use --output to write elsewhere)") from None
    frame = _upgraded(frame)
    if tuple(frame.columns) != COLUMNS:
        missing = [c for c in COLUMNS if c not in frame.columns]
        extra = [c for c in frame.columns if c not in COLUMNS]
        raise StoreError(f"{path.name}: not a probe results table of schema {SCHEMA_VERSION} "
                         f"(missing columns: {', '.join(missing[:5]) or 'none'}; unknown: "
                         f"{', '.join(map(str, extra[:5])) or 'none'}); left unchanged "
                         "(use --output to write elsewhere)")
    versions = set(frame["schema_version"])
    known = [str(v) for v in sorted(COLUMNS_OF)]
    if versions - set(known):
        raise StoreError(f"{path.name}: schema_version {sorted(versions)} is not one of {', '.join(known)}; "
                         "left unchanged")
    return frame


def _upgraded(frame):
    """A table of an older schema (its columns exactly, its rows of that schema or older) with
    the settings added since, at the values its rows were made with (:data:`ADDED`), in the
    current column order; any other frame as it is (refused by the caller if not current)."""
    for version, columns in COLUMNS_OF.items():
        if version == SCHEMA_VERSION or tuple(frame.columns) != columns:
            continue
        if not set(frame["schema_version"]) <= {str(v) for v in range(1, version + 1)}:
            return frame
        for later in range(version + 1, SCHEMA_VERSION + 1):
            for name, value in ADDED[later].items():
                frame[name] = value
        return frame[list(COLUMNS)]
    return frame


def append(rows: list[dict], path: str | Path | None = None) -> Path:
    """Append ``rows`` to the table at ``path`` (default data/probes/results.csv), atomically."""
    import pandas as pd

    path = Path(path) if path is not None else default_path()
    if path.suffix.lower() != ".csv":
        raise StoreError(f"{path.name}: results are written as CSV; use a .csv file name")
    new = pd.DataFrame([to_record(r) for r in rows], columns=list(COLUMNS), dtype=str)
    if path.exists():
        frame = pd.concat([_read_text_table(path), new], ignore_index=True)
    else:
        frame = new
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(frame, path)
    return path


def _file_mode(path: Path) -> int:
    """The mode the table keeps: its current one, or what a new file gets (0666 - umask)."""
    try:
        return path.stat().st_mode & 0o7777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _write_atomic(frame, path: Path) -> None:
    mode = _file_mode(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, mode)  # mkstemp makes 0600 files: keep the table readable as before
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as handle:
            frame.to_csv(handle, index=False, lineterminator="\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def load_rows(path: str | Path | None = None) -> list[dict]:
    """The table as typed rows (ints, floats, bools, dicts; None for empty cells)."""
    path = Path(path) if path is not None else default_path()
    frame = _read_text_table(path)
    rows = []
    for record in frame.to_dict(orient="records"):
        try:
            rows.append({name: _parse(record[name], kind) for name, kind in SCHEMA})
        except (ValueError, json.JSONDecodeError) as exc:
            raise StoreError(f"{path.name}: malformed cell ({exc})") from None
    return rows


def load(path: str | Path | None = None):
    """The table as a pandas DataFrame with typed columns (nullable ints)."""
    import pandas as pd

    rows = load_rows(path)
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    for name, kind in SCHEMA:
        if kind == "int":
            frame[name] = frame[name].astype("Int64")
        elif kind == "float":
            frame[name] = frame[name].astype("Float64")
        elif kind == "bool":
            frame[name] = frame[name].astype("boolean")
    return frame
