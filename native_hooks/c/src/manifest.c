/* Reading manifest.json and manifest.sig: validated by json.c, tokenized by jsmn, walked here without
 * recursion. Only the fields the verifier needs are read; their types and the listed paths are checked with
 * the rules of edge_sdk/bundle/manifest.py and paths.py, with the same wording where it matters. */
#include <stdlib.h>
#include <string.h>

#define JSMN_STATIC
#define JSMN_STRICT
#define JSMN_PARENT_LINKS /* a closing bracket walks up its parents, not back over every token: linear time */
#include <jsmn.h>

#include "ebv_internal.h"

typedef struct doc {
    const char *js;
    jsmntok_t *tok;
    int count;
} doc;

/* Index of the token after the value at i (with all its children); iterative. */
static int skip(const doc *d, int i) {
    long pending = 1;
    while (pending > 0 && i < d->count) {
        pending += d->tok[i].size - 1;
        i++;
    }
    return i;
}

static int tokenize(ebv_ctx *ctx, const char *data, size_t len, const char *source, doc *d, int code) {
    const char *why = "";
    int count = 0;
    jsmn_parser parser;
    if (len > EBV_MAX_MANIFEST_BYTES)
        return ebv_problem(ctx, code, source, "%lu bytes, more than the %u a manifest may have", (unsigned long)len,
                           EBV_MAX_MANIFEST_BYTES);
    if (!ebv_json_validate(data, len, &count, &why)) return ebv_problem(ctx, code, source, "%s", why);
    d->js = data;
    d->count = count;
    d->tok = calloc((size_t)count, sizeof(jsmntok_t));
    if (!d->tok) return ebv_problem(ctx, EBV_ERR_NOMEM, source, "out of memory for %d JSON tokens", count);
    jsmn_init(&parser);
    if (jsmn_parse(&parser, data, len, d->tok, (unsigned int)count) != count) {
        free(d->tok);
        d->tok = NULL;
        return ebv_problem(ctx, code, source, "cannot be tokenized as JSON");
    }
    return EBV_OK;
}

/* Decode the JSON string token t into out (at least its raw length + 1 bytes): escapes \" \\ \/ \b \f \n \r
 * \t and \uXXXX (surrogate pairs joined) become UTF-8. Returns 0 for a lone surrogate, which no file name
 * holds. *has_nul is set when the result contains U+0000. */
static int decode(const doc *d, const jsmntok_t *t, char *out, size_t *out_len, int *has_nul) {
    const unsigned char *s = (const unsigned char *)d->js + t->start;
    size_t n = (size_t)(t->end - t->start), i = 0, o = 0;
    *has_nul = 0;
    while (i < n) {
        unsigned long cp;
        if (s[i] != '\\') {
            out[o++] = (char)s[i++];
            continue;
        }
        i++; /* validated: an escape is complete */
        switch (s[i]) {
        case 'b': out[o++] = '\b'; i++; continue;
        case 'f': out[o++] = '\f'; i++; continue;
        case 'n': out[o++] = '\n'; i++; continue;
        case 'r': out[o++] = '\r'; i++; continue;
        case 't': out[o++] = '\t'; i++; continue;
        case 'u': break;
        default: out[o++] = (char)s[i++]; continue; /* " \ / */
        }
        cp = strtoul((const char[]){(char)s[i + 1], (char)s[i + 2], (char)s[i + 3], (char)s[i + 4], 0}, NULL, 16);
        i += 5;
        if (cp >= 0xD800 && cp <= 0xDBFF) {
            unsigned long low;
            if (n - i < 6 || s[i] != '\\' || s[i + 1] != 'u') return 0;
            low = strtoul((const char[]){(char)s[i + 2], (char)s[i + 3], (char)s[i + 4], (char)s[i + 5], 0}, NULL, 16);
            if (low < 0xDC00 || low > 0xDFFF) return 0;
            cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
            i += 6;
        } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
            return 0;
        }
        if (cp == 0) *has_nul = 1;
        if (cp < 0x80) {
            out[o++] = (char)cp;
        } else if (cp < 0x800) {
            out[o++] = (char)(0xC0 | (cp >> 6));
            out[o++] = (char)(0x80 | (cp & 0x3F));
        } else if (cp < 0x10000) {
            out[o++] = (char)(0xE0 | (cp >> 12));
            out[o++] = (char)(0x80 | ((cp >> 6) & 0x3F));
            out[o++] = (char)(0x80 | (cp & 0x3F));
        } else {
            out[o++] = (char)(0xF0 | (cp >> 18));
            out[o++] = (char)(0x80 | ((cp >> 12) & 0x3F));
            out[o++] = (char)(0x80 | ((cp >> 6) & 0x3F));
            out[o++] = (char)(0x80 | (cp & 0x3F));
        }
    }
    out[o] = 0;
    *out_len = o;
    return 1;
}

