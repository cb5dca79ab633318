/* Checking a bundle archive (what `edge-sdk pack` writes) in one streaming pass, nothing extracted: the
 * rules of edge_sdk/bundle/archive.py's _Unpacker. The manifest must come first (then the signature), so
 * it is checked before any file is read; every later member must be a regular file the manifest lists,
 * once, with its size and sha256; a listed file that never came is an error. Stops at the first problem
 * (a stream cannot be trusted past it). Built only with libarchive (EDGE_BUNDLE_WITH_ARCHIVE). */
#ifdef EDGE_BUNDLE_WITH_ARCHIVE
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <archive.h>
#include <archive_entry.h>
#include <sodium.h>

#include "ebv_internal.h"

#define REFUSE(member, ...) ebv_problem(ctx, EBV_ERR_INTEGRITY, member, __VA_ARGS__)

static const char *entry_name(struct archive_entry *entry) {
    const char *name = archive_entry_pathname_utf8(entry);
    return name ? name : archive_entry_pathname(entry);
}

/* Why entry is not acceptable as a bundle file by its type; NULL for a plain regular file. */
static const char *entry_kind(struct archive_entry *entry) {
    if (archive_entry_hardlink(entry)) return "a hard link";
    if (archive_entry_symlink(entry) || archive_entry_filetype(entry) == AE_IFLNK) return "a symbolic link";
    switch (archive_entry_filetype(entry)) {
    case AE_IFREG: break;
    case AE_IFDIR: return "a folder";
    case AE_IFCHR: case AE_IFBLK: return "a device file";
    case AE_IFIFO: return "a FIFO";
    default: return "a special tar member";
    }
    if (archive_entry_sparse_count(entry) > 0) return "a sparse file";
    if (!archive_entry_size_is_set(entry) || archive_entry_size(entry) < 0) return "a member without a size";
    return NULL;
}

/* Read a whole small member (the manifest, the signature) into a malloc'ed buffer. */
static int read_member(ebv_ctx *ctx, struct archive *a, struct archive_entry *entry, const char *name, size_t cap,
                       char **data, size_t *len) {
    const char *kind = entry_kind(entry);
    la_int64_t size;
    size_t got = 0;
    *data = NULL;
    if (kind) return REFUSE(name, "is %s, not a regular file", kind);
    size = archive_entry_size(entry);
    if ((uint64_t)size > cap) return REFUSE(name, "is %lld bytes, more than the %lu allowed", (long long)size,
                                            (unsigned long)cap);
    *data = malloc((size_t)size + 1);
    if (!*data) return ebv_problem(ctx, EBV_ERR_NOMEM, name, "out of memory");
    while (got < (size_t)size) {
        la_ssize_t n = archive_read_data(a, *data + got, (size_t)size - got);
        if (n <= 0) {
            free(*data);
            *data = NULL;
            return REFUSE(name, "is cut short (truncated archive%s%s)", n < 0 ? ": " : "",
                          n < 0 ? archive_error_string(a) : "");
        }
        got += (size_t)n;
    }
    (*data)[got] = 0;
    *len = got;
    return EBV_OK;
}

static int next(ebv_ctx *ctx, struct archive *a, struct archive_entry **entry, const char *archive_path,
                const char *current, unsigned long *members, int *done) {
    int r = archive_read_next_header(a, entry);
    *done = 0;
    if (r == ARCHIVE_EOF) {
        *done = 1;
        return EBV_OK;
    }
    if (r < ARCHIVE_WARN)
        return REFUSE(archive_path, "the archive is damaged or truncated after member '%.1000s' (%s); get it again "
                      "from its source", current, archive_error_string(a) ? archive_error_string(a) : "read error");
    if (++*members > EBV_MAX_MEMBERS)
        return REFUSE(entry_name(*entry) ? entry_name(*entry) : archive_path, "the archive has more than %d members",
                      EBV_MAX_MEMBERS);
    if (!entry_name(*entry))
        return REFUSE(archive_path, "the archive is damaged after member '%.1000s' (a member header without a name)",
                      current);
    return EBV_OK;
}

/* libarchive reads a gzip stream only as far as the tar needs, and does not check the gzip trailer (CRC-32 and
 * length) even when it reaches it. Python's gzip does; a second, raw pass here makes the C check as strict:
 * decompress everything, CRC it, and compare with the trailer at the end of the file. `edge-sdk pack` writes
 * one gzip member; a multi-member gzip file is refused here (its last trailer covers only its last member). */
