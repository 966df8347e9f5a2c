"""Harness: profile, train, search and tabulate spatio-temporal blocks."""