/* Whether string token t decodes to exactly word (keys may be written with escapes). */
static int key_is(const doc *d, const jsmntok_t *t, const char *word) {
    char buffer[64];
    size_t n = 0;
    int nul = 0;
    if (t->type != JSMN_STRING || t->end - t->start >= (int)sizeof buffer) return 0;
    if (!decode(d, t, buffer, &n, &nul)) return 0;
    return !nul && n == strlen(word) && memcmp(buffer, word, n) == 0;
}

/* A freshly allocated decoded copy of string token t; NULL with *bad set for a lone surrogate. */
static char *string_copy(const doc *d, const jsmntok_t *t, size_t *len, int *has_nul, int *bad) {
    char *out = malloc((size_t)(t->end - t->start) + 1);
    *bad = 0;
    if (!out) return NULL;
    if (!decode(d, t, out, len, has_nul)) {
        free(out);
        *bad = 1;
        return NULL;
    }
    return out;
}

/* A JSON integer (no fraction, no exponent) that fits in 63 bits. */
static int integer(const doc *d, const jsmntok_t *t, long long *value) {
    const char *s = d->js + t->start;
    int n = t->end - t->start, i = 0, negative = 0;
    unsigned long long v = 0;
    if (t->type != JSMN_PRIMITIVE || n == 0) return 0;
    if (s[0] == '-') {
        negative = 1;
        i = 1;
    }
    if (i == n) return 0;
    for (; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') return 0;
        if (v > (0x7FFFFFFFFFFFFFFFULL - (unsigned)(s[i] - '0')) / 10) return 0;
        v = v * 10 + (unsigned)(s[i] - '0');
    }
    *value = negative ? -(long long)v : (long long)v;
    return 1;
}

static const char *kind(const jsmntok_t *t, const char *js) {
    switch (t->type) {
    case JSMN_OBJECT: return "an object";
    case JSMN_ARRAY: return "an array";
    case JSMN_STRING: return "a string";
    default:
        return js[t->start] == 't' || js[t->start] == 'f' ? "a boolean" : js[t->start] == 'n' ? "null" : "a number";
    }
}

/* --- paths (edge_sdk/bundle/paths.py) ------------------------------------------------------------------- */

const char *ebv_path_problem(const char *path, size_t len) {
    size_t chars = 0, start = 0;
    if (len == 0) return "is empty";
    for (size_t i = 0; i < len; i++)
        if (((unsigned char)path[i] & 0xC0) != 0x80) chars++;
    if (chars > EBV_MAX_PATH_CHARS) return "is too long (at most 4096 characters)";
    if (memchr(path, 0, len)) return "holds a NUL character";
    if (memchr(path, '\\', len)) return "holds a backslash (bundle paths use '/')";
    if (path[0] == '/') return "is absolute";
    if (len >= 2 && path[1] == ':' && ((path[0] >= 'A' && path[0] <= 'Z') || (path[0] >= 'a' && path[0] <= 'z')))
        return "starts with a drive letter";
    for (size_t i = 0; i <= len; i++) {
        if (i == len || path[i] == '/') {
            size_t n = i - start;
            if (n == 0) return "has an empty component ('//' or a trailing '/')";
            if ((n == 1 && path[start] == '.') || (n == 2 && path[start] == '.' && path[start + 1] == '.'))
                return "has a '.' or '..' component";
            start = i + 1;
        }
    }
    return NULL;
}

