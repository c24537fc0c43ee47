"""The man pages (man/man1, installed by the Debian package) are what `python -m ebpfguard.cli.manpages`
generates from the click commands: a test fails when a command changed and the pages were not regenerated, and
the generator is shown to carry what click knows of a command into its page."""

from __future__ import annotations

from pathlib import Path

import click
import pytest

from ebpfguard.cli import manpages
from ebpfguard.cli.main import main

MAN = Path(__file__).resolve().parents[2] / "man" / "man1"


def test_the_man_pages_are_what_the_commands_generate() -> None:
    fresh = manpages.pages()
    stale = manpages.stale(MAN, fresh)
    assert not stale, f"man/man1 is stale ({', '.join(stale)}): regenerate with `{manpages.REGENERATE}`"


def test_every_page_has_each_option_and_subcommand_of_its_command() -> None:
    fresh = manpages.pages()
    ctx = click.Context(main, info_name="ebpfguard", **main.context_settings)
    seen = 0
    for c in manpages.commands(main, ctx):
        page = fresh[f"{manpages.page_name(c)}.1"]
        for p in c.command.get_params(c):
            rec = p.get_help_record(c)
            if rec:
                assert manpages.esc(rec[0]) in page, (c.command_path, rec[0])
                seen += 1
        if isinstance(c.command, click.Group):
            for name in c.command.list_commands(c):
                assert f".BR {manpages.esc(manpages.page_name(c) + '-' + name)} (1)" in page
    assert seen > 100 and "ebpfguard-forensics-verify.1" in fresh and "ebpfguard.1" in fresh


def test_the_staleness_check_catches_a_changed_a_missing_and_a_leftover_page(tmp_path: Path) -> None:
    fresh = {"ebpfguard.1": ".TH A\n", "ebpfguard-run.1": ".TH B\n", "ebpfguard-trace.1": ".TH C\n"}
    manpages.write(tmp_path, fresh)
    assert manpages.stale(tmp_path, fresh) == []
    (tmp_path / "ebpfguard-run.1").write_text(".TH B, edited by hand\n")
    (tmp_path / "ebpfguard-trace.1").unlink()
    (tmp_path / "ebpfguard-gone.1").write_text(".TH D\n")
    assert manpages.stale(tmp_path, fresh) == ["ebpfguard-gone.1", "ebpfguard-run.1", "ebpfguard-trace.1"]
    manpages.write(tmp_path, fresh)
    assert manpages.stale(tmp_path, fresh) == []


@pytest.fixture
def toy() -> click.Group:
    @click.group()
    def cli() -> None:
        """A toy."""

    @cli.command(epilog="\b\nExamples:\n  toy bake --flavour plum -- x\n")
    @click.option("--flavour", "-f", help="What it tastes of.")
    @click.argument("what")
    def bake(flavour: str, what: str) -> None:
        """Bake WHAT. It takes `an hour`.

        \b
        .starts with a dot
        """

    return cli


def test_a_page_renders_what_click_knows(toy: click.Group) -> None:
    got = manpages.pages(toy)
    assert sorted(got) == ["ebpfguard-bake.1", "ebpfguard.1"]
    bake = got["ebpfguard-bake.1"]
    assert ".SH NAME\nebpfguard\\-bake \\- Bake WHAT.\n" in bake
    assert '.B "ebpfguard bake"\n[OPTIONS] WHAT\n' in bake
    assert '.TP\n.B "\\-f, \\-\\-flavour TEXT"\nWhat it tastes of.\n' in bake
    assert "It takes \\fBan hour\\fR." in bake
    assert "\\&.starts with a dot" in bake  # not read as a roff request
    assert ".SH EXAMPLES\n.nf\ntoy bake \\-\\-flavour plum \\-\\- x\n.fi\n" in bake
    assert ".SH SEE ALSO\n.BR ebpfguard (1)\n" in bake
    assert ".SH COMMANDS\n.TP\n.BR ebpfguard\\-bake (1)\nBake WHAT.\n" in got["ebpfguard.1"]
