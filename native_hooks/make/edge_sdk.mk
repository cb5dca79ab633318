# Make fragment for firmware build pipelines: build an edge-sdk bundle (and a C header describing it) as
# ordinary make targets, rebuilt when anything the build read changes.
#
#   EDGE_SDK_RECIPE := models/minilm-topics.toml       # or: EDGE_SDK_MODEL := path/to/model  EDGE_SDK_TASK := seq-cls
#   EDGE_SDK_BUNDLE := build/topics
#   EDGE_SDK_NAME   := topics                          # optional: also generate build/edge_bundle_topics.h
#   include $(shell edge-sdk cmake-dir)/../make/edge_sdk.mk   # or a path into an edge-sdk checkout
#   firmware.elf: main.o $(EDGE_SDK_BUNDLE)/manifest.json
#   main.o: $(EDGE_SDK_HEADER)
#
# Inputs (set before the include):
#   EDGE_SDK_RECIPE            a recipe (models/*.toml); or
#   EDGE_SDK_MODEL, EDGE_SDK_TASK [, EDGE_SDK_LABELS (comma-separated)]   a model folder and its task
#   EDGE_SDK_BUNDLE            the bundle folder to write (required)
#   EDGE_SDK_PROFILE           a built-in profile name or a profile .toml (optional)
#   EDGE_SDK_SIGN_KEY          a private key (edge-sdk.key) to sign the manifest with (optional)
#   EDGE_SDK_BUILD_FLAGS       more `edge-sdk build` flags (optional)
#   EDGE_SDK_NAME              a C identifier: generate the header $(EDGE_SDK_HEADER) (optional)
#   EDGE_SDK                   the edge-sdk program (default: edge-sdk on the PATH)
#
# `edge-sdk build --depfile` writes $(EDGE_SDK_BUNDLE).d listing every file the build read (model weights,
# tokenizer, recipe, profile, data), included below, so editing any of them rebuilds the bundle; an unchanged
# rebuild is skipped by make itself. A failed build leaves no bundle (edge-sdk writes atomically), so make
# never sees a stale or half-written target. The build report is kept as $(EDGE_SDK_BUNDLE).build.json.
#
# Targets: the bundle's manifest.json, the header, `edge-sdk-verify` (edge-sdk verify) and `edge-sdk-verify-c`
# (the C verifier, built from the sources next to this file with their Makefile).

# Where this fragment is, taken before any other include changes MAKEFILE_LIST.
EDGE_SDK_HOOKS := $(abspath $(dir $(lastword $(MAKEFILE_LIST)))..)
# The including Makefile's default goal stays its own (restored at the end), not this fragment's first rule.
_EDGE_SDK_DEFAULT_GOAL := $(.DEFAULT_GOAL)

EDGE_SDK ?= edge-sdk
EDGE_SDK_BUILD_FLAGS ?=

ifndef EDGE_SDK_BUNDLE
$(error set EDGE_SDK_BUNDLE to the bundle output folder before including edge_sdk.mk)
endif
EDGE_SDK_BUNDLE := $(patsubst %/,%,$(EDGE_SDK_BUNDLE))

