"""The model gateway: every external agent program reaches its model through it, with a
token of its run instead of a key; every call metered, every budget held."""
