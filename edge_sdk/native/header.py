"""A C header describing a bundle, for firmware that embeds or ships it: ``edge_bundle_<name>.h``.

The header holds what firmware needs to know about a bundle without parsing JSON on the device: its identity
(schema, SDK version, bundle id and version, task), the sha256 of ``manifest.json`` (as a hex string and as
32 bytes, so code can compare it with what it computes), every file with its size and sha256, the graph's
inputs and outputs (symbolic dimensions such as ``batch`` are ``-1`` plus the dimension's name), the labels,
the maximum sequence length, the profile, and the ids of the keys that signed the manifest (or a define
saying the bundle is unsigned).

The output is C99 (and valid C++ inside ``extern "C"``): it compiles warning-free with
``-std=c99 -Wall -Wextra -Werror -pedantic``. It is deterministic: identical bundles give byte-identical
headers (no timestamps, no absolute paths), so a build system that compares outputs sees no change.

Every array ends with a zeroed sentinel element: C99 has no empty arrays, and a bundle may have no labels or
no signatures. The ``*_COUNT`` macros give the real lengths.

Standard library only, like the rest of the bundle format: it runs wherever the CLI runs (no torch, no onnx,
no cryptography; the signatures are listed, not checked — ``edge-sdk verify`` or the C verifier checks them).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

from edge_sdk.bundle.atomic import atomic_write_bytes
from edge_sdk.bundle.layout import MANIFEST, SIGNATURE
from edge_sdk.bundle.manifest import Manifest, TensorSpec
from edge_sdk.errors import BundleError, ConfigError

# Bump when the shared struct types below change shape: two headers from different SDKs in one translation
# unit then fail loudly (#error) instead of silently disagreeing about a layout.
TYPES_VERSION = 1
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Names whose symbols would collide with others': EDGE_BUNDLE_TYPES_VERSION and EDGE_BUNDLE_DIM_SYMBOLIC (the shared
# types here), edge_bundle_verify.h, EDGE_BUNDLE_VERIFY_VERSION and the edge_bundle_verify target (the C verifier).
RESERVED_NAMES = frozenset({"types", "dim", "verify"})
_MAX_NAME = 64
_KEY_ID = re.compile(r"[0-9a-f]{16}")
# manifest.sig is a few hundred bytes; anything far larger is not one (and is not read into memory).
_MAX_SIGNATURE_FILE_BYTES = 256 * 1024
# Escapes C99 names; everything else outside printable ASCII becomes a 3-digit octal escape (never \x:
# a hex escape swallows every hex digit that follows it, "\xe9e" is one character, while an octal escape
# stops after three digits).
_NAMED_ESCAPES = {"\\": "\\\\", '"': '\\"', "?": "\\?", "\n": "\\n", "\t": "\\t", "\r": "\\r"}


def check_header_name(name: object) -> str:
    """``name`` if it can name a header and its symbols (a C identifier of at most 64 characters, not a reserved
    one), else a ConfigError saying why and giving an example."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or len(name) > _MAX_NAME:
        raise ConfigError(
            f"header name {name!r} is not a C identifier; use 1-{_MAX_NAME} letters, digits and '_', not starting "
            "with a digit (e.g. 'topics': the header is edge_bundle_topics.h and its symbols edge_bundle_topics_*)"
        )
    if name.lower() in RESERVED_NAMES:
        raise ConfigError(
            f"header name {name!r} is reserved: edge_bundle_{name.lower()}* and EDGE_BUNDLE_{name.upper()}_* "
            "name the shared types and the C verifier; choose another (e.g. 'topics')"
        )
    return name


def c_string(text: str) -> str:
    """``text`` as a C string literal (UTF-8 bytes; quotes, backslashes, ``?`` (trigraphs) and control and
    non-ASCII bytes escaped)."""
    parts = []
    for byte in text.encode("utf-8"):
        char = chr(byte)
        if char in _NAMED_ESCAPES:
            parts.append(_NAMED_ESCAPES[char])
        elif 0x20 <= byte < 0x7F:
            parts.append(char)
        else:
            parts.append(f"\\{byte:03o}")
    return '"' + "".join(parts) + '"'


def c_identifier(text: str) -> str:
    """``text`` as an upper-case C identifier fragment (for index macros such as ``..._LABEL_SPORT``): runs of
    anything but letters and digits become one ``_``; a leading digit gets a ``_`` in front. Empty for text
    that is not ASCII: dropping its letters would give a misleading name ("café" as CAF)."""
    if not text.isascii():
        return ""
    fragment = re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").upper()
    return f"_{fragment}" if fragment[:1].isdigit() else fragment


