/*
 * Hosted harness for tests/c/kernel_style.c: reads the model file, calls the
 * freestanding demo (linked against a bare-metal libedgeq.a) and prints what
 * `edgeq run MODEL --temp 0 -n N --ctx C --kernels scalar --show-tokens`
 * prints: the text and "\n" on stdout, "tokens: [..]" on stderr.
 *
 *   kernel_main MODEL.eqf N CTX
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "edgeq.h"

int edgeq_demo_open(const uint8_t *image, size_t len, uint32_t max_seq, size_t *arena_need);
long edgeq_demo_generate(uint8_t *arena, size_t arena_len, uint32_t max_seq, uint32_t n_tokens, char *text,
                         size_t cap, uint32_t *ids);

static void *alloc64(size_t n) {
    void *p = aligned_alloc(64, (n + 63) / 64 * 64 + 64);
    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    return p;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: kernel_main MODEL.eqf N CTX\n");
        return 2;
    }
    uint32_t n = (uint32_t)strtoul(argv[2], NULL, 10), ctx = (uint32_t)strtoul(argv[3], NULL, 10);
    FILE *f = fopen(argv[1], "rb");
    if (!f || fseek(f, 0, SEEK_END) != 0) {
        perror(argv[1]);
        return 1;
    }
    long len = ftell(f);
    rewind(f);
    uint8_t *image = alloc64((size_t)len);
    if (len < 0 || fread(image, 1, (size_t)len, f) != (size_t)len) {
        fprintf(stderr, "%s: read failed\n", argv[1]);
        return 1;
    }
    fclose(f);
    size_t need = 0;
    int rc = edgeq_demo_open(image, (size_t)len, ctx, &need);
    if (rc != EDGEQ_OK) {
        fprintf(stderr, "open: %s\n", edgeq_strerror(rc));
        return 1;
    }
    uint8_t *arena = alloc64(need);
    size_t cap = 64 * (size_t)n + 1;
    char *text = malloc(cap);
    uint32_t *ids = malloc(((size_t)n + 1) * sizeof *ids);
    if (!text || !ids) return 1;
    long k = edgeq_demo_generate(arena, need, ctx, n, text, cap, ids);
    if (k < 0) {
        fprintf(stderr, "generate: %s\n", edgeq_strerror((int)k));
        return 1;
    }
    printf("%s\n", text);
    fprintf(stderr, "tokens: [");
    for (long i = 0; i < k; i++) fprintf(stderr, "%s%u", i ? ", " : "", ids[i]);
    fprintf(stderr, "]\n");
    fprintf(stderr, "edgeq %s (kernels %s), arena %zu bytes\n", edgeq_version(), edgeq_kernels_name(), need);
    return 0;
}
