"""bwp simulator: synthetic telemetry generator and real-trace importers."""
