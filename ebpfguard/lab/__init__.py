"""The security engineer's lab: escape simulation (simulate), the benchmark (bench) and its peers (peers).
Product code never imports it."""