def signing_key_ids(bundle: Path) -> list[str]:
    """The key ids ``manifest.sig`` names, in its order, each once ([] when the bundle is unsigned). Parsed here
    (not by edge_sdk.bundle.signing, which needs ``cryptography``): the header lists signers, it checks nothing."""
    path = bundle / SIGNATURE
    if not path.exists():
        return []
    where = str(path)
    if path.stat().st_size > _MAX_SIGNATURE_FILE_BYTES:
        raise BundleError(f"{where} is far larger than a signature file; sign the bundle again with `edge-sdk sign`")
    try:
        document = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise BundleError(f"{where} is not JSON ({exc}); sign the bundle again with `edge-sdk sign`") from None
    entries = document.get("signatures") if isinstance(document, dict) else None
    if not isinstance(entries, list) or not entries:
        raise BundleError(f"{where} lists no signatures; sign the bundle again with `edge-sdk sign`")
    ids: list[str] = []
    for number, entry in enumerate(entries, start=1):
        key_id = entry.get("key_id") if isinstance(entry, dict) else None
        if not isinstance(key_id, str) or not _KEY_ID.fullmatch(key_id):
            raise BundleError(f"{where}: signature {number} has key_id {key_id!r}, not 16 lowercase hex digits; "
                              "sign the bundle again with `edge-sdk sign`")
        if key_id not in ids:
            ids.append(key_id)
    return ids


def _bytes_initializer(hex_digest: str) -> str:
    return "{" + ", ".join(f"0x{hex_digest[i:i + 2]}" for i in range(0, len(hex_digest), 2)) + "}"


def _dims(spec: TensorSpec) -> list[str]:
    dims = []
    for dim in spec.shape:
        if isinstance(dim, str):
            dims.append(f"{{EDGE_BUNDLE_DIM_SYMBOLIC, {c_string(dim)}}}")
        else:
            dims.append(f"{{INT64_C({dim}), NULL}}")
    return dims + ["{0, NULL}"]


def _index_macros(prefix: str, kind: str, names: list[str]) -> list[str]:
    """``#define <PREFIX>_<KIND>_<NAME> <index>`` for each name whose identifier form is non-empty and unique
    (two labels "a b" and "a-b" would both be A_B: neither gets a macro rather than one silently winning), and
    that is not COUNT (taken by the count macro)."""
    fragments = [c_identifier(name) for name in names]
    lines = []
    for index, fragment in enumerate(fragments):
        # A label "count" would redefine <PREFIX>_LABEL_COUNT, the number of labels.
        if fragment and fragment != "COUNT" and fragments.count(fragment) == 1:
            lines.append(f"#define {prefix}_{kind}_{fragment} {index}")
    return lines


_TYPES = f"""\
/* Types shared by every edge_bundle_*.h (defined once per translation unit). */
#ifndef EDGE_BUNDLE_TYPES_VERSION
#define EDGE_BUNDLE_TYPES_VERSION {TYPES_VERSION}
/* The size of a symbolic dimension (its name says which: "batch", "sequence", ...). */
#define EDGE_BUNDLE_DIM_SYMBOLIC INT64_C(-1)

/* One file of the bundle, relative to its folder. */
typedef struct edge_bundle_file {{
    const char *path;
    uint64_t size;
    const char *sha256_hex;
    unsigned char sha256[32];
}} edge_bundle_file;

/* One dimension: a fixed size and name NULL, or EDGE_BUNDLE_DIM_SYMBOLIC and the dimension's name. */
typedef struct edge_bundle_dim {{
    int64_t size;
    const char *name;
}} edge_bundle_dim;

/* A graph input or output: name, element type (ONNX name: "int64", "float32", ...) and shape. */
typedef struct edge_bundle_tensor {{
    const char *name;
    const char *dtype;
    size_t rank;
    const edge_bundle_dim *shape;
}} edge_bundle_tensor;
#elif EDGE_BUNDLE_TYPES_VERSION != {TYPES_VERSION}
#error "edge_bundle headers from different edge-sdk versions disagree on their types; regenerate them"
#endif
"""