/* --- the manifest ----------------------------------------------------------------------------------------- */

static int compare_files(const void *a, const void *b) {
    return strcmp(((const ebv_file *)a)->path, ((const ebv_file *)b)->path);
}

ebv_file *ebv_manifest_find(const ebv_manifest *manifest, const char *path) {
    ebv_file key;
    key.path = (char *)path;
    if (!manifest->file_count) return NULL;
    return bsearch(&key, manifest->files, manifest->file_count, sizeof(ebv_file), compare_files);
}

int ebv_writable(const ebv_manifest *manifest, const char *path) {
    for (size_t i = 0; i < manifest->writable_count; i++) {
        size_t n = strlen(manifest->writable[i]);
        if (strncmp(path, manifest->writable[i], n) == 0) return 1;
    }
    return 0;
}

void ebv_manifest_free(ebv_manifest *manifest) {
    if (!manifest) return;
    for (size_t i = 0; i < manifest->file_count; i++) free(manifest->files[i].path);
    free(manifest->files);
    for (size_t i = 0; i < manifest->writable_count; i++) free(manifest->writable[i]);
    free(manifest->writable);
    memset(manifest, 0, sizeof *manifest);
}

/* ASCII case folding: Python's casefold also folds other scripts (a documented difference). */
static int casecmp(const char *a, const char *b) {
    for (;; a++, b++) {
        int x = (*a >= 'A' && *a <= 'Z') ? *a + 32 : (unsigned char)*a;
        int y = (*b >= 'A' && *b <= 'Z') ? *b + 32 : (unsigned char)*b;
        if (x != y || !x) return x - y;
    }
}

static int compare_fold(const void *a, const void *b) {
    return casecmp((*(const ebv_file *const *)a)->path, (*(const ebv_file *const *)b)->path);
}

#define BAD(...) ebv_problem(ctx, EBV_ERR_MANIFEST, source, __VA_ARGS__)

