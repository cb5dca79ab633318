"""Small ONNX graph helpers shared by the host's graph rewrites, importable without torch.

The int8 rewrite, the portable training step and the merged-adapter export read and rewrite ONNX graphs
with numpy and onnx only; keeping their helpers here (rather than in modules that also export PyTorch
models) lets them load without torch. One job per module:

- :mod:`~edge_sdk.graph.attributes`: read a node's attributes.
- :mod:`~edge_sdk.graph.nodes`: a node's inputs and outputs, and walking nodes into subgraphs.
- :mod:`~edge_sdk.graph.wiring`: which node produces a tensor, which nodes read it.
- :mod:`~edge_sdk.graph.prune`: remove what no graph output depends on.
- :mod:`~edge_sdk.graph.frozen`: where a frozen weight comes from, and its float value.
- :mod:`~edge_sdk.graph.row_quantization`: symmetric int8 with one scale per row.
- :mod:`~edge_sdk.graph.merge`: merge a LoRA/DoRA adapter into the base weights of an inference graph.

Nothing is re-exported here, so importing one helper loads only its module.
"""
