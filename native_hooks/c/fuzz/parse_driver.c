/* Runs LLVMFuzzerTestOneInput (fuzz_manifest.c) over every file named on the command line: the fuzz
 * harness for machines without clang's libFuzzer, built with gcc -fsanitize=address,undefined. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        FILE *handle = fopen(argv[i], "rb");
        unsigned char *data = NULL;
        size_t size = 0, capacity = 0;
        if (!handle) {
            perror(argv[i]);
            return 2;
        }
        for (;;) {
            size_t n;
            if (size == capacity) {
                unsigned char *grown = realloc(data, capacity ? 2 * capacity : 4096);
                if (!grown) {
                    fclose(handle);
                    free(data);
                    return 2;
                }
                data = grown;
                capacity = capacity ? 2 * capacity : 4096;
            }
            n = fread(data + size, 1, capacity - size, handle);
            if (n == 0) break;
            size += n;
        }
        fclose(handle);
        LLVMFuzzerTestOneInput(data, size);
        free(data);
    }
    printf("parsed %d inputs\n", argc - 1);
    return 0;
}
