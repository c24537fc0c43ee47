"""The kernel interfaces ebpfguard drives: the eBPF programs and maps (loader, the only module that imports bcc;
sensor, the contract the engine holds it to; progstats), the host's features and the probe command (features,
probe), Landlock's audit reports (laudit) and the cgroup hierarchies (cgroups). Imports common and manifest only."""
