"""The proxy deployer owns in front of the web service (zero-downtime swaps)."""
