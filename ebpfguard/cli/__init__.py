"""The ebpfguard command line: a thin layer over the library, one module per command group, joined in main
(the entry point, ebpfguard.cli.main:main). Nothing imports it."""
