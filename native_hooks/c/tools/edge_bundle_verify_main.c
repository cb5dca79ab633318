/* edge_bundle_verify [--public-key FILE]... [--require-signature] [--quiet] [--json] BUNDLE_DIR|ARCHIVE
 *
 * Exit status: 0 the bundle is intact (and signed by a given key, if any); 1 verification failed (every
 * problem is printed on stderr as "edge_bundle_verify: FILE: REASON"); 2 a usage or I/O error. */
#include <stdio.h>
#include <string.h>

#include "edge_bundle_verify.h"

#define PROGRAM "edge_bundle_verify"
#define MAX_KEYS 64

static const char USAGE[] =
    "usage: " PROGRAM " [--public-key FILE]... [--require-signature] [--quiet] [--json] BUNDLE_DIR|ARCHIVE\n"
    "\n"
    "Check an edge-sdk bundle folder or bundle archive (.tar.gz) against its manifest.json: every listed file\n"
    "present with its size and sha256, no unsafe path, no unlisted file where the manifest refuses them, and,\n"
    "given public keys (edge-sdk.pub), a valid Ed25519 signature in manifest.sig by one of them.\n"
    "\n"
    "  --public-key FILE     trust this PEM public key (repeatable; one valid signature by any is enough)\n"
    "  --require-signature   fail (exit 2) when no --public-key is given, instead of skipping the signature\n"
    "  --quiet               print nothing on success, only problems\n"
    "  --json                print one JSON object on stdout\n"
    "\n"
    "Exit status: 0 ok, 1 verification failed (the file is named on stderr), 2 usage or I/O error.\n";

typedef struct printer {
    int enabled;
} printer;

static void print_problem(void *context, int status, const char *file, const char *reason) {
    const printer *p = context;
    (void)status;
    if (!p->enabled) return;
    if (file && *file) fprintf(stderr, PROGRAM ": %s: %s\n", file, reason);
    else fprintf(stderr, PROGRAM ": %s\n", reason);
}

static void json_string(const char *text) {
    putchar('"');
    for (const unsigned char *c = (const unsigned char *)text; *c; c++) {
        if (*c == '"' || *c == '\\') printf("\\%c", *c);
        else if (*c < 0x20) printf("\\u%04x", *c);
        else putchar(*c);
    }
    putchar('"');
}

static int exit_code(int status) {
    switch (status) {
    case EBV_OK: return 0;
    case EBV_ERR_INTEGRITY: case EBV_ERR_SIGNATURE: case EBV_ERR_SCHEMA: case EBV_ERR_MANIFEST: return 1;
    default: return 2;
    }
}

int main(int argc, char **argv) {
    const char *keys[MAX_KEYS];
    const char *bundle = NULL;
    int quiet = 0, as_json = 0, status, options_done = 0;
    edge_bundle_verify_options options;
    edge_bundle_verify_report report;
    printer p;
    edge_bundle_verify_options_init(&options);
    options.public_key_files = keys;
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (!options_done && !strcmp(arg, "--")) {
            options_done = 1;
        } else if (!options_done && (!strcmp(arg, "--help") || !strcmp(arg, "-h"))) {
            fputs(USAGE, stdout);
            return 0;
        } else if (!options_done && !strcmp(arg, "--public-key")) {
            if (i + 1 >= argc) {
                fprintf(stderr, PROGRAM ": --public-key needs a FILE\n%s", USAGE);
                return 2;
            }
            if (options.public_key_count == MAX_KEYS) {
                fprintf(stderr, PROGRAM ": at most %d --public-key options\n", MAX_KEYS);
                return 2;
            }
            keys[options.public_key_count++] = argv[++i];
        } else if (!options_done && !strncmp(arg, "--public-key=", 13)) {
            if (options.public_key_count == MAX_KEYS) {
                fprintf(stderr, PROGRAM ": at most %d --public-key options\n", MAX_KEYS);
                return 2;
            }
            keys[options.public_key_count++] = arg + 13;
        } else if (!options_done && !strcmp(arg, "--require-signature")) {
            options.require_signature = 1;
        } else if (!options_done && !strcmp(arg, "--quiet")) {
            quiet = 1;
        } else if (!options_done && !strcmp(arg, "--json")) {
            as_json = 1;
        } else if (!options_done && arg[0] == '-' && arg[1]) {
            fprintf(stderr, PROGRAM ": unknown option %s\n%s", arg, USAGE);
            return 2;
        } else if (bundle) {
            fprintf(stderr, PROGRAM ": give one BUNDLE_DIR or ARCHIVE (got %s and %s)\n%s", bundle, arg, USAGE);
            return 2;
        } else {
            bundle = arg;
        }
    }
    if (!bundle) {
        fprintf(stderr, PROGRAM ": no BUNDLE_DIR or ARCHIVE given\n%s", USAGE);
        return 2;
    }
    p.enabled = 1; /* problems always go to stderr, also with --quiet and --json */
    options.on_problem = print_problem;
    options.on_problem_context = &p;
    status = edge_bundle_verify(bundle, &options, &report);
    if (as_json) {
        printf("{\"bundle\": ");
        json_string(bundle);
        printf(", \"ok\": %s, \"status\": ", status == EBV_OK ? "true" : "false");
        json_string(edge_bundle_verify_status_name(status));
        printf(", \"archive\": %s, \"files\": %lu, \"bytes\": %llu, \"signed\": %s, \"verified_by\": ",
               report.is_archive ? "true" : "false", report.files_checked, (unsigned long long)report.bytes_checked,
               report.signed_ ? "true" : "false");
        if (*report.verified_by) json_string(report.verified_by);
        else printf("null");
        printf(", \"problems\": %lu, \"file\": ", report.problems);
        if (status) json_string(report.file);
        else printf("null");
        printf(", \"reason\": ");
        if (status) json_string(report.reason);
        else printf("null");
        printf("}\n");
    } else if (status == EBV_OK && !quiet) {
        printf("ok: %lu files match the manifest (%llu bytes)", report.files_checked,
               (unsigned long long)report.bytes_checked);
        if (*report.verified_by) printf(", signed by trusted key %s", report.verified_by);
        else if (report.signed_) printf(", signed (not checked: give --public-key)");
        else printf(", not signed");
        printf("\n");
    }
    return exit_code(status);
}
