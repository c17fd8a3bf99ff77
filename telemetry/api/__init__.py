"""The telemetry REST API under /api/v1/telemetry/: chart series and the VIN trace."""
