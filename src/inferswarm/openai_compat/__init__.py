"""OpenAI-compatible wire schemas and error envelope, shared by the router's API
and the miner's optional direct endpoint. Imports neither router nor miner."""
