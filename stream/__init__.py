"""bwp streaming layer: wire records, settings, embedded stack, Faust worker."""
