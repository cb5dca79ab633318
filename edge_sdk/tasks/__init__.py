"""Task plugins: data schema, pre/post-processing and metrics, one module per task."""