static int check_gzip_trailer(ebv_ctx *ctx, const char *path) {
    unsigned char head[2], trailer[8], buffer[1 << 14];
    uint32_t table[256], crc = 0xFFFFFFFFu, expected_crc, expected_size, size = 0;
    struct archive *a;
    struct archive_entry *entry;
    int result = EBV_OK;
    FILE *handle = fopen(path, "rb");
    if (!handle) return ebv_problem(ctx, EBV_ERR_IO, path, "cannot be read again: %s", strerror(errno));
    if (fread(head, 1, 2, handle) != 2 || head[0] != 0x1f || head[1] != 0x8b) {
        fclose(handle); /* xz and bzip2 check their own CRCs in their libraries; a plain tar has none */
        return EBV_OK;
    }
    if (fseek(handle, -8, SEEK_END) != 0 || fread(trailer, 1, 8, handle) != 8) {
        fclose(handle);
        return REFUSE(path, "the gzip stream is cut short (truncated archive)");
    }
    fclose(handle);
    expected_crc = (uint32_t)trailer[0] | (uint32_t)trailer[1] << 8 | (uint32_t)trailer[2] << 16 |
                   (uint32_t)trailer[3] << 24;
    expected_size = (uint32_t)trailer[4] | (uint32_t)trailer[5] << 8 | (uint32_t)trailer[6] << 16 |
                    (uint32_t)trailer[7] << 24;
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = n;
        for (int k = 0; k < 8; k++) c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        table[n] = c;
    }
    a = archive_read_new();
    if (!a) return ebv_problem(ctx, EBV_ERR_NOMEM, path, "out of memory");
    archive_read_support_filter_gzip(a);
    archive_read_support_format_raw(a);
    if (archive_read_open_filename(a, path, 1 << 16) != ARCHIVE_OK || archive_read_next_header(a, &entry) != ARCHIVE_OK) {
        result = REFUSE(path, "the gzip stream cannot be read (%s)", archive_error_string(a) ? archive_error_string(a)
                                                                                               : "read error");
        goto out;
    }
    for (;;) {
        la_ssize_t n = archive_read_data(a, buffer, sizeof buffer);
        if (n < 0) {
            result = REFUSE(path, "the gzip stream is damaged or truncated (%s)", archive_error_string(a));
            goto out;
        }
        if (n == 0) break;
        for (la_ssize_t i = 0; i < n; i++) crc = table[(crc ^ buffer[i]) & 0xFF] ^ (crc >> 8);
        size += (uint32_t)n; /* the trailer holds the length modulo 2^32 */
    }
    if ((crc ^ 0xFFFFFFFFu) != expected_crc || size != expected_size)
        result = REFUSE(path, "the gzip stream's CRC or length does not match its trailer (a damaged archive); get it "
                        "again from its source");
out:
    archive_read_free(a);
    return result;
}

