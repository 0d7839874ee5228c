"""The results table: row schema, atomic append, refusal of foreign or malformed files."""
import csv
import json
import os

import pytest

from planner import TrainSpec


@pytest.fixture(scope="module")
def fake_row(llama_tiny):
    from probes import run as runner

    probe = runner.make_probe(llama_tiny, TrainSpec(method="qlora", batch_size=2, seq_len=32,
                                                    gradient_checkpointing=True), "fake")
    return runner.run(probe, "test-run")


def test_a_row_has_exactly_the_schema_and_the_plan_of_the_same_configuration(fake_row, llama_tiny):
    from planner import get_gpu, plan
    from probes.store import COLUMNS, check_row

    check_row(fake_row)
    assert tuple(fake_row) == COLUMNS
    assert fake_row["status"] == "ok" and fake_row["device"] == "fake"
    assert fake_row["attention_kernel"] == "flash"
    for key in ("torch_version", "transformers_version", "peft_version", "bitsandbytes_version"):
        assert fake_row[key]
    p = plan(llama_tiny, get_gpu("h100-80gb"),
             TrainSpec(method="qlora", batch_size=2, seq_len=32, gradient_checkpointing=True,
                       dtype="bf16"))
    assert fake_row["planned_peak_allocated_bytes"] == p.peak_allocated_bytes
    assert fake_row["planned_backward_bytes"] == p.phases["backward"]
    assert fake_row["ratio"] == fake_row["peak_allocated_bytes"] / p.peak_allocated_bytes
    assert fake_row["peak_allocated_bytes"] == max(
        fake_row[f"{ph}_peak_bytes"] for ph in ("forward", "backward", "optimizer"))
    assert sum(fake_row["peak_breakdown"].values()) == fake_row["peak_allocated_bytes"]


def test_check_row_rejects_missing_keys_wrong_types_and_unknown_status(fake_row):
    from probes.store import StoreError, check_row

    with pytest.raises(StoreError, match="missing"):
        check_row({k: v for k, v in fake_row.items() if k != "ratio"})
    with pytest.raises(StoreError, match="peak_allocated_bytes"):
        check_row({**fake_row, "peak_allocated_bytes": "12 GiB"})
    with pytest.raises(StoreError, match="status"):
        check_row({**fake_row, "status": "fine"})


def test_append_then_load_round_trips_and_keeps_old_rows_byte_for_byte(fake_row, tmp_path):
    from probes import store

    path = tmp_path / "results.csv"
    store.append([fake_row], path)
    first = path.read_bytes()
    second_row = {**fake_row, "batch_size": 4, "status": "oom", "peak_allocated_bytes": None,
                  "ratio": None, "error": 'CUDA out of memory, "quoted", and a comma'}
    store.append([second_row], path)
    assert path.read_bytes().startswith(first)
    rows = store.load_rows(path)
    assert rows == [fake_row, second_row]
    frame = store.load(path)
    assert list(frame["batch_size"]) == [2, 4]
    assert str(frame["peak_allocated_bytes"].dtype) == "Int64"
    assert [p.name for p in tmp_path.iterdir()] == ["results.csv"]


