"""Schema 3 of the results table: the kernels setting (TrainSpec.kernels) in each row.

Small fixture tables written here (never the committed one): a schema-3 round trip, schema-1
and schema-2 tables read with kernels=auto (the setting of every probe before the column) and
appended to with their old cells kept as text, refusals of tables of no known schema, a hybrid
row's kernels=torch carried from the train spec to the plan, and the probe table's column.
Torch-free except the row-writer test.
"""
import csv

import pytest

from planner import TrainSpec, get_gpu, plan
from planner.model.catalog import model_from_config

# What each schema added, written out here (not read from probes.store).
ADDED_BY_2 = ("target_parameters", "lora_dropout", "attn_implementation", "modules_to_save", "num_gpus",
              "sharding")
DEFAULTS_OF_2 = {"target_parameters": None, "lora_dropout": 0.0, "attn_implementation": "auto",
                 "modules_to_save": None, "num_gpus": 1, "sharding": "none"}
TINY_LFM2 = dict(model_type="lfm2", pad_token_id=0, vocab_size=512, hidden_size=64, intermediate_size=160,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                 layer_types=["conv", "full_attention"], num_hidden_layers=2, block_multiple_of=16)
TINY_LLAMA = dict(model_type="llama", vocab_size=512, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
# The probe table's header for dense rows, as it was before the kernels column existed.
DENSE_HEAD = ("model  method  bs  seq  gc  device  status  alloc GiB  reserved  used  fwd  bwd  optim  "
              "step s  tok/s  planned  ratio  plan tok/s  MFU")


def _row(**changes) -> dict:
    """A typed row of the current schema with a value of its type in every column."""
    from probes import store

    sample = {"int": 7, "float": 1.5, "bool": True, "str": "x", "json": {"forward/mm": 3}}
    row = {name: sample[kind] for name, kind in store.SCHEMA}
    row.update(schema_version=3, model="tiny-lfm2", method="lora", status="ok", kernels="torch", sharding="none",
               attn_implementation="auto", alpha=32.0, device="fake")
    return {**row, **changes}


def _write(path, header, rows):
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(header), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def _read(path):
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        return reader.fieldnames, list(reader)


def _old_table(tmp_path, dropped, versions):
    """A table of an older schema (the current columns less ``dropped``), one row per version, as
    text; a float cell written '32' (not '32.0') to show old cells are never re-formatted."""
    from probes import store

    header = [c for c in store.COLUMNS if c not in dropped]
    rows = []
    for i, version in enumerate(versions):
        cells = store.to_record(_row(batch_size=i + 1))
        rows.append({**{c: cells[c] for c in header}, "schema_version": version, "alpha": "32"})
    path = tmp_path / "old.csv"
    _write(path, header, rows)
    return path, header, rows


def test_schema_3_has_kernels_among_the_settings_and_round_trips(tmp_path):
    from probes import store

    assert store.SCHEMA_VERSION == 3 and store.TYPES["kernels"] == "str"
    assert store.COLUMNS.index("kernels") == store.COLUMNS.index("attn_implementation") + 1  # a "what" setting
    path = tmp_path / "results.csv"
    rows = [_row(kernels="torch"), _row(kernels="fused", batch_size=2), _row(kernels="auto", seq_len=9)]
    store.append(rows[:1], path)
    first = path.read_bytes()
    store.append(rows[1:], path)
    assert path.read_bytes().startswith(first)
    header, text = _read(path)
    assert header == list(store.COLUMNS) and [r["kernels"] for r in text] == ["torch", "fused", "auto"]
    assert store.load_rows(path) == rows
    assert list(store.load(path)["kernels"]) == ["torch", "fused", "auto"]


@pytest.mark.parametrize("schema,dropped,versions", [
    (1, ADDED_BY_2 + ("kernels",), ["1"]),
    (2, ("kernels",), ["1", "2"]),  # a schema-2 table that already held upgraded schema-1 rows
], ids=["schema-1", "schema-2"])
def test_an_older_table_reads_with_kernels_auto_and_keeps_its_cells_on_append(tmp_path, schema, dropped, versions):
    from probes import store

    path, header, old_rows = _old_table(tmp_path, dropped, versions)
    loaded = store.load_rows(path)
    assert [r["schema_version"] for r in loaded] == [int(v) for v in versions]
    assert all(r["kernels"] == "auto" for r in loaded)
    if schema == 1:
        assert all({k: r[k] for k in DEFAULTS_OF_2} == DEFAULTS_OF_2 for r in loaded)
    assert [r["alpha"] for r in loaded] == [32.0] * len(versions)

    store.append([_row(kernels="torch", batch_size=99)], path)
    new_header, text = _read(path)
    assert new_header == list(store.COLUMNS)
    for old, now in zip(old_rows, text):
        assert {c: now[c] for c in header} == old  # every old cell as written: '32', version 1 / 2
        assert now["kernels"] == "auto"
        assert set(now) - set(header) == set(dropped)
    assert text[-1]["kernels"] == "torch" and text[-1]["schema_version"] == "3"
    assert text[-1]["batch_size"] == "99" and len(text) == len(versions) + 1
    assert store.load_rows(path)[-1] == _row(kernels="torch", batch_size=99)


@pytest.mark.parametrize("dropped,versions,extra", [
    (("kernels",), ["3"], None),                   # schema-3 rows lacking the column
    (("kernels",), ["2", "3"], None),
    (ADDED_BY_2 + ("kernels",), ["2"], None),      # schema-2 rows lacking six columns
    ((), ["4"], None),                             # a schema this tool does not know
    ((), ["3"], "notes"),                          # an unknown column beside the schema's
    (("kernels",), ["2"], "notes"),
    (("kernels",), ["2"], "kernel"),               # a near-miss of the name is not the column
], ids=["3-without-kernels", "2-and-3-without-kernels", "2-without-six", "version-4", "unknown-column",
        "2-with-unknown-column", "misnamed"])
def test_negative_control_a_table_of_no_known_schema_is_refused_and_left_unchanged(tmp_path, dropped,
                                                                                    versions, extra):
    from probes import store

    path, header, rows = _old_table(tmp_path, dropped, versions)
    if extra:
        _write(path, header + [extra], [{**r, extra: "?"} for r in rows])
    before = path.read_bytes()
    with pytest.raises(store.StoreError, match="left unchanged"):
        store.load_rows(path)
    with pytest.raises(store.StoreError, match="left unchanged"):
        store.append([_row()], path)
    assert path.read_bytes() == before


def test_a_row_without_kernels_or_with_a_wrong_type_is_refused():
    from probes import store

    store.check_row(_row())
    with pytest.raises(store.StoreError, match="missing \\['kernels'\\]"):
        store.check_row({k: v for k, v in _row().items() if k != "kernels"})
    with pytest.raises(store.StoreError, match="kernels"):
        store.check_row(_row(kernels=1))


def test_a_hybrid_row_carries_kernels_torch_from_the_spec_to_the_plan(tmp_path, monkeypatch):
    """probes.run.make_row fills kernels from the train spec and plans with it (LFM2's short
    convolution plans more on the torch path); the time calibration rebuilds the same spec."""
    from planner.time import calibration
    from probes import run as runner
    from probes import store
    from probes.protocol import Measurement

    monkeypatch.setattr(runner, "versions", lambda: {k: "0" for k in (
        "torch_version", "transformers_version", "peft_version", "bitsandbytes_version", "python_version",
        "cuda_version")})
    spec = model_from_config(dict(TINY_LFM2), "tiny-lfm2")
    train = TrainSpec(method="lora", rank=4, batch_size=2, seq_len=40, dtype="bf16", kernels="torch")
    probe = runner.make_probe(spec, train, "fake")
    row = runner.make_row(probe, Measurement(peak_allocated_bytes=1_000_000), {"device_name": "fake"}, "ok", "", "t")
    assert row["kernels"] == "torch" and row["schema_version"] == 3
    gpu = get_gpu("h100-80gb")
    torch_path, auto = (plan(spec, gpu, train.with_(kernels=k)).peak_allocated_bytes for k in ("torch", "auto"))
    assert torch_path != auto  # negative control: the setting moves the plan, so the row must say it
    assert row["planned_peak_allocated_bytes"] == torch_path

    path = store.append([row], tmp_path / "results.csv")
    (text,) = _read(path)[1]
    assert text["kernels"] == "torch"
    assert calibration._train(text).kernels == "torch"
    assert calibration._train({k: v for k, v in text.items() if k != "kernels"}).kernels == "auto"  # older rows


def _table_rows(**changes):
    base = dict(model="tiny-lfm2", method="lora", batch_size=1, seq_len=512, gradient_checkpointing=False,
                device="fake", device_name="fake", status="ok", peak_allocated_bytes=2**30, peak_reserved_bytes=None,
                device_used_bytes=None, forward_peak_bytes=None, backward_peak_bytes=None, optimizer_peak_bytes=None,
                step_time_s=None, tokens_per_second=None, planned_peak_allocated_bytes=2**30, ratio=1.0,
                plan_gpu="h100-80gb")
    return [dict(base, **changes), dict(base, method="dora", **changes)]


def test_the_probe_table_shows_kernels_for_hybrids_or_other_kernels_only():
    from probes.cli import has_kernel_layers, table

    dense = table(_table_rows(model="m"))
    assert dense.splitlines()[0] == DENSE_HEAD  # dense output unchanged, with or without the key
    assert table(_table_rows(model="m", kernels="auto")) == dense
    assert "kernels" not in dense

    shown = table(_table_rows(kernels="torch")).splitlines()
    assert shown[0].split()[:6] == ["model", "method", "bs", "seq", "gc", "kernels"]
    assert shown[2].split()[5] == "torch" and "torch    fake    ok  " in shown[2]  # text columns left-aligned
    hybrid = table(_table_rows(kernels="auto"), kernels=True).splitlines()
    assert hybrid[0].split()[5] == "kernels" and hybrid[3].split()[5] == "auto"

    assert has_kernel_layers(model_from_config(dict(TINY_LFM2), "tiny-lfm2"))
    assert not has_kernel_layers(model_from_config(dict(TINY_LLAMA), "tiny-llama"))
    assert not has_kernel_layers(object())  # a model the planner lacks: only a non-auto row shows it
