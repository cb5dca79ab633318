/* Checking a bundle folder: edge_sdk/bundle/verification.py verify_files at level "full", plus the
 * manifest's file policy (unlisted files). Every problem is reported; the first one is kept in the report. */
#define _XOPEN_SOURCE 700
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sodium.h>

#include "ebv_internal.h"

#ifndef O_CLOEXEC
#define O_CLOEXEC 0
#endif

/* Read a whole regular file of at most cap bytes; *data is malloc'ed (NUL-terminated). -1: it does not
 * exist; -2: not a regular file; -3: larger than cap; -4: I/O error (errno); -5: no memory. */
static int read_small(const char *path, size_t cap, char **data, size_t *len) {
    struct stat status;
    size_t got = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    *data = NULL;
    if (fd < 0) return errno == ENOENT ? -1 : -4;
    if (fstat(fd, &status) != 0) goto io;
    if (!S_ISREG(status.st_mode)) {
        close(fd);
        return -2;
    }
    if ((uint64_t)status.st_size > cap) {
        close(fd);
        return -3;
    }
    *data = malloc((size_t)status.st_size + 1);
    if (!*data) {
        close(fd);
        return -5;
    }
    while (got < (size_t)status.st_size) {
        ssize_t n = read(fd, *data + got, (size_t)status.st_size - got);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) goto io;
        got += (size_t)n;
    }
    (*data)[got] = 0;
    *len = got;
    close(fd);
    return 0;
io:
    {
        int saved = errno;
        free(*data);
        *data = NULL;
        close(fd);
        errno = saved ? saved : EIO;
        return -4;
    }
}

static int hash_fd(int fd, unsigned char digest[32], uint64_t *bytes) {
    crypto_hash_sha256_state state;
    unsigned char buffer[1 << 14]; /* small: firmware threads have small stacks */
    crypto_hash_sha256_init(&state);
    *bytes = 0;
    for (;;) {
        ssize_t n = read(fd, buffer, sizeof buffer);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return 0;
        if (n == 0) break;
        crypto_hash_sha256_update(&state, buffer, (unsigned long long)n);
        *bytes += (uint64_t)n;
    }
    crypto_hash_sha256_final(&state, digest);
    return 1;
}

/* "<root>/<relative>" into a fresh buffer. */
static char *join(const char *root, const char *relative) {
    size_t a = strlen(root), b = strlen(relative);
    char *out = malloc(a + b + 2);
    if (!out) return NULL;
    memcpy(out, root, a);
    out[a] = '/';
    memcpy(out + a + 1, relative, b + 1);
    return out;
}

static int check_file(ebv_ctx *ctx, const char *root, const ebv_file *file) {
    char *full = join(root, file->path), *real;
    struct stat status;
    unsigned char digest[32];
    uint64_t bytes = 0;
    int fd, result = EBV_OK;
    size_t root_len = strlen(root);
    if (!full) return ebv_problem(ctx, EBV_ERR_NOMEM, file->path, "out of memory");
    real = realpath(full, NULL);
    if (real) {
        /* The manifest reader refused names that leave the folder; this catches symlinks that do. */
        int inside = strncmp(real, root, root_len) == 0 && (real[root_len] == '/' || real[root_len] == 0);
        if (!inside)
            result = ebv_problem(ctx, EBV_ERR_INTEGRITY, file->path, "resolves to '%.1000s', outside the bundle folder "
                                 "(a symlink leads out of it)", real);
        free(real);
        if (result) goto done;
    }
    if (stat(full, &status) != 0) {
        result = errno == ENOENT || errno == ENOTDIR
                     ? ebv_problem(ctx, EBV_ERR_INTEGRITY, file->path, "missing")
                     : ebv_problem(ctx, EBV_ERR_INTEGRITY, file->path, "cannot be read (%s)", strerror(errno));
        goto done;
    }
    if (!S_ISREG(status.st_mode)) {
        result = ebv_problem(ctx, EBV_ERR_INTEGRITY, file->path, "not a regular file");
        goto done;
    }
    if ((uint64_t)status.st_size != file->size) {
        result = ebv_problem(ctx, EBV_ERR_INTEGRITY, file->path, "content changed since the build (%llu bytes, the "
                             "manifest says %llu)", (unsigned long long)status.st_size,
                             (unsigned long long)file->size);
        goto done;
    }
    fd = open(full, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        result = ebv_problem(ctx, EBV_ERR_INTEGRITY, file->path, "cannot be read (%s)", strerror(errno));
        goto done;
    }
    if (!hash_fd(fd, digest, &bytes)) {
        result = ebv_problem(ctx, EBV_ERR_INTEGRITY, file->path, "cannot be read (%s)", strerror(errno));
    } else if (bytes != file->size || sodium_memcmp(digest, file->sha256, 32) != 0) {
        result = ebv_problem(ctx, EBV_ERR_INTEGRITY, file->path, "content changed since the build (sha256 mismatch)");
    } else {
        ctx->report->files_checked++;
        ctx->report->bytes_checked += bytes;
    }
    close(fd);
done:
    free(full);
    return result;
}

