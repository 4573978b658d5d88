"""Truth probes and the lie detector (datasets, logistic / mass-mean / CCS probes, lie-check). See
docs/probes.md."""
