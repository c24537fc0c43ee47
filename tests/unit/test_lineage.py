"""Process lineage: entries gathered per instance, and read back across records."""

from __future__ import annotations

from ebpfguard.instance.lineage import LINEAGE_EVERY_S, LINEAGE_MAX, Lineage, ended, exits, processes


def test_ended_reads_the_wait_status_layout() -> None:
    assert ended(0) == {"exit": 0} and ended(3 << 8) == {"exit": 3}
    assert ended(9) == {"signal": "SIGKILL"} and ended(0x80 | 11) == {"signal": "SIGSEGV"}


def test_an_exit_joins_its_exec_and_a_second_exec_is_a_second_entry() -> None:
    lin = Lineage()
    lin.exec(10, 1, "/bin/sh", 100, now=0.0)
    lin.exec(10, 1, "/bin/true", 150, now=0.1)  # sh ran exec
    lin.exit(10, 0, 200, now=0.2)
    lin.exit(11, 15, 210, now=0.2)  # forked, never ran exec, killed by SIGTERM
    lin.exec(12, 0, "/bin/ls", 220, now=0.3)  # parent unknown
    assert lin.take() == [{"pid": 10, "ppid": 1, "exe": "/bin/sh", "exec_ns": 100},
                          {"pid": 10, "ppid": 1, "exe": "/bin/true", "exec_ns": 150, "exit": 0, "exit_ns": 200},
                          {"pid": 11, "signal": "SIGTERM", "exit_ns": 210},
                          {"pid": 12, "exe": "/bin/ls", "exec_ns": 220}]
    assert len(lin) == 0 and lin.since is None


def test_due_after_a_while_or_when_full() -> None:
    lin = Lineage()
    assert not lin.due(1e9)
    lin.exec(1, 0, "/x", 1, now=5.0)
    assert not lin.due(5.0 + LINEAGE_EVERY_S / 2) and lin.due(5.0 + LINEAGE_EVERY_S)
    lin.take()
    for i in range(LINEAGE_MAX):
        lin.exit(i, 0, i, now=0.0)
    assert lin.due(0.0)


def test_processes_joins_an_exit_written_in_a_later_record() -> None:
    def rec(*procs: dict) -> dict:  # type: ignore[type-arg]
        return {"kind": "lifecycle", "detail": {"event": "processes", "procs": list(procs)}}

    records = [rec({"pid": 5, "ppid": 1, "exe": "/bin/cat", "exec_ns": 1}), {"kind": "file", "detail": {}},
               rec({"pid": 5, "exit": 1, "exit_ns": 9}, {"pid": 6, "signal": "SIGKILL", "exit_ns": 10})]
    assert processes(records) == [{"pid": 5, "ppid": 1, "exe": "/bin/cat", "exec_ns": 1, "exit": 1, "exit_ns": 9},
                                  {"pid": 6, "signal": "SIGKILL", "exit_ns": 10}]
    assert list(exits(records)) == [(5, 9), (6, 10)]
