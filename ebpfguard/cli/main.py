"""The ebpfguard command line: a thin layer over the library, one module per command group, joined here.

    run         run, attach                         ladder      freeze, thaw, kill, quarantine
    agent       agent, status                       trace       trace, explain
    policy      policy validate|promote|keygen|sign|verify|trust
    forensics   forensics show|verify|export|pubkey
    learn       learn, baseline from-log            provenance  provenance, flag
    rollback    rollback list|show|commit|discard   lab         simulate, bench
    notify      notify (the user's desktop notifications)
    incident    incident share|verify|import|list (anonymized summaries to share)
    fleet       fleet report (records collected from many hosts)

What they share (the help layout, --state-dir, fail()) is in common.
"""

from __future__ import annotations

import click

from ebpfguard.cli import (
    agent,
    fleet,
    forensics,
    incident,
    lab,
    ladder,
    learn,
    notify,
    policy,
    provenance,
    rollback,
    run,
    trace,
)
from ebpfguard.cli.common import Group


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 80,
                                          "terminal_width": 80})
@click.version_option(package_name="ebpfguard")
def main() -> None:
    """Contain untrusted extensions: one cgroup per extension, every file open, exec, socket and
    dangerous syscall checked against its manifest inside the kernel.

    \b
    Examples:
      ebpfguard policy validate policies/*.yaml
      sudo ebpfguard run --manifest policies/md-preview.yaml -- python3 preview.py
      sudo ebpfguard agent --policy-dir /etc/ebpfguard/policies
      sudo ebpfguard trace --extension md-preview
      sudo ebpfguard forensics show --json
    """


for command in (run.run, run.attach, agent.agent, agent.status, ladder.freeze, ladder.thaw, ladder.kill_cmd,
                ladder.quarantine, trace.trace, trace.explain_cmd, policy.policy, forensics.forensics, learn.learn,
                learn.baseline, provenance.provenance_cmd, provenance.flag_cmd, rollback.rollback_cmd, lab.simulate,
                lab.bench, notify.notify, incident.incident, fleet.fleet):
    main.add_command(command)


if __name__ == "__main__":
    main()
