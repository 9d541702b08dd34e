"""The algorithms as plain functions over a model and tensors, one family per subpackage (its
`__init__` is its API): patching, attribution, das, scrubbing, baseline; `core` holds what they share.
Nothing here knows about MCP."""