static int parse_files(ebv_ctx *ctx, const doc *d, int at, const char *source, ebv_manifest *m) {
    const jsmntok_t *array = &d->tok[at];
    int i = at + 1;
    if (array->type != JSMN_ARRAY)
        return BAD("field files must be an array of {path, sha256, size} objects, found %s", kind(array, d->js));
    if (array->size > EBV_MAX_FILES) return BAD("lists %d files, more than the %d allowed", array->size, EBV_MAX_FILES);
    m->files = calloc(array->size ? (size_t)array->size : 1, sizeof(ebv_file));
    if (!m->files) return ebv_problem(ctx, EBV_ERR_NOMEM, source, "out of memory for %d files", array->size);
    for (int n = 0; n < array->size; n++) {
        const jsmntok_t *entry = &d->tok[i];
        int path = -1, sha = -1, size = -1, j = i + 1, nul = 0, bad = 0;
        long long value = 0;
        ebv_file *file = &m->files[n];
        if (entry->type != JSMN_OBJECT)
            return BAD("field files[%d] must be a JSON object, found %s", n, kind(entry, d->js));
        for (int k = 0; k < entry->size; k++) {
            int *slot = key_is(d, &d->tok[j], "path") ? &path : key_is(d, &d->tok[j], "sha256") ? &sha
                        : key_is(d, &d->tok[j], "size") ? &size : NULL;
            if (slot && *slot != -1) return BAD("field files[%d] has a key twice", n);
            if (slot) *slot = j + 1;
            j = skip(d, j + 1);
        }
        if (path < 0) return BAD("field files[%d].path is missing", n);
        if (d->tok[path].type != JSMN_STRING)
            return BAD("field files[%d].path must be a string, found %s", n, kind(&d->tok[path], d->js));
        if (sha < 0) return BAD("field files[%d].sha256 is missing", n);
        if (d->tok[sha].type != JSMN_STRING)
            return BAD("field files[%d].sha256 must be a string, found %s", n, kind(&d->tok[sha], d->js));
        if (size < 0) return BAD("field files[%d].size is missing", n);
        if (!integer(d, &d->tok[size], &value) || value < 0)
            return BAD("field files[%d].size must be an integer >= 0, found %.*s", n,
                       d->tok[size].end - d->tok[size].start > 60 ? 60 : d->tok[size].end - d->tok[size].start,
                       d->js + d->tok[size].start);
        file->size = (uint64_t)value;
        file->path = string_copy(d, &d->tok[path], &file->path_len, &nul, &bad);
        m->file_count = (size_t)n + 1; /* owned from here on, freed by ebv_manifest_free */
        if (!file->path) {
            if (bad) return BAD("files[%d]: path holds a lone UTF-16 surrogate escape", n);
            return ebv_problem(ctx, EBV_ERR_NOMEM, source, "out of memory");
        }
        {
            const char *problem = ebv_path_problem(file->path, file->path_len);
            if (problem)
                return BAD("files[%d]: path '%.200s' %s; a bundle path is relative to the bundle folder, uses '/' "
                           "and never leaves the folder", n, file->path, problem);
        }
        if (!strcmp(file->path, EBV_MANIFEST) || !strcmp(file->path, EBV_SIGNATURE))
            return BAD("files[%d]: lists '%s', which the manifest cannot list (it is the manifest or its signature)",
                       n, file->path);
        {
            const char *hex = d->js + d->tok[sha].start;
            if (d->tok[sha].end - d->tok[sha].start != 64) return BAD("files[%d] (%.200s): sha256 is not 64 lowercase "
                                                                      "hex digits", n, file->path);
            for (int h = 0; h < 64; h++) {
                char c = hex[h];
                int v = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
                if (v < 0) return BAD("files[%d] (%.200s): sha256 is not 64 lowercase hex digits", n, file->path);
                if (h % 2 == 0) file->sha256[h / 2] = (unsigned char)(v << 4);
                else file->sha256[h / 2] |= (unsigned char)v;
            }
        }
        i = skip(d, i);
    }
    /* Duplicates (also ones that differ in letter case only) and a file listed as another's folder. */
    if (m->file_count > 1) {
        const ebv_file **order = malloc(m->file_count * sizeof *order);
        int status = EBV_OK;
        if (!order) return ebv_problem(ctx, EBV_ERR_NOMEM, source, "out of memory");
        for (size_t k = 0; k < m->file_count; k++) order[k] = &m->files[k];
        qsort(order, m->file_count, sizeof *order, compare_fold);
        for (size_t k = 1; k < m->file_count && !status; k++)
            if (!casecmp(order[k - 1]->path, order[k]->path))
                status = BAD("'%.200s' is listed twice (also as '%.200s')", order[k]->path, order[k - 1]->path);
        free((void *)order);
        if (status) return status;
    }
    qsort(m->files, m->file_count, sizeof(ebv_file), compare_files);
    {
        /* A listed file that is also the folder of another ("a" and "a/b"): look every parent up (a copy of
           the prefix: the sorted array must not change while it is searched). */
        char *prefix = malloc(EBV_MAX_PATH_CHARS * 4 + 1);
        int status = EBV_OK;
        if (!prefix) return ebv_problem(ctx, EBV_ERR_NOMEM, source, "out of memory");
        for (size_t k = 0; k < m->file_count && !status; k++) {
            const char *path = m->files[k].path;
            for (const char *slash = strchr(path, '/'); slash && !status; slash = strchr(slash + 1, '/')) {
                ebv_file *folder;
                memcpy(prefix, path, (size_t)(slash - path));
                prefix[slash - path] = 0;
                folder = ebv_manifest_find(m, prefix);
                if (folder)
                    status = BAD("'%.200s' is listed as a file and as the folder of '%.200s'", folder->path, path);
            }
        }
        free(prefix);
        if (status) return status;
    }
    return EBV_OK;
}

