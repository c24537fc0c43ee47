"""Whom to believe and what is normal: the trust store and signatures (trust), learning a manifest (learn),
baselines (baseline), an extension's provenance (provenance), the administrator's policy folder (policydir).
Imports the runtime and below; never service, cli or lab."""
