"""Fleet tooling: update campaigns, maintenance windows, a protocol-level device simulator."""
