/* Public keys (PEM SubjectPublicKeyInfo, as `edge-sdk keys generate` writes edge-sdk.pub) and the signature
 * check of edge_sdk/bundle/signing.py check_manifest_signature, in the same order: unsigned, then malformed,
 * then no signature by a trusted key, then no trusted signature that verifies. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "ebv_internal.h"

/* DER of SubjectPublicKeyInfo { AlgorithmIdentifier { 1.3.101.112 (Ed25519) }, BIT STRING (32 bytes) }. */
static const unsigned char SPKI_PREFIX[12] = {0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00};

void ebv_hex(const unsigned char *bytes, size_t n, char *out) {
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[bytes[i] >> 4];
        out[2 * i + 1] = digits[bytes[i] & 15];
    }
    out[2 * n] = 0;
}

void ebv_key_id(const unsigned char raw[32], char out[17]) {
    unsigned char digest[crypto_hash_sha256_BYTES];
    char hex[2 * crypto_hash_sha256_BYTES + 1];
    crypto_hash_sha256(digest, raw, 32);
    ebv_hex(digest, sizeof digest, hex);
    memcpy(out, hex, 16);
    out[16] = 0;
}

static const char *find(const char *haystack, size_t len, const char *needle) {
    size_t n = strlen(needle);
    for (size_t i = 0; i + n <= len; i++)
        if (memcmp(haystack + i, needle, n) == 0) return haystack + i;
    return NULL;
}

int ebv_parse_public_key_pem(const char *pem, size_t len, unsigned char raw[32], const char **why) {
    static const char begin[] = "-----BEGIN PUBLIC KEY-----", end[] = "-----END PUBLIC KEY-----";
    unsigned char der[128];
    size_t der_len = 0;
    const char *body, *stop, *b64_end = NULL;
    const char *start = find(pem, len, begin);
    if (!start) {
        *why = find(pem, len, "PRIVATE KEY") ? "is a private key; give the public key (edge-sdk.pub)"
                                             : "is not a PEM public key (no '-----BEGIN PUBLIC KEY-----')";
        return 0;
    }
    body = start + sizeof begin - 1;
    stop = find(body, len - (size_t)(body - pem), end);
    if (!stop) {
        *why = "is not a complete PEM public key (no '-----END PUBLIC KEY-----')";
        return 0;
    }
    if (sodium_base642bin(der, sizeof der, body, (size_t)(stop - body), " \t\r\n", &der_len, &b64_end,
                          sodium_base64_VARIANT_ORIGINAL) != 0 || b64_end != stop) {
        *why = "has a PEM body that is not base64";
        return 0;
    }
    if (der_len != sizeof SPKI_PREFIX + 32 || memcmp(der, SPKI_PREFIX, sizeof SPKI_PREFIX) != 0) {
        *why = "is not an Ed25519 public key (edge-sdk signs with Ed25519)";
        return 0;
    }
    memcpy(raw, der + sizeof SPKI_PREFIX, 32);
    return 1;
}

