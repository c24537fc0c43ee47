"""The Debian package as a fleet installs it: built from this checkout, installed with dpkg on this
machine, its own /usr/bin/ebpfguard run on the policies it put in /etc, its unit checked by systemd,
then removed leaving nothing behind."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

TOP = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e


def sh(*argv: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, **kw)  # type: ignore[call-overload]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> object:
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("installing a package needs root, and CI runs as root")
        pytest.skip("installing a package needs root")
    if sh("dpkg", "-s", "ebpfguard").returncode == 0:
        pytest.fail("an ebpfguard package is installed already: this test would replace it")
    out = tmp_path_factory.mktemp("deb")
    state, aside = Path("/var/lib/ebpfguard"), out / "state-aside"
    if state.exists():  # a purge removes it: keep the host's own state out of the package's way
        shutil.move(state, aside)
    build = sh(str(TOP / "contrib" / "deb" / "build.sh"), str(Path(os.environ.get("VIRTUAL_ENV", TOP / ".venv")) /
                                                                "bin" / "pip"), str(out))
    assert build.returncode == 0, build.stderr
    deb = build.stdout.strip().splitlines()[-1]
    inst = sh("dpkg", "-i", deb, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    try:
        assert inst.returncode == 0, inst.stdout + inst.stderr
        yield deb
    finally:
        rm = sh("dpkg", "--purge", "ebpfguard")
        assert rm.returncode == 0, rm.stdout + rm.stderr
        left = [p for p in ("/usr/bin/ebpfguard", "/usr/lib/python3/dist-packages/ebpfguard", "/etc/ebpfguard",
                            "/lib/systemd/system/ebpfguard.service", "/var/lib/ebpfguard",
                            "/usr/lib/systemd/user/ebpfguard-notify.service",
                            "/etc/xdg/autostart/ebpfguard-notify.desktop") if os.path.lexists(p)]
        if aside.exists() and not state.exists():
            shutil.move(aside, state)
        assert not left, f"left behind by the package: {left}"


def installed_eg(*args: str) -> subprocess.CompletedProcess[str]:
    # from /, with no environment that would lead Python back to this checkout or its venv
    return sh("/usr/bin/ebpfguard", *args, cwd="/", env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"})


def test_the_installed_command_validates_the_installed_policies(installed: object) -> None:
    policies = sorted(str(p) for p in Path("/etc/ebpfguard/policies").glob("*.yaml"))
    assert policies
    r = installed_eg("policy", "validate", *policies)
    assert r.returncode == 0 and r.stdout.count(": ok (") == len(policies), r.stdout + r.stderr
    where = sh("/usr/bin/python3", "-c", "import ebpfguard.common.resources as r; print(r.data_root())", cwd="/",
               env={"PATH": "/usr/bin:/bin"})
    assert where.stdout.strip() == "/usr/lib/python3/dist-packages/ebpfguard/_data", where.stdout + where.stderr


def test_the_installed_command_lists_the_simulator_techniques(installed: object) -> None:
    r = installed_eg("simulate", "--list")
    assert r.returncode == 0 and "fs-dotdot" in r.stdout and "ipc-ssh-agent" in r.stdout, r.stderr


def test_the_desktop_notifier_is_installed(installed: object, tmp_path: Path) -> None:
    unit = Path("/usr/lib/systemd/user/ebpfguard-notify.service")
    entry = Path("/etc/xdg/autostart/ebpfguard-notify.desktop")
    assert "WantedBy=graphical-session.target" in unit.read_text()
    assert "Exec=/usr/bin/ebpfguard notify" in entry.read_text() and "X-systemd-skip=true" in entry.read_text()
    r = sh("systemd-analyze", "--user", "verify", str(unit), env={**os.environ, "XDG_RUNTIME_DIR": str(tmp_path)})
    assert r.returncode == 0, r.stdout + r.stderr
    # the installed notifier imports Debian's jeepney, then says there is no session bus to tell
    r = sh("/usr/bin/ebpfguard", "notify", "--test", cwd="/",
           env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "XDG_RUNTIME_DIR": str(tmp_path)})
    assert r.returncode == 1 and "no session bus" in r.stderr, r.stdout + r.stderr


def test_the_installed_unit_verifies(installed: object) -> None:
    if not shutil.which("systemd-analyze"):
        pytest.fail("systemd-analyze is missing (Debian's systemd package)")
    r = sh("systemd-analyze", "verify", "/lib/systemd/system/ebpfguard.service",
           "/lib/systemd/system/ebpfguard-verify.service", "/lib/systemd/system/ebpfguard-verify.timer")
    assert r.returncode == 0, r.stdout + r.stderr
    sec = sh("systemd-analyze", "security", "--offline=true", "/lib/systemd/system/ebpfguard.service")
    exposure = next(line for line in sec.stdout.splitlines() if "Overall exposure level" in line)
    assert float(exposure.split(":")[1].split()[0]) <= 6.5, exposure
    state = Path("/var/lib/ebpfguard")
    assert state.is_dir() and (state.stat().st_mode & 0o777) == 0o700



def test_the_fleet_examples_and_the_incident_schema_are_installed(installed: object) -> None:
    doc = Path("/usr/share/doc/ebpfguard")
    confs = sorted((doc / "examples" / "rsyslog").glob("*.conf"))
    assert [c.name for c in confs] == ["ebpfguard-central.conf", "ebpfguard-forward.conf"]
    for conf in confs:  # as installed, each is a configuration Debian's rsyslogd accepts
        r = sh("rsyslogd", "-N1", "-f", str(conf))
        assert r.returncode == 0, f"{conf}: {r.stdout}{r.stderr}"
    assert (doc / "docs" / "incident-schema.json").is_file() and (doc / "docs" / "fleet.md").is_file()
