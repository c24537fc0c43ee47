"""The documentation that can drift, checked against what it describes: the README stays a landing page whose
links lead somewhere, every `ebpfguard ...` command in the docs exists with the options it is given, the manifest
reference documents exactly the schema's fields (the man pages: test_manpages.py). Each checker is also shown to
fail on a case it must catch."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import jsonschema
import yaml

from ebpfguard.cli.main import main

TOP = Path(__file__).resolve().parents[2]
README = TOP / "README.md"
DOCS = TOP / "docs"
SCHEMA = TOP / "policies" / "manifest.schema.json"


# ---- the README: a landing page ------------------------------------------------------------------

def test_readme_is_a_landing_page() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines (at most 250: move the rest to docs/)"
    wide = [f"{i}: {len(x)} columns" for i, x in enumerate(lines, 1) if len(x) > 120]
    assert not wide, f"README.md lines wider than 120 columns: {wide}"


def links(text: str) -> list[str]:
    """Relative link targets of a markdown text (no URLs), each with its #fragment if it has one."""
    return [t for t in re.findall(r"\]\(([^)\s]+)\)", text) if not re.match(r"[a-z]+:", t)]


def anchors(text: str) -> set[str]:
    """The #fragments a markdown page's headings give, as GitHub makes them: lower case, spaces to hyphens, other
    punctuation dropped."""
    fenced = False
    out = set()
    for line in text.splitlines():
        fenced ^= line.lstrip().startswith("```")
        if not fenced and (m := re.match(r"#+ (.*)", line)):
            out.add(re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-"))
    return out


def broken_links(doc: Path) -> list[str]:
    broken = []
    for link in links(doc.read_text()):
        target, _, fragment = link.partition("#")
        path = doc.parent / target if target else doc
        if not path.exists():
            broken.append(f"{doc.name} -> {link}: no such file")
        elif fragment and path.suffix == ".md" and fragment not in anchors(path.read_text()):
            broken.append(f"{doc.name} -> {link}: no such heading")
    return broken


def test_every_link_of_the_readme_and_the_docs_leads_somewhere() -> None:
    broken = [b for doc in [README, *sorted(DOCS.glob("*.md"))] for b in broken_links(doc)]
    assert not broken, f"links to nothing: {broken}"


def test_the_link_checker_catches_a_missing_file_and_heading(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text("# The page\n\n## Rolling back an offender's changes (`x: true`)\n")
    doc = tmp_path / "b.md"
    doc.write_text("[ok](a.md#rolling-back-an-offenders-changes-x-true) [ok](a.md) [ok](#here) [web](https://x.y/z)\n"
                   "[gone](c.md) [nowhere](a.md#the-pages)\n\n## Here\n")
    assert broken_links(doc) == ["b.md -> c.md: no such file", "b.md -> a.md#the-pages: no such heading"]


def test_the_readme_maps_every_doc() -> None:
    linked = {(TOP / t.partition("#")[0]).resolve() for t in links(README.read_text())}
    missing = [p.name for p in sorted(DOCS.glob("*.md")) if p.resolve() not in linked]
    assert not missing, f"docs/ not linked from the README's map: {missing}"
    assert len(linked & {p.resolve() for p in DOCS.glob("*.md")}) >= 8


# ---- commands in the docs exist, with their options ----------------------------------------------

def code_lines(text: str) -> Iterator[str]:
    """The command lines of fenced code blocks: every line of a shell block (```sh, or no language), and of any
    other block (output, ```text) the lines that start with a `$ ` prompt."""
    lang = None
    for line in text.splitlines():
        fence = line.lstrip()
        if fence.startswith("```"):
            lang = None if lang is not None else fence[3:].strip() or "sh"
        elif lang in ("sh", "bash", "shell", "console") or (lang is not None and line.startswith("$ ")):
            yield line


def bad_invocations(text: str, root: click.Command = main) -> list[str]:
    """Each `ebpfguard ...` line of a code block whose command path or an option does not exist.

    Documentation syntax is allowed: [optional] parts, a|b alternatives (each one is checked), `...` and a
    trailing comment; the check ends at `--`, a pipe or a redirection."""
    bad = []
    for line in code_lines(text):
        words = line.split(" #")[0].split()
        while words and words[0] in ("sudo", "$"):
            words.pop(0)
        if not words or words[0].rpartition("/")[2] != "ebpfguard":
            continue
        cmds = [root]
        path = True  # still naming subcommands
        for word in words[1:]:
            if word in ("--", "|", "&&") or word.startswith((">", "<", "$(")):
                break
            alts = [a for a in word.strip("[]").split("|") if a and a != "..."]
            if alts and alts[0].startswith("-"):
                path = False
                for c in cmds:
                    ctx = click.Context(c, help_option_names=["-h", "--help"])
                    known = {o for p in c.get_params(ctx) for o in (*p.opts, *p.secondary_opts)}
                    bad += [f"{line.strip()}: no option {a.split('=')[0]}" for a in alts
                            if a.split("=")[0] not in known]
            elif alts and path and all(isinstance(c, click.Group) for c in cmds):
                subs = [c.get_command(click.Context(c), a) for c in cmds for a in alts]
                if any(s is None for s in subs):
                    bad.append(f"{line.strip()}: no command {word}")
                    break
                cmds = [s for s in subs if s is not None]
            else:
                path = False  # an argument
    return bad


def test_every_command_in_the_docs_exists() -> None:
    bad = []
    for doc in [README, *sorted(DOCS.glob("*.md"))]:
        bad += [f"{doc.relative_to(TOP)}: {b}" for b in bad_invocations(doc.read_text())]
    assert not bad, "\n".join(bad)


def test_the_readme_tour_runs_real_commands() -> None:
    tour = README.read_text()
    for cmd in ("ebpfguard run", "ebpfguard trace", "ebpfguard explain", "ebpfguard forensics verify"):
        assert any(cmd in line for line in code_lines(tour)), f"the README's tour has no `{cmd}`"


def test_the_command_checker_catches_an_invented_command_and_option() -> None:
    doc = ("```sh\nsudo ebpfguard forensics verfy\nebpfguard run --manifst m.yaml -- true --nothing\n"
           "ebpfguard freeze|thaw|kill NAME\nebpfguard trace [--json] [--extension N] | less --x\n```\n"
           "ebpfguard nothing, outside a code block\n")
    assert bad_invocations(doc) == ["sudo ebpfguard forensics verfy: no command verfy",
                                    "ebpfguard run --manifst m.yaml -- true --nothing: no option --manifst"]


# ---- the manifest reference against the schema ---------------------------------------------------

def schema_fields(node: dict[str, Any], root: dict[str, Any], prefix: str = "") -> set[str]:
    """Every field the schema allows, as a dotted path (`spec.ipc.dbus.session.talk`), $refs followed."""
    if "$ref" in node:
        ref = node["$ref"]
        assert ref.startswith("#/"), ref
        target: Any = root
        for part in ref[2:].split("/"):
            target = target[part]
        return schema_fields(target, root, prefix)
    out: set[str] = set()
    for name, sub in node.get("properties", {}).items():
        path = f"{prefix}.{name}" if prefix else name
        out |= {path} | schema_fields(sub, root, path)
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            out |= schema_fields(node[key], root, prefix)
    for key in ("allOf", "anyOf", "oneOf"):
        for sub in node.get(key, []):
            out |= schema_fields(sub, root, prefix)
    return out


# a field path in backticks, alone or followed by an index, a value or more words: `spec.user`, `spec.user: root`
FIELD = r"`((?:apiVersion|kind|metadata|spec)(?:\.[A-Za-z_]+)*)(?=[`\[: ])"


def documented_fields(doc: str) -> set[str]:
    """The reference's convention: each field is a row of its field table, the row starting with the field's
    full dotted path in backticks: | `spec.filesystem.read` | ... |"""
    return set(re.findall(r"(?m)^\| " + FIELD + r"` \|", doc))


def named_fields(doc: str) -> set[str]:
    """Every field path the text names anywhere (a dotted `metadata.x` or `spec.x`, in backticks)."""
    return {f for f in re.findall(FIELD, doc) if "." in f} | documented_fields(doc)


def drift(fields: set[str], doc: str) -> tuple[list[str], list[str]]:
    """(schema fields the reference does not document, fields it names that the schema does not have)."""
    return sorted(fields - documented_fields(doc)), sorted(named_fields(doc) - fields)


def test_the_manifest_reference_documents_every_schema_field_and_no_other() -> None:
    schema = json.loads(SCHEMA.read_text())
    fields = schema_fields(schema, schema)
    assert {"apiVersion", "spec.filesystem.read", "spec.ipc.dbus.system.broadcast",
            "spec.response.escalation.kill_after"} <= fields and len(fields) > 40
    missing, invented = drift(fields, (DOCS / "manifest.md").read_text())
    assert not missing, f"docs/manifest.md documents no row for {missing}"
    assert not invented, f"docs/manifest.md names fields the schema does not have: {invented}"


def test_the_reference_checker_catches_a_missing_and_an_invented_field() -> None:
    schema = {"type": "object", "properties": {
        "spec": {"type": "object", "properties": {"a": {"$ref": "#/$defs/ab"}, "c": {"type": "string"}}}},
        "$defs": {"ab": {"type": "object", "properties": {"b": {"type": "integer"}}}}}
    fields = schema_fields(schema, schema)
    assert fields == {"spec", "spec.a", "spec.a.b", "spec.c"}
    whole = "| `spec` | x |\n| `spec.a` | x |\n| `spec.a.b` | x |\n| `spec.c` | x |\n"
    assert drift(fields, whole) == ([], [])
    assert drift(fields, whole.replace("| `spec.a.b` | x |\n", "")) == (["spec.a.b"], [])
    assert drift(fields, whole + "| `spec.d` | x |\n") == ([], ["spec.d"])
    assert drift(fields, whole + "Set `spec.a.z` to 3, or `spec.e: 4`, or `spec.f[0]`.\n") == \
        ([], ["spec.a.z", "spec.e", "spec.f"])
    assert drift(fields, whole + "Records carry `detail.path`; `spec.c|d` is no field path.\n") == ([], [])


def test_the_manifest_reference_examples_validate_against_the_schema() -> None:
    schema = json.loads(SCHEMA.read_text())
    blocks = re.findall(r"(?ms)^```yaml\n(.*?)^```", (DOCS / "manifest.md").read_text())
    manifests = [yaml.safe_load(b) for b in blocks]
    assert [m for m in manifests if m.get("kind") == "Extension"], "docs/manifest.md has no example manifest"
    for m in manifests:
        if m.get("kind") == "Extension":
            jsonschema.validate(m, schema)
