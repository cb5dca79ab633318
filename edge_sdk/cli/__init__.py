"""The `edge-sdk` command line: flags become the same config objects the Python API takes."""
