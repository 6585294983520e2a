"""Training / evaluation data: `readers` (stdlib: files -> data sets), `rows` (file formats), `tokenize` (torch).

Import the submodules; this package imports nothing so the torch-free runtime can use `readers`.
"""
