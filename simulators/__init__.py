"""Simulated My Number and FeliCa cards, reachable through the real reader stacks."""
