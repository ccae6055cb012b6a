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
           "clap", "clip-svd", "ape", "ape-t", "ldc", "semobridge", "semobridge-t"}
NO_LABELS = {"zeroshot", "calip"}  # zero-shot methods: their rows have shots=0
SHOTS = {0, 1, 2, 4, 8, 16}
GDA = "Wang et al. 2024 (ICLR 2024; arXiv:2402.04087) Figure 1 values as released in exp.log"
TIP = "Zhang et al. 2022 (ECCV 2022; arXiv:2207.09519) Figures 4-5 values as released in exp.log"
COOP = ("Zhou et al. 2022 (CoOp; IJCV 2022; arXiv:2109.01134) released results sheet imcls_fewshot, as copied in "
        "Jingchensun/Prompt-Adapter")
HC = "Zhang et al. 2024 (NeurIPS 2024; OpenReview veMnGKXvTx) Tables 2 and 5"
TIP2 = "Zhang et al. 2022 (ECCV 2022; arXiv:2207.09519v1) Table 2"
SMB = ("SeMoBridge authors' ViT-B/16 results sheet 2025 (christti98/semobridge; baseline rows copied from other "
       "papers)")


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


def test_counts_and_values_of_the_sources_with_linear_probe_and_trained_methods(table):
    _, rows = table
    per_source = Counter(r["source"] for r in rows)
    assert per_source[COOP] == 11 * (1 + 2 * 5)  # Handcrafted prompt, CoOp and linear probe CLIP at 5 shots
    assert per_source[HC] == 11 * (1 + 3 * 5) + 1 + 4  # Table 5 (RN50), Table 2's ImageNet rows (RN50 LP; ViT-B/16)
    assert per_source[TIP2] == 1 + 5 * 5  # ImageNet only
    assert per_source[SMB] == 11 * (1 + 10 * 5) + 3 * 11 + 5  # 2SFS has K=4,8,16 per dataset, Tip-X ImageNet only
    assert len(rows) == 363 + 121 + 181 + 26 + 599
    value = {(r["source"], r["backbone"], r["dataset"], r["method"], int(r["shots"])): r["acc"] for r in rows}
    assert value[COOP, "RN50", "eurosat", "linear-probe", 1] == "51"  # the sheet stores numbers, not text
    assert value[COOP, "RN50", "imagenet", "linear-probe", 16] == "55.87"
    assert value[COOP, "RN50", "fgvc_aircraft", "coop", 1] == "9.64"
    assert value[HC, "RN50", "stanford_cars", "taskres", 16] == "77.07"
    assert value[HC, "RN50", "food101", "tip-adapter-f", 16] == "79.4"  # printed with one decimal
    assert value[HC, "ViT-B/16", "imagenet", "linear-probe", 16] == "65.85"
    assert value[TIP2, "RN50", "imagenet", "linear-probe", 1] == "22.17"
    assert value[SMB, "ViT-B/16", "imagenet", "clip-lora", 16] == "73.60"
    assert value[SMB, "ViT-B/16", "eurosat", "coop", 16] == "84.44"  # "84.44±0.80 0:01:35" in the sheet
    for dataset in DATASETS:
        # HC's zero-shot column is the CoOp sheet's "Handcrafted prompt" row.
        assert value[HC, "RN50", dataset, "zeroshot", 0] == value[COOP, "RN50", dataset, "zeroshot", 0]
        for shots in (1, 2, 4, 8, 16):
            # HC's CLIP-Adapter rows equal the CLIP-A rows of Tip-Adapter's exp.log (HC prints 93.9 for 93.90).
            hc = value[HC, "RN50", dataset, "clip-adapter", shots]
            tip = value[TIP, "RN50", dataset, "clip-adapter", shots]
            assert float(hc) == float(tip)
    for shots in (1, 2, 4, 8, 16):
        # Tip-Adapter's Table 2 reprints CoOp's ImageNet curve; its linear-probe row differs (docs/advise-sources.md).
        assert value[TIP2, "RN50", "imagenet", "coop", shots] == value[COOP, "RN50", "imagenet", "coop", shots]
        clip_adapter = value[TIP2, "RN50", "imagenet", "clip-adapter", shots]
        assert clip_adapter == value[HC, "RN50", "imagenet", "clip-adapter", shots]
