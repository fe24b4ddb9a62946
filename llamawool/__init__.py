"""llamawool: a server-authoritative game server for idle games (Llama Wool Farm)."""

__version__ = "0.1.0"
