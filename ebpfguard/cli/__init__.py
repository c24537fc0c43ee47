"""The ebpfguard command line: a thin layer over the library (main). Nothing imports it."""
