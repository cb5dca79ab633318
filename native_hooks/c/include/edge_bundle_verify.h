/*
 * edge_bundle_verify: check an edge-sdk bundle (a folder, or the .tar.gz `edge-sdk pack` writes) against
 * its manifest on a device, without Python.
 *
 * A bundle folder holds manifest.json, which lists every file with its size and sha256, and optionally
 * manifest.sig, Ed25519 signatures of manifest.json's exact bytes. This library checks the same things
 * `edge-sdk verify` does at level "full" (see docs/c-verifier.md for the list and the differences).
 *
 * Thread safety: edge_bundle_verify() keeps no global state beyond libsodium's one-time initialisation,
 * which it performs itself (sodium_init is safe to call from several threads).
 */
#ifndef EDGE_BUNDLE_VERIFY_H
#define EDGE_BUNDLE_VERIFY_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define EDGE_BUNDLE_VERIFY_VERSION "1.0.0"
/* The newest manifest schema_version this library reads; a newer one is refused (EBV_ERR_SCHEMA). */
#define EDGE_BUNDLE_VERIFY_SCHEMA_VERSION 1

/* Return codes. 0 is success; the others say which kind of check failed. */
typedef enum edge_bundle_verify_status {
    EBV_OK = 0,
    EBV_ERR_INTEGRITY = 1,   /* a file is missing, unlisted, of another size or hash, or leads out of the bundle;
                                an archive member is unsafe, unlisted, duplicated, or the archive is truncated */
    EBV_ERR_SIGNATURE = 2,   /* unsigned, malformed manifest.sig, untrusted signer, or a signature that does not match */
    EBV_ERR_SCHEMA = 3,      /* manifest schema_version newer than EDGE_BUNDLE_VERIFY_SCHEMA_VERSION */
    EBV_ERR_MANIFEST = 4,    /* manifest.json missing, not JSON, malformed, too large, or listing an unsafe path */
    EBV_ERR_USAGE = 5,       /* bad arguments: NULL path, unreadable or malformed public key file, ... */
    EBV_ERR_IO = 6,          /* the bundle path cannot be opened or read at all */
    EBV_ERR_NOMEM = 7,       /* an allocation failed */
    EBV_ERR_UNSUPPORTED = 8  /* an archive was given but the library was built without libarchive */
} edge_bundle_verify_status;

/* Called once per problem found (a folder check goes on after the first, to name every bad file). */
typedef void (*edge_bundle_verify_problem_fn)(void *context, int status, const char *file, const char *reason);

typedef struct edge_bundle_verify_options {
    /* PEM SubjectPublicKeyInfo Ed25519 public keys (edge-sdk.pub). With at least one, the manifest must carry
       a valid signature by one of them. */
    const char *const *public_key_files;
    size_t public_key_count;
    /* Refuse to run without a public key (EBV_ERR_USAGE) instead of skipping the signature check. */
    int require_signature;
    /* Optional: told about every problem (NULL: only the report's first problem is kept). */
    edge_bundle_verify_problem_fn on_problem;
    void *on_problem_context;
} edge_bundle_verify_options;

#define EDGE_BUNDLE_VERIFY_FILE_MAX 4160
#define EDGE_BUNDLE_VERIFY_REASON_MAX 1024

typedef struct edge_bundle_verify_report {
    int status;                                   /* the return code, again */
    char file[EDGE_BUNDLE_VERIFY_FILE_MAX];       /* the first failing file: a bundle path, an archive member,
                                                     "manifest.json", "manifest.sig" or a key file; "" if none */
    char reason[EDGE_BUNDLE_VERIFY_REASON_MAX];   /* why it failed, one line */
    unsigned long problems;                       /* how many problems were found */
    unsigned long files_checked;                  /* listed files hashed and found equal */
    uint64_t bytes_checked;
    int is_archive;                               /* 1 when the path was checked as an archive */
    int signed_;                                  /* 1 when a manifest.sig was present */
    char verified_by[17];                         /* the key id whose signature verified; "" if none checked */
} edge_bundle_verify_report;

/* Fill options with the defaults (no keys, no callback). */
void edge_bundle_verify_options_init(edge_bundle_verify_options *options);

/* Check the bundle folder or archive at path. options may be NULL (no signature check); report may be NULL.
   Returns EBV_OK or one of the error codes above (also stored in report->status). */
int edge_bundle_verify(const char *path, const edge_bundle_verify_options *options,
                       edge_bundle_verify_report *report);

/* A short English name of a status code ("integrity", "signature", ...). */
const char *edge_bundle_verify_status_name(int status);

/* 1 when this build can check archives (built with libarchive), else 0. */
int edge_bundle_verify_has_archive_support(void);

#ifdef __cplusplus
}
#endif

#endif
