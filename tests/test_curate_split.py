"""Class selection and splits: stratified ratios, per-class counts, seeds, groups."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from vislab.data.curate import CurateOptions, run_curate
from vislab.data.manifest import read_manifest
from vislab.data.split import assign_splits, parse_ratios, select_classes
from vislab.errors import VislabError
from vislab.testing.images import near_copy, write_image_folder


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tree")
    write_image_folder(root, {"a": 20, "b": 12, "c": 7, "d": 3}, size=(32, 24))
    return root


def curate(out: Path, *sources: Path, **options) -> pd.DataFrame:
    run_curate(CurateOptions(sources=list(sources), workers=1, **options), out)
    return read_manifest(out)


def counts(df: pd.DataFrame) -> dict[tuple[str, str], int]:
    ok = df[df["status"] == "ok"]
    return ok.groupby(["label", "split"]).size().to_dict()


def test_stratified_ratios_per_class(tmp_path, tree):
    df = curate(tmp_path / "ds", tree, split="0.5,0.25,0.25")
    c = counts(df)
    assert (c[("a", "train")], c[("a", "val")], c[("a", "test")]) == (10, 5, 5)
    assert (c[("b", "train")], c[("b", "val")], c[("b", "test")]) == (6, 3, 3)
    assert sum(v for (k, _), v in c.items() if k == "c") == 7
    assert set(df["split"]) == {"train", "val", "test"}


def test_no_split_leaves_the_column_empty(tmp_path, tree):
    df = curate(tmp_path / "ds", tree)
    assert (df["split"] == "").all()


def test_pure_test_set(tmp_path, tree):
    df = curate(tmp_path / "ds", tree, split="0,0,1")
    assert set(df.loc[df["status"] == "ok", "split"]) == {"test"}


def test_per_class_counts_and_the_too_small_error(tmp_path, tree):
    df = curate(tmp_path / "ds", tree, val_per_class=1, test_per_class=1)
    c = counts(df)
    for name, n in {"a": 20, "b": 12, "c": 7, "d": 3}.items():
        assert c[(name, "val")] == 1 and c[(name, "test")] == 1 and c[(name, "train")] == n - 2
    df = curate(tmp_path / "ds1", tree, test_per_class=2)
    assert counts(df)[("d", "test")] == 2 and ("d", "val") not in counts(df)
    with pytest.raises(VislabError, match=r"class 'd' has 3 usable images.*--min-per-class 5"):
        curate(tmp_path / "ds2", tree, val_per_class=2, test_per_class=2)


def test_seed_decides_and_repeats(tmp_path, tree):
    first = curate(tmp_path / "s0", tree, split="0.6,0.2,0.2", seed=0)
    again = curate(tmp_path / "s0b", tree, split="0.6,0.2,0.2", seed=0)
    other = curate(tmp_path / "s1", tree, split="0.6,0.2,0.2", seed=1)
    assert first["split"].tolist() == again["split"].tolist()
    assert first["split"].tolist() != other["split"].tolist()
    assert counts(first) == counts(other)


def test_class_selection_options(tmp_path, tree):
    def ok_classes(**kw) -> dict[str, int]:
        df = curate(tmp_path / str(len(list(tmp_path.iterdir()))), tree, **kw)
        return df[df["status"] == "ok"]["label"].value_counts().to_dict()

    assert ok_classes(min_per_class=7) == {"a": 20, "b": 12, "c": 7}
    assert ok_classes(top_k=2) == {"a": 20, "b": 12}
    assert ok_classes(skip_top=1, top_k=2) == {"b": 12, "c": 7}
    assert ok_classes(max_per_class=5) == {"a": 5, "b": 5, "c": 5, "d": 3}
    sampled = ok_classes(sample_classes=2, seed=3)
    assert len(sampled) == 2 and sampled == ok_classes(sample_classes=2, seed=3)

    df = curate(tmp_path / "reasons", tree, min_per_class=4, top_k=2, max_per_class=15)
    reasons = df.groupby("label")["reason"].agg(lambda r: sorted(set(r)))
    assert reasons["d"] == ["class_too_small"]
    assert reasons["c"] == ["class_not_selected"]
    assert reasons["a"] == ["", "over_class_limit"]
    assert (df["reason"] == "over_class_limit").sum() == 5


def test_near_duplicate_groups_never_straddle_splits(tmp_path):
    originals = write_image_folder(tmp_path / "src", {"a": 12, "b": 12}, size=(96, 64))
    for i, path in enumerate(originals[::2]):
        for k in range(1 + i % 3):
            near_copy(path, path.with_name(f"{path.stem}_copy{k}.jpg"), scale=0.8 - 0.1 * k, quality=75)
    for seed in range(4):
        df = curate(tmp_path / f"ds{seed}", tmp_path / "src", split="0.5,0.25,0.25", seed=seed)
        grouped = df[(df["group"] != "") & (df["status"] == "ok")]
        assert grouped["group"].nunique() == 12
        assert (grouped.groupby("group")["split"].nunique() == 1).all()
        assert set(df["split"]) == {"train", "val", "test"}


def test_split_units_move_whole_groups_in_the_library():
    df = pd.DataFrame(
        {
            "path": [f"/x/{i:02d}" for i in range(20)],
            "label": ["a"] * 20,
            "status": ["ok"] * 20,
            "reason": [""] * 20,
            "group": ["g1"] * 6 + ["g2"] * 4 + [""] * 10,
        }
    )
    assign_splits(df, ratios=(0.5, 0.25, 0.25), seed=0)
    assert df.loc[:5, "split"].nunique() == 1 and df.loc[6:9, "split"].nunique() == 1
    sizes = df["split"].value_counts()
    assert sizes.sum() == 20 and sizes.get("val", 0) <= 5 and sizes.get("test", 0) <= 5


def test_sampling_one_class_does_not_reshuffle_the_others():
    def frame(classes: list[str]) -> pd.DataFrame:
        rows = [(f"/{c}/{i:02d}", c) for c in classes for i in range(10)]
        return pd.DataFrame(
            {
                "path": [p for p, _ in rows],
                "label": [c for _, c in rows],
                "status": "ok",
                "reason": "",
                "group": "",
            }
        )

    small, big = frame(["a", "b"]), frame(["a", "b", "c"])
    for df in (small, big):
        select_classes(df, max_per_class=4, seed=7)
        assign_splits(df, ratios=(0.5, 0.25, 0.25), seed=7)
    merged = small.merge(big, on="path", suffixes=("_s", "_b"))
    assert (merged["split_s"] == merged["split_b"]).all()
    assert (merged["status_s"] == merged["status_b"]).all()


@pytest.mark.parametrize(
    "text, message",
    [
        ("0.5,0.2,0.2", "sum to 0.9"),
        ("a,b,c", "not numbers"),
        ("1", "two or three"),
        ("1.2,-0.2,0", "non-negative"),
    ],
)
def test_bad_ratios(text, message):
    with pytest.raises(ValueError, match=message):
        parse_ratios(text)
    assert parse_ratios("0.8,0.2") == (0.8, 0.2, 0.0)