static int parse_writable(ebv_ctx *ctx, const doc *d, int at, const char *source, ebv_manifest *m) {
    const jsmntok_t *array = &d->tok[at];
    int i = at + 1;
    if (array->type != JSMN_ARRAY)
        return BAD("field writable_paths must be an array of strings, found %s", kind(array, d->js));
    if (array->size > EBV_MAX_WRITABLE)
        return BAD("field writable_paths has %d entries, more than the %d allowed", array->size, EBV_MAX_WRITABLE);
    m->writable = calloc(array->size ? (size_t)array->size : 1, sizeof(char *));
    if (!m->writable) return ebv_problem(ctx, EBV_ERR_NOMEM, source, "out of memory");
    for (int n = 0; n < array->size; n++, i = skip(d, i)) {
        size_t len = 0;
        int nul = 0, bad = 0;
        const char *problem;
        if (d->tok[i].type != JSMN_STRING)
            return BAD("field writable_paths must be an array of strings, found %s in it", kind(&d->tok[i], d->js));
        m->writable[n] = string_copy(d, &d->tok[i], &len, &nul, &bad);
        m->writable_count = (size_t)n + 1;
        if (!m->writable[n])
            return bad ? BAD("writable_paths[%d] holds a lone UTF-16 surrogate escape", n)
                       : ebv_problem(ctx, EBV_ERR_NOMEM, source, "out of memory");
        if (len < 2 || m->writable[n][len - 1] != '/')
            return BAD("writable_paths[%d]: '%.200s' is not a folder path ending in '/' (e.g. '.cache/')", n,
                       m->writable[n]);
        problem = ebv_path_problem(m->writable[n], len - 1);
        if (problem) return BAD("writable_paths[%d]: path '%.200s' %s", n, m->writable[n], problem);
    }
    return EBV_OK;
}

/* The rest of the manifest, to the depth edge_sdk/bundle/manifest.py's Manifest.from_json checks it: a manifest
 * the Python runtime refuses is refused here too, even though this verifier reads only the file list. (Python
 * keeps the last of two equal keys; so does this walk, for these fields.) Deeper checks of the sections'
 * contents (tokenizer, peft, target, ...) stay with the runtime that uses them. */
enum { F_TASK, F_LABELS, F_MAX_LENGTH, F_INPUTS, F_OUTPUTS, F_TRAINABLE, F_SDK_VERSION, F_BUNDLE_ID, F_VERSION,
       F_TARGET, F_MODEL, F_TOKENIZER, F_PEFT, F_TRAINING, F_INFERENCE, F_PROFILE, F_BUILD, F_COUNT };
static const char *const FIELDS[F_COUNT] = {"task", "labels", "max_length", "inputs", "outputs", "trainable",
                                            "sdk_version", "bundle_id", "version", "target", "model", "tokenizer",
                                            "peft", "training", "inference", "profile", "build"};

static int is_null(const doc *d, const jsmntok_t *t) { return t->type == JSMN_PRIMITIVE && d->js[t->start] == 'n'; }

static int is_number(const doc *d, const jsmntok_t *t) {
    char c = d->js[t->start];
    return t->type == JSMN_PRIMITIVE && (c == '-' || (c >= '0' && c <= '9'));
}

static int tensor_specs(const doc *d, int at) {
    int i = at + 1;
    if (d->tok[at].type != JSMN_ARRAY) return 0;
    for (int n = 0; n < d->tok[at].size; n++, i = skip(d, i)) {
        int name = -1, dtype = -1, shape = -1, j = i + 1;
        if (d->tok[i].type != JSMN_OBJECT) return 0;
        for (int k = 0; k < d->tok[i].size; k++, j = skip(d, j + 1)) {
            if (key_is(d, &d->tok[j], "name")) name = j + 1;
            else if (key_is(d, &d->tok[j], "dtype")) dtype = j + 1;
            else if (key_is(d, &d->tok[j], "shape")) shape = j + 1;
        }
        if (name < 0 || dtype < 0 || shape < 0 || d->tok[name].type != JSMN_STRING ||
            d->tok[dtype].type != JSMN_STRING || d->tok[shape].type != JSMN_ARRAY)
            return 0;
        for (int e = 0, x = shape + 1; e < d->tok[shape].size; e++, x = skip(d, x)) {
            long long dim;
            if (d->tok[x].type != JSMN_STRING && !integer(d, &d->tok[x], &dim)) return 0;
        }
    }
    return 1;
}