ifdef EDGE_SDK_RECIPE
_EDGE_SDK_SOURCE := $(EDGE_SDK_RECIPE)$(if $(EDGE_SDK_TASK), --task $(EDGE_SDK_TASK))
_EDGE_SDK_INPUTS := $(EDGE_SDK_RECIPE)
else ifdef EDGE_SDK_MODEL
ifndef EDGE_SDK_TASK
$(error EDGE_SDK_MODEL needs EDGE_SDK_TASK (e.g. EDGE_SDK_TASK := seq-cls))
endif
_EDGE_SDK_SOURCE := $(EDGE_SDK_MODEL) --task $(EDGE_SDK_TASK)
# config.json is read by every build: a dependency before the first depfile exists.
_EDGE_SDK_INPUTS := $(wildcard $(EDGE_SDK_MODEL)/config.json)
else
$(error set EDGE_SDK_RECIPE to a recipe (models/*.toml), or EDGE_SDK_MODEL and EDGE_SDK_TASK, before including edge_sdk.mk)
endif

_EDGE_SDK_OPTIONS := $(if $(EDGE_SDK_LABELS),--labels $(EDGE_SDK_LABELS)) \
    $(if $(EDGE_SDK_PROFILE),--profile $(EDGE_SDK_PROFILE)) $(if $(EDGE_SDK_SIGN_KEY),--sign $(EDGE_SDK_SIGN_KEY))
_EDGE_SDK_INPUTS += $(filter %.toml,$(EDGE_SDK_PROFILE)) $(EDGE_SDK_SIGN_KEY)

# The depfile names the manifest by its absolute path with symbolic links resolved, so the rule does too (make
# would take a relative and an absolute name for two different targets); the name the user wrote, if different,
# follows it. realpath needs an existing folder: before the first build there is no depfile to match either.
_EDGE_SDK_MANIFEST := $(or $(realpath $(EDGE_SDK_BUNDLE)),$(abspath $(EDGE_SDK_BUNDLE)))/manifest.json

$(_EDGE_SDK_MANIFEST): $(_EDGE_SDK_INPUTS)
	@mkdir -p $(dir $(EDGE_SDK_BUNDLE))
	$(EDGE_SDK) build $(_EDGE_SDK_SOURCE) --out $(EDGE_SDK_BUNDLE) --overwrite --quiet --json \
	    --depfile $(EDGE_SDK_BUNDLE).d $(_EDGE_SDK_OPTIONS) $(EDGE_SDK_BUILD_FLAGS) > $(EDGE_SDK_BUNDLE).build.json
	$(EDGE_SDK) verify $(EDGE_SDK_BUNDLE)

ifneq ($(EDGE_SDK_BUNDLE)/manifest.json,$(_EDGE_SDK_MANIFEST))
$(EDGE_SDK_BUNDLE)/manifest.json: $(_EDGE_SDK_MANIFEST) ;
endif

-include $(EDGE_SDK_BUNDLE).d

ifdef EDGE_SDK_NAME
EDGE_SDK_HEADER ?= $(dir $(EDGE_SDK_BUNDLE))edge_bundle_$(EDGE_SDK_NAME).h
$(EDGE_SDK_HEADER): $(_EDGE_SDK_MANIFEST)
	$(EDGE_SDK) header $(EDGE_SDK_BUNDLE) --name $(EDGE_SDK_NAME) --out $@
endif

.PHONY: edge-sdk-verify edge-sdk-verify-c
edge-sdk-verify: $(_EDGE_SDK_MANIFEST)
	$(EDGE_SDK) verify $(EDGE_SDK_BUNDLE)

# The C verifier: the same check firmware runs on the device, built here with the host's C compiler.
EDGE_SDK_VERIFY_BUILD ?= $(dir $(EDGE_SDK_BUNDLE))edge_sdk_verify
EDGE_SDK_VERIFIER ?= $(EDGE_SDK_VERIFY_BUILD)/edge_bundle_verify
# e.g. --public-key keys/edge-sdk.pub --require-signature
EDGE_SDK_VERIFY_FLAGS ?=

$(EDGE_SDK_VERIFIER): $(wildcard $(EDGE_SDK_HOOKS)/c/*.c $(EDGE_SDK_HOOKS)/c/*/*.c $(EDGE_SDK_HOOKS)/c/include/*.h)
	$(MAKE) -C $(EDGE_SDK_HOOKS)/c BUILD=$(abspath $(EDGE_SDK_VERIFY_BUILD))

edge-sdk-verify-c: $(_EDGE_SDK_MANIFEST) $(EDGE_SDK_VERIFIER)
	$(EDGE_SDK_VERIFIER) $(EDGE_SDK_VERIFY_FLAGS) $(EDGE_SDK_BUNDLE)

.DEFAULT_GOAL := $(_EDGE_SDK_DEFAULT_GOAL)
