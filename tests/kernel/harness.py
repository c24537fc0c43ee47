"""What the kernel tier's tests share: the world of files, helper and loopback listeners an extension is tried
against (World), running the helper as an instance (run_ext) and what it left (Result). The fixtures that
build them once per session are in conftest.py."""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ebpfguard.lab.simulate import execute, listener_saw
from ebpfguard.manifest.load import parse
from ebpfguard.runtime.engine import Engine


def need_root() -> None:
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("the kernel tier needs root, and CI runs it as root: something is wrong")
        pytest.skip("the kernel tier needs root")


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class World:
    base: Path
    allowed: Path
    secret: Path
    out: Path
    copy: Path
    helper: Path
    helper_copy: Path
    listeners: dict[str, socket.socket] = field(default_factory=dict)

    def port(self, name: str) -> int:
        return int(self.listeners[name].getsockname()[1])

    def saw_connection(self, name: str, timeout: float = 0.3) -> bool:
        """Did the loopback listener ``name`` receive anything? Drains what it saw."""
        return listener_saw(self.listeners[name], timeout)

    def manifest(self, response: str = "block", mode: str = "enforce", bind_port: int = 0, extra: str = "") -> str:
        r = response
        return f"""
apiVersion: ebpfguard.io/v1
kind: Extension
metadata: {{name: egtest, version: "1"}}
spec:
  mode: {mode}
  filesystem:
    read: ["{self.allowed}/"]
    write: ["{self.out}/"]
    exec: ["{self.helper}"]
  network:
    connect:
      - "127.0.0.1/32:{self.port('tcp4_ok')}/tcp"
      - "::1/128:{self.port('tcp6_ok')}/tcp"
      - "127.0.0.1/32:{self.port('udp_ok')}/udp"
    bind: ["127.0.0.1/32:{bind_port or 1}/tcp"]
  response: {{file: {r}, exec: {r}, network: {r}, syscall: {r}, privilege: {r}}}
{extra}"""


@dataclass
class Result:
    status: int
    pid: int
    records: list[dict[str, Any]]
    marker: str | None
    marker2: str | None

    def violations(self) -> list[dict[str, Any]]:
        return [r for r in self.records if r["kind"] not in ("lifecycle", "checkpoint")]

    def rc_errno(self) -> tuple[int, int]:
        assert self.marker is not None, f"no marker: status {self.status}, records {self.records}"
        rc, err = self.marker.splitlines()[0].split()[:2]
        return int(rc), int(err)


def run_ext(engine: Engine, world: World, manifest: str, args: list[str], mode: str | None = None,
            timeout: float = 20.0, sandbox: bool = False, shadow: str | None = None) -> Result:
    """Run the helper as an extension instance and collect the records it caused. With ``sandbox``
    it is launched as ``ebpfguard run`` launches: unprivileged, under Landlock and seccomp."""
    m = parse(manifest.encode(), "egtest.yaml", home=str(world.base))
    marker = world.out / f"m-{uuid.uuid4().hex[:8]}"
    marker2 = Path(str(marker) + ".2")
    argv = [str(world.helper), str(marker), *[a.replace("{marker2}", str(marker2)) for a in args]]
    sh = parse(shadow.encode(), "egtest.next.yaml", home=str(world.base)) if shadow else None
    status, pid, records, _ = execute(engine, m, argv, mode=mode, sandbox=sandbox, timeout=timeout, shadow=sh)
    return Result(status, pid, records, marker.read_text() if marker.exists() else None,
                  marker2.read_text() if marker2.exists() else None)
