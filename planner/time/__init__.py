"""Time: the step's work terms, the roofline, calibration from measured speeds."""
