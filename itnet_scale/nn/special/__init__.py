"""Exact special cases of the integral transform (DESIGN §1 table)."""
