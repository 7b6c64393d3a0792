"""Figures shared by router and miner: rolling per-second samples.

Imports nothing else from inferswarm, so both sides may use it.
"""
