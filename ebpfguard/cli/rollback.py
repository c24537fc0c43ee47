"""The changes of an extension with rollback (spec.filesystem.rollback): `rollback list|show|commit|discard`,
through the agent when one runs, on the areas left on disk otherwise."""

from __future__ import annotations

import json
from typing import Any

import click

from ebpfguard.cli.common import STATE_OPT, Command, fail, operator_name, require_root
from ebpfguard.errors import EbpfguardError


def _rollback_text(area: dict[str, Any], limit: int = 50) -> list[str]:
    out = [f"{area.get('instance') or ''} {area.get('extension') or ''}  trees: {', '.join(area.get('trees') or [])}"
           f"  changes: {area.get('count', 0)}" + (f"  state: {area['state']}" if area.get("state") else "")]
    for c in (area.get("changes") or [])[:limit]:
        out.append(f"  {c['op']:<11} {c['path']}" + (f"  sha256 {c['sha256'][:16]} {c['size']} B" if c.get("sha256")
                                                     else ""))
    if area.get("count", 0) > min(limit, len(area.get("changes") or [])):
        out.append(f"  ... {area['count'] - min(limit, len(area.get('changes') or []))} more (--json lists "
                   f"{area.get('listed')})")
    return out


@click.command(cls=Command, name="rollback")
@STATE_OPT
@click.argument("action", type=click.Choice(["list", "show", "commit", "discard"]))
@click.argument("instance", required=False)
@click.option("--json", "as_json", is_flag=True, help="JSON instead of text.")
def rollback_cmd(state_dir: str, action: str, instance: str | None, as_json: bool) -> None:
    """List, show, commit or discard the changes of an extension whose manifest
    sets spec.filesystem.rollback: each write tree is an overlay; the real tree
    is untouched until a clean stop commits (a kill by the agent discards).

    \b
    list     instances with rollback, and areas an instance left when the
             agent or the host went down while it ran
    show     what INSTANCE changed: paths, and the sha256 of each file
    commit   apply them (a running, e.g. frozen, instance is killed first);
             a path the user changed meanwhile keeps the user's version
    discard  throw them away (a running instance is killed first)

    Each commit and discard is a signed record of kind rollback. Through the
    agent, any user acts on the areas of their own instances; without a
    running agent, root alone.

    \b
    Examples:
      sudo ebpfguard rollback list
      sudo ebpfguard rollback show md-preview-3f2a9c
      sudo ebpfguard rollback discard md-preview-3f2a9c
    """
    from ebpfguard.runtime.rollback import offline
    from ebpfguard.service.control import Client, agent_running

    if action != "list" and not instance:
        fail(f"rollback {action} needs an INSTANCE (see ebpfguard rollback list)", 2)
    try:
        if agent_running(state_dir):  # any user, on the areas of their own instances
            with Client(state_dir, timeout=60) as c:
                ans = c.request("rollback", action=action, id=instance, by=operator_name())
        else:
            require_root()
            ans = offline(state_dir, action, instance, by=operator_name())
    except EbpfguardError as err:
        fail(str(err))
        return
    ans.pop("ok", None)
    if as_json:
        click.echo(json.dumps(ans, indent=2))
        return
    if action == "list":
        for kind in ("running", "pending"):
            areas = ans.get(kind) or []
            click.echo(f"{kind}: {len(areas)}")
            for area in areas:
                click.echo("\n".join(_rollback_text(area, limit=0)))
    elif action == "show":
        click.echo("\n".join(_rollback_text(ans)))
    elif ans.get("stopped"):
        click.echo(f"{instance}: killed; its changes are {ans['event']} at its stop (a rollback record)")
    else:
        click.echo(f"{instance}: {ans['event']} {ans.get('count', 0)} change(s)"
                   + (f"; {len(ans['conflicts'])} path(s) kept as the user left them" if ans.get("conflicts") else ""))
