"""Inference engines a miner can run: llama.cpp (default), an OpenAI-compatible
upstream, and a fake for tests and simulation."""
