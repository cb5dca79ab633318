/* Internal interface between the library's files (and the fuzz harness); not installed. */
#ifndef EBV_INTERNAL_H
#define EBV_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "edge_bundle_verify.h"

/* Caps, the same as edge-sdk's Python reader where it has one: hostile input cannot make memory grow. */
#define EBV_MAX_MANIFEST_BYTES (16u << 20)       /* archive.py MAX_MANIFEST_BYTES */
#define EBV_MAX_SIGNATURE_FILE_BYTES (256u << 10) /* signing.py _MAX_SIGNATURE_FILE_BYTES */
#define EBV_MAX_ARCHIVE_SIGNATURE_BYTES (1u << 20) /* archive.py MAX_SIGNATURE_BYTES */
#define EBV_MAX_KEY_FILE_BYTES (64u << 10)        /* keys.py _MAX_KEY_BYTES */
#define EBV_MAX_TOKENS (1 << 21)                   /* JSON tokens of one manifest (a real one has a few hundred) */
#define EBV_MAX_DEPTH 256                          /* JSON nesting */
#define EBV_MAX_PATH_CHARS 4096                    /* paths.py _MAX_PATH (characters, not bytes) */
#define EBV_MAX_FILES 100000                       /* listed files */
#define EBV_MAX_WRITABLE 64                        /* writable_paths entries */
#define EBV_MAX_SIGNATURES 64                      /* entries of manifest.sig */
#define EBV_MAX_KEYS 64                            /* --public-key options */
#define EBV_MAX_MEMBERS 10000                      /* archive.py DEFAULT_MAX_MEMBERS */
#define EBV_MAX_ARCHIVE_BYTES ((uint64_t)64 << 30) /* archive.py DEFAULT_MAX_BYTES */
#define EBV_MAX_WALK_ENTRIES 1000000               /* folder entries looked at for unlisted files */

#define EBV_MANIFEST "manifest.json"
#define EBV_SIGNATURE "manifest.sig"

typedef struct ebv_ctx {
    const edge_bundle_verify_options *options; /* may be NULL */
    edge_bundle_verify_report *report;         /* never NULL inside the library */
} ebv_ctx;

/* Record a problem (the report keeps the first); returns code. */
int ebv_problem(ebv_ctx *ctx, int code, const char *file, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 4, 5)))
#endif
    ;

typedef struct ebv_file {
    char *path;               /* decoded UTF-8, NUL-terminated (NUL inside was refused) */
    size_t path_len;
    unsigned char sha256[32];
    uint64_t size;
    int seen;                 /* archive check: member found */
} ebv_file;

typedef struct ebv_manifest {
    long schema_version;
    ebv_file *files;          /* sorted by path (bytewise) after parsing, for ebv_manifest_find */
    size_t file_count;
    int refuse_unlisted;      /* "unlisted_files": "refuse" */
    char **writable;          /* writable_paths, each ending in '/' */
    size_t writable_count;
} ebv_manifest;

typedef struct ebv_signature {
    char key_id[17];
    unsigned char value[64];
} ebv_signature;

typedef struct ebv_signatures {
    ebv_signature items[EBV_MAX_SIGNATURES];
    size_t count;
} ebv_signatures;

typedef struct ebv_key {
    unsigned char raw[32];
    char key_id[17];
    const char *file;
} ebv_key;

/* manifest.c */
int ebv_manifest_parse(ebv_ctx *ctx, const char *data, size_t len, const char *source, ebv_manifest *out);
void ebv_manifest_free(ebv_manifest *manifest);
ebv_file *ebv_manifest_find(const ebv_manifest *manifest, const char *path);
int ebv_writable(const ebv_manifest *manifest, const char *path); /* path (a file, or a folder + '/') allowed */
int ebv_signatures_parse(ebv_ctx *ctx, const char *data, size_t len, const char *source, ebv_signatures *out);
/* NULL when path (len bytes) is a safe bundle-relative name, else why not (paths.py path_problem). */
const char *ebv_path_problem(const char *path, size_t len);

/* json.c: strict RFC 8259 validation (UTF-8 included), since jsmn alone accepts much that is not JSON. */
int ebv_json_validate(const char *data, size_t len, int *tokens, const char **why);

/* signature.c */
int ebv_load_keys(ebv_ctx *ctx, ebv_key *keys, size_t *count);
int ebv_parse_public_key_pem(const char *pem, size_t len, unsigned char raw[32], const char **why);
void ebv_key_id(const unsigned char raw[32], char out[17]);
int ebv_check_signature(ebv_ctx *ctx, const ebv_key *keys, size_t key_count, const unsigned char *manifest,
                        size_t manifest_len, const unsigned char *signature, size_t signature_len, int has_signature,
                        const char *source);

/* verify_dir.c / verify_archive.c */
int ebv_verify_dir(ebv_ctx *ctx, const char *root, const ebv_key *keys, size_t key_count);
int ebv_verify_archive(ebv_ctx *ctx, const char *path, const ebv_key *keys, size_t key_count);

void ebv_hex(const unsigned char *bytes, size_t n, char *out); /* 2n hex digits + NUL */

#endif
