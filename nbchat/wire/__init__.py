"""The sans-I/O core: the event model, the error tree and every wire encoding.

Nothing here imports Starlette, httpx, websockets or IPython: clients, server
and notebook layer all build on these pure encode/decode functions.
"""
