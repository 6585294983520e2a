"""The demo data shipped in data/demo (make demo without ../shared): well-formed, balanced, disjoint splits,
small, readable by fg-edge's reader, and what the Makefile falls back to."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "data" / "demo"


def _rows(name: str) -> list[tuple[str, int]]:
    lines = (DEMO / name).read_text(encoding="utf-8").split("\n")
    assert lines[0] == "text\tlabel" and lines[-1] == ""
    rows = []
    for line in lines[1:-1]:
        text, label = line.split("\t")              # exactly two fields, no tab inside the text
        assert text == text.strip() and text and label in ("0", "1")
        rows.append((text, int(label)))
    return rows


def test_demo_splits_are_balanced_distinct_and_small():
    train, dev = _rows("train.tsv"), _rows("dev.tsv")
    assert (len(train), len(dev)) == (1800, 300)
    for rows in (train, dev):
        assert sum(y for _, y in rows) * 2 == len(rows)
    texts = [t.lower() for t, _ in train + dev]
    assert len(set(texts)) == len(texts)            # no duplicate within or across the splits
    assert sum((DEMO / n).stat().st_size for n in ("train.tsv", "dev.tsv")) < 1_000_000
    assert "Apache-2.0" in (DEMO / "README.md").read_text()


def test_demo_data_reads_as_a_classification_set():
    from fg_edge.data.readers import load_classification

    data = load_classification(DEMO / "dev.tsv")
    assert len(data.texts) == 300 and sorted(set(data.labels)) == [0, 1]


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_demo_falls_back_to_the_shipped_data(tmp_path):
    dry = subprocess.run(["make", "-n", "demo", f"SST2_DIR={tmp_path / 'missing'}"], cwd=ROOT, text=True,
                         capture_output=True, check=True).stdout
    assert "--train data/demo/train.tsv --dev data/demo/dev.tsv" in dry
    here = subprocess.run(["make", "-n", "demo", f"SST2_DIR={DEMO}"], cwd=ROOT, text=True, capture_output=True,
                          check=True).stdout
    assert f"--train {DEMO}/train.tsv" in here
