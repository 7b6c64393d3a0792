"""Adaptive scaling: the miner pool follows demand.

``policy`` decides (pure: signals in, desired miner count out), ``signals``
reads them from the live router, ``providers`` carry the decision out (start
or stop local miner processes, run operator commands, park or activate
standby miners) and ``autoscaler`` runs the loop that ties them together.
"""
