"""Help text of the `vislab` commands as one flowing text per paragraph.

A command's help is its docstring, wrapped by hand at the source's line length. Typer joins
the lines of the first paragraph but prints the later paragraphs as written, and rich then
wraps each line again at the terminal's width, so a sentence broke mid-line ("checkpoints/
last.ckpt saved" / "there"). Every group of the app uses `HelpGroup`, which joins the lines
of each paragraph before typer sees them; blank lines still part paragraphs, and a
paragraph that starts with click's `\\b` keeps its lines.
"""

from __future__ import annotations

import inspect
import re

import click
from typer.core import TyperGroup


def flowing(text: str) -> str:
    """`text` with single line breaks inside each paragraph turned into spaces."""
    paragraphs = re.split(r"\n[ \t]*\n", inspect.cleandoc(text))
    return "\n\n".join(p if p.startswith("\b") else " ".join(line.strip() for line in p.splitlines()) for p in paragraphs)


class HelpGroup(TyperGroup):
    """The app's click group: hands out its commands with flowing help (see the module)."""

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        cmd = super().get_command(ctx, cmd_name)
        if cmd is not None and cmd.help:
            cmd.help = flowing(cmd.help)
        return cmd
