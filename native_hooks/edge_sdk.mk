# Make fragment for firmware build pipelines: build and verify an edge-sdk bundle as a normal target.
#
#   EDGE_SDK_RECIPE := models/minilm-topics.toml
#   EDGE_SDK_BUNDLE := build/topics
#   include native_hooks/edge_sdk.mk
#   firmware.bin: $(EDGE_SDK_BUNDLE)/manifest.json
#
# The bundle is rebuilt when the recipe changes; a failed build leaves no bundle (edge-sdk writes
# atomically), so make never sees a stale or half-written target. The build report is kept as JSON.

EDGE_SDK ?= edge-sdk
EDGE_SDK_BUILD_FLAGS ?=

ifndef EDGE_SDK_RECIPE
$(error set EDGE_SDK_RECIPE to a recipe (models/*.toml) before including edge_sdk.mk)
endif
ifndef EDGE_SDK_BUNDLE
$(error set EDGE_SDK_BUNDLE to the bundle output folder before including edge_sdk.mk)
endif

$(EDGE_SDK_BUNDLE)/manifest.json: $(EDGE_SDK_RECIPE)
	$(EDGE_SDK) build $(EDGE_SDK_RECIPE) --out $(EDGE_SDK_BUNDLE) --overwrite --json $(EDGE_SDK_BUILD_FLAGS) > $(EDGE_SDK_BUNDLE).build.json
	$(EDGE_SDK) verify $(EDGE_SDK_BUNDLE)

.PHONY: edge-sdk-verify
edge-sdk-verify: $(EDGE_SDK_BUNDLE)/manifest.json
	$(EDGE_SDK) verify $(EDGE_SDK_BUNDLE)
