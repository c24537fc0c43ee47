"""The vocabulary every layer shares: the kernel ABI shared with bpf/include (abi), wall-clock time as records
carry it (clock), sizes and durations (units), file hashes (hashing), where state and shipped data live (statedir,
resources). Imports nothing of ebpfguard but errors."""
