/* A firmware-style program using an edge-sdk bundle: what it knows about the bundle comes from the generated
 * header (no JSON parsing on the device); at start-up it checks the bundle on "flash" with the C verifier and
 * that the manifest there is the one the firmware was built against. */
#include <stdio.h>
#include <string.h>

#include "edge_bundle_topics.h"
#ifdef FIRMWARE_HAVE_VERIFIER
#include <sodium.h>

#include "edge_bundle_verify.h"
#endif

#ifndef FIRMWARE_BUNDLE_DIR
#define FIRMWARE_BUNDLE_DIR "bundle"
#endif

static void print_tensor(const edge_bundle_tensor *tensor) {
    size_t d;
    printf("  %s %s [", tensor->name, tensor->dtype);
    for (d = 0; d < tensor->rank; ++d) {
        if (tensor->shape[d].size == EDGE_BUNDLE_DIM_SYMBOLIC) {
            printf("%s%s", d ? ", " : "", tensor->shape[d].name);
        } else {
            printf("%s%lld", d ? ", " : "", (long long)tensor->shape[d].size);
        }
    }
    printf("]\n");
}

#ifdef FIRMWARE_HAVE_VERIFIER
/* sha256 of a file as 64 lowercase hex digits (libsodium: the verifier's own dependency). */
static int manifest_sha256_hex(const char *path, char hex[2 * crypto_hash_sha256_BYTES + 1]) {
    crypto_hash_sha256_state state;
    unsigned char digest[crypto_hash_sha256_BYTES];
    unsigned char buffer[4096];
    size_t got;
    FILE *file = fopen(path, "rb");
    if (file == NULL || sodium_init() < 0) {
        if (file != NULL) fclose(file);
        return 0;
    }
    crypto_hash_sha256_init(&state);
    while ((got = fread(buffer, 1, sizeof buffer, file)) > 0) {
        crypto_hash_sha256_update(&state, buffer, got);
    }
    fclose(file);
    crypto_hash_sha256_final(&state, digest);
    sodium_bin2hex(hex, 2 * crypto_hash_sha256_BYTES + 1, digest, sizeof digest);
    return 1;
}
#endif

int main(int argc, char **argv) {
    const char *bundle = argc > 1 ? argv[1] : FIRMWARE_BUNDLE_DIR;
    int i;

    printf("bundle id: %s version %d (%s, profile %s)\n", EDGE_BUNDLE_TOPICS_ID, EDGE_BUNDLE_TOPICS_VERSION,
           EDGE_BUNDLE_TOPICS_TASK, EDGE_BUNDLE_TOPICS_PROFILE);
    printf("files: %d\n", EDGE_BUNDLE_TOPICS_FILE_COUNT);
    printf("inputs: %d\n", EDGE_BUNDLE_TOPICS_INPUT_COUNT);
    for (i = 0; i < EDGE_BUNDLE_TOPICS_INPUT_COUNT; ++i) {
        print_tensor(&edge_bundle_topics_inputs[i]);
    }
    printf("labels: %d:", EDGE_BUNDLE_TOPICS_LABEL_COUNT);
    for (i = 0; i < EDGE_BUNDLE_TOPICS_LABEL_COUNT; ++i) {
        printf(" %s", edge_bundle_topics_labels[i]);
    }
    printf("\nmanifest sha256: %s\n", EDGE_BUNDLE_TOPICS_MANIFEST_SHA256);
    printf("signed: %s\n", EDGE_BUNDLE_TOPICS_SIGNED ? "yes" : "no");

#ifdef FIRMWARE_HAVE_VERIFIER
    {
        edge_bundle_verify_report report;
        char path[4096];
        char computed[2 * crypto_hash_sha256_BYTES + 1];
        int status = edge_bundle_verify(bundle, NULL, &report);
        if (status != EBV_OK) {
            printf("bundle %s: verification failed (%s): %s: %s\n", bundle, edge_bundle_verify_status_name(status),
                   report.file, report.reason);
            return 1;
        }
        printf("bundle %s: verified (%lu files)\n", bundle, report.files_checked);
        /* The files match the manifest there; is that manifest the one this firmware was built against? */
        if (snprintf(path, sizeof path, "%s/manifest.json", bundle) >= (int)sizeof path ||
            !manifest_sha256_hex(path, computed)) {
            printf("bundle %s: cannot read manifest.json\n", bundle);
            return 2;
        }
        if (strcmp(computed, EDGE_BUNDLE_TOPICS_MANIFEST_SHA256) != 0) {
            printf("bundle %s: manifest sha256 %s differs from the firmware's %s\n", bundle, computed,
                   EDGE_BUNDLE_TOPICS_MANIFEST_SHA256);
            return 1;
        }
        printf("manifest sha256 matches the header\n");
        return 0;
    }
#else
    (void)bundle;
    printf("no C verifier linked: skipping the run-time check\n");
    return 0;
#endif
}