int ebv_load_keys(ebv_ctx *ctx, ebv_key *keys, size_t *count) {
    const edge_bundle_verify_options *options = ctx->options;
    size_t n = options ? options->public_key_count : 0;
    *count = 0;
    if (n > EBV_MAX_KEYS)
        return ebv_problem(ctx, EBV_ERR_USAGE, "", "%lu public keys given, at most %d", (unsigned long)n, EBV_MAX_KEYS);
    if (n && !options->public_key_files)
        return ebv_problem(ctx, EBV_ERR_USAGE, "", "public_key_count is %lu but public_key_files is NULL",
                           (unsigned long)n);
    for (size_t i = 0; i < n; i++) {
        const char *file = options->public_key_files[i], *why = "";
        char *pem;
        size_t len;
        int parsed;
        FILE *handle = file ? fopen(file, "rb") : NULL;
        if (!handle)
            return ebv_problem(ctx, EBV_ERR_USAGE, file ? file : "(null)", "cannot read the public key: %s",
                               file ? strerror(errno) : "NULL path");
        pem = malloc(EBV_MAX_KEY_FILE_BYTES + 1);
        if (!pem) {
            fclose(handle);
            return ebv_problem(ctx, EBV_ERR_NOMEM, file, "out of memory");
        }
        len = fread(pem, 1, EBV_MAX_KEY_FILE_BYTES + 1, handle);
        if (ferror(handle)) {
            int saved = errno;
            fclose(handle);
            free(pem);
            return ebv_problem(ctx, EBV_ERR_USAGE, file, "cannot read the public key: %s", strerror(saved));
        }
        fclose(handle);
        if (len > EBV_MAX_KEY_FILE_BYTES) {
            free(pem);
            return ebv_problem(ctx, EBV_ERR_USAGE, file, "is far too large for a key; is it the right file?");
        }
        parsed = ebv_parse_public_key_pem(pem, len, keys[*count].raw, &why);
        free(pem);
        if (!parsed) return ebv_problem(ctx, EBV_ERR_USAGE, file, "%s", why);
        ebv_key_id(keys[*count].raw, keys[*count].key_id);
        keys[*count].file = file;
        (*count)++;
    }
    return EBV_OK;
}

int ebv_check_signature(ebv_ctx *ctx, const ebv_key *keys, size_t key_count, const unsigned char *manifest,
                        size_t manifest_len, const unsigned char *signature, size_t signature_len, int has_signature,
                        const char *source) {
    ebv_signatures parsed;
    char trusted[EBV_MAX_KEYS * 18 + 1] = "", signers[EBV_MAX_SIGNATURES * 18 + 1] = "";
    int any_trusted = 0, status;
    if (!key_count) return EBV_OK;
    for (size_t k = 0; k < key_count; k++) {
        if (k) strcat(trusted, ", ");
        strcat(trusted, keys[k].key_id);
    }
    if (!has_signature)
        return ebv_problem(ctx, EBV_ERR_SIGNATURE, source, "the bundle is not signed (it has no %s) and only bundles "
                           "signed by a trusted key (%s) are accepted; sign it with `edge-sdk sign BUNDLE --key KEY`",
                           EBV_SIGNATURE, trusted);
    status = ebv_signatures_parse(ctx, (const char *)signature, signature_len, source, &parsed);
    if (status) return status;
    for (size_t s = 0; s < parsed.count; s++) {
        int known = 0;
        for (size_t k = 0; k < key_count; k++) known |= !strcmp(parsed.items[s].key_id, keys[k].key_id);
        any_trusted |= known;
        if (!strstr(signers, parsed.items[s].key_id)) {
            if (*signers) strcat(signers, ", ");
            strcat(signers, parsed.items[s].key_id);
        }
    }
    if (!any_trusted)
        return ebv_problem(ctx, EBV_ERR_SIGNATURE, source, "the bundle is signed by key %s, which is not trusted "
                           "(trusted: %s); sign it with a trusted key, or give the signer's public key", signers,
                           trusted);
    for (size_t s = 0; s < parsed.count; s++)
        for (size_t k = 0; k < key_count; k++)
            if (!strcmp(parsed.items[s].key_id, keys[k].key_id) &&
                crypto_sign_verify_detached(parsed.items[s].value, manifest, manifest_len, keys[k].raw) == 0) {
                memcpy(ctx->report->verified_by, keys[k].key_id, 17);
                return EBV_OK;
            }
    {
        char tried[EBV_MAX_SIGNATURES * 18 + 1] = "";
        for (size_t s = 0; s < parsed.count; s++)
            for (size_t k = 0; k < key_count; k++)
                if (!strcmp(parsed.items[s].key_id, keys[k].key_id) && !strstr(tried, keys[k].key_id)) {
                    if (*tried) strcat(tried, ", ");
                    strcat(tried, keys[k].key_id);
                }
        return ebv_problem(ctx, EBV_ERR_SIGNATURE, source, "the signature by trusted key %s does not match %s, so the "
                           "manifest was changed after it was signed; do not use this copy", tried, EBV_MANIFEST);
    }
}