def render_header(bundle: str | os.PathLike, name: str) -> str:
    """The text of ``edge_bundle_<name>.h`` for the bundle folder ``bundle`` (its manifest is read and checked,
    the files' hashes are not recomputed: the manifest's are copied)."""
    name = check_header_name(name)
    bundle = Path(bundle)
    manifest_path = bundle / MANIFEST
    if not manifest_path.is_file():
        raise BundleError(f"{bundle} holds no {MANIFEST}: not a bundle folder; build one with `edge-sdk build`")
    manifest_bytes = manifest_path.read_bytes()
    try:
        text = manifest_bytes.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BundleError(f"{manifest_path} is not UTF-8 ({exc}); rebuild the bundle with `edge-sdk build`") from None
    manifest = Manifest.from_json(text, source=str(manifest_path))
    key_ids = signing_key_ids(bundle)
    manifest_sha256 = hashlib.sha256(manifest_bytes).hexdigest()
    prefix = f"EDGE_BUNDLE_{name.upper()}"
    symbol = f"edge_bundle_{name}"
    guard = f"{prefix}_H"
    profile_name = manifest.profile.get("name", "")
    precision = manifest.profile.get("precision", "float32")  # profiles before the precision key were float32
    if not isinstance(profile_name, str) or not isinstance(precision, str):
        raise BundleError(f"{manifest_path}: profile.name and profile.precision must be strings; rebuild the bundle")

    lines = [
        f"/* {symbol}.h: generated by `edge-sdk header` (edge-sdk {_sdk_version()}) from a bundle's manifest.json.",
        " * Do not edit: regenerate it when the bundle changes. */",
        f"#ifndef {guard}",
        f"#define {guard}",
        "",
        "#include <stddef.h>",
        "#include <stdint.h>",
        "",
        "#ifdef __cplusplus",
        'extern "C" {',
        "#endif",
        "",
        _TYPES,
        "/* Unused static data in a header is intended: each translation unit takes what it needs. */",
        "#if defined(__GNUC__) || defined(__clang__)",
        f"#define {prefix}_UNUSED __attribute__((unused))",
        "#else",
        f"#define {prefix}_UNUSED",
        "#endif",
        "",
        "/* Identity */",
        f"#define {prefix}_SCHEMA_VERSION {manifest.schema_version}",
        f"#define {prefix}_SDK_VERSION {c_string(manifest.sdk_version)}",
        f"#define {prefix}_ID {c_string(manifest.bundle_id)}",
        f"#define {prefix}_VERSION {manifest.version}",
        f"#define {prefix}_TASK {c_string(manifest.task)}",
        f"#define {prefix}_MAX_LENGTH {manifest.max_length}",
        f"#define {prefix}_PROFILE {c_string(profile_name)}",
        f"#define {prefix}_PRECISION {c_string(precision)}",
        "",
        "/* sha256 of manifest.json's exact bytes: the manifest lists every other file's hash, so this one value",
        " * identifies the whole bundle. */",
        f"#define {prefix}_MANIFEST_SIZE {len(manifest_bytes)}",
        f"#define {prefix}_MANIFEST_SHA256 {c_string(manifest_sha256)}",
        f"static const unsigned char {symbol}_manifest_sha256[32] {prefix}_UNUSED = "
        f"{_bytes_initializer(manifest_sha256)};",
        "",
        "/* Signatures (manifest.sig): the ids of the keys that signed, as recorded; not checked here. */",
    ]
    if key_ids:
        lines += [f"#define {prefix}_SIGNED 1",
                  f"#define {prefix}_SIGNING_KEY_COUNT {len(key_ids)}",
                  f"#define {prefix}_SIGNING_KEY_ID {c_string(key_ids[0])}"]
    else:
        lines += [f"#define {prefix}_SIGNED 0",
                  f"#define {prefix}_UNSIGNED 1",
                  f"#define {prefix}_SIGNING_KEY_COUNT 0"]
    lines += [f"static const char *const {symbol}_signing_key_ids[] {prefix}_UNUSED = {{",
              *[f"    {c_string(key_id)}," for key_id in key_ids], "    NULL", "};", ""]

    lines += ["/* Files (paths relative to the bundle folder), in the manifest's order */",
              f"#define {prefix}_FILE_COUNT {len(manifest.files)}",
              f"static const edge_bundle_file {symbol}_files[] {prefix}_UNUSED = {{"]
    for entry in manifest.files:
        lines.append(f"    {{{c_string(entry.path)}, UINT64_C({entry.size}), {c_string(entry.sha256)}, "
                     f"{_bytes_initializer(entry.sha256)}}},")
    lines += ["    {NULL, 0, NULL, {0}}", "};", ""]

    for kind, specs in (("input", manifest.inputs), ("output", manifest.outputs)):
        upper = kind.upper()
        lines.append(f"/* {kind.capitalize()}s of the inference graph */")
        lines.append(f"#define {prefix}_{upper}_COUNT {len(specs)}")
        lines += _index_macros(prefix, upper, [spec.name for spec in specs])
        for index, spec in enumerate(specs):
            lines.append(f"static const edge_bundle_dim {symbol}_{kind}_{index}_shape[] {prefix}_UNUSED = "
                         f"{{{', '.join(_dims(spec))}}};")
        lines.append(f"static const edge_bundle_tensor {symbol}_{kind}s[] {prefix}_UNUSED = {{")
        for index, spec in enumerate(specs):
            lines.append(f"    {{{c_string(spec.name)}, {c_string(spec.dtype)}, {len(spec.shape)}, "
                         f"{symbol}_{kind}_{index}_shape}},")
        lines += ["    {NULL, NULL, 0, NULL}", "};", ""]

    lines += ["/* Labels, by class index */",
              f"#define {prefix}_LABEL_COUNT {len(manifest.labels)}",
              *_index_macros(prefix, "LABEL", manifest.labels),
              f"static const char *const {symbol}_labels[] {prefix}_UNUSED = {{",
              *[f"    {c_string(label)}," for label in manifest.labels], "    NULL", "};", "",
              "#ifdef __cplusplus",
              "}",
              "#endif",
              "",
              f"#endif /* {guard} */",
              ""]
    return "\n".join(lines)


def write_header(bundle: str | os.PathLike, name: str, out: str | os.PathLike) -> Path:
    """Write ``render_header(bundle, name)`` to ``out`` atomically (a reader sees the old header or the new one,
    never half of one); the folder of ``out`` is created. Returns ``out``."""
    text = render_header(bundle, name)  # fails before anything is written
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, text.encode("ascii"))  # c_string escapes all non-ASCII: the header is pure ASCII
    return out


def _sdk_version() -> str:
    from edge_sdk import __version__

    return __version__
