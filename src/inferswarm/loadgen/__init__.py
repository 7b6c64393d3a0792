"""A load generator for any OpenAI-compatible server (``inferswarm bench``).

Pure parts — length distributions, the request plan and arrival schedule, the
summary maths — are separate from the HTTP driver, so they are tested without
a network and the same plan is replayed exactly from a seed.
"""
