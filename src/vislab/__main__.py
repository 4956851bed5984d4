"""`python -m vislab ...`: the CLI for an interpreter whose scripts folder is not on PATH
(a notebook's kernel, a venv not activated)."""

from vislab.cli import app

app(prog_name="vislab")
