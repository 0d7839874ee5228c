"""Memory: the terms, the moments of a step, the method variants, sharding, runtime calibration."""
