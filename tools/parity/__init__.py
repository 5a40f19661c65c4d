"""Parity fixtures: each module here runs one system of the original ml-l3m and records what it computes."""
