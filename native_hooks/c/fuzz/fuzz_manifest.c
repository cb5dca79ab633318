/* libFuzzer harness for the parsers that read untrusted bytes: manifest.json, manifest.sig and a PEM public
 * key. Every input goes through all three (a seed manifest mutates into signature-file shapes and back).
 *   clang -fsanitize=fuzzer,address,undefined -Iinclude -Isrc (every src .c file) fuzz/fuzz_manifest.c -lsodium
 * parse_driver.c runs the same function over files, for compilers without libFuzzer. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ebv_internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    edge_bundle_verify_report report;
    ebv_ctx ctx;
    ebv_manifest manifest;
    ebv_signatures *signatures;
    unsigned char raw[32];
    const char *why = NULL;
    /* An exact-size copy (no terminating NUL): the parsers must never read past len. */
    char *copy = malloc(size ? size : 1);
    if (!copy) return 0;
    if (size) memcpy(copy, data, size);
    memset(&report, 0, sizeof report);
    ctx.options = NULL;
    ctx.report = &report;
    if (ebv_manifest_parse(&ctx, copy, size, "manifest.json", &manifest) == EBV_OK) {
        /* Exercise what the verifier does with a parsed manifest. */
        for (size_t i = 0; i < manifest.file_count; i++) {
            if (ebv_manifest_find(&manifest, manifest.files[i].path) == NULL) abort();
            (void)ebv_writable(&manifest, manifest.files[i].path);
        }
        ebv_manifest_free(&manifest);
    }
    signatures = malloc(sizeof *signatures);
    if (signatures) {
        memset(&report, 0, sizeof report);
        (void)ebv_signatures_parse(&ctx, copy, size, "manifest.sig", signatures);
        free(signatures);
    }
    (void)ebv_parse_public_key_pem(copy, size, raw, &why);
    free(copy);
    return 0;
}