static int check_fields(ebv_ctx *ctx, const doc *d, const char *source) {
    int at[F_COUNT], i = 1;
    long long value;
    for (int f = 0; f < F_COUNT; f++) at[f] = -1;
    for (int k = 0; k < d->tok[0].size; k++, i = skip(d, i + 1))
        for (int f = 0; f < F_COUNT; f++)
            if (key_is(d, &d->tok[i], FIELDS[f])) at[f] = i + 1;
    for (int f = 0; f < F_COUNT; f++)
        if (at[f] < 0 && f != F_BUNDLE_ID && f != F_VERSION && f != F_TARGET)
            return BAD("field %s is missing", FIELDS[f]);
    for (int f = F_MODEL; f < F_COUNT; f++)
        if (d->tok[at[f]].type != JSMN_OBJECT) return BAD("field %s must be a JSON object", FIELDS[f]);
    if (at[F_TARGET] >= 0 && !is_null(d, &d->tok[at[F_TARGET]]) && d->tok[at[F_TARGET]].type != JSMN_OBJECT)
        return BAD("field target must be a JSON object");
    if (d->tok[at[F_TASK]].type != JSMN_STRING) return BAD("field task must be a string");
    if (d->tok[at[F_LABELS]].type != JSMN_ARRAY) return BAD("field labels must be an array of strings");
    for (int e = 0, x = at[F_LABELS] + 1; e < d->tok[at[F_LABELS]].size; e++, x = skip(d, x))
        if (d->tok[x].type != JSMN_STRING) return BAD("field labels must be an array of strings");
    if (!integer(d, &d->tok[at[F_MAX_LENGTH]], &value) || value < 1)
        return BAD("field max_length must be an integer >= 1");
    for (int f = F_INPUTS; f <= F_TRAINABLE; f++)
        if (!tensor_specs(d, at[f])) return BAD("field %s must be an array of {name, dtype, shape} objects", FIELDS[f]);
    if (d->tok[at[F_SDK_VERSION]].type != JSMN_STRING && !is_number(d, &d->tok[at[F_SDK_VERSION]]))
        return BAD("field sdk_version must be a version string");
    if (at[F_VERSION] >= 0 && (!integer(d, &d->tok[at[F_VERSION]], &value) || value < 1))
        return BAD("key 'version': bundle version is not valid; use an integer >= 1");
    if (at[F_BUNDLE_ID] >= 0 && !is_null(d, &d->tok[at[F_BUNDLE_ID]])) {
        const jsmntok_t *t = &d->tok[at[F_BUNDLE_ID]];
        const char *id = d->js + t->start;
        int n = t->end - t->start, ok = t->type == JSMN_STRING && n >= 1 && n <= 128;
        /* [A-Za-z0-9][A-Za-z0-9._-]{0,127}; an escape is none of these characters */
        for (int c = 0; ok && c < n; c++) {
            char x = id[c];
            ok = (x >= 'A' && x <= 'Z') || (x >= 'a' && x <= 'z') || (x >= '0' && x <= '9') ||
                 (c > 0 && (x == '.' || x == '_' || x == '-'));
        }
        if (!ok) return BAD("key 'bundle_id': bundle id is not valid");
    }
    return EBV_OK;
}