/* Every entry under root that the manifest neither lists nor allows (writable_paths, manifest.json/.sig):
 * an explicit stack of folders, so no recursion depth depends on the bundle. Writable folders are not
 * entered (a compile cache can be large). Returns the first problem's code. */
static int check_unlisted(ebv_ctx *ctx, const char *root, const ebv_manifest *m) {
    char **stack = NULL;
    size_t depth = 0, capacity = 0;
    unsigned long entries = 0;
    int result = EBV_OK;
    char *first = strdup("");
    if (!first) return ebv_problem(ctx, EBV_ERR_NOMEM, "", "out of memory");
    stack = malloc(16 * sizeof *stack);
    if (!stack) {
        free(first);
        return ebv_problem(ctx, EBV_ERR_NOMEM, "", "out of memory");
    }
    capacity = 16;
    stack[depth++] = first;
    while (depth) {
        char *folder = stack[--depth], *path = *folder ? join(root, folder) : strdup(root);
        DIR *handle = path ? opendir(path) : NULL;
        struct dirent *entry;
        if (!handle) {
            int code = path ? EBV_ERR_INTEGRITY : EBV_ERR_NOMEM;
            int saved = errno;
            if (!result) result = code;
            ebv_problem(ctx, code, *folder ? folder : ".", "cannot be listed (%s)", path ? strerror(saved)
                                                                                         : "out of memory");
            free(path);
            free(folder);
            continue;
        }
        while ((entry = readdir(handle)) != NULL) {
            size_t folder_len = strlen(folder), name_len = strlen(entry->d_name);
            char *relative, *full;
            struct stat status;
            if (!strcmp(entry->d_name, ".") || !strcmp(entry->d_name, "..")) continue;
            if (++entries > EBV_MAX_WALK_ENTRIES) {
                if (!result) result = EBV_ERR_INTEGRITY;
                ebv_problem(ctx, EBV_ERR_INTEGRITY, ".", "the bundle folder holds more than %d entries",
                            EBV_MAX_WALK_ENTRIES);
                break;
            }
            relative = malloc(folder_len + name_len + 2);
            if (!relative) {
                if (!result) result = EBV_ERR_NOMEM;
                ebv_problem(ctx, EBV_ERR_NOMEM, folder, "out of memory");
                break;
            }
            memcpy(relative, folder, folder_len);
            memcpy(relative + folder_len, entry->d_name, name_len + 1);
            full = join(root, relative);
            if (!full || lstat(full, &status) != 0) {
                int saved = errno;
                if (!result) result = EBV_ERR_INTEGRITY;
                ebv_problem(ctx, EBV_ERR_INTEGRITY, relative, "cannot be read (%s)", full ? strerror(saved)
                                                                                          : "out of memory");
                free(full);
                free(relative);
                continue;
            }
            free(full);
            if (S_ISDIR(status.st_mode)) {
                relative[folder_len + name_len] = '/';
                relative[folder_len + name_len + 1] = 0;
                if (ebv_writable(m, relative)) {
                    free(relative);
                    continue;
                }
                if (depth == capacity) {
                    char **grown = realloc(stack, 2 * capacity * sizeof *stack);
                    if (!grown) {
                        free(relative);
                        if (!result) result = EBV_ERR_NOMEM;
                        ebv_problem(ctx, EBV_ERR_NOMEM, folder, "out of memory");
                        break;
                    }
                    stack = grown;
                    capacity *= 2;
                }
                stack[depth++] = relative;
                continue;
            }
            if (!(!*folder && (!strcmp(relative, EBV_MANIFEST) || !strcmp(relative, EBV_SIGNATURE))) &&
                !ebv_manifest_find(m, relative) && !ebv_writable(m, relative)) {
                if (!result) result = EBV_ERR_INTEGRITY;
                ebv_problem(ctx, EBV_ERR_INTEGRITY, relative, "not listed in the manifest (its unlisted_files is "
                            "'refuse')");
            }
            free(relative);
        }
        closedir(handle);
        free(path);
        free(folder);
    }
    while (depth) free(stack[--depth]);
    free(stack);
    return result;
}

