"""Fixtures that ship with vislab: tiny datasets, models and run directories for tests."""
