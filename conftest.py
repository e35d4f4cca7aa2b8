"""Registers the spec-conformance plugin for every test tree of the repository."""

pytest_plugins = ["spec_tests.conformance_plugin"]
