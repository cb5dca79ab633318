/* The public entry point: options, the report, and the dispatch to a folder or an archive check. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include <sodium.h>

#include "ebv_internal.h"

void edge_bundle_verify_options_init(edge_bundle_verify_options *options) {
    if (options) memset(options, 0, sizeof *options);
}

const char *edge_bundle_verify_status_name(int status) {
    switch (status) {
    case EBV_OK: return "ok";
    case EBV_ERR_INTEGRITY: return "integrity";
    case EBV_ERR_SIGNATURE: return "signature";
    case EBV_ERR_SCHEMA: return "schema";
    case EBV_ERR_MANIFEST: return "manifest";
    case EBV_ERR_USAGE: return "usage";
    case EBV_ERR_IO: return "io";
    case EBV_ERR_NOMEM: return "out of memory";
    case EBV_ERR_UNSUPPORTED: return "unsupported";
    default: return "unknown";
    }
}

int edge_bundle_verify_has_archive_support(void) {
#ifdef EDGE_BUNDLE_WITH_ARCHIVE
    return 1;
#else
    return 0;
#endif
}

int ebv_problem(ebv_ctx *ctx, int code, const char *file, const char *fmt, ...) {
    char reason[EDGE_BUNDLE_VERIFY_REASON_MAX];
    edge_bundle_verify_report *report = ctx->report;
    va_list args;
    va_start(args, fmt);
    vsnprintf(reason, sizeof reason, fmt, args);
    va_end(args);
    if (!file) file = "";
    if (report->status == EBV_OK) {
        report->status = code;
        snprintf(report->file, sizeof report->file, "%s", file);
        snprintf(report->reason, sizeof report->reason, "%s", reason);
    }
    report->problems++;
    if (ctx->options && ctx->options->on_problem)
        ctx->options->on_problem(ctx->options->on_problem_context, code, file, reason);
    return code;
}

int edge_bundle_verify(const char *path, const edge_bundle_verify_options *options,
                       edge_bundle_verify_report *report) {
    edge_bundle_verify_report scratch;
    ebv_key keys[EBV_MAX_KEYS];
    size_t key_count = 0;
    struct stat status;
    ebv_ctx ctx;
    int result;
    if (!report) report = &scratch;
    memset(report, 0, sizeof *report);
    ctx.options = options;
    ctx.report = report;
    if (sodium_init() < 0) return ebv_problem(&ctx, EBV_ERR_IO, "", "libsodium cannot be initialised");
    if (!path || !*path) return ebv_problem(&ctx, EBV_ERR_USAGE, "", "no bundle path given");
    result = ebv_load_keys(&ctx, keys, &key_count);
    if (result) return result;
    if (options && options->require_signature && key_count == 0)
        return ebv_problem(&ctx, EBV_ERR_USAGE, "", "a signature is required but no public key was given");
    if (stat(path, &status) != 0)
        return ebv_problem(&ctx, EBV_ERR_IO, path, "cannot open the bundle: %s", strerror(errno));
    if (S_ISDIR(status.st_mode)) return ebv_verify_dir(&ctx, path, keys, key_count);
    if (!S_ISREG(status.st_mode))
        return ebv_problem(&ctx, EBV_ERR_USAGE, path, "is neither a bundle folder nor a bundle archive");
    report->is_archive = 1;
#ifdef EDGE_BUNDLE_WITH_ARCHIVE
    return ebv_verify_archive(&ctx, path, keys, key_count);
#else
    return ebv_problem(&ctx, EBV_ERR_UNSUPPORTED, path, "is a file, and this verifier was built without archive "
                       "support (libarchive); unpack the bundle and check the folder");
#endif
}
