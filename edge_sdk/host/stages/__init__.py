"""The build's stages, one module each; :func:`edge_sdk.host.pipeline.plan` puts them in order."""
