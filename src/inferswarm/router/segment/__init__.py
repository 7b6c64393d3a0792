"""Segmentation: one request or job becomes many tasks, spread over miners and
reassembled — fan-out inside a request, batch jobs, map-reduce over long text."""
