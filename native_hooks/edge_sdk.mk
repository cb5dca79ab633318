# Moved to native_hooks/make/edge_sdk.mk; this file keeps `include native_hooks/edge_sdk.mk` working.
include $(dir $(lastword $(MAKEFILE_LIST)))make/edge_sdk.mk
