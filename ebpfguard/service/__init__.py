"""The root service: the agent (agent), its control protocol (protocol, control), the client side of `run`
(runner), systemd readiness (sdnotify) and journald (journal). Imports every product layer; never cli or lab."""