def test_an_interrupted_write_leaves_the_old_table_intact(fake_row, tmp_path, monkeypatch):
    import pandas as pd

    from probes import store

    path = tmp_path / "results.csv"
    store.append([fake_row], path)
    before = path.read_bytes()

    real_to_csv = pd.DataFrame.to_csv

    def crash_midway(self, handle, *args, **kwargs):
        real_to_csv(self.head(1), handle, *args, **kwargs)  # part of the table is written
        raise KeyboardInterrupt

    monkeypatch.setattr(pd.DataFrame, "to_csv", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        store.append([{**fake_row, "batch_size": 8}], path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["results.csv"]  # no temp file left


def test_negative_control_a_non_atomic_write_would_have_damaged_it(fake_row, tmp_path):
    """Writing in place and crashing truncates the table: what the temp-file rename avoids."""
    from probes import store

    path = tmp_path / "results.csv"
    store.append([fake_row, fake_row], path)
    before = path.read_bytes()
    with open(path, "w") as handle:  # the naive way: open for writing, then crash
        handle.write(before.decode()[:10])
    assert path.read_bytes() != before


@pytest.mark.parametrize("content", [
    "name,value\nx,1\n",                                    # a foreign table
    "",                                                     # empty
    "\x00\x01binary\xff",                                   # not text
], ids=["foreign", "empty", "binary"])
def test_a_foreign_or_malformed_file_is_refused_and_never_overwritten(fake_row, tmp_path, content):
    from probes import store

    path = tmp_path / "results.csv"
    path.write_bytes(content.encode("latin-1"))
    with pytest.raises(store.StoreError, match="left unchanged"):
        store.append([fake_row], path)
    assert path.read_bytes() == content.encode("latin-1")


def test_a_table_with_a_bad_cell_is_refused_on_load(fake_row, tmp_path):
    from probes import store

    path = tmp_path / "results.csv"
    store.append([fake_row], path)
    text = path.read_text().replace(",true,", ",maybe,", 1)
    path.write_text(text)
    with pytest.raises(store.StoreError, match="malformed"):
        store.load_rows(path)


def test_results_must_be_csv(fake_row, tmp_path):
    from probes import store

    with pytest.raises(store.StoreError, match="CSV"):
        store.append([fake_row], tmp_path / "results.json")


def test_the_committed_results_table_loads_and_is_valid():
    """data/probes/results.csv (committed rows) follows the schema and records versions."""
    from probes import store

    path = store.default_path()
    if not path.exists():
        pytest.skip("no committed results yet")
    rows = store.load_rows(path)
    assert rows
    for row in rows:
        store.check_row(row)
        assert row["torch_version"] and row["git_commit"] is not None
    fake_rows = [r for r in rows if r["device"] == "fake" and r["status"] == "ok"]
    assert all(r["attention_kernel"] == "flash" for r in fake_rows)
    assert json.dumps(rows)  # JSON-serializable as --json prints them
    assert os.sep not in "".join(str(r["model"]) for r in rows)


def test_the_table_keeps_its_file_mode(fake_row, tmp_path):
    """The temp file is 0600; the renamed table must keep the mode it had (or 0666-umask)."""
    from probes import store

    path = tmp_path / "results.csv"
    store.append([fake_row], path)
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    path.chmod(0o640)
    store.append([fake_row], path)
    assert path.stat().st_mode & 0o777 == 0o640


def test_a_schema_1_table_reads_with_the_settings_its_rows_used_and_upgrades_on_append(fake_row, tmp_path):
    """Schema 2 added target_parameters, lora_dropout, attn_implementation, num_gpus, sharding and
    modules_to_save; schema-1 rows were made with their defaults and read back so, their own
    cells (schema_version 1 included) unchanged."""
    from probes import store

    path = tmp_path / "results.csv"
    row = {**fake_row, "lora_dropout": 0.1, "modules_to_save": "lm_head"}
    store.append([row], path)
    record = {k: v for k, v in store.to_record({**fake_row, "schema_version": 1}).items()
              if k in store.COLUMNS_1}
    v1 = tmp_path / "v1.csv"

    def write_v1(cells):
        with v1.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(cells), lineterminator="\n")
            writer.writeheader()
            writer.writerow(cells)

    write_v1(record)
    (old,) = store.load_rows(v1)
    assert old["schema_version"] == 1 and old["lora_dropout"] == 0.0 and old["attn_implementation"] == "auto"
    assert old["modules_to_save"] is None and old["peak_allocated_bytes"] == fake_row["peak_allocated_bytes"]
    assert (old["num_gpus"], old["sharding"]) == (1, "none")
    store.append([row], v1)
    old, new = store.load_rows(v1)
    assert old["schema_version"] == 1 and new["schema_version"] == 3
    assert (new["lora_dropout"], new["modules_to_save"]) == (0.1, "lm_head")
    write_v1({**record, "schema_version": "2"})  # negative control: a schema-2 row lacking columns
    with pytest.raises(store.StoreError, match="not a probe results table"):
        store.load_rows(v1)
