/* A strict JSON validator: jsmn tokenizes, but even in strict mode it accepts trailing commas, missing
 * colons, bad literals and invalid UTF-8. The manifest's bytes are what a signature covers, so the C
 * verifier must not read a document Python's json.loads would refuse (or read it differently): everything
 * is validated here first, iteratively (an explicit stack, capped at EBV_MAX_DEPTH), and counted, so the
 * token array can be allocated once with its exact size. */
#include <stddef.h>

#include "ebv_internal.h"

/* Strict UTF-8 (no overlong forms, no surrogates, at most U+10FFFF), as Python's decoder. */
static int valid_utf8(const unsigned char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        unsigned char c = s[i];
        size_t extra;
        uint32_t cp;
        if (c < 0x80) {
            i++;
            continue;
        } else if (c >= 0xC2 && c <= 0xDF) {
            extra = 1;
            cp = c & 0x1Fu;
        } else if (c >= 0xE0 && c <= 0xEF) {
            extra = 2;
            cp = c & 0x0Fu;
        } else if (c >= 0xF0 && c <= 0xF4) {
            extra = 3;
            cp = c & 0x07u;
        } else {
            return 0;
        }
        if (n - i <= extra) return 0;
        for (size_t k = 1; k <= extra; k++) {
            if ((s[i + k] & 0xC0) != 0x80) return 0;
            cp = (cp << 6) | (s[i + k] & 0x3Fu);
        }
        if ((extra == 2 && cp < 0x800) || (extra == 3 && (cp < 0x10000 || cp > 0x10FFFF)) ||
            (cp >= 0xD800 && cp <= 0xDFFF))
            return 0;
        i += extra + 1;
    }
    return 1;
}

static int is_hex(unsigned char c) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

static int is_digit(unsigned char c) { return c >= '0' && c <= '9'; }

static int scan_string(const unsigned char *s, size_t n, size_t *pos) {
    size_t i = *pos + 1; /* after the opening quote */
    while (i < n) {
        unsigned char c = s[i];
        if (c == '"') {
            *pos = i + 1;
            return 1;
        }
        if (c < 0x20) return 0; /* raw control characters are not allowed in JSON strings */
        if (c == '\\') {
            if (++i >= n) return 0;
            switch (s[i]) {
            case '"': case '\\': case '/': case 'b': case 'f': case 'n': case 'r': case 't':
                i++;
                break;
            case 'u':
                if (n - i < 5 || !is_hex(s[i + 1]) || !is_hex(s[i + 2]) || !is_hex(s[i + 3]) || !is_hex(s[i + 4]))
                    return 0;
                i += 5;
                break;
            default:
                return 0;
            }
            continue;
        }
        i++;
    }
    return 0;
}

static int scan_number(const unsigned char *s, size_t n, size_t *pos) {
    size_t i = *pos;
    if (i < n && s[i] == '-') i++;
    if (i >= n) return 0;
    if (s[i] == '0') {
        i++;
    } else if (is_digit(s[i])) {
        while (i < n && is_digit(s[i])) i++;
    } else {
        return 0;
    }
    if (i < n && s[i] == '.') {
        i++;
        if (i >= n || !is_digit(s[i])) return 0;
        while (i < n && is_digit(s[i])) i++;
    }
    if (i < n && (s[i] == 'e' || s[i] == 'E')) {
        i++;
        if (i < n && (s[i] == '+' || s[i] == '-')) i++;
        if (i >= n || !is_digit(s[i])) return 0;
        while (i < n && is_digit(s[i])) i++;
    }
    *pos = i;
    return 1;
}

static int scan_literal(const unsigned char *s, size_t n, size_t *pos, const char *word) {
    size_t i = *pos;
    for (; *word; word++, i++)
        if (i >= n || s[i] != (unsigned char)*word) return 0;
    *pos = i;
    return 1;
}

enum { S_VALUE, S_VALUE_OR_END, S_KEY, S_KEY_OR_END, S_AFTER_VALUE };

int ebv_json_validate(const char *data, size_t len, int *tokens, const char **why) {
    const unsigned char *s = (const unsigned char *)data;
    unsigned char stack[EBV_MAX_DEPTH];
    size_t depth = 0, i = 0;
    long count = 0;
    int state = S_VALUE;
    if (!valid_utf8(s, len)) {
        *why = "is not valid UTF-8";
        return 0;
    }
    for (;;) {
        while (i < len && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r')) i++;
        if (i == len) {
            if (state == S_AFTER_VALUE && depth == 0) break;
            *why = "ends in the middle of the document (truncated)";
            return 0;
        }
        if (count > EBV_MAX_TOKENS) {
            *why = "holds more JSON values than a manifest can";
            return 0;
        }
        unsigned char c = s[i];
        switch (state) {
        case S_VALUE_OR_END:
            if (c == ']') {
                depth--;
                i++;
                state = S_AFTER_VALUE;
                break;
            }
            /* fall through */
        case S_VALUE:
            count++;
            if (c == '{' || c == '[') {
                if (depth == EBV_MAX_DEPTH) {
                    *why = "is nested too deeply";
                    return 0;
                }
                stack[depth++] = c;
                i++;
                state = c == '{' ? S_KEY_OR_END : S_VALUE_OR_END;
                break;
            }
            if (c == '"' ? scan_string(s, len, &i)
                : (c == '-' || is_digit(c)) ? scan_number(s, len, &i)
                : c == 't' ? scan_literal(s, len, &i, "true")
                : c == 'f' ? scan_literal(s, len, &i, "false")
                : c == 'n' ? scan_literal(s, len, &i, "null")
                : 0) {
                state = S_AFTER_VALUE;
                break;
            }
            *why = "is not valid JSON (a malformed value)";
            return 0;
        case S_KEY_OR_END:
            if (c == '}') {
                depth--;
                i++;
                state = S_AFTER_VALUE;
                break;
            }
            /* fall through */
        case S_KEY:
            count++;
            if (c != '"' || !scan_string(s, len, &i)) {
                *why = "is not valid JSON (an object key is not a string)";
                return 0;
            }
            while (i < len && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r')) i++;
            if (i >= len || s[i] != ':') {
                *why = i >= len ? "ends in the middle of the document (truncated)"
                                : "is not valid JSON (a key without ':')";
                return 0;
            }
            i++;
            state = S_VALUE;
            break;
        default: /* S_AFTER_VALUE */
            if (depth == 0) {
                *why = "is not valid JSON (data after the document)";
                return 0;
            }
            if (c == ',') {
                i++;
                state = stack[depth - 1] == '{' ? S_KEY : S_VALUE;
            } else if (c == (stack[depth - 1] == '{' ? '}' : ']')) {
                depth--;
                i++;
            } else {
                *why = "is not valid JSON (expected ',' or the end of an object or array)";
                return 0;
            }
            break;
        }
    }
    if (count > EBV_MAX_TOKENS) {
        *why = "holds more JSON values than a manifest can";
        return 0;
    }
    *tokens = (int)count;
    return 1;
}
