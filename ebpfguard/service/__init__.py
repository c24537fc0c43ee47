"""The root service: the agent and its handlers (agent), the control socket's server (server), the protocol table
that both ends and docs/protocol.md derive from (protocol, on the typed JSON codec in wire), the client (control),
the client side of `run` (runner), systemd readiness (sdnotify) and journald (journal). Imports every product layer;
never cli or lab."""
