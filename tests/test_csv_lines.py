"""Errors in a hand-made CSV (labels, ratings, manifest) name the line a text editor shows,
whatever the file holds: long cells, lines of spaces."""

from __future__ import annotations

from pathlib import Path

from test_curate_cli import assert_one_line_error, invoke

from vislab.testing.images import write_image


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_a_cell_longer_than_the_csv_modules_limit_still_gives_a_one_line_error(tmp_path):
    write_image(tmp_path / "im" / "0.png")
    long = "x" * 200_000  # the csv module refuses cells over 131,072 characters by default
    ratings = write(tmp_path / "r.csv", f'path,annotator,rating\nim/0.png,"{long}",1\nim/1.png,a,zz\n')
    result = invoke("curate", "--ratings", ratings, "--annotator", "mean", "--out", tmp_path / "d1")
    assert_one_line_error(result, "r.csv line 3: column 'rating' holds 'zz'")
    labels = write(tmp_path / "l.csv", f'path,label\nim/0.png,a,\nim/1.png,"{long}",b\n')
    result = invoke("curate", "--labels", labels, "--out", tmp_path / "d2")
    assert_one_line_error(result, "l.csv line 3: 3 cells but the header names 2 columns")


def test_lines_of_spaces_are_counted_like_blank_lines(tmp_path):
    write_image(tmp_path / "im" / "0.png")
    ratings = write(tmp_path / "r.csv", "path,annotator,rating\nim/0.png,a,1\n  \n\t\nim/1.png,a,x\n")
    result = invoke("curate", "--ratings", ratings, "--annotator", "mean", "--out", tmp_path / "d1")
    assert_one_line_error(result, "r.csv line 5: column 'rating' holds 'x'")
    # a quoted cell after a space spans lines as pandas reads it (skipinitialspace)
    ratings = write(tmp_path / "q.csv", 'path,annotator,rating\nim/0.png, "a\nb",1\nim/1.png,a,x\n')
    result = invoke("curate", "--ratings", ratings, "--annotator", "mean", "--out", tmp_path / "d2")
    assert_one_line_error(result, "q.csv line 4: column 'rating' holds 'x'")

    ds = tmp_path / "ds"
    assert invoke("curate", tmp_path / "im", "--out", ds, "--workers", "1").exit_code == 0
    header, row = (ds / "manifest.csv").read_text().splitlines()[:2]
    cells = row.split(",")
    cells[header.split(",").index("status")] = "maybe"
    (ds / "manifest.csv").write_text(f"{header}\n \n{','.join(cells)}\n")
    assert_one_line_error(invoke("stats", ds), "manifest.csv line 3: status 'maybe'")
