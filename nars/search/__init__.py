"""The NARS search: experiment specs, the run store, stage 1 and 2, verification, Ray trials."""
