"""Man pages from the click command tree: ebpfguard(1) and one page per command below it (ebpfguard-run(1),
ebpfguard-policy-trust-add(1), ...), in roff, from what click knows of each command (its help, usage, options,
subcommands and examples), so a page says what `--help` says.

    python -m ebpfguard.cli.manpages man/man1

The pages are committed (man/man1) and installed by the Debian package; tests/unit/test_docs.py fails when they
are stale. Only this command imports this module.
"""

from __future__ import annotations

import inspect
import re
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import click

from ebpfguard.cli.main import main as root

REGENERATE = ".venv/bin/python -m ebpfguard.cli.manpages man/man1"


def commands(cmd: click.Command, ctx: click.Context) -> Iterator[click.Context]:
    """Each command's context, the tree walked depth first in click's own order; hidden commands left out."""
    yield ctx
    if isinstance(cmd, click.Group):
        for name in cmd.list_commands(ctx):
            sub = cmd.get_command(ctx, name)
            if sub is not None and not sub.hidden:
                yield from commands(sub, click.Context(sub, info_name=name, parent=ctx))


def page_name(ctx: click.Context) -> str:
    return ctx.command_path.replace(" ", "-")


def esc(text: str) -> str:
    """Text as roff prints it: backslashes and hyphen-minuses kept literal, no line read as a request."""
    text = text.replace("\\", "\\e").replace("-", "\\-").replace('"', "\\(dq")
    return re.sub(r"(?m)^([.'])", r"\\&\1", text)


def inline(text: str) -> str:
    """A paragraph of help: `code` in bold."""
    return re.sub(r"`([^`]+)`", r"\\fB\1\\fR", esc(text))


def paragraphs(text: str) -> Iterator[tuple[bool, list[str]]]:
    """click's help paragraphs: (literal, lines); a paragraph that starts with \\b keeps its lines as written."""
    for para in re.split(r"\n\s*\n", inspect.cleandoc(text).partition("\f")[0]):
        lines = para.splitlines()
        if lines and lines[0].strip() == "\b":
            yield True, textwrap.dedent("\n".join(lines[1:])).splitlines()
        elif lines:
            yield False, lines


def body(text: str) -> list[str]:
    """Help text as roff lines; a literal paragraph headed `Examples:` (or any `Word:`) becomes a section."""
    out: list[str] = []
    for literal, lines in paragraphs(text):
        if literal and re.fullmatch(r"[A-Z][a-z ]+:", lines[0]):
            out += [f".SH {lines[0][:-1].upper()}", ".nf", *(esc(x) for x in textwrap.dedent("\n".join(lines[1:]))
                                                               .splitlines()), ".fi"]
        elif literal:
            out += [".PP", ".nf", *(esc(x) for x in lines), ".fi"]
        else:
            out += [".PP", inline(" ".join(x.strip() for x in lines))]
    return out


def render(ctx: click.Context) -> str:
    cmd = ctx.command
    name = page_name(ctx)
    out = [f'.\\" {name}(1): generated from the click commands by `{REGENERATE}`; do not edit.',
           f'.TH "{esc(name.upper())}" 1 "" "ebpfguard" "ebpfguard manual"',
           ".SH NAME",
           f"{esc(name)} \\- {inline(cmd.get_short_help_str(limit=1000))}",
           ".SH SYNOPSIS",
           f'.B "{esc(ctx.command_path)}"',
           esc(" ".join(cmd.collect_usage_pieces(ctx)))]
    help_lines = body(cmd.help or "")
    if help_lines:
        out += [".SH DESCRIPTION", *help_lines]
    options = [rec for p in cmd.get_params(ctx) if (rec := p.get_help_record(ctx))]
    if options:
        out.append(".SH OPTIONS")
        for opts, text in options:
            out += [".TP", f'.B "{esc(opts)}"', inline(" ".join(text.split())) if text else ""]
    subs = list(commands(cmd, ctx))[1:]
    children = [c for c in subs if c.parent is ctx]
    if children:
        out.append(".SH COMMANDS")
        for c in children:
            out += [".TP", f".BR {esc(page_name(c))} (1)", inline(c.command.get_short_help_str(limit=1000))]
    out += body(cmd.epilog or "")
    see = [c for c in (ctx.find_root(), ctx.parent) if c is not None and c is not ctx]
    if see:
        out += [".SH SEE ALSO", ",\n".join(f".BR {esc(page_name(c))} (1)" for c in dict.fromkeys(see))]
    return "\n".join(x for x in out if x) + "\n"


def pages(group: click.Command = root) -> dict[str, str]:
    """File name -> roff page, for the command tree under group."""
    ctx = click.Context(group, info_name="ebpfguard", **group.context_settings)
    return {f"{page_name(c)}.1": render(c) for c in commands(group, ctx)}


def stale(outdir: Path, fresh: dict[str, str]) -> list[str]:
    """The pages in outdir that differ from fresh, are missing, or are left over from a command that is gone."""
    have = {p.name for p in outdir.glob("ebpfguard*.1")}
    return sorted(n for n in have | set(fresh) if n not in have or n not in fresh
                  or (outdir / n).read_text() != fresh[n])


def write(outdir: Path, fresh: dict[str, str]) -> None:
    outdir.mkdir(parents=True, exist_ok=True)
    for old in outdir.glob("ebpfguard*.1"):
        if old.name not in fresh:
            old.unlink()
    for name, text in fresh.items():
        (outdir / name).write_text(text)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m ebpfguard.cli.manpages OUTDIR")
    write(Path(sys.argv[1]), pages())