int ebv_manifest_parse(ebv_ctx *ctx, const char *data, size_t len, const char *source, ebv_manifest *m) {
    doc d;
    int status, schema = -1, files = -1, unlisted = -1, writable = -1, i;
    long long schema_version = 0;
    memset(m, 0, sizeof *m);
    status = tokenize(ctx, data, len, source, &d, EBV_ERR_MANIFEST);
    if (status) return status;
    if (d.tok[0].type != JSMN_OBJECT) {
        status = BAD("must hold a JSON object, found %s", kind(&d.tok[0], d.js));
        goto done;
    }
    i = 1;
    for (int k = 0; k < d.tok[0].size; k++) {
        int *slot = key_is(&d, &d.tok[i], "schema_version") ? &schema : key_is(&d, &d.tok[i], "files") ? &files
                    : key_is(&d, &d.tok[i], "unlisted_files") ? &unlisted
                    : key_is(&d, &d.tok[i], "writable_paths") ? &writable : NULL;
        if (slot && *slot != -1) {
            /* Python's json keeps the last of two equal keys; refusing is safer than guessing which one counts. */
            status = BAD("a field is given twice (%.*s)", d.tok[i].end - d.tok[i].start, d.js + d.tok[i].start);
            goto done;
        }
        if (slot) *slot = i + 1;
        i = skip(&d, i + 1);
    }
    if (schema < 0 || !integer(&d, &d.tok[schema], &schema_version) || schema_version < 1) {
        /* A positive integer too long for 63 bits is still a (much) newer schema. */
        const jsmntok_t *t = schema >= 0 ? &d.tok[schema] : NULL;
        int digits = t && t->type == JSMN_PRIMITIVE && d.js[t->start] >= '1' && d.js[t->start] <= '9';
        for (int c = t ? t->start : 0; digits && c < t->end; c++) digits = d.js[c] >= '0' && d.js[c] <= '9';
        if (digits) {
            status = ebv_problem(ctx, EBV_ERR_SCHEMA, source, "uses bundle schema version %.*s, but this verifier "
                                 "reads versions up to %d; upgrade the verifier or rebuild the bundle with a matching "
                                 "SDK", t->end - t->start > 40 ? 40 : t->end - t->start, d.js + t->start,
                                 EDGE_BUNDLE_VERIFY_SCHEMA_VERSION);
        } else {
            status = BAD("has no integer schema_version >= 1");
        }
        goto done;
    }
    if (schema_version > EDGE_BUNDLE_VERIFY_SCHEMA_VERSION) {
        status = ebv_problem(ctx, EBV_ERR_SCHEMA, source, "uses bundle schema version %lld, but this verifier reads "
                             "versions up to %d; upgrade the verifier or rebuild the bundle with a matching SDK",
                             schema_version, EDGE_BUNDLE_VERIFY_SCHEMA_VERSION);
        goto done;
    }
    m->schema_version = (long)schema_version;
    if ((status = check_fields(ctx, &d, source))) goto done;
    if (unlisted >= 0) {
        if (key_is(&d, &d.tok[unlisted], "refuse")) {
            m->refuse_unlisted = 1;
        } else if (!key_is(&d, &d.tok[unlisted], "allow")) {
            status = BAD("field unlisted_files must be 'allow' or 'refuse', found %s", kind(&d.tok[unlisted], d.js));
            goto done;
        }
    }
    if (writable >= 0 && (status = parse_writable(ctx, &d, writable, source, m))) goto done;
    if (files < 0) {
        status = BAD("field files is missing");
        goto done;
    }
    status = parse_files(ctx, &d, files, source, m);
done:
    free(d.tok);
    if (status) ebv_manifest_free(m);
    return status;
}

/* --- manifest.sig (edge_sdk/bundle/signing.py) ------------------------------------------------------------ */

#include <sodium.h>

#define MALFORMED(...) ebv_problem(ctx, EBV_ERR_SIGNATURE, source, __VA_ARGS__)

