"""Label sources: labels CSV, annotator ratings (selection, aggregation, bins)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from vislab.data.curate import CurateOptions, run_curate
from vislab.data.manifest import read_manifest
from vislab.data.sources import Bins, parse_bins
from vislab.errors import VislabError
from vislab.testing.images import write_image


@pytest.fixture()
def photos(tmp_path) -> list[Path]:
    return [write_image(tmp_path / "imgs" / f"p{i}.png", seed=i) for i in range(6)]


def curate(out: Path, **options) -> pd.DataFrame:
    run_curate(CurateOptions(workers=1, **options), out)
    return read_manifest(out).set_index("path", drop=False)


def write_csv(path: Path, rows: list[dict]) -> Path:
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_labels_csv_relative_paths_missing_files_and_conflicts(tmp_path, photos):
    csv = write_csv(
        tmp_path / "labels.csv",
        [
            {"file": "imgs/p0.png", "species": "owl"},
            {"file": "imgs/p1.png", "species": "hawk"},
            {"file": "imgs/p2.png", "species": ""},
            {"file": "imgs/p3.png", "species": "owl"},
            {"file": "imgs/p3.png", "species": "hawk"},
            {"file": "imgs/gone.png", "species": "owl"},
        ],
    )
    df = curate(tmp_path / "ds", labels=csv, path_column="file", label_column="species")
    p = [str(x) for x in photos]
    assert df.loc[p[0], "label"] == "owl" and df.loc[p[0], "status"] == "ok"
    assert df.loc[p[1], "label"] == "hawk"
    assert df.loc[p[2], "reason"] == "unlabelled"
    assert df.loc[p[3], "reason"] == "conflicting_labels"
    assert df.loc[str(tmp_path / "imgs" / "gone.png"), "reason"] == "missing_file"
    assert p[4] not in df.index  # not named by the CSV and no folder given

    # With a folder too, the CSV still decides labels; unnamed files are unlabelled.
    df = curate(
        tmp_path / "ds2", sources=[tmp_path / "imgs"], labels=csv, path_column="file", label_column="species"
    )
    assert df.loc[p[4], "reason"] == "unlabelled"
    assert df.loc[p[0], "label"] == "owl"


def test_labels_csv_missing_column_names_what_it_has(tmp_path, photos):
    csv = write_csv(tmp_path / "labels.csv", [{"file": "imgs/p0.png", "species": "owl"}])
    with pytest.raises(VislabError, match=r"no column 'path' \(columns: file, species\).*--path-column"):
        curate(tmp_path / "ds", labels=csv)


def ratings_rows() -> list[dict]:
    # p0: ann1=2 ann2=3 ann3=8 -> mean 4.33 (neutral), median 3 (negative), majority negative
    # p1: 7, 8, 9 -> positive everywhere; p2: 1, 9 only two votes, tie under majority
    table = {
        "p0": {"ann1": 2, "ann2": 3, "ann3": 8},
        "p1": {"ann1": 7, "ann2": 8, "ann3": 9},
        "p2": {"ann1": 1, "ann2": 9},
    }
    rows = [
        {"path": f"imgs/{p}.png", "annotator": a, "question": "valence", "rating": r}
        for p, votes in table.items()
        for a, r in votes.items()
    ]
    rows.append({"path": "imgs/p3.png", "annotator": "ann1", "question": "arousal", "rating": 5})
    return rows


BINS = "1-3:negative,4-6:neutral,7-9:positive"


@pytest.mark.parametrize(
    "annotator, expected",
    [
        ("ann1", {"p0": "negative", "p1": "positive", "p2": "negative"}),
        ("ann3", {"p0": "positive", "p1": "positive"}),
        ("mean", {"p0": "neutral", "p1": "positive", "p2": "neutral"}),
        ("median", {"p0": "negative", "p1": "positive", "p2": "neutral"}),
        ("majority", {"p0": "negative", "p1": "positive"}),
    ],
)
def test_ratings_selection_aggregation_and_bins(tmp_path, photos, annotator, expected):
    csv = write_csv(tmp_path / "ratings.csv", ratings_rows())
    df = curate(tmp_path / "ds", ratings=csv, annotator=annotator, question="valence", bins=BINS)
    ok = df[df["status"] == "ok"]
    assert {Path(p).stem: lab for p, lab in zip(ok["path"], ok["label"])} == expected
    if annotator == "majority":
        assert df.loc[str(photos[2]), "reason"] == "no_majority"


def test_ratings_without_bins_use_the_answer_itself(tmp_path, photos):
    csv = write_csv(tmp_path / "ratings.csv", ratings_rows())
    df = curate(tmp_path / "ds", ratings=csv, annotator="ann2", question="valence")
    assert df.loc[str(photos[0]), "label"] == "3" and df.loc[str(photos[1]), "label"] == "8"
    df = curate(tmp_path / "ds2", ratings=csv, annotator="mean", question="valence", bins="int")
    assert df.loc[str(photos[0]), "label"] == "4"  # 4.33 rounds to 4
    assert df.loc[str(photos[2]), "label"] == "5"  # 5.0


def test_ratings_out_of_bins_is_excluded(tmp_path, photos):
    csv = write_csv(tmp_path / "ratings.csv", ratings_rows())
    df = curate(tmp_path / "ds", ratings=csv, annotator="ann1", question="valence", bins="1-3:low,4-6:mid")
    assert df.loc[str(photos[1]), "reason"] == "rating_out_of_bins"


def test_ratings_errors_name_the_fix(tmp_path, photos):
    csv = write_csv(tmp_path / "ratings.csv", ratings_rows())
    with pytest.raises(
        VislabError, match=r"unknown annotator 'bob' \(annotators: ann1, ann2, ann3; or aggregate"
    ):
        curate(tmp_path / "a", ratings=csv, annotator="bob", question="valence")
    with pytest.raises(
        VislabError, match=r"several questions \(arousal, valence\); pick one with --question"
    ):
        curate(tmp_path / "b", ratings=csv, annotator="ann1")
    with pytest.raises(VislabError, match=r"no answers to question 'mood'"):
        curate(tmp_path / "c", ratings=csv, annotator="ann1", question="mood")
    with pytest.raises(VislabError, match=r"several annotators; pick one with --annotator"):
        curate(tmp_path / "d", ratings=csv, question="valence")
    with pytest.raises(VislabError, match=r"no column 'score'.*--rating-column"):
        curate(tmp_path / "e", ratings=csv, annotator="ann1", question="valence", rating_column="score")
    words = write_csv(tmp_path / "words.csv", [{"path": "imgs/p0.png", "annotator": "a", "rating": "happy"}])
    with pytest.raises(VislabError, match=r"holds 'happy', not a number"):
        curate(tmp_path / "f", ratings=words, annotator="mean")
    df = curate(tmp_path / "g", ratings=words, annotator="a")
    assert df.loc[str(photos[0]), "label"] == "happy"


def test_bins_parse_and_map():
    bins = parse_bins(" 1-3:neg , 4-6:neu,7-9:pos")
    assert bins.text == "1-3:neg,4-6:neu,7-9:pos"
    assert [bins.label(v) for v in (1, 3, 3.4, 3.5, 6.6, 9, 10)] == [
        "neg",
        "neg",
        "neg",
        "neu",
        "pos",
        "pos",
        None,
    ]
    assert parse_bins("0:no,1:yes").label(1) == "yes"
    assert parse_bins("int") == Bins(per_integer=True)
    assert parse_bins("-2--1:low,0-2.5:high").label(-1.5) == "low"
    for bad, msg in [
        ("1-3", "cannot read"),
        ("3-1:x", "backwards"),
        ("1-5:a,4-6:b", "overlap"),
        ("a-b:c", "cannot read"),
    ]:
        with pytest.raises(ValueError, match=msg):
            parse_bins(bad)


@pytest.mark.parametrize("annotator", ["majority", "mean", "ann1"])
def test_nan_ratings_are_no_answer_like_an_empty_cell(tmp_path, photos, annotator):
    """'NaN' became a class under majority (outvoting real ratings) and with a named
    annotator, and was an error under mean."""
    rows = [
        {"path": "imgs/p0.png", "annotator": "ann1", "rating": "NaN"},
        {"path": "imgs/p0.png", "annotator": "ann2", "rating": "nan"},
        {"path": "imgs/p0.png", "annotator": "ann3", "rating": "2"},
        {"path": "imgs/p1.png", "annotator": "ann1", "rating": "NAN"},
        {"path": "imgs/p1.png", "annotator": "ann2", "rating": "8"},
        {"path": "imgs/p2.png", "annotator": "ann1", "rating": "7"},
    ]
    csv = write_csv(tmp_path / "ratings.csv", rows)
    df = curate(tmp_path / "ds", sources=[tmp_path / "imgs"], ratings=csv, annotator=annotator)
    labels = {Path(p).stem: lab for p, lab in zip(df["path"], df["label"]) if lab}
    if annotator == "ann1":
        assert labels == {"p2": "7"}
    else:
        assert labels == {"p0": "2", "p1": "8", "p2": "7"}


def test_a_labels_csv_names_files_whose_names_start_or_end_with_a_space(tmp_path):
    """' lead.png' was stripped to 'lead.png' (a missing file), while the folder scan kept
    the real file unlabelled; padding around a name that has no such file is still padding."""
    imgs = tmp_path / "imgs"
    for i, name in enumerate([" lead.png", "trail.png ", "plain.png"]):
        write_image(imgs / name, seed=i)
    csv = imgs / "labels.csv"
    csv.write_text('path,label\n" lead.png",owl\n"trail.png ",hawk\n"  plain.png  ",owl\n')
    df = curate(tmp_path / "ds", sources=[imgs], labels=csv)
    df = df[df["path"] != str(csv)]
    assert dict(zip(df["path"].map(lambda p: Path(p).name), df["label"])) == {
        " lead.png": "owl",
        "trail.png ": "hawk",
        "plain.png": "owl",
    }
    assert (df["status"] == "ok").all()


def test_spaces_after_an_annotator_or_question_are_padding(tmp_path, photos):
    """'alice ' and 'valence ' were other annotators and questions than 'alice' and
    'valence': their ratings were dropped without a word."""
    csv = tmp_path / "ratings.csv"
    csv.write_text(
        "path,annotator,question,rating\n"
        "imgs/p0.png,alice,valence,3\n"
        "imgs/p1.png,alice ,valence,5\n"
        "imgs/p2.png,alice,valence ,7\n"
    )
    df = curate(tmp_path / "ds", ratings=csv, annotator="alice", question="valence")
    assert dict(zip(df["path"].map(lambda p: Path(p).stem), df["label"])) == {"p0": "3", "p1": "5", "p2": "7"}


@pytest.mark.parametrize("annotator", ["majority", "mean", "median"])
def test_an_annotators_repeated_row_is_one_vote_and_a_changed_one_a_conflict(tmp_path, photos, annotator):
    """alice's row written twice gave her two votes of three: p0 was 'pos' under majority
    and (9+9+3)/3 under mean. Her row repeated counts once (p0 ties, or averages to 6); rows
    of hers that disagree exclude the file as conflicting. 'Alice' is another annotator,
    as paths keep their case; 'alice ' is alice."""
    csv = tmp_path / "ratings.csv"
    csv.write_text(
        "path,annotator,rating\n"
        "imgs/p0.png,alice,9\nimgs/p0.png,alice ,9\nimgs/p0.png,bob,3\n"
        "imgs/p1.png,alice,9\nimgs/p1.png,alice,2\nimgs/p1.png,bob,9\n"
        "imgs/p2.png,alice,9\nimgs/p2.png,Alice,9\nimgs/p2.png,bob,3\n"
        "imgs/p3.png,,9\nimgs/p3.png,,9\nimgs/p3.png,,2\n"  # anonymous raters: three answers, no conflict
    )
    df = curate(tmp_path / "ds", ratings=csv, annotator=annotator, bins="1-3:neg,4-6:neu,7-9:pos")
    p0, p1, p2 = (df.loc[str(photos[i])] for i in range(3))
    if annotator == "majority":
        assert (p0["label"], p0["reason"]) == ("", "no_majority")
    else:
        assert (p0["label"], p0["status"]) == ("neu", "ok")  # (9 + 3) / 2
    assert (p1["label"], p1["reason"]) == ("", "conflicting_labels")
    assert (p2["label"], p2["status"]) == ("pos", "ok")  # alice, Alice and bob: 9, 9, 3
    p3 = df.loc[str(photos[3])]
    assert p3["reason"] != "conflicting_labels" and (annotator != "majority" or p3["label"] == "pos")
