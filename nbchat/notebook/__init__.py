"""The notebook layer: the ``%%chat`` magic, the chat widget, their shared conversation and the in-kernel server."""
