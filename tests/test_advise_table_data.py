"""The published few-shot table behind `clipadapt advise` (experiments/advise/published.csv): its header, vocabulary
and value ranges, one zero-shot row per (source, backbone, dataset) group, no duplicate keys, sorted rows, and a few
values checked against the released files they were read from (docs/advise-sources.md says which)."""

from __future__ import annotations

import csv
from collections import Counter
from importlib import resources

import pytest

HEADER = ["dataset", "method", "shots", "acc", "backbone", "source", "where"]
DATASETS = {"imagenet", "caltech101", "oxford_pets", "stanford_cars", "flowers102", "food101", "fgvc_aircraft",
            "sun397", "dtd", "eurosat", "ucf101"}
# Our registry names where we have the method, else the paper's name lowercased (docs/advise-sources.md).
METHODS = {"zeroshot", "linear-probe", "coop", "cocoop", "tip-adapter", "tip-adapter-f", "clip-adapter", "maple",
           "lp++", "gda", "clip-lora", "prolip", "2sfs", "calip", "tip-x", "plot++", "kgcoop", "taskres", "prograd",
           "clap", "clip-svd"}
NO_LABELS = {"zeroshot", "calip"}  # zero-shot methods: their rows have shots=0
SHOTS = {0, 1, 2, 4, 8, 16}
GDA = "Wang et al. 2024 (ICLR 2024; arXiv:2402.04087) Figure 1 values as released in exp.log"
TIP = "Zhang et al. 2022 (ECCV 2022; arXiv:2207.09519) Figures 4-5 values as released in exp.log"


@pytest.fixture(scope="module")
def table() -> tuple[list[str], list[dict[str, str]]]:
    path = resources.files("clipadapt") / "experiments" / "advise" / "published.csv"
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


def test_header_and_vocabulary(table):
    header, rows = table
    assert header == HEADER
    assert rows
    for row in rows:
        assert None not in row and all(row[key] for key in HEADER), row
        assert row["dataset"] in DATASETS, row
        assert row["method"] in METHODS, row
        assert int(row["shots"]) in SHOTS, row
        assert (int(row["shots"]) == 0) == (row["method"] in NO_LABELS), row
        assert 0 < float(row["acc"]) <= 100, row
        assert row["where"].startswith(("github.com/", "https://")), row


def test_every_group_has_its_zero_shot_row_and_no_key_repeats(table):
    _, rows = table
    keys = Counter((r["dataset"], r["method"], int(r["shots"]), r["backbone"], r["source"]) for r in rows)
    assert [key for key, count in keys.items() if count > 1] == []
    groups = {(r["source"], r["backbone"], r["dataset"]) for r in rows}
    zero_shot = {(r["source"], r["backbone"], r["dataset"]) for r in rows if r["method"] == "zeroshot"}
    assert groups - zero_shot == set()


def test_rows_are_sorted_by_source_dataset_method_shots(table):
    _, rows = table
    order = [(r["source"], r["dataset"], r["method"], int(r["shots"])) for r in rows]
    assert order == sorted(order)


def test_counts_and_values_read_from_the_released_logs(table):
    _, rows = table
    per_source = Counter(r["source"] for r in rows)
    assert per_source[GDA] == 11 * (2 + 3 * 5)  # CLIP and CALIP, then tip-adapter, tip-x, gda at 5 shots
    assert per_source[TIP] == 11 * (1 + 3 * 5)  # the dataset header, then Tip, Tip-F, CLIP-A at 5 shots
    value = {(r["source"], r["dataset"], r["method"], int(r["shots"])): r["acc"] for r in rows}
    assert value[GDA, "eurosat", "zeroshot", 0] == "37.56"
    assert value[GDA, "eurosat", "gda", 16] == "86.12"
    assert value[GDA, "imagenet", "tip-x", 1] == "60.73"
    assert value[TIP, "eurosat", "zeroshot", 0] == "37.52"
    assert value[TIP, "fgvc_aircraft", "tip-adapter-f", 16] == "35.55"  # Tip-Adapter's log lists shots 16..1
    assert value[TIP, "stanford_cars", "clip-adapter", 1] == "55.13"
    # GDA's Figure 1 copies Tip-Adapter's published Tip-Adapter curve: the two sources agree on all 55 values.
    for dataset in DATASETS:
        for shots in (1, 2, 4, 8, 16):
            assert value[GDA, dataset, "tip-adapter", shots] == value[TIP, dataset, "tip-adapter", shots]
