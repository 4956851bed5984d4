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


def test_a_header_naming_a_column_twice_is_refused_in_every_csv(tmp_path):
    """`file,species,species`: pandas renamed the second to 'species.1' and --label-column
    species read the first (empty here): "1 unlabelled", no word about the owl."""
    write_image(tmp_path / "im" / "0.png")
    labels = write(tmp_path / "l.csv", "file,species,species\nim/0.png,,owl\n")
    columns = ("--path-column", "file", "--label-column")
    result = invoke("curate", "--labels", labels, *columns, "species", "--out", tmp_path / "d1")
    assert_one_line_error(result, "l.csv line 1: the header names column 'species' twice")
    ratings = write(tmp_path / "r.csv", "\npath, annotator,rating,annotator\nim/0.png,a,1,b\n")
    result = invoke("curate", "--ratings", ratings, "--annotator", "a", "--out", tmp_path / "d2")
    assert_one_line_error(result, "r.csv line 2: the header names column 'annotator' twice")
    photos = write(tmp_path / "photos.csv", "file,label,file\nim/0.png,owl,\n")
    result = invoke("curate", "--photos", photos, "--out", tmp_path / "d3")
    assert_one_line_error(result, "photos.csv line 1: the header names column 'file' twice")

    # a column really named 'species.1', and empty names from trailing commas, are no repeat
    named = write(tmp_path / "n.csv", "file,species,species.1,,\nim/0.png,,owl,,\n")
    result = invoke("curate", "--labels", named, *columns, "species.1", "--out", tmp_path / "d4")
    assert result.exit_code == 0, result.output
    assert "owl" in (tmp_path / "d4" / "manifest.csv").read_text()
