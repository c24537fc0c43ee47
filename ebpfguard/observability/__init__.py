"""What fleets scrape: the Prometheus collector (metrics). Imports the runtime and below."""