int ebv_signatures_parse(ebv_ctx *ctx, const char *data, size_t len, const char *source, ebv_signatures *out) {
    doc d;
    int status = EBV_OK, format = -1, algorithm = -1, entries = -1, i;
    long long version = 0;
    memset(out, 0, sizeof *out);
    if (len > EBV_MAX_SIGNATURE_FILE_BYTES)
        return MALFORMED("is malformed: %lu bytes, far more than a signature file holds", (unsigned long)len);
    status = tokenize(ctx, data, len, source, &d, EBV_ERR_SIGNATURE);
    if (status) return status;
    if (d.tok[0].type != JSMN_OBJECT) {
        status = MALFORMED("is malformed: %s, not an object", kind(&d.tok[0], d.js));
        goto done;
    }
    i = 1;
    for (int k = 0; k < d.tok[0].size; k++) {
        int *slot = key_is(&d, &d.tok[i], "format") ? &format : key_is(&d, &d.tok[i], "algorithm") ? &algorithm
                    : key_is(&d, &d.tok[i], "signatures") ? &entries : NULL;
        if (slot && *slot != -1) {
            status = MALFORMED("is malformed: a key is given twice");
            goto done;
        }
        if (slot) *slot = i + 1;
        i = skip(&d, i + 1);
    }
    if (format >= 0 && integer(&d, &d.tok[format], &version) && version > 1) {
        status = MALFORMED("uses signature format %lld, but this verifier reads format 1", version);
        goto done;
    }
    if (format < 0 || version != 1 || d.js[d.tok[format].start] == '-') {
        status = MALFORMED("is malformed: 'format' is not 1");
        goto done;
    }
    if (algorithm < 0 || !key_is(&d, &d.tok[algorithm], "ed25519")) {
        status = MALFORMED("is malformed: 'algorithm' is not 'ed25519'");
        goto done;
    }
    if (entries < 0 || d.tok[entries].type != JSMN_ARRAY || d.tok[entries].size == 0) {
        status = MALFORMED("is malformed: 'signatures' is not a non-empty list");
        goto done;
    }
    if (d.tok[entries].size > EBV_MAX_SIGNATURES) {
        status = MALFORMED("is malformed: more than %d signatures", EBV_MAX_SIGNATURES);
        goto done;
    }
    i = entries + 1;
    for (int n = 0; n < d.tok[entries].size; n++, i = skip(&d, i)) {
        int id = -1, value = -1, j = i + 1;
        ebv_signature *signature = &out->items[n];
        if (d.tok[i].type != JSMN_OBJECT) {
            status = MALFORMED("is malformed: signature %d is not an object", n + 1);
            goto done;
        }
        for (int k = 0; k < d.tok[i].size; k++) {
            int *slot = key_is(&d, &d.tok[j], "key_id") ? &id : key_is(&d, &d.tok[j], "signature") ? &value : NULL;
            if (slot && *slot != -1) {
                status = MALFORMED("is malformed: signature %d has a key twice", n + 1);
                goto done;
            }
            if (slot) *slot = j + 1;
            j = skip(&d, j + 1);
        }
        /* Escapes are not decoded: a key id or base64 text written with \u escapes is refused as malformed. */
        if (id < 0 || d.tok[id].type != JSMN_STRING || d.tok[id].end - d.tok[id].start != 16 ||
            strspn(d.js + d.tok[id].start, "0123456789abcdef") < 16) {
            status = MALFORMED("is malformed: signature %d has a key_id that is not 16 lowercase hex digits", n + 1);
            goto done;
        }
        memcpy(signature->key_id, d.js + d.tok[id].start, 16);
        signature->key_id[16] = 0;
        {
            size_t decoded = 0;
            const char *end = NULL;
            const char *b64 = value >= 0 ? d.js + d.tok[value].start : NULL;
            size_t b64_len = value >= 0 ? (size_t)(d.tok[value].end - d.tok[value].start) : 0;
            if (value < 0 || d.tok[value].type != JSMN_STRING ||
                sodium_base642bin(signature->value, sizeof signature->value, b64, b64_len, NULL, &decoded, &end,
                                  sodium_base64_VARIANT_ORIGINAL) != 0 ||
                end != b64 + b64_len || decoded != 64) {
                status = MALFORMED("is malformed: signature %d (key %s) is not 64 bytes in base64", n + 1,
                                   signature->key_id);
                goto done;
            }
        }
        out->count = (size_t)n + 1;
    }
done:
    free(d.tok);
    return status;
}