int ebv_verify_dir(ebv_ctx *ctx, const char *bundle, const ebv_key *keys, size_t key_count) {
    char *root = realpath(bundle, NULL), *manifest_path = NULL, *signature_path = NULL;
    char *manifest = NULL, *signature = NULL;
    size_t manifest_len = 0, signature_len = 0;
    ebv_manifest parsed;
    int result = EBV_OK, read_status, has_signature;
    memset(&parsed, 0, sizeof parsed);
    if (!root) return ebv_problem(ctx, EBV_ERR_IO, bundle, "cannot open the bundle: %s", strerror(errno));
    manifest_path = join(root, EBV_MANIFEST);
    signature_path = join(root, EBV_SIGNATURE);
    if (!manifest_path || !signature_path) {
        result = ebv_problem(ctx, EBV_ERR_NOMEM, bundle, "out of memory");
        goto done;
    }
    read_status = read_small(manifest_path, EBV_MAX_MANIFEST_BYTES, &manifest, &manifest_len);
    if (read_status) {
        result = ebv_problem(ctx, read_status == -5 ? EBV_ERR_NOMEM : EBV_ERR_MANIFEST, EBV_MANIFEST, "%s",
                             read_status == -1 ? "missing: this folder is not a bundle"
                             : read_status == -2 ? "is not a regular file"
                             : read_status == -3 ? "is larger than the 16 MiB a manifest may have"
                             : read_status == -5 ? "out of memory" : strerror(errno));
        goto done;
    }
    /* Like Python: the signature is checked on the exact bytes before anything in them is believed. */
    read_status = read_small(signature_path, EBV_MAX_SIGNATURE_FILE_BYTES, &signature, &signature_len);
    has_signature = read_status != -1;
    ctx->report->signed_ = has_signature;
    if (key_count && has_signature && read_status) {
        result = ebv_problem(ctx, read_status == -5 ? EBV_ERR_NOMEM : EBV_ERR_SIGNATURE, EBV_SIGNATURE, "%s",
                             read_status == -2 ? "is malformed: not a regular file"
                             : read_status == -3 ? "is malformed: far more bytes than a signature file holds"
                             : read_status == -5 ? "out of memory" : strerror(errno));
        goto done;
    }
    result = ebv_check_signature(ctx, keys, key_count, (const unsigned char *)manifest, manifest_len,
                                 (const unsigned char *)signature, signature_len, has_signature, EBV_SIGNATURE);
    if (result) goto done;
    result = ebv_manifest_parse(ctx, manifest, manifest_len, EBV_MANIFEST, &parsed);
    if (result) goto done;
    for (size_t i = 0; i < parsed.file_count; i++) {
        int status = check_file(ctx, root, &parsed.files[i]);
        if (status && !result) result = status;
        if (status == EBV_ERR_NOMEM) goto done;
    }
    if (parsed.refuse_unlisted) {
        int status = check_unlisted(ctx, root, &parsed);
        if (status && !result) result = status;
    }
done:
    ebv_manifest_free(&parsed);
    free(manifest);
    free(signature);
    free(manifest_path);
    free(signature_path);
    free(root);
    return result;
}