int ebv_verify_archive(ebv_ctx *ctx, const char *path, const ebv_key *keys, size_t key_count) {
    struct archive *a = archive_read_new();
    struct archive_entry *entry = NULL;
    char *manifest = NULL, *signature = NULL, *top = NULL, *name = NULL;
    char manifest_member[EDGE_BUNDLE_VERIFY_FILE_MAX] = "", signature_member[EDGE_BUNDLE_VERIFY_FILE_MAX] = "";
    size_t manifest_len = 0, signature_len = 0, top_len = 0;
    unsigned long members = 0;
    uint64_t total = 0;
    ebv_manifest parsed;
    int result = EBV_OK, done = 0;
    const char *slash;
    memset(&parsed, 0, sizeof parsed);
    if (!a) return ebv_problem(ctx, EBV_ERR_NOMEM, path, "out of memory");
    /* What archive.py reads: gzip (what pack writes), xz, bzip2 or plain tar; tar formats only. No filter
       that runs an external program. */
    archive_read_support_filter_gzip(a);
    archive_read_support_filter_xz(a);
    archive_read_support_filter_bzip2(a);
    archive_read_support_format_tar(a);
    if (archive_read_open_filename(a, path, 1 << 16) != ARCHIVE_OK) {
        result = REFUSE(path, "is not a bundle archive (%s); pass the .tar.gz that `edge-sdk pack` wrote",
                        archive_error_string(a) ? archive_error_string(a) : "unreadable");
        goto out;
    }
    if ((result = next(ctx, a, &entry, path, "(none: the first)", &members, &done))) goto out;
    if (done) {
        result = REFUSE(path, "the archive is empty; pass the .tar.gz that `edge-sdk pack` wrote");
        goto out;
    }
    name = strdup(entry_name(entry));
    if (!name) {
        result = ebv_problem(ctx, EBV_ERR_NOMEM, path, "out of memory");
        goto out;
    }
    slash = strchr(name, '/');
    if (!slash || strcmp(slash + 1, EBV_MANIFEST) != 0 || ebv_path_problem(name, (size_t)(slash - name))) {
        result = REFUSE(name, "the first member must be <bundle name>/%s (as `edge-sdk pack` writes it); repack the "
                        "bundle with `edge-sdk pack`", EBV_MANIFEST);
        goto out;
    }
    top_len = (size_t)(slash - name) + 1; /* "<top>/" */
    top = name;
    name = NULL;
    snprintf(manifest_member, sizeof manifest_member, "%s", top);
    if ((result = read_member(ctx, a, entry, manifest_member, EBV_MAX_MANIFEST_BYTES, &manifest, &manifest_len)))
        goto out;
    if ((result = next(ctx, a, &entry, path, manifest_member, &members, &done))) goto out;
    snprintf(signature_member, sizeof signature_member, "%.*s%s", (int)top_len, top, EBV_SIGNATURE);
    if (!done && !strcmp(entry_name(entry), signature_member)) {
        if ((result = read_member(ctx, a, entry, signature_member, EBV_MAX_ARCHIVE_SIGNATURE_BYTES, &signature,
                                  &signature_len)))
            goto out;
        ctx->report->signed_ = 1;
        if ((result = next(ctx, a, &entry, path, signature_member, &members, &done))) goto out;
    }
    result = ebv_check_signature(ctx, keys, key_count, (const unsigned char *)manifest, manifest_len,
                                 (const unsigned char *)signature, signature_len, signature != NULL, signature_member);
    if (result) goto out;
    if ((result = ebv_manifest_parse(ctx, manifest, manifest_len, manifest_member, &parsed))) goto out;
    while (!done) {
        const char *member = entry_name(entry), *problem = ebv_path_problem(member, strlen(member)), *kind;
        const char *relative;
        ebv_file *file;
        la_int64_t size;
        crypto_hash_sha256_state state;
        unsigned char buffer[1 << 14], digest[32]; /* small: firmware threads have small stacks */
        uint64_t got = 0;
        if (problem) {
            result = REFUSE(member, "its name %s", problem);
            goto out;
        }
        if (strncmp(member, top, top_len) != 0) {
            result = REFUSE(member, "is outside the archive's bundle folder '%.*s'", (int)(top_len - 1), top);
            goto out;
        }
        relative = member + top_len;
        if ((kind = entry_kind(entry))) {
            result = REFUSE(member, "is %s; a bundle archive holds regular files only", kind);
            goto out;
        }
        file = ebv_manifest_find(&parsed, relative);
        if ((file && file->seen) || !strcmp(relative, EBV_MANIFEST) || !strcmp(relative, EBV_SIGNATURE)) {
            result = REFUSE(member, "appears twice in the archive");
            goto out;
        }
        if (!file) {
            result = REFUSE(member, "is not listed in the bundle's %s", EBV_MANIFEST);
            goto out;
        }
        size = archive_entry_size(entry);
        if ((uint64_t)size != file->size) {
            result = REFUSE(member, "is %lld bytes, the manifest says %llu", (long long)size,
                            (unsigned long long)file->size);
            goto out;
        }
        total += file->size;
        if (total > EBV_MAX_ARCHIVE_BYTES) {
            result = REFUSE(member, "the listed files exceed the cap of %llu bytes in all",
                            (unsigned long long)EBV_MAX_ARCHIVE_BYTES);
            goto out;
        }
        crypto_hash_sha256_init(&state);
        while (got < file->size) {
            la_ssize_t n = archive_read_data(a, buffer, sizeof buffer);
            if (n <= 0) {
                result = REFUSE(member, "is cut short (truncated archive%s%s)", n < 0 ? ": " : "",
                                n < 0 ? archive_error_string(a) : "");
                goto out;
            }
            crypto_hash_sha256_update(&state, buffer, (unsigned long long)n);
            got += (uint64_t)n;
        }
        crypto_hash_sha256_final(&state, digest);
        if (got != file->size || sodium_memcmp(digest, file->sha256, 32) != 0) {
            result = REFUSE(member, "its content does not match the manifest's sha256 (damaged or altered)");
            goto out;
        }
        file->seen = 1;
        ctx->report->files_checked++;
        ctx->report->bytes_checked += got;
        {
            char current[EDGE_BUNDLE_VERIFY_FILE_MAX];
            snprintf(current, sizeof current, "%s", member);
            if ((result = next(ctx, a, &entry, path, current, &members, &done))) goto out;
        }
    }
    for (size_t i = 0; i < parsed.file_count; i++) {
        if (parsed.files[i].seen) continue;
        {
            char member[EDGE_BUNDLE_VERIFY_FILE_MAX];
            snprintf(member, sizeof member, "%.*s%s", (int)top_len, top, parsed.files[i].path);
            result = REFUSE(member, "missing from the archive, which its manifest lists (a truncated or incomplete "
                            "archive)");
        }
    }
    if (!result) result = check_gzip_trailer(ctx, path);
out:
    ebv_manifest_free(&parsed);
    free(manifest);
    free(signature);
    free(top);
    free(name);
    archive_read_free(a);
    return result;
}

#else
/* ISO C forbids an empty translation unit. */
typedef int ebv_verify_archive_unused;
#endif
