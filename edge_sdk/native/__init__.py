"""Integration with native (C, CMake, Make) build pipelines: the bundle header and the CMake package."""
