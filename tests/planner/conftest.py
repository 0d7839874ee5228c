"""A tiny hand-checkable model for the planner's unit tests (no torch)."""
import pytest

from planner.model.catalog import model_from_config

TINY_CONFIG = {
    "model_type": "llama", "vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
    "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 4,
    "tie_word_embeddings": False, "max_position_embeddings": 64,
}


@pytest.fixture(scope="session")
def tiny():
    """V=10, h=8, I=16, L=2, 2 heads of 4, 1 kv head: q 8->8, k/v 8->4, o 8->8, MLP 8->16->8."""
    return model_from_config(dict(TINY_CONFIG), "tiny")


@pytest.fixture
def results_csv(tmp_path):
    """A writer of a probe results table in a temporary folder: (fields, rows) -> its path."""
    import csv

    def write(fields, rows):
        p = tmp_path / "results.csv"
        with open(p, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows(rows)
        return str(p)

    return write
