"""The client for platforms: an application (an editor, a notebook server) launches its plug-ins through the agent,
as its own user, and holds each as an Instance, much as it would hold a subprocess.Popen:

    from ebpfguard import client

    with client.launch(["/usr/bin/python3", "plugin.py"], extension="md-preview",
                       stdin=client.PIPE, stdout=client.PIPE) as inst:
        inst.stdin.write(b"# title\\n")
        inst.stdin.close()
        html = inst.stdout.read()
        status = inst.wait()

It speaks the agent's `launch`, `signal`, `kill`, `activity` and `records` operations (docs/platforms.md; the wire in
docs/protocol.md). Imports service.control and service.protocol and what they import, nothing else: no eBPF, no
bcc, no launcher; a failure the agent answers is a Refused (a ControlError) with the agent's message.
"""

from __future__ import annotations

from ebpfguard.client.api import DEVNULL, PIPE, STDOUT, Instance, launch
from ebpfguard.errors import ControlError
from ebpfguard.service.control import Refused
from ebpfguard.service.protocol import FORWARDED_SIGNALS

__all__ = ["DEVNULL", "FORWARDED_SIGNALS", "PIPE", "STDOUT", "ControlError", "Instance", "Refused", "launch"]
