"""inferswarm: a decentralized AI inference network.

Routers take OpenAI-compatible requests and allocate them to miners that run
quantized GGUF models on llama.cpp. Miners dial routers over a WebSocket.
"""

__version__ = "0.1.0"
